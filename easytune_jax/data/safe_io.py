"""Readers that turn corrupt, truncated or mistyped files into one clear error naming the file.

Every reader of the project goes through these helpers (dataset features and Mean/Std, evaluator statistics,
GloVe vectors, text-embedding archives, caption / split text files, JSON side files), so a bad file always
reports the same way: ``<path>: <what>: expected ..., found ...``.

* :func:`load_npy` checks the ``.npy`` header (magic, dtype, shape) and the file size BEFORE reading the data,
  so a truncated file says how many bytes the header promises and how many are there, then optionally checks
  the rank, shape and finiteness;
* :func:`load_npz` opens a ``.npz`` archive (numpy.savez) and reads named arrays with the same checks;
* :func:`read_text` reads a UTF-8 text file (undecodable bytes name their offset);
* :func:`read_json` parses a JSON file (the error names line and column);
* :func:`write_json` writes one atomically (a reader never sees half a file), from process 0 only in a
  multi-process run.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from easytune_jax.core.parallel import is_main_process


class BadFileError(ValueError):
  """A file exists but its content is not what the reader expects (truncated, empty, wrong dtype/shape,
  NaN/inf, undecodable). The message names the file, what was expected and what was found."""


_KIND_NAMES = {
  "f": "floating point",
  "i": "signed integer",
  "u": "unsigned integer",
  "b": "boolean",
  "U": "unicode string",
  "S": "byte string",
  "c": "complex",
  "O": "object",
  "M": "datetime",
  "m": "timedelta",
  "V": "structured",
}


def _kinds_text(kinds: str) -> str:
  return " or ".join(_KIND_NAMES.get(k, k) for k in kinds)


def _shape_text(shape: Sequence[int | None]) -> str:
  dims = ["*" if d is None else str(d) for d in shape]
  return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def check_array(
  a: np.ndarray,
  where: str,
  *,
  kinds: str | None = "f",
  ndim: int | None = None,
  shape: Sequence[int | None] | None = None,
  finite: bool = True,
) -> np.ndarray:
  """Validates an array already in memory; raises BadFileError naming `where`.

  Args:
    a: the array.
    where: '<path>' or '<path>: <what>' prefix of the message.
    kinds: accepted numpy dtype kinds ('f' floating, 'b' bool, 'iu' integers, 'U' strings); None accepts any.
    ndim: expected rank (None: any).
    shape: expected shape, None entries match any size (implies the rank).
    finite: require finite values (floating arrays only).
  Returns:
    `a`, unchanged.
  """
  if kinds is not None and a.dtype.kind not in kinds:
    found = _KIND_NAMES.get(a.dtype.kind, a.dtype.kind)
    raise BadFileError(f"{where}: expected dtype {_kinds_text(kinds)}, found {a.dtype} ({found})")
  if shape is not None:
    ok = a.ndim == len(shape) and all(w is None or w == s for w, s in zip(shape, a.shape))
    if not ok:
      raise BadFileError(f"{where}: expected shape {_shape_text(shape)}, found {a.shape}")
  elif ndim is not None and a.ndim != ndim:
    raise BadFileError(f"{where}: expected rank {ndim}, found shape {a.shape}")
  if finite and a.dtype.kind in "fc":
    bad = ~np.isfinite(a)
    if bad.any():
      first = tuple(int(i) for i in np.argwhere(bad)[0])
      raise BadFileError(f"{where}: expected finite values, found {int(bad.sum())} NaN/inf (first at index {first})")
  return a


def load_npy(
  path: str | os.PathLike,
  what: str = "array",
  *,
  kinds: str | None = "f",
  ndim: int | None = None,
  shape: Sequence[int | None] | None = None,
  finite: bool = True,
) -> np.ndarray:
  """Reads a ``.npy`` file written by ``numpy.save`` with clear errors for every way it can be bad.

  Args:
    path: the file.
    what: what the file holds, for messages ('features', 'Mean', ...).
    kinds, ndim, shape, finite: as in :func:`check_array` (finite=False leaves NaN/inf to the caller).
  Returns:
    The array (its stored dtype; callers cast).
  Raises:
    FileNotFoundError: no such file.
    BadFileError: empty, not a .npy file, truncated, object dtype, or failing the checks.
  """
  path = os.fspath(path)
  where = f"{path}: {what}"
  if not os.path.isfile(path):
    raise FileNotFoundError(
      f"{path}: {what} file not found"
      if not os.path.exists(path)
      else f"{path}: {what}: expected a .npy file, found a directory"
    )
  size = os.path.getsize(path)
  if size == 0:
    raise BadFileError(f"{where}: expected a .npy array (numpy.save), found an empty file (0 bytes)")
  with open(path, "rb") as f:
    try:
      version = np.lib.format.read_magic(f)
      read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
      file_shape, fortran, dtype = read_header(f)
    except (ValueError, EOFError, SyntaxError) as e:
      raise BadFileError(
        f"{where}: expected a .npy array (numpy.save), found an unreadable header "
        f"({size} bytes; truncated or not a .npy file: {e})"
      ) from None
    data_start = f.tell()
  del fortran
  if dtype.hasobject:
    raise BadFileError(f"{where}: expected a numeric array, found dtype {dtype} (pickled objects are not loaded)")
  need = int(np.prod(file_shape, dtype=np.int64)) * dtype.itemsize
  have = size - data_start
  if have < need:
    raise BadFileError(
      f"{where}: truncated: the header declares {dtype} {file_shape} ({need} bytes of data), found {have} bytes"
    )
  a = np.load(path, allow_pickle=False)
  return check_array(a, where, kinds=kinds, ndim=ndim, shape=shape, finite=finite)


class NpzReader:
  """A ``.npz`` archive opened with clear errors; use as a context manager.

  ``get(name, ...)`` reads one array with the checks of :func:`check_array`; ``files`` lists the arrays.
  """

  def __init__(self, path: str | os.PathLike, what: str = "archive"):
    self.path, self.what = os.fspath(path), what
    if not os.path.isfile(self.path):
      raise FileNotFoundError(f"{self.path}: {what} file not found")
    size = os.path.getsize(self.path)
    if size == 0:
      raise BadFileError(f"{self.path}: {what}: expected a .npz archive (numpy.savez), found an empty file (0 bytes)")
    try:
      self._z = np.load(self.path, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, EOFError, OSError) as e:
      raise BadFileError(
        f"{self.path}: {what}: expected a .npz archive (numpy.savez), found an unreadable file "
        f"({size} bytes; truncated or not a zip archive: {e})"
      ) from None
    if not hasattr(self._z, "files"):
      raise BadFileError(f"{self.path}: {what}: expected a .npz archive (numpy.savez), found a single .npy array")
    self.files = list(self._z.files)

  def get(
    self,
    name: str,
    *,
    kinds: str | None = "f",
    ndim: int | None = None,
    shape: Sequence[int | None] | None = None,
    finite: bool = True,
  ) -> np.ndarray:
    where = f"{self.path}: array '{name}'"
    if name not in self.files:
      raise BadFileError(f"{self.path}: {self.what}: missing array '{name}' (found {self.files})")
    try:
      a = self._z[name]
    except (zipfile.BadZipFile, ValueError, EOFError, OSError, KeyError) as e:
      raise BadFileError(
        f"{where}: expected a readable array, found a corrupt or truncated member ({type(e).__name__}: {e})"
      ) from None
    return check_array(a, where, kinds=kinds, ndim=ndim, shape=shape, finite=finite)

  def close(self) -> None:
    self._z.close()

  def __enter__(self) -> NpzReader:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def read_text(path: str | os.PathLike, what: str = "text file") -> str:
  """The content of a UTF-8 text file; FileNotFoundError / BadFileError name the file."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(
      f"{path}: {what} not found" if not os.path.exists(path) else f"{path}: {what}: expected a file, found a directory"
    )
  with open(path, "rb") as f:
    data = f.read()
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise BadFileError(
      f"{path}: {what}: expected UTF-8 text, found undecodable bytes at byte {e.start} "
      f"({data[e.start : e.start + 4]!r}; a binary or corrupt file?)"
    ) from None


