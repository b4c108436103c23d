"""Skipping work whose inputs have not changed: a small JSON manifest of input identities and settings.

A step (a quickstart stage, one `launch/evaluate.py` call) records in ``<dir>/manifest.json``:

* ``key``: a hash of its settings and of the content of every input folder or file (:func:`fingerprint`:
  relative path and sha1 of each file, so a retrained checkpoint, a new step or an edited dataset file changes
  it, while copying or moving the folders, which changes absolute paths and modification times, does not);
* ``outputs``: the fingerprint of what it wrote, taken right after it ran;
* ``result``: its JSON-serialisable return value, and ``seconds``: how long it took.

On a rerun, :meth:`Manifest.lookup` returns the recorded entry when the key is the same and the outputs are
still as written; the caller then reuses ``result`` instead of redoing the work. Delete the manifest (or any
output) to force the work again. Keys and recorded results hold no absolute path of the folder they describe
(:func:`relative_strings` turns them into paths relative to it), so a copied or moved folder is still done.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import time
from collections.abc import Iterable
from typing import Any

from absl import logging

MANIFEST = "manifest.json"


def _file_digest(path: str) -> str:
  h = hashlib.sha1()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def fingerprint(paths: Iterable[str | os.PathLike]) -> str:
  """sha1 over (base name of each path, relative path and content sha1 of every file under it) for each path
  (a file or a folder, walked in sorted order); a missing path counts as 'missing'. Independent of where the
  folders are and of modification times (about 0.3 s for the quickstart's 150 MB)."""
  h = hashlib.sha1()
  for p in paths:
    p = os.fspath(p)
    h.update(f"\0{os.path.basename(os.path.normpath(p))}\0".encode())
    if os.path.isfile(p):
      h.update(_file_digest(p).encode())
      continue
    if not os.path.isdir(p):
      h.update(b"missing")
      continue
    for root, dirs, files in os.walk(p):
      dirs.sort()
      for f in sorted(files):
        full = os.path.join(root, f)
        h.update(f"{os.path.relpath(full, p)}:{_file_digest(full)}\n".encode())
  return h.hexdigest()


def relative_strings(obj: Any, root: str | os.PathLike) -> Any:
  """`obj` (JSON-like) with every occurrence of the absolute path of `root` inside its strings replaced by
  the path relative to `root` ('/w/run/eval/eval.md' -> 'eval/eval.md', 'trained:/w/run/evaluator' ->
  'trained:evaluator', '/w/run' -> '.'); other strings unchanged."""
  prefixes = {os.path.normpath(os.path.abspath(os.fspath(root))), os.path.normpath(os.fspath(root))}
  prefixes = sorted((q for q in prefixes if q not in ("", ".")), key=len, reverse=True)

  def fix(s: str) -> str:
    for q in prefixes:
      s = s.replace(q + os.sep, "")
      if s == q:
        s = "."
    return s

  if isinstance(obj, str):
    return fix(obj)
  if isinstance(obj, dict):
    return {k: relative_strings(v, root) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [relative_strings(v, root) for v in obj]
  return obj


def settings_key(**parts: Any) -> str:
  """sha1 of the JSON of `parts` (settings and input fingerprints)."""
  return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class Manifest:
  """``<directory>/manifest.json``: {step name: {key, outputs, result, seconds, time}}."""

  def __init__(self, directory: str | os.PathLike, name: str = MANIFEST):
    self.path = pathlib.Path(directory) / name
    self.entries: dict = {}
    if self.path.exists():
      try:
        self.entries = json.loads(self.path.read_text())
        if not isinstance(self.entries, dict):
          raise ValueError("not a JSON object")
      except ValueError as e:  # a damaged manifest only costs a recomputation
        logging.warning("%s: unreadable (%s): recomputing every step", self.path, e)
        self.entries = {}

  def lookup(self, name: str, key: str, outputs: Iterable[str | os.PathLike]) -> dict | None:
    """The recorded entry of `name` if its key equals `key` and its outputs are unchanged, else None."""
    entry = self.entries.get(name)
    if not isinstance(entry, dict) or entry.get("key") != key:
      return None
    if entry.get("outputs") != fingerprint(outputs):
      return None
    return entry

  def record(self, name: str, key: str, outputs: Iterable[str | os.PathLike], result: Any, seconds: float) -> None:
    """Stores the entry of `name` (written atomically)."""
    self.entries[name] = {
      "key": key,
      "outputs": fingerprint(outputs),
      "result": result,
      "seconds": seconds,
      "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    self.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = self.path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(self.entries, indent=1, default=str))
    tmp.replace(self.path)
