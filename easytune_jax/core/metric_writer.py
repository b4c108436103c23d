"""Metric logs every trainer writes: metrics.jsonl, metrics.csv and a TensorBoard event file (no TensorFlow).
"""

from __future__ import annotations

import csv
import json
import logging as std_logging
import os
import pathlib
import struct
import time
from typing import Any, Mapping, Optional

import numpy as np

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


def _crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for b in data:
    crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def _make_crc_table():
  table = []
  for i in range(256):
    c = i
    for _ in range(8):
      c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    table.append(c)
  return table


_CRC_TABLE = _make_crc_table()


def _masked_crc(data: bytes) -> int:
  c = _crc32c(data)
  return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
  out = bytearray()
  while True:
    b, n = n & 0x7F, n >> 7
    out.append(b | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _field(num: int, wire: int, payload: bytes) -> bytes:
  return _varint(num << 3 | wire) + payload


def _event(wall_time: float, step: int, tag_values: Optional[Mapping[str, float]] = None,
           file_version: Optional[str] = None) -> bytes:
  """Serialises a tensorflow.Event protobuf (wall_time=1, step=2, file_version=3, summary=5)."""
  msg = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(step))
  if file_version:
    v = file_version.encode()
    msg += _field(3, 2, _varint(len(v)) + v)
  if tag_values:
    summary = b""
    for tag, value in tag_values.items():
      t = tag.encode()
      val = _field(1, 2, _varint(len(t)) + t) + _field(2, 5, struct.pack("<f", float(value)))
      summary += _field(1, 2, _varint(len(val)) + val)
    msg += _field(5, 2, _varint(len(summary)) + summary)
  return msg


class MetricWriter:
  """Scalar metrics to `<dir>/metrics.jsonl`, `<dir>/metrics.csv` (step,name,value) and a TensorBoard
  event file (`events.out.tfevents.*`, readable by TensorBoard without TensorFlow installed here).

  Files (and the directory) are created by the first `write`: a writer that writes nothing (a resumed run
  that was already finished, a run that fails early) leaves no empty event file or folder behind.
  """

  def __init__(self, directory: str | os.PathLike, tensorboard: bool = True):
    self.directory = pathlib.Path(directory)
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
      path = self.directory / f"events.out.tfevents.{int(time.time())}.{os.getpid()}.easytune"
      self._tb = open(path, "ab")
      self._tb_write(_event(time.time(), 0, file_version="brain.Event:2"))

  def _tb_write(self, data: bytes) -> None:
    header = struct.pack("<Q", len(data))
    self._tb.write(header + struct.pack("<I", _masked_crc(header)) + data +
                   struct.pack("<I", _masked_crc(data)))

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    scalars = {k: float(np.asarray(v)) for k, v in metrics.items()}
    if self._jsonl is None:
      self._open()
    self._jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")
    for k, v in scalars.items():
      self._csv.writerow([int(step), k, repr(v)])
    if self._tb is not None:
      self._tb_write(_event(time.time(), int(step), scalars))
    self.flush()

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


def read_tensorboard_scalars(path: str | os.PathLike) -> list[tuple[int, str, float]]:
  """Parses our event files back (used by tests; validates both CRCs of every record)."""
  data, out, pos = pathlib.Path(path).read_bytes(), [], 0
  while pos < len(data):
    header = data[pos:pos + 8]
    (n,) = struct.unpack("<Q", header)
    if struct.unpack("<I", data[pos + 8:pos + 12])[0] != _masked_crc(header):
      raise ValueError(f"{path}: corrupt record header at byte {pos}")
    rec = data[pos + 12:pos + 12 + n]
    if struct.unpack("<I", data[pos + 12 + n:pos + 16 + n])[0] != _masked_crc(rec):
      raise ValueError(f"{path}: corrupt record at byte {pos}")
    pos += 16 + n
    out.extend(_parse_event(rec))
  return out


def _read_varint(b: bytes, i: int) -> tuple[int, int]:
  shift = val = 0
  while True:
    c = b[i]
    i += 1
    val |= (c & 0x7F) << shift
    shift += 7
    if not c & 0x80:
      return val, i


def _parse_fields(b: bytes):
  i = 0
  while i < len(b):
    key, i = _read_varint(b, i)
    num, wire = key >> 3, key & 7
    if wire == 0:
      v, i = _read_varint(b, i)
    elif wire == 1:
      v, i = b[i:i + 8], i + 8
    elif wire == 5:
      v, i = b[i:i + 4], i + 4
    else:
      n, i = _read_varint(b, i)
      v, i = b[i:i + n], i + n
    yield num, v


def _parse_event(rec: bytes):
  step, out = 0, []
  fields = list(_parse_fields(rec))
  for num, v in fields:
    if num == 2:
      step = v
  for num, v in fields:
    if num == 5:
      for _, val in _parse_fields(v):
        f = dict(_parse_fields(val))
        out.append((step, f[1].decode(), struct.unpack("<f", f[2])[0]))
  return out
