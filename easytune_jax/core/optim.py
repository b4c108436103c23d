"""Optimisation: the optax optimizer of every trainer, the train state and the guarded update.

`apply_gradients` skips an update whose loss or gradients are non-finite and counts it, so one bad batch never
poisons the parameters; every trainer (base, reward, evaluator, fine-tuning) updates through it.
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
