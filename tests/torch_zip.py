"""A torch-free writer of ``torch.save``'s zip format, for tests of the checkpoint readers and converters.

``write_torch_zip(path, obj)`` saves any nest of dicts / lists / scalars whose numpy arrays become tensors,
the way ``torch.save`` lays them out (state dicts as OrderedDicts with ``_metadata``), so converters are
tested on files in the official layout without torch.
"""

import collections
import io
import pathlib
import pickle
import zipfile

import numpy as np

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
        return (_Global("torch._utils", "_rebuild_tensor_v2"),
                (self.storage, self.offset, tuple(self.size), tuple(self.stride), False, collections.OrderedDict()))


class _TorchPickler(pickle._Pickler):
    dispatch = pickle._Pickler.dispatch.copy()

    def _save_global(self, obj):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    dispatch[_Global] = _save_global

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", _Global("torch", obj.type_name), obj.key, "cpu", obj.flat.size)
        return None


_TYPE_NAMES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage"}


class _Writer:
    """Collects the storages of one file; ``tensor(arr)`` makes a contiguous tensor with a storage of its own."""

    def __init__(self):
        self.storages = []

    def storage(self, flat):
        s = _Storage(str(len(self.storages)), np.ascontiguousarray(flat), _TYPE_NAMES[flat.dtype])
        self.storages.append(s)
        return s

    def tensor(self, v):
        v = np.asarray(v)
        st = self.storage(v.reshape(-1))
        return _Tensor(st, 0, v.shape, tuple(int(np.prod(v.shape[i + 1:])) for i in range(v.ndim)))

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
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
            zf.writestr(f"{arch}/data.pkl", buf.getvalue())
            for st in self.storages:
                zf.writestr(f"{arch}/data/{st.key}", st.flat.astype("<" + st.flat.dtype.str[1:]).tobytes())
            zf.writestr(f"{arch}/version", "3\n")
            zf.writestr(f"{arch}/byteorder", "little")


def save_torch(path, obj):
    """``torch.save(obj, path)`` for a nest of dicts / lists / scalars whose numpy arrays become tensors,
    e.g. a Lightning checkpoint ``{"state_dict": {"vae.x.weight": arr, ...}, "epoch": 3}``."""
    w = _Writer()
    w.save(path, w.convert(obj))


def write_torch_zip(path, state, transpose_keys=(), shared_bias=True):
    """Writes ``{module: {name: ndarray}}`` like torch.save: state dicts as OrderedDicts with _metadata,
    some tensors as non-contiguous views (``transpose_keys``) and two biases sharing one storage."""
    w = _Writer()
    obj = collections.OrderedDict()
    for module, sd in state.items():
        od = collections.OrderedDict()
        od._metadata = collections.OrderedDict([("", {"version": 1})])
        items = list(sd.items())
        shared = [k for k, v in items if k.endswith(".bias") and v.ndim == 1][:2] if shared_bias else []
        od_shared = {}
        if len(shared) == 2:
            a, b = sd[shared[0]], sd[shared[1]]
            st = w.storage(np.concatenate([a, b]))
            od_shared = {shared[0]: _Tensor(st, 0, a.shape, (1,)), shared[1]: _Tensor(st, a.size, b.shape, (1,))}
        for k, v in items:
            if k in od_shared:
                od[k] = od_shared[k]
            elif f"{module}.{k}" in transpose_keys and v.ndim == 2:
                # stored as the transpose, viewed back with swapped strides (a non-contiguous tensor)
                st = w.storage(np.ascontiguousarray(v.T).reshape(-1))
                od[k] = _Tensor(st, 0, v.shape, (1, v.shape[0]))
            else:
                od[k] = w.tensor(v)
        obj[module] = od
    obj["epoch"] = 7
    w.save(path, obj)
