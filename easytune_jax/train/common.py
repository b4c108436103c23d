"""Shared training machinery: optimizer, train state, atomic checkpoints, metric logs, the loop.

Every trainer in the project (base model, reward model, evaluator, fine-tuning) uses these pieces so that
resume, preemption handling, non-finite detection and logging behave the same everywhere.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging as std_logging
import os
import pathlib
import signal
import struct
import time
import typing
from typing import Any, Callable, Iterable, Mapping, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging


# --------------------------------------------------------------------------------------------- optimizer
@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """AdamW with linear warm-up then cosine (or constant) decay, and global-norm clipping."""

  learning_rate: float = 1e-4
  warmup_steps: int = 0
  decay_steps: int = 0          # cosine decay length after warm-up; 0 keeps the rate constant
  end_lr_factor: float = 0.0    # final rate = learning_rate * end_lr_factor
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  weight_decay: float = 0.0
  grad_clip_norm: float = 1.0   # 0 disables clipping

  def __post_init__(self):
    if self.learning_rate <= 0:
      raise ValueError(f"OptimConfig.learning_rate: expected > 0, found {self.learning_rate}")
    if self.warmup_steps < 0 or self.decay_steps < 0:
      raise ValueError("OptimConfig.warmup_steps/decay_steps: expected >= 0, found "
                       f"{self.warmup_steps}/{self.decay_steps}")


def learning_rate_schedule(cfg: OptimConfig) -> optax.Schedule:
  if cfg.decay_steps > 0:
    return optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, max(cfg.warmup_steps, 1),
                                              cfg.warmup_steps + cfg.decay_steps,
                                              cfg.learning_rate * cfg.end_lr_factor)
  if cfg.warmup_steps > 0:
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps),
                                 optax.constant_schedule(cfg.learning_rate)], [cfg.warmup_steps])
  return optax.constant_schedule(cfg.learning_rate)


def make_optimizer(cfg: OptimConfig, trainable_mask: Any = None) -> optax.GradientTransformation:
  """optax chain: clip(global norm) -> AdamW(schedule). `trainable_mask` (pytree of bools like params)
  freezes the False leaves: they get zero updates and no optimizer state."""
  parts = []
  if cfg.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
  parts.append(optax.adamw(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                           weight_decay=cfg.weight_decay))
  tx = optax.chain(*parts)
  if trainable_mask is not None:
    labels = jax.tree.map(lambda m: "train" if m else "freeze", trainable_mask)
    tx = optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, labels)
  return tx


# --------------------------------------------------------------------------------------------- state
@flax.struct.dataclass
class TrainState:
  """step int32 []; params and opt_state pytrees; ema_params (or None); skipped: updates skipped
  because loss/gradients were not finite."""

  step: jax.Array
  params: Any
  opt_state: Any
  ema_params: Any = None
  skipped: jax.Array = dataclasses.field(default_factory=lambda: jnp.zeros((), jnp.int32))


def create_train_state(params: Any, tx: optax.GradientTransformation, use_ema: bool = False) -> TrainState:
  """A fresh state holding a COPY of `params`, so that a jitted step donating its state (as the fine-tuning
  updates do) never deletes the caller's arrays (e.g. the base params, still used as a reference)."""
  params = jax.tree.map(jnp.copy, params)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    ema_params=jax.tree.map(jnp.copy, params) if use_ema else None,
                    skipped=jnp.zeros((), jnp.int32))


