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
"""

from __future__ import annotations

import collections
import os
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
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_, "BFloat16Storage": "bfloat16",
}


class _StorageType:
    """Stand-in for ``torch.<Name>Storage`` classes referenced by the pickle."""

    def __init__(self, name: str):
        self.name = name
        dt = _STORAGE_DTYPES[name]
        self.dtype = _bfloat16() if dt == "bfloat16" else np.dtype(dt)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    """numpy version of ``torch._utils._rebuild_tensor_v2``: a (copied) strided view of the storage."""
    del requires_grad, backward_hooks, metadata
    size = tuple(int(s) for s in size)
    stride = tuple(int(s) for s in stride)
    if not size:
        return storage[storage_offset].copy()
    needed = storage_offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1 if all(size) else 0
    if needed > storage.size:
        raise ValueError(f"torch checkpoint: tensor of size {size}, stride {stride}, offset {storage_offset} "
                         f"reads past its storage of {storage.size} elements")
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(storage[storage_offset:], shape=size,
                                           strides=tuple(s * item for s in stride), writeable=False)
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
        raise pickle.UnpicklingError(f"{self._path}: the checkpoint references {module}.{name}, which this "
                                     "torch-free reader does not support (state dicts of tensors only)")

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
                raise ValueError(f"{self._path}: storage {name!r} expected {numel} x {dtype.itemsize} bytes "
                                 f"({stype.name}), found {len(raw)} bytes")
            arr = np.frombuffer(raw, dtype=dtype)
            self._storages[key] = arr.astype(stype.dtype, copy=False)
        return self._storages[key]


def load_torch_checkpoint(path: str | os.PathLike) -> Any:
    """Reads a ``torch.save`` zip file into plain Python containers with numpy arrays for tensors."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"torch checkpoint {path!r} does not exist")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: expected a torch.save zip archive (torch >= 1.6 format), found a file that "
                         "is not a zip; legacy torch files must be re-saved with torch first")
    try:
        return _read_zip(path)
    except (zipfile.BadZipFile, EOFError, zlib.error, pickle.UnpicklingError, struct.error) as e:
        if str(e).startswith(path):
            raise
        raise ValueError(f"{path}: expected a complete torch.save zip archive, found a corrupt or truncated one "
                         f"({type(e).__name__}: {e})") from None


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
