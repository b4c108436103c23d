"""Torch-free reader of ``torch.save`` files (PyTorch's zip serialization, the default since torch 1.6).

The format:

* a zip archive whose entries live under one folder ``<archive>/``;
* ``<archive>/data.pkl``: a pickle (protocol 2) of the saved object. Tensors are pickled as
  ``REDUCE(GLOBAL torch._utils._rebuild_tensor_v2, (storage, offset, size, stride, requires_grad, hooks))``
  where ``storage`` is a *persistent id* ``('storage', GLOBAL torch.<Type>Storage, key, location, numel)``;
* ``<archive>/data/<key>``: the raw little-endian bytes of each storage (``<archive>/byteorder`` may say
  otherwise), the element type given by the storage type name (``FloatStorage`` = float32, ...).

:func:`load_torch_checkpoint` reads it with ``zipfile`` and a restricted ``pickle.Unpickler`` into plain
containers with numpy arrays for tensors; every official checkpoint converter of the project reads through it.
:func:`save_torch` writes the same format (numpy arrays become contiguous tensors, dicts of arrays become state
dicts with ``_metadata``): official-layout checkpoints that ``torch.load`` and the converters read, e.g. to export
converted weights back or to build checkpoints of a given architecture for tests and benchmarks.
"""

from __future__ import annotations

import collections
import io
import os
import pathlib
import pickle
import struct
import zipfile
import zlib
from typing import Any

import numpy as np


def _bfloat16():
  import ml_dtypes  # shipped with jax

  return np.dtype(ml_dtypes.bfloat16)


_STORAGE_DTYPES = {
  "DoubleStorage": np.float64,
  "FloatStorage": np.float32,
  "HalfStorage": np.float16,
  "LongStorage": np.int64,
  "IntStorage": np.int32,
  "ShortStorage": np.int16,
  "CharStorage": np.int8,
  "ByteStorage": np.uint8,
  "BoolStorage": np.bool_,
  "BFloat16Storage": "bfloat16",
}


class _StorageType:
  """Stand-in for ``torch.<Name>Storage`` classes referenced by the pickle."""

  def __init__(self, name: str):
    self.name = name
    dt = _STORAGE_DTYPES[name]
    self.dtype = _bfloat16() if dt == "bfloat16" else np.dtype(dt)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
  """numpy version of ``torch._utils._rebuild_tensor_v2``: a (copied) strided view of the storage."""
  del requires_grad, backward_hooks, metadata
  size = tuple(int(s) for s in size)
  stride = tuple(int(s) for s in stride)
  if not size:
    return storage[storage_offset].copy()
  needed = storage_offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1 if all(size) else 0
  if needed > storage.size:
    raise ValueError(
      f"torch checkpoint: tensor of size {size}, stride {stride}, offset {storage_offset} "
      f"reads past its storage of {storage.size} elements"
    )
  item = storage.itemsize
  view = np.lib.stride_tricks.as_strided(
    storage[storage_offset:], shape=size, strides=tuple(s * item for s in stride), writeable=False
  )
  return np.array(view)  # own the memory, contiguous


def _rebuild_tensor(storage, storage_offset, size, stride):
  return _rebuild_tensor_v2(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *extra):
  del requires_grad, backward_hooks, extra
  return data


class _TorchUnpickler(pickle.Unpickler):
  """Only the globals a state-dict checkpoint needs; anything else is refused by name."""

  def __init__(self, file, archive: zipfile.ZipFile, prefix: str, byteorder: str, path: str):
    super().__init__(file)
    self._zip, self._prefix, self._byteorder, self._path = archive, prefix, byteorder, path
    self._storages: dict[str, np.ndarray] = {}

  def find_class(self, module, name):
    if module == "torch._utils" and name == "_rebuild_tensor_v2":
      return _rebuild_tensor_v2
    if module == "torch._utils" and name == "_rebuild_tensor":
      return _rebuild_tensor
    if module == "torch._utils" and name == "_rebuild_parameter":
      return _rebuild_parameter
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    if module == "collections" and name == "OrderedDict":
      return collections.OrderedDict
    if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "scalar":
      core = getattr(np, "_core", None) or __import__("numpy.core.multiarray").core
      return core.multiarray.scalar
    if module == "numpy" and name == "dtype":
      return np.dtype
    if module == "builtins" and name in ("set", "frozenset", "complex", "slice"):
      return getattr(__import__("builtins"), name)
    raise pickle.UnpicklingError(
      f"{self._path}: the checkpoint references {module}.{name}, which this "
      "torch-free reader does not support (state dicts of tensors only)"
    )

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
      raise pickle.UnpicklingError(f"{self._path}: unexpected persistent id {pid!r}")
    _, stype, key, _location, numel = pid[:5]
    if not isinstance(stype, _StorageType):
      raise pickle.UnpicklingError(f"{self._path}: storage {key!r} has unsupported type {stype!r}")
    key = str(key)
    if key not in self._storages:
      name = f"{self._prefix}data/{key}"
      try:
        raw = self._zip.read(name)
      except KeyError:
        raise ValueError(f"{self._path}: storage record {name!r} is missing from the archive") from None
      dtype = stype.dtype.newbyteorder("<" if self._byteorder == "little" else ">")
      if len(raw) != int(numel) * dtype.itemsize:
        raise ValueError(
          f"{self._path}: storage {name!r} expected {numel} x {dtype.itemsize} bytes "
          f"({stype.name}), found {len(raw)} bytes"
        )
      arr = np.frombuffer(raw, dtype=dtype)
      self._storages[key] = arr.astype(stype.dtype, copy=False)
    return self._storages[key]


