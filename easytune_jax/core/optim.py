"""Optimisation: the optax optimizer of every trainer, the train state and the guarded update.

`apply_gradients` skips an update whose loss or gradients are non-finite and counts it (`optax.apply_if_finite`),
so one bad batch never poisons the parameters; every trainer (base, reward, evaluator, fine-tuning) updates
through it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


# --------------------------------------------------------------------------------------------- optimizer
@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """AdamW with linear warm-up then cosine (or constant) decay, and global-norm clipping."""

  learning_rate: float = 1e-4
  warmup_steps: int = 0
  decay_steps: int = 0  # cosine decay length after warm-up; 0 keeps the rate constant
  end_lr_factor: float = 0.0  # final rate = learning_rate * end_lr_factor
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  weight_decay: float = 0.0
  grad_clip_norm: float = 1.0  # 0 disables clipping

  def __post_init__(self):
    if self.learning_rate <= 0:
      raise ValueError(f"OptimConfig.learning_rate: expected > 0, found {self.learning_rate}")
    if self.warmup_steps < 0 or self.decay_steps < 0:
      raise ValueError(
        f"OptimConfig.warmup_steps/decay_steps: expected >= 0, found {self.warmup_steps}/{self.decay_steps}"
      )


def learning_rate_schedule(cfg: OptimConfig) -> optax.Schedule:
  if cfg.decay_steps > 0:
    return optax.warmup_cosine_decay_schedule(
      0.0,
      cfg.learning_rate,
      max(cfg.warmup_steps, 1),
      cfg.warmup_steps + cfg.decay_steps,
      cfg.learning_rate * cfg.end_lr_factor,
    )
  if cfg.warmup_steps > 0:
    return optax.join_schedules(
      [optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps), optax.constant_schedule(cfg.learning_rate)],
      [cfg.warmup_steps],
    )
  return optax.constant_schedule(cfg.learning_rate)


def make_optimizer(cfg: OptimConfig, trainable_mask: Any = None) -> optax.GradientTransformation:
  """optax chain: clip(global norm) -> AdamW(schedule). `trainable_mask` (pytree of bools like params)
  freezes the False leaves: they get zero updates and no optimizer state."""
  parts = []
  if cfg.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
  parts.append(
    optax.adamw(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
  )
  tx = optax.chain(*parts)
  if trainable_mask is not None:
    labels = jax.tree.map(lambda m: "train" if m else "freeze", trainable_mask)
    tx = optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, labels)
  return tx


# --------------------------------------------------------------------------------------------- state
# `optax.apply_if_finite` gives up and applies a non-finite update after `max_consecutive_errors` skips in a
# row; this project never does (a run with on_nonfinite='skip' keeps skipping, 'stop' stops), hence the
# largest count its saturating int32 counter can hold.
_NEVER_GIVE_UP = int(jnp.iinfo(jnp.int32).max)


@flax.struct.dataclass
class TrainState:
  """step int32 [] (every call of `apply_gradients`, skipped or not); params and opt_state (`tx`'s state)
  pytrees; ema_params (or None); skipped int32 []: updates skipped because loss/gradients were not finite."""

  step: jax.Array
  params: Any
  opt_state: Any
  ema_params: Any = None
  skipped: jax.Array = dataclasses.field(default_factory=lambda: jnp.zeros((), jnp.int32))


def create_train_state(params: Any, tx: optax.GradientTransformation, use_ema: bool = False) -> TrainState:
  """A fresh state holding a COPY of `params`, so that a jitted step donating its state (as the fine-tuning
  updates do) never deletes the caller's arrays (e.g. the base params, still used as a reference).

  Args:
    params: the trainable parameters (pytree).
    tx: the optimizer (e.g. `make_optimizer(...)`).
    use_ema: keep an exponential moving average of the params in `ema_params`.

  Returns:
    TrainState at step 0.
  """
  params = jax.tree.map(jnp.copy, params)
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    opt_state=tx.init(params),
    ema_params=jax.tree.map(jnp.copy, params) if use_ema else None,
    skipped=jnp.zeros((), jnp.int32),
  )


def tree_all_finite(tree: Any) -> jax.Array:
  """Scalar bool: every leaf of `tree` is finite. Jit-friendly."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def apply_gradients(
  state: TrainState, grads: Any, tx: optax.GradientTransformation, loss: jax.Array, ema_decay: float = 0.0
) -> tuple[TrainState, jax.Array]:
  """One update of `tx` through `optax.apply_if_finite`, skipped when loss or gradients are non-finite.

  A skipped update keeps params, optimizer moments, schedule position and `ema_params`, and increments
  `state.skipped`; `state.step` counts every call. A non-finite `loss` reaches `optax.apply_if_finite`
  (which looks at gradients only) as NaN gradients.

  The state stores `tx`'s own state and the skip count (`ApplyIfFiniteState.total_notfinite`) as separate
  fields, the checkpoint layout of every trainer, and wraps them for the update; apply_if_finite's count of
  consecutive skips starts at 0 each call: it only decides when to give up skipping, which this project never
  does.

  The EMA of the params is `optax.incremental_update` (optax has no transformation for it: `optax.ema`
  averages the UPDATES a chain passes on, not the params), applied only after a finite update.

  Args:
    state: from `create_train_state(params, tx, ...)` with the same `tx`.
    grads: pytree like `state.params`.
    tx: the optimizer.
    loss: the loss whose gradients these are (any shape).
    ema_decay: decay of `ema_params` (ignored when the state has none).

  Returns:
    (new_state, finite): finite is bool [], whether this update was applied.
  """
  loss_finite = jnp.all(jnp.isfinite(loss))
  grads = jax.tree.map(lambda g: jnp.where(loss_finite, g, jnp.nan), grads)
  guarded = optax.apply_if_finite(tx, max_consecutive_errors=_NEVER_GIVE_UP)
  wrapped = optax.ApplyIfFiniteState(
    notfinite_count=jnp.zeros((), jnp.int32),
    last_finite=jnp.array(True),
    total_notfinite=state.skipped,
    inner_state=state.opt_state,
  )
  updates, wrapped = guarded.update(grads, wrapped, state.params)
  finite = wrapped.last_finite
  params = optax.apply_updates(state.params, updates)
  ema = state.ema_params
  if ema is not None:
    new_ema = optax.incremental_update(params, ema, 1.0 - ema_decay)
    ema = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_ema, ema)
  new = state.replace(
    step=state.step + 1, params=params, opt_state=wrapped.inner_state, ema_params=ema, skipped=wrapped.total_notfinite
  )
  return new, finite
