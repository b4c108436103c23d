"""Reading HuggingFace-style model folders without torch: configs, weight files, checked tensor access.

A weight folder holds ``model.safetensors`` (read by :mod:`easytune_jax.interop.safetensors`), a sharded
``model.safetensors.index.json``, or ``pytorch_model.bin`` (a ``torch.save`` zip, read by
:func:`easytune_jax.interop.torch_zip.load_torch_checkpoint`). :class:`StateDict` hands out tensors by name as
float32 numpy arrays and raises errors that name the file, the key and the expected / found shapes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np

from easytune_jax.data.safe_io import read_json
from easytune_jax.interop.safetensors import load_safetensors
from easytune_jax.interop.torch_zip import load_torch_checkpoint

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def require(d: dict, key: str, path: str):
  """``d[key]`` or a ValueError naming the config file and the missing field."""
  if key not in d:
    raise ValueError(f"{path}: missing field {key!r} (found {sorted(d)})")
  return d[key]


class StateDict:
  """A name -> tensor mapping read from one weight file (or shard set), with checked access.

  Attributes:
    path: the file the tensors came from (for error messages).
    tensors: ``{name: np.ndarray}`` as stored.
  """

  def __init__(self, tensors: dict, path: str):
    self.tensors = dict(tensors)
    self.path = path
    self.used: set = set()

  def __contains__(self, key: str) -> bool:
    return key in self.tensors

  def keys(self) -> list:
    return list(self.tensors)

  def get(self, key: str, shape: Sequence[int], alternatives: Iterable[str] = ()) -> np.ndarray:
    """The tensor ``key`` (or the first present of ``alternatives``) as float32 with the expected shape.

    Raises:
      KeyError: no candidate key is in the file (the message names the file and the keys tried).
      ValueError: the tensor's shape differs from ``shape`` (the message names file, key and both shapes).
    """
    candidates = [key, *alternatives]
    found = next((k for k in candidates if k in self.tensors), None)
    if found is None:
      tried = " or ".join(repr(k) for k in candidates)
      near = sorted(k for k in self.tensors if k.split(".")[-1] == key.split(".")[-1])[:3]
      hint = f"; keys with the same ending: {near}" if near else ""
      raise KeyError(f"{self.path}: missing weight {tried} (expected shape {tuple(shape)}){hint}")
    arr = np.asarray(self.tensors[found])
    if tuple(arr.shape) != tuple(shape):
      raise ValueError(f"{self.path}: weight {found!r}: expected shape {tuple(shape)}, found {tuple(arr.shape)}")
    self.used.add(found)
    return arr.astype(np.float32)


def _flatten(obj, path: str) -> dict:
  if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
    obj = obj["state_dict"]
  if not isinstance(obj, dict):
    raise ValueError(f"{path}: expected a state dict (name -> tensor), found {type(obj).__name__}")
  return {k: v for k, v in obj.items() if isinstance(v, np.ndarray)}


def load_weight_file(path: str) -> StateDict:
  """Reads one ``.safetensors`` / ``.safetensors.index.json`` / ``.bin`` (torch zip) file into a StateDict."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: weight file not found")
  if path.endswith(".index.json"):
    index = read_json(path, "safetensors index file", dict)
    weight_map = require(index, "weight_map", path)
    tensors = {}
    folder = os.path.dirname(path)
    for shard in sorted(set(weight_map.values())):
      tensors.update(load_safetensors(os.path.join(folder, shard)))
    return StateDict(tensors, path)
  if path.endswith(".safetensors"):
    return StateDict(load_safetensors(path), path)
  return StateDict(_flatten(load_torch_checkpoint(path), path), path)


def load_folder_weights(folder: str, names: Sequence[str] = WEIGHT_FILES) -> StateDict:
  """The first present of ``names`` in ``folder`` (safetensors preferred over ``pytorch_model.bin``)."""
  for name in names:
    path = os.path.join(folder, name)
    if os.path.exists(path):
      return load_weight_file(path)
  raise FileNotFoundError(f"{folder}: no weight file found (expected one of {list(names)})")


def find_file(folder: str, names: Sequence[str], what: str) -> str:
  """The first existing ``folder/name``; FileNotFoundError listing what was looked for."""
  for name in names:
    path = os.path.join(folder, name)
    if os.path.exists(path):
      return path
  raise FileNotFoundError(f"{folder}: {what} not found (expected one of {list(names)})")


def optional_json(path: str) -> dict | None:
  return read_json(path, "config file", dict) if os.path.exists(path) else None