def read_json(path: str | os.PathLike, what: str = "JSON file", expected: type | None = None) -> Any:
  """Parsed JSON of a file; FileNotFoundError / BadFileError name the file (and line/column). `expected`
  (e.g. dict): the type the top-level value must have (BadFileError naming the type found otherwise)."""
  text = read_text(path, what)
  if not text.strip():
    raise BadFileError(f"{os.fspath(path)}: {what}: expected JSON, found an empty file")
  try:
    value = json.loads(text)
  except json.JSONDecodeError as e:
    raise BadFileError(
      f"{os.fspath(path)}: {what}: expected JSON, found invalid JSON at line {e.lineno} column "
      f"{e.colno} ({e.msg}; truncated?)"
    ) from None
  if expected is not None and not isinstance(value, expected):
    kind = {dict: "object", list: "array"}.get(expected, expected.__name__)
    raise BadFileError(f"{os.fspath(path)}: {what}: expected a JSON {kind}, found {type(value).__name__}")
  return value


def write_json(path: str | os.PathLike, obj: Any, indent: int = 1, sort_keys: bool = False) -> None:
  """Writes `obj` as JSON to `path` through a temporary file renamed into place (a reader, or a run killed
  mid-write, never finds half a file). In a multi-process run only process 0 writes: every process holds the same
  value, and two writers of one file would race."""
  if not is_main_process():
    return
  path = os.fspath(path)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=indent, sort_keys=sort_keys)
  os.replace(tmp, path)
