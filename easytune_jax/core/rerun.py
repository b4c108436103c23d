"""Skipping work whose inputs have not changed: a small JSON manifest of input identities and settings.

A step (a quickstart stage, one `launch/evaluate.py` call) records in ``<dir>/manifest.json``:

* ``key``: a hash of its settings and of the identity of every input folder or file (:func:`fingerprint`:
  relative path, size and modification time of each file, so a retrained checkpoint, a new step or an edited
  dataset file changes it; file contents are not read, so it costs a directory walk);
* ``outputs``: the fingerprint of what it wrote, taken right after it ran;
* ``result``: its JSON-serialisable return value, and ``seconds``: how long it took.

On a rerun, :meth:`Manifest.lookup` returns the recorded entry when the key is the same and the outputs are
still as written; the caller then reuses ``result`` instead of redoing the work. Delete the manifest (or any
output) to force the work again.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import time
from typing import Any, Iterable, Optional

from absl import logging

MANIFEST = "manifest.json"


def fingerprint(paths: Iterable[str | os.PathLike]) -> str:
  """sha1 over (path, relative file path, size, mtime_ns) of every file under each path (a file or a folder,
  walked in sorted order); a missing path counts as 'missing'."""
  h = hashlib.sha1()
  for p in paths:
    p = os.fspath(p)
    h.update(f"\0{os.path.basename(os.path.normpath(p))}\0".encode())
    if os.path.isfile(p):
      st = os.stat(p)
      h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
      continue
    if not os.path.isdir(p):
      h.update(b"missing")
      continue
    for root, dirs, files in os.walk(p):
      dirs.sort()
      for f in sorted(files):
        full = os.path.join(root, f)
        st = os.stat(full)
        h.update(f"{os.path.relpath(full, p)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
  return h.hexdigest()


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

  def lookup(self, name: str, key: str, outputs: Iterable[str | os.PathLike]) -> Optional[dict]:
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