def tree_all_finite(tree: Any) -> jax.Array:
  """Scalar bool: every leaf of `tree` is finite. Jit-friendly."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def apply_gradients(state: TrainState, grads: Any, tx: optax.GradientTransformation, loss: jax.Array,
                    ema_decay: float = 0.0) -> tuple[TrainState, jax.Array]:
  """Applies one optimizer update unless loss or gradients are non-finite (then the state is kept and
  `skipped` increments). Returns (new_state, finite: bool [])."""
  finite = jnp.logical_and(jnp.all(jnp.isfinite(loss)), tree_all_finite(grads))
  safe_grads = jax.tree.map(lambda g: jnp.where(finite, g, jnp.zeros_like(g)), grads)
  updates, opt_state = tx.update(safe_grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
  ema = state.ema_params
  if ema is not None:
    ema = keep(optax.incremental_update(params, ema, 1.0 - ema_decay), ema)
  new = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema,
                      skipped=state.skipped + (~finite).astype(jnp.int32))
  return new, finite


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
  replaces the last good checkpoint. Non-finite states are refused.
  """

  def __init__(self, directory: str | os.PathLike, max_to_keep: int = 2):
    self.directory = pathlib.Path(directory).absolute()
    self._mngr = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> Optional[int]:
    return self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._mngr.all_steps())

  def save(self, step: int, state: Any, metadata: Optional[Mapping[str, Any]] = None) -> None:
    if not bool(jax.device_get(tree_all_finite(jax.tree.map(jnp.asarray, state)))):
      raise NonFiniteStateError(f"refusing to write a non-finite state to {self.directory} at step {step}")
    if step in self._mngr.all_steps():
      return
    self._mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                  meta=ocp.args.JsonSave(dict(metadata or {}))))
    self._mngr.wait_until_finished()

  def metadata(self, step: Optional[int] = None) -> dict:
    step = self._resolve(step)
    return self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

  def restore(self, template: Any, step: Optional[int] = None) -> Any:
    """Restores into the structure/shapes/dtypes (and shardings) of `template`. Leaves without a sharding
    (e.g. from `jax.eval_shape`) go to this process's first device, never to the saving machine's devices
    (a checkpoint written on a CPU host restores on a GPU and vice versa)."""
    step = self._resolve(step)
    self._check_structure(template, step)
    here = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def abstract_leaf(x):
      s = ocp.utils.to_shape_dtype_struct(x)
      if isinstance(s, jax.ShapeDtypeStruct) and s.sharding is None:
        s = jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=here)
      return s

    abstract = jax.tree.map(abstract_leaf, template)
    return self._mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))).state

  def _resolve(self, step: Optional[int]) -> int:
    step = self.latest_step() if step is None else step
    if step is None or step not in self._mngr.all_steps():
      raise CheckpointError(f"{self.directory}: no checkpoint at step {step}; found steps "
                            f"{self.all_steps()}")
    return step

  def _check_structure(self, template: Any, step: int) -> None:
    stored = self._mngr.item_metadata(step)["state"]
    if stored is None:
      raise CheckpointError(f"{self.directory / str(step)}: no readable 'state' item (not an easytune_jax "
                            "checkpoint, or written incompletely)")
    found = {_key_str(p): tuple(getattr(m, "shape", ())) for p, m in
             jax.tree_util.tree_flatten_with_path(stored)[0]}
    want = {_key_str(p): tuple(np.shape(x)) for p, x in jax.tree_util.tree_flatten_with_path(template)[0]}
    where = self.directory / str(step)
    missing = sorted(set(want) - set(found))
    extra = sorted(set(found) - set(want))
    if missing or extra:
      raise CheckpointError(f"{where}: parameter tree does not match the model: missing keys {missing[:5]}"
                            f"{'...' if len(missing) > 5 else ''}, unexpected keys {extra[:5]}"
                            f"{'...' if len(extra) > 5 else ''}")
    for k, shape in want.items():
      if found[k] != shape:
        raise CheckpointError(f"{where}: key '{k}': expected shape {shape}, found {found[k]}")

  def close(self) -> None:
    self._mngr.wait_until_finished()
    self._mngr.close()


def _tuples(v):
  return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


def config_from_dict(cls, d: Mapping[str, Any], where: str = "config"):
  """Inverse of `dataclasses.asdict` for (nested) frozen config dataclasses read back from JSON.

  Nested dataclass fields are rebuilt from their dicts, JSON lists become tuples (configs stay hashable);
  an unknown key raises ValueError naming `where`, the class and the fields it accepts.
  """
  hints = typing.get_type_hints(cls)
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(d) - names)
  if unknown:
    raise ValueError(f"{where}: unknown {cls.__name__} fields {unknown}; expected some of {sorted(names)}")
  kw = {}
  for k, v in d.items():
    t = hints[k]
    kw[k] = config_from_dict(t, v, f"{where}.{k}") if dataclasses.is_dataclass(t) and isinstance(v, Mapping) \
        else _tuples(v)
  return cls(**kw)


def check_config_matches(saved: Mapping[str, Any], current: Mapping[str, Any], where: str,
                         ignore: Iterable[str] = ()) -> None:
  """Raises CheckpointError naming every differing config field (flattened 'a.b' keys)."""
  def flat(d, prefix=""):
    out = {}
    for k, v in d.items():
      if isinstance(v, Mapping):
        out.update(flat(v, f"{prefix}{k}."))
      else:
        out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out
  a, b = flat(saved), flat(json.loads(json.dumps(current)))
  diffs = [f"{k}: checkpoint has {a.get(k)!r}, config has {b.get(k)!r}" for k in sorted(set(a) | set(b))
           if a.get(k) != b.get(k) and not any(k.startswith(i) for i in ignore)]
  if diffs:
    raise CheckpointError(f"{where}: checkpoint was written with a different config: " + "; ".join(diffs))


# --------------------------------------------------------------------------------------------- logging
class _DropOrbaxInfo(std_logging.Filter):
  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or "orbax" not in record.pathname


