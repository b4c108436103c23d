"""Test helpers around the torch-free ``torch.save`` writer (`easytune_jax.interop.torch_zip.save_torch`).

``save_torch`` is the library's writer; ``write_torch_zip(path, state)`` writes
``{module: {name: ndarray}}`` the way torch.save lays out less regular files (non-contiguous views, storages
shared by two tensors), so the readers are tested on those layouts too.
"""

import collections

import numpy as np

from easytune_jax.interop.torch_zip import _Tensor, _Writer


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