def load_torch_checkpoint(path: str | os.PathLike) -> Any:
  """Reads a ``torch.save`` zip file into plain Python containers with numpy arrays for tensors."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"torch checkpoint {path!r} does not exist")
  if not zipfile.is_zipfile(path):
    raise ValueError(
      f"{path}: expected a torch.save zip archive (torch >= 1.6 format), found a file that "
      "is not a zip; legacy torch files must be re-saved with torch first"
    )
  try:
    return _read_zip(path)
  except (zipfile.BadZipFile, EOFError, zlib.error, pickle.UnpicklingError, struct.error) as e:
    if str(e).startswith(path):
      raise
    raise ValueError(
      f"{path}: expected a complete torch.save zip archive, found a corrupt or truncated one ({type(e).__name__}: {e})"
    ) from None


def _read_zip(path: str) -> Any:
  with zipfile.ZipFile(path) as zf:
    pkls = [n for n in zf.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
      raise ValueError(f"{path}: expected exactly one '<archive>/data.pkl' record, found {pkls}")
    prefix = pkls[0][: -len("data.pkl")]
    byteorder = "little"
    if f"{prefix}byteorder" in zf.namelist():
      byteorder = zf.read(f"{prefix}byteorder").decode().strip()
      if byteorder not in ("little", "big"):
        raise ValueError(f"{path}: byteorder record expected 'little' or 'big', found {byteorder!r}")
    with zf.open(pkls[0]) as f:
      return _TorchUnpickler(f, zf, prefix, byteorder, path).load()


# --------------------------------------------------------------------------------------------- writer
class _Global:
  """Pickled as GLOBAL '<module>\\n<name>', like torch's references to its own functions/classes."""

  def __init__(self, module, name):
    self.module, self.name = module, name

  def __call__(self, *args):  # pickle requires REDUCE targets to be callable
    raise RuntimeError("marker only")


class _Storage:
  def __init__(self, key, flat, type_name):
    self.key, self.flat, self.type_name = key, flat, type_name


class _Tensor:
  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

  def __reduce__(self):
    return (
      _Global("torch._utils", "_rebuild_tensor_v2"),
      (self.storage, self.offset, tuple(self.size), tuple(self.stride), False, collections.OrderedDict()),
    )


class _TorchPickler(pickle._Pickler):  # the pure-Python pickler: its dispatch table takes the _Global marker
  dispatch = pickle._Pickler.dispatch.copy()

  def _save_global(self, obj):
    self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
    self.memoize(obj)

  dispatch[_Global] = _save_global

  def persistent_id(self, obj):
    if isinstance(obj, _Storage):
      return ("storage", _Global("torch", obj.type_name), obj.key, "cpu", obj.flat.size)
    return None


_TYPE_NAMES = {np.dtype(dt): name for name, dt in _STORAGE_DTYPES.items() if dt != "bfloat16"}


class _Writer:
  """Collects the storages of one file; ``tensor(arr)`` makes a contiguous tensor with a storage of its own."""

  def __init__(self):
    self.storages = []

  def storage(self, flat):
    if flat.dtype not in _TYPE_NAMES:
      raise TypeError(
        f"save_torch: arrays of dtype {flat.dtype} have no torch storage type here "
        f"(supported: {sorted(str(d) for d in _TYPE_NAMES)})"
      )
    s = _Storage(str(len(self.storages)), np.ascontiguousarray(flat), _TYPE_NAMES[flat.dtype])
    self.storages.append(s)
    return s

  def tensor(self, v):
    v = np.asarray(v)
    st = self.storage(v.reshape(-1))
    return _Tensor(st, 0, v.shape, tuple(int(np.prod(v.shape[i + 1 :])) for i in range(v.ndim)))

  def convert(self, obj):
    """numpy arrays -> tensors anywhere in a nest of dicts / lists / tuples; dicts become OrderedDicts."""
    if isinstance(obj, np.ndarray):
      return self.tensor(obj)
    if isinstance(obj, dict):
      od = collections.OrderedDict((k, self.convert(v)) for k, v in obj.items())
      if obj and all(isinstance(v, np.ndarray) for v in obj.values()):
        od._metadata = collections.OrderedDict([("", {"version": 1})])
      return od
    if isinstance(obj, (list, tuple)):
      return type(obj)(self.convert(v) for v in obj)
    return obj

  def save(self, path, obj):
    buf = io.BytesIO()
    _TorchPickler(buf, protocol=2).dump(obj)
    arch = pathlib.Path(path).stem
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
      zf.writestr(f"{arch}/data.pkl", buf.getvalue())
      for st in self.storages:
        zf.writestr(f"{arch}/data/{st.key}", st.flat.astype(st.flat.dtype.newbyteorder("<")).tobytes())
      zf.writestr(f"{arch}/version", "3\n")
      zf.writestr(f"{arch}/byteorder", "little")


def save_torch(path: str | os.PathLike, obj: Any) -> None:
  """``torch.save(obj, path)`` for a nest of dicts / lists / scalars whose numpy arrays become tensors, e.g. a
  Lightning checkpoint ``{"state_dict": {"vae.x.weight": arr, ...}, "epoch": 3}``. Dicts whose values are all
  arrays are written as state dicts (OrderedDicts with ``_metadata``). Torch-free; ``torch.load`` and
  :func:`load_torch_checkpoint` read the file."""
  w = _Writer()
  w.save(os.fspath(path), w.convert(obj))