def quiet_library_logs() -> None:
  """Drops orbax's per-save INFO lines from absl logging (its warnings and errors still pass). Idempotent;
  the launchers call it so that progress bars and the project's own log lines stay readable."""
  logger = std_logging.getLogger("absl")
  if not any(isinstance(f, _DropOrbaxInfo) for f in logger.filters):
    logger.addFilter(_DropOrbaxInfo())


def _crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for b in data:
    crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def _make_crc_table():
  table = []
  for i in range(256):
    c = i
    for _ in range(8):
      c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    table.append(c)
  return table


_CRC_TABLE = _make_crc_table()


def _masked_crc(data: bytes) -> int:
  c = _crc32c(data)
  return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
  out = bytearray()
  while True:
    b, n = n & 0x7F, n >> 7
    out.append(b | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _field(num: int, wire: int, payload: bytes) -> bytes:
  return _varint(num << 3 | wire) + payload


def _event(wall_time: float, step: int, tag_values: Optional[Mapping[str, float]] = None,
           file_version: Optional[str] = None) -> bytes:
  """Serialises a tensorflow.Event protobuf (wall_time=1, step=2, file_version=3, summary=5)."""
  msg = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(step))
  if file_version:
    v = file_version.encode()
    msg += _field(3, 2, _varint(len(v)) + v)
  if tag_values:
    summary = b""
    for tag, value in tag_values.items():
      t = tag.encode()
      val = _field(1, 2, _varint(len(t)) + t) + _field(2, 5, struct.pack("<f", float(value)))
      summary += _field(1, 2, _varint(len(val)) + val)
    msg += _field(5, 2, _varint(len(summary)) + summary)
  return msg


class MetricWriter:
  """Scalar metrics to `<dir>/metrics.jsonl`, `<dir>/metrics.csv` (step,name,value) and a TensorBoard
  event file (`events.out.tfevents.*`, readable by TensorBoard without TensorFlow installed here)."""

  def __init__(self, directory: str | os.PathLike, tensorboard: bool = True):
    self.directory = pathlib.Path(directory)
    self.directory.mkdir(parents=True, exist_ok=True)
    self._jsonl = open(self.directory / "metrics.jsonl", "a")
    new_csv = not (self.directory / "metrics.csv").exists()
    self._csv_file = open(self.directory / "metrics.csv", "a", newline="")
    self._csv = csv.writer(self._csv_file)
    if new_csv:
      self._csv.writerow(["step", "name", "value"])
    self._tb = None
    if tensorboard:
      path = self.directory / f"events.out.tfevents.{int(time.time())}.{os.getpid()}.easytune"
      self._tb = open(path, "ab")
      self._tb_write(_event(time.time(), 0, file_version="brain.Event:2"))

  def _tb_write(self, data: bytes) -> None:
    header = struct.pack("<Q", len(data))
    self._tb.write(header + struct.pack("<I", _masked_crc(header)) + data +
                   struct.pack("<I", _masked_crc(data)))

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    scalars = {k: float(np.asarray(v)) for k, v in metrics.items()}
    self._jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")
    for k, v in scalars.items():
      self._csv.writerow([int(step), k, repr(v)])
    if self._tb is not None:
      self._tb_write(_event(time.time(), int(step), scalars))
    self.flush()

  def flush(self) -> None:
    for f in (self._jsonl, self._csv_file, self._tb):
      if f is not None:
        f.flush()

  def close(self) -> None:
    for f in (self._jsonl, self._csv_file, self._tb):
      if f is not None:
        f.close()


def read_metrics(directory: str | os.PathLike) -> list[dict]:
  """Reads back `metrics.jsonl` as a list of dicts."""
  path = pathlib.Path(directory) / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_tensorboard_scalars(path: str | os.PathLike) -> list[tuple[int, str, float]]:
  """Parses our event files back (used by tests; validates both CRCs of every record)."""
  data, out, pos = pathlib.Path(path).read_bytes(), [], 0
  while pos < len(data):
    header = data[pos:pos + 8]
    (n,) = struct.unpack("<Q", header)
    if struct.unpack("<I", data[pos + 8:pos + 12])[0] != _masked_crc(header):
      raise ValueError(f"{path}: corrupt record header at byte {pos}")
    rec = data[pos + 12:pos + 12 + n]
    if struct.unpack("<I", data[pos + 12 + n:pos + 16 + n])[0] != _masked_crc(rec):
      raise ValueError(f"{path}: corrupt record at byte {pos}")
    pos += 16 + n
    out.extend(_parse_event(rec))
  return out


def _read_varint(b: bytes, i: int) -> tuple[int, int]:
  shift = val = 0
  while True:
    c = b[i]
    i += 1
    val |= (c & 0x7F) << shift
    shift += 7
    if not c & 0x80:
      return val, i


