"""Metric logs every trainer writes: metrics.jsonl, metrics.csv and a TensorBoard event file (tensorboardX)."""

from __future__ import annotations

import csv
import json
import logging as std_logging
import os
import pathlib
import re
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from easytune_jax.core.parallel import is_main_process


# --------------------------------------------------------------------------------------------- logging
class _DropOrbaxInfo(std_logging.Filter):
  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or "orbax" not in record.pathname


def quiet_library_logs() -> None:
  """Drops orbax's per-save INFO lines from absl logging (its warnings and errors still pass). Idempotent;
  the launchers call it so that progress bars and the project's own log lines stay readable."""
  logger = std_logging.getLogger("absl")
  if not any(isinstance(f, _DropOrbaxInfo) for f in logger.filters):
    logger.addFilter(_DropOrbaxInfo())


# TensorBoard's rule for tag names (tensorboardX `summary._clean_tag`, TensorFlow's name scopes): any character
# matching this pattern is replaced by '_' (and leading '/' are dropped), with an INFO line per tag and write.
ILLEGAL_TAG_CHARACTERS = re.compile(r"[^-/\w\.]")


def check_tag(name: str) -> str:
  """`name` if TensorBoard keeps it as written, else ValueError naming the tag, the offending characters and the
  characters allowed (so that metrics.jsonl, metrics.csv and TensorBoard show one name)."""
  if not isinstance(name, str) or not name:
    raise ValueError(f"metric name {name!r}: expected a non-empty str")
  bad = sorted(set(ILLEGAL_TAG_CHARACTERS.findall(name)))
  if bad or name.startswith("/"):
    found = f"characters {bad}" if bad else "a leading '/'"
    raise ValueError(
      f"metric name {name!r}: TensorBoard would rename it ({found}); expected letters, digits, '_', '-', '.' "
      "and '/' (not leading), e.g. 'retrieval/t0/full/t2m/R1'"
    )
  return name


class MetricWriter:
  """Scalar metrics to `<dir>/metrics.jsonl`, `<dir>/metrics.csv` (step,name,value) and a TensorBoard event
  file (`events.out.tfevents.*`, written by tensorboardX: no TensorFlow needed).

  Files (and the directory) are created by the first `write`: a writer that writes nothing (a resumed run
  that was already finished, a run that fails early) leaves no empty event file or folder behind; tensorboardX
  is imported then too. metrics.jsonl and metrics.csv are flushed at every write (what a killed run leaves);
  tensorboardX writes its events from a background thread, flushed every few seconds and on `flush`/`close`.
  Metric names are TensorBoard tags as written: a name TensorBoard would rename (a character other than letters,
  digits, `_-/.`, or a leading '/') is refused with a ValueError naming it (:func:`check_tag`), before anything is
  written.

  In a multi-process run only process 0 writes (the metrics are the same on every process); on the others
  `write` checks the names and writes nothing.

  Args:
    directory: the output folder.
    tensorboard: also write the TensorBoard event file.
  """

  def __init__(self, directory: str | os.PathLike, tensorboard: bool = True):
    self.directory = pathlib.Path(directory)
    self._enabled = is_main_process()
    self._tensorboard = tensorboard
    self._jsonl = self._csv_file = self._csv = self._tb = None

  def _open(self) -> None:
    self.directory.mkdir(parents=True, exist_ok=True)
    self._jsonl = open(self.directory / "metrics.jsonl", "a")
    new_csv = not (self.directory / "metrics.csv").exists()
    self._csv_file = open(self.directory / "metrics.csv", "a", newline="")
    self._csv = csv.writer(self._csv_file)
    if new_csv:
      self._csv.writerow(["step", "name", "value"])
    if self._tensorboard:
      import tensorboardX  # here, not at the top: 0.6 s to import, paid only by writers that write

      self._tb = tensorboardX.SummaryWriter(str(self.directory), flush_secs=5, filename_suffix=".easytune")

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Appends one row per metric at `step`; values are anything `float(np.asarray(v))` accepts."""
    scalars = {check_tag(k): float(np.asarray(v)) for k, v in metrics.items()}
    if not self._enabled:
      return
    if self._jsonl is None:
      self._open()
    self._jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")
    for k, v in scalars.items():
      self._csv.writerow([int(step), k, repr(v)])
    if self._tb is not None:
      wall = time.time()
      for k, v in scalars.items():
        self._tb.add_scalar(k, v, int(step), walltime=wall)
    self._jsonl.flush()
    self._csv_file.flush()

  def flush(self) -> None:
    for f in (self._jsonl, self._csv_file, self._tb):
      if f is not None:
        f.flush()

  def close(self) -> None:
    for f in (self._jsonl, self._csv_file, self._tb):
      if f is not None:
        f.close()


def read_metrics(directory: str | os.PathLike) -> list[dict]:
  """Reads back `metrics.jsonl` as a list of dicts."""
  path = pathlib.Path(directory) / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
