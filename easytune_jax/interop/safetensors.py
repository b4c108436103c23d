"""``.safetensors`` files (the HuggingFace tensor format) as numpy arrays, through the ``safetensors`` package.

The reading and writing is the maintained ``safetensors`` library's (``safe_open(..., framework="np")`` and
``safetensors.numpy.save_file``; no torch). This module adds what the project's callers rely on:

* errors that name the file and what was expected (the library's own messages name neither the file nor, for a
  tensor whose byte range does not match its shape, the tensor): a missing file is a ``FileNotFoundError``, a
  file the library refuses a ``ValueError`` ``"<file>: not a safetensors file (...)"`` / ``"<file>: tensor 'x'
  ..."``;
* writeable arrays that own their memory (not views of the memory-mapped file);
* ``names=``: read only some tensors (the others' bytes are not read);
* a writer that takes any numpy array: non-contiguous arrays are made contiguous first (the library would write
  their raw buffer as is), big-endian ones little-endian, metadata values turned into strings, and an unsupported
  dtype is named with its tensor.

:func:`load_safetensors` returns ``{name: numpy array}`` (``BF16`` as ``ml_dtypes.bfloat16``);
:func:`save_safetensors` writes one (used by tests and fixtures).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file


def _check_file(path: str) -> None:
  if not os.path.exists(path):
    raise FileNotFoundError(f"safetensors file {path!r} does not exist")
  if os.path.isdir(path):
    raise IsADirectoryError(f"{path}: expected a safetensors file, found a folder")


_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "U16": 2}
_BYTES.update({"U32": 4, "U64": 8, "BOOL": 1, "C64": 8})


def _mismatched_tensor(path: str) -> str | None:
  """Best effort, only to word an error: the first header entry whose byte range does not hold its shape."""
  try:
    with open(path, "rb") as f:
      (n,) = struct.unpack("<Q", f.read(8))
      header = json.loads(f.read(min(n, 100 * 1024 * 1024)).decode("utf-8"))
    data_len = os.path.getsize(path) - 8 - n
    for name, info in header.items():
      if name == "__metadata__" or info.get("dtype") not in _BYTES:
        continue
      begin, end = (int(o) for o in info["data_offsets"])
      nbytes = int(np.prod(info["shape"], dtype=np.int64)) * _BYTES[info["dtype"]]
      if end - begin != nbytes or begin < 0 or end > data_len:
        return (
          f"tensor {name!r} of shape {tuple(info['shape'])} ({info['dtype']}) expects {nbytes} bytes, its offsets "
          f"[{begin}, {end}] give {end - begin} within a {data_len}-byte data section"
        )
  except Exception:  # the header is unreadable: the library's message says why
    return None
  return None


def _refused(path: str, e: Exception) -> ValueError:
  detail = _mismatched_tensor(path)
  if detail is not None:
    return ValueError(f"{path}: {detail} (safetensors: {e})")
  return ValueError(f"{path}: not a safetensors file, or a damaged one (safetensors: {e})")


def load_safetensors(path: str | os.PathLike, names: set | None = None) -> dict[str, np.ndarray]:
  """Reads tensors (all, or those in ``names``) into numpy arrays of their stored dtype.

  Args:
    path: the ``.safetensors`` file.
    names: optional subset of tensor names to read (others are skipped without reading their bytes).

  Returns:
    ``{name: np.ndarray}`` with the stored shapes and dtypes (``BF16`` as ``ml_dtypes.bfloat16``), writeable arrays
    that own their memory.

  Raises:
    FileNotFoundError: no such file. ValueError: the file is not a (valid) safetensors file, naming it and, where
    the header is readable, the offending tensor; or a tensor's dtype has no numpy counterpart.
  """
  path = os.fspath(path)
  _check_file(path)
  out = {}
  try:
    with safe_open(path, framework="np") as f:
      for name in f.keys():
        if names is not None and name not in names:
          continue
        try:
          out[name] = np.array(f.get_tensor(name), copy=True)
        except (AttributeError, TypeError, KeyError) as e:  # e.g. a float8 dtype this numpy does not know
          dtype = f.get_slice(name).get_dtype()
          raise ValueError(f"{path}: tensor {name!r} has dtype {dtype!r}, which numpy cannot hold ({e})") from None
  except SafetensorError as e:
    raise _refused(path, e) from None
  return out


def save_safetensors(
  path: str | os.PathLike, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
) -> None:
  """Writes ``{name: array}`` as a ``.safetensors`` file (``safetensors.numpy.save_file``: little-endian, C order).

  Raises:
    ValueError: a tensor has a dtype the format cannot store (the tensor and its dtype named).
  """
  arrays = {}
  for name in sorted(tensors):
    arr = np.ascontiguousarray(tensors[name])  # the library writes an array's raw buffer as is
    if arr.dtype.byteorder == ">":
      arr = arr.astype(arr.dtype.newbyteorder("<"))
    arrays[name] = arr
  meta = None if metadata is None else {str(k): str(v) for k, v in metadata.items()}
  try:
    save_file(arrays, os.fspath(path), metadata=meta)
  except SafetensorError as e:
    bad = [f"{n!r} ({a.dtype})" for n, a in arrays.items() if not _storable(a.dtype)]
    what = f"tensor {bad[0]} has a dtype the format cannot store" if bad else "the library refused the tensors"
    raise ValueError(f"save_safetensors: {os.fspath(path)}: {what} (safetensors: {e})") from None


def _storable(dtype: np.dtype) -> bool:
  return dtype.kind in "biuf" and dtype.itemsize <= 8 or dtype == np.complex64 or dtype.name == "bfloat16"