def _parse_fields(b: bytes):
  i = 0
  while i < len(b):
    key, i = _read_varint(b, i)
    num, wire = key >> 3, key & 7
    if wire == 0:
      v, i = _read_varint(b, i)
    elif wire == 1:
      v, i = b[i:i + 8], i + 8
    elif wire == 5:
      v, i = b[i:i + 4], i + 4
    else:
      n, i = _read_varint(b, i)
      v, i = b[i:i + n], i + n
    yield num, v


def _parse_event(rec: bytes):
  step, out = 0, []
  fields = list(_parse_fields(rec))
  for num, v in fields:
    if num == 2:
      step = v
  for num, v in fields:
    if num == 5:
      for _, val in _parse_fields(v):
        f = dict(_parse_fields(val))
        out.append((step, f[1].decode(), struct.unpack("<f", f[2])[0]))
  return out


# --------------------------------------------------------------------------------------------- loop
class PreemptionGuard:
  """Turns SIGTERM/SIGINT into a flag checked between steps, so the loop can checkpoint and exit."""

  def __init__(self):
    self.requested = False
    self._old = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._old[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: signals cannot be caught here
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    logging.warning("received signal %d: will checkpoint and stop after this step", signum)
    self.requested = True

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)
    return False


class NonFiniteError(RuntimeError):
  """A training step produced a non-finite loss or gradient and the policy is 'stop'."""


@dataclasses.dataclass
class LoopResult:
  state: Any
  last_step: int
  preempted: bool
  nonfinite_steps: list


def train_loop(*, state: Any, step_fn: Callable[[Any, Any], tuple[Any, Mapping[str, jax.Array]]],
               batch_fn: Callable[[int], Any], num_steps: int, checkpointer: Optional[Checkpointer],
               writer: Optional[MetricWriter], metadata: Optional[Mapping[str, Any]] = None,
               log_every: int = 10, checkpoint_every: int = 100,
               eval_fn: Optional[Callable[[Any, int], Mapping[str, float]]] = None, eval_every: int = 0,
               on_nonfinite: str = "skip", desc: str = "train", progress: bool = True,
               state_step: Callable[[Any], int] = lambda s: int(s.step)) -> LoopResult:
  """Runs `step_fn(state, batch_fn(step))` from the state's step to `num_steps`, with resume.

  - Resume: if `checkpointer` holds a checkpoint it is restored into `state`'s structure first, and the loop
    continues from its step; `batch_fn(step)` must be a pure function of the step so the data order of a
    resumed run equals an uninterrupted one.
  - `step_fn` returns (state, metrics) where metrics may hold `finite` (bool []): False marks a step whose
    update was skipped (see `apply_gradients`); it is logged with its step; `on_nonfinite='stop'` then
    checkpoints the last finite state and raises NonFiniteError.
  - SIGTERM/SIGINT: the loop finishes the current step, checkpoints and returns with preempted=True.
  """
  if on_nonfinite not in ("skip", "stop"):
    raise ValueError(f"on_nonfinite: expected 'skip' or 'stop', found {on_nonfinite!r}")
  if checkpointer is not None and checkpointer.latest_step() is not None:
    state = checkpointer.restore(state)
    logging.info("%s: resumed from %s at step %d", desc, checkpointer.directory, state_step(state))
  start = state_step(state)
  nonfinite, preempted = [], False

  def save(s):
    if checkpointer is not None:
      checkpointer.save(state_step(s), s, metadata)

  bar = None
  if progress and start < num_steps:
    from tqdm.auto import tqdm
    bar = tqdm(total=num_steps, initial=start, desc=desc, leave=False, dynamic_ncols=True)
  pending = []
  with PreemptionGuard() as guard:
    for step in range(start, num_steps):
      state, metrics = step_fn(state, batch_fn(step))
      pending.append((step, metrics))
      done = step + 1
      if done % log_every == 0 or done == num_steps or guard.requested:
        for s, m in jax.device_get(pending):
          finite = bool(m.get("finite", True))
          if not finite:
            nonfinite.append(s)
            logging.warning("%s: non-finite loss/gradient at step %d: update skipped", desc, s)
          if writer is not None:
            writer.write(s + 1, {k: v for k, v in m.items() if np.ndim(v) == 0})
        pending = []
        if bar is not None:
          bar.update(done - bar.n)
        if nonfinite and on_nonfinite == "stop":
          save(state)
          raise NonFiniteError(f"{desc}: non-finite loss or gradient at step {nonfinite[0]} "
                               f"(last finite checkpoint: step {state_step(state)})")
      if eval_fn is not None and eval_every and (done % eval_every == 0 or done == num_steps):
        ev = eval_fn(state, done)
        if writer is not None and ev:
          writer.write(done, ev)
      if done % checkpoint_every == 0 or done == num_steps:
        save(state)
      if guard.requested:
        save(state)
        preempted = True
        break
  if bar is not None:
    bar.close()
  return LoopResult(state=state, last_step=state_step(state), preempted=preempted, nonfinite_steps=nonfinite)
