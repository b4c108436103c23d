"""Torch-free reader and writer of ``.safetensors`` files (the HuggingFace tensor format).

The format: an 8-byte little-endian unsigned header length ``n``, then ``n`` bytes of UTF-8 JSON mapping each
tensor name to ``{"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}`` (offsets relative to the end
of the header; an optional ``"__metadata__"`` entry maps strings to strings), then the raw little-endian,
C-contiguous tensor bytes.

:func:`load_safetensors` returns ``{name: numpy array}``; :func:`save_safetensors` writes one (used by tests
and fixtures).
"""

from __future__ import annotations

import json
import os
import struct
from typing import Mapping, Optional

import numpy as np


def _bfloat16():
  import ml_dtypes  # shipped with jax

  return np.dtype(ml_dtypes.bfloat16)


_DTYPES = {
  "F64": "<f8",
  "F32": "<f4",
  "F16": "<f2",
  "BF16": "bfloat16",
  "I64": "<i8",
  "I32": "<i4",
  "I16": "<i2",
  "I8": "i1",
  "U8": "u1",
  "U16": "<u2",
  "U32": "<u4",
  "U64": "<u8",
  "BOOL": "?",
}

_MAX_HEADER = 100 * 1024 * 1024


def _np_dtype(code: str, path: str, name: str) -> np.dtype:
  if code not in _DTYPES:
    raise ValueError(f"{path}: tensor {name!r} has dtype {code!r}, expected one of {sorted(_DTYPES)}")
  dt = _DTYPES[code]
  return _bfloat16() if dt == "bfloat16" else np.dtype(dt)


def read_safetensors_header(path: str | os.PathLike) -> tuple[dict, int]:
  """-> (header dict without ``__metadata__``, byte offset where the data section starts)."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"safetensors file {path!r} does not exist")
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    head = f.read(8)
    if len(head) < 8:
      raise ValueError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
    (n,) = struct.unpack("<Q", head)
    if n > min(_MAX_HEADER, size - 8):
      raise ValueError(f"{path}: not a safetensors file (header length {n} does not fit the {size}-byte file)")
    try:
      header = json.loads(f.read(n).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise ValueError(f"{path}: not a safetensors file (header is not JSON: {e})") from None
  if not isinstance(header, dict):
    raise ValueError(f"{path}: not a safetensors file (header is not a JSON object)")
  header.pop("__metadata__", None)
  return header, 8 + n


def load_safetensors(path: str | os.PathLike, names: Optional[set] = None) -> dict[str, np.ndarray]:
  """Reads tensors (all, or those in ``names``) into numpy arrays of their stored dtype.

  Args:
    path: the ``.safetensors`` file.
    names: optional subset of tensor names to read (others are skipped without reading their bytes).

  Returns:
    ``{name: np.ndarray}`` with the stored shapes and dtypes (``BF16`` as ``ml_dtypes.bfloat16``).
  """
  path = os.fspath(path)
  header, start = read_safetensors_header(path)
  data_len = os.path.getsize(path) - start
  out = {}
  with open(path, "rb") as f:
    for name, info in header.items():
      if names is not None and name not in names:
        continue
      try:
        dtype = _np_dtype(info["dtype"], path, name)
        shape = tuple(int(s) for s in info["shape"])
        begin, end = (int(o) for o in info["data_offsets"])
      except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, ValueError) and "dtype" in str(e):
          raise
        raise ValueError(f"{path}: tensor {name!r} has a malformed header entry {info!r}") from None
      nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
      if end - begin != nbytes or begin < 0 or end > data_len:
        raise ValueError(
          f"{path}: tensor {name!r} of shape {shape} ({info['dtype']}) expects {nbytes} bytes, "
          f"its offsets [{begin}, {end}] give {end - begin} within a {data_len}-byte data section"
        )
      f.seek(start + begin)
      raw = f.read(nbytes)
      out[name] = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
  return out


def save_safetensors(
  path: str | os.PathLike, tensors: Mapping[str, np.ndarray], metadata: Optional[Mapping[str, str]] = None
) -> None:
  """Writes ``{name: array}`` as a ``.safetensors`` file (little-endian, C order, 8-byte aligned header)."""
  inverse = {np.dtype(v): k for k, v in _DTYPES.items() if v != "bfloat16"}
  header, blobs, offset = {}, [], 0
  for name in sorted(tensors):
    arr = np.ascontiguousarray(tensors[name])
    if arr.dtype.name == "bfloat16":
      code = "BF16"
    else:
      code = inverse.get(arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype)
      if code is None:
        raise ValueError(f"save_safetensors: tensor {name!r} has unsupported dtype {arr.dtype}")
      arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    raw = arr.tobytes()
    header[name] = {"dtype": code, "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
    blobs.append(raw)
    offset += len(raw)
  if metadata:
    header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
  text = json.dumps(header, separators=(",", ":")).encode("utf-8")
  text += b" " * (-(len(text) + 8) % 8)
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(text)))
    f.write(text)
    for raw in blobs:
      f.write(raw)
