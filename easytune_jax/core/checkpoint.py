"""Atomic orbax checkpoints of one pytree plus JSON metadata, with clear errors on mismatches."""

from __future__ import annotations

import contextlib
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from easytune_jax.core.optim import tree_all_finite


# --------------------------------------------------------------------------------------------- checkpoints
class CheckpointError(ValueError):
  """A checkpoint does not fit what the caller expects (path, key, expected, found)."""


class NonFiniteStateError(RuntimeError):
  """Raised instead of writing a state that holds NaN/inf."""


def _key_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


class Checkpointer:
  """Atomic orbax checkpoints of one pytree (`state`) plus JSON metadata (config, data stats, ...).

  Orbax writes into a temporary directory and renames it when complete, so an interrupted save never
  replaces the last good checkpoint. Non-finite states are refused. The directory is created by the first
  save (reading a missing directory creates nothing); a truncated or corrupt checkpoint raises a
  CheckpointError naming its step directory.
  """

  def __init__(self, directory: str | os.PathLike, max_to_keep: int = 2):
    self.directory = pathlib.Path(directory).absolute()
    if self.directory.exists() and not self.directory.is_dir():
      raise CheckpointError(f"{self.directory}: expected a checkpoint directory, found a file")
    self._max_to_keep = max_to_keep
    self._ready = False
    self._mngr = self._manager()

  def _manager(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(max_to_keep=self._max_to_keep, create=False),
      item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
    )

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._mngr.all_steps())

  def save(self, step: int, state: Any, metadata: Mapping[str, Any] | None = None) -> None:
    if not bool(jax.device_get(tree_all_finite(jax.tree.map(jnp.asarray, state)))):
      raise NonFiniteStateError(f"refusing to write a non-finite state to {self.directory} at step {step}")
    if step in self._mngr.all_steps():
      return
    if not self._ready:
      # First save of this Checkpointer: create the directory now (nothing is created on reads) and reopen the
      # manager on it. Decided per object, not by whether the folder exists, so that the processes of a
      # multi-process run (which all save, collectively) take the same path even when another created the folder.
      self.directory.mkdir(parents=True, exist_ok=True)
      self._mngr.close()
      self._mngr = self._manager()
      self._ready = True
    self._mngr.save(
      step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(dict(metadata or {})))
    )
    self._mngr.wait_until_finished()

  def metadata(self, step: int | None = None) -> dict:
    step = self._resolve(step)
    with self._readable(step, "meta"):
      meta = self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    if not isinstance(meta, dict):
      raise CheckpointError(
        f"{self.directory / str(step)}: item 'meta': expected a JSON object, found {type(meta).__name__}"
      )
    return meta

  @contextlib.contextmanager
  def _readable(self, step: int, item: str):
    """Turns orbax/tensorstore/JSON errors of a damaged checkpoint into one CheckpointError."""
    try:
      yield
    except CheckpointError:
      raise
    except Exception as e:  # noqa: BLE001  (orbax raises ValueError, JSONDecodeError, FileNotFoundError, ...)
      first = (str(e).splitlines() or [""])[0]
      raise CheckpointError(
        f"{self.directory / str(step)}: item '{item}': expected a complete orbax checkpoint, "
        f"found unreadable files (truncated or corrupt; {type(e).__name__}: {first[:300]}); "
        "delete this step directory to fall back to an earlier step"
      ) from None

  def restore(self, template: Any, step: int | None = None) -> Any:
    """Restores into the structure/shapes/dtypes (and shardings) of `template`. Leaves without a sharding
    (e.g. from `jax.eval_shape`) go to this process's first device, never to the saving machine's devices
    (a checkpoint written on a CPU host restores on a GPU and vice versa)."""
    step = self._resolve(step)
    self._check_structure(template, step)
    here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def abstract_leaf(x):
      s = ocp.utils.to_shape_dtype_struct(x)
      if isinstance(s, jax.ShapeDtypeStruct) and s.sharding is None:
        s = jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=here)
      return s

    abstract = jax.tree.map(abstract_leaf, template)
    with self._readable(step, "state"):
      return self._mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))).state

  def _resolve(self, step: int | None) -> int:
    step = self.latest_step() if step is None else step
    if step is None and not self.directory.is_dir():
      raise CheckpointError(f"{self.directory}: no checkpoints (the directory does not exist)")
    if step is None or step not in self._mngr.all_steps():
      raise CheckpointError(f"{self.directory}: no checkpoint at step {step}; found steps {self.all_steps()}")
    return step

  def _check_structure(self, template: Any, step: int) -> None:
    with self._readable(step, "state"):
      stored = self._mngr.item_metadata(step)["state"]
    if stored is None:
      raise CheckpointError(
        f"{self.directory / str(step)}: no readable 'state' item (not an easytune_jax "
        "checkpoint, or written incompletely)"
      )
    found = {_key_str(p): tuple(getattr(m, "shape", ())) for p, m in jax.tree_util.tree_flatten_with_path(stored)[0]}
    want = {_key_str(p): tuple(np.shape(x)) for p, x in jax.tree_util.tree_flatten_with_path(template)[0]}
    where = self.directory / str(step)
    missing = sorted(set(want) - set(found))
    extra = sorted(set(found) - set(want))
    if missing or extra:
      raise CheckpointError(
        f"{where}: parameter tree does not match the model: missing keys {missing[:5]}"
        f"{'...' if len(missing) > 5 else ''}, unexpected keys {extra[:5]}"
        f"{'...' if len(extra) > 5 else ''}"
      )
    for k, shape in want.items():
      if found[k] != shape:
        raise CheckpointError(f"{where}: key '{k}': expected shape {shape}, found {found[k]}")

  def close(self) -> None:
    self._mngr.wait_until_finished()
    self._mngr.close()
