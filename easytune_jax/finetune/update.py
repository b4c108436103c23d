"""`make_update_fn`: the one update call of every method (per-step or trajectory row), jitted and donating its
state; `compiled_memory`: XLA's compiled memory of such a call (docs/benchmark/README.md reports it)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import optax

from easytune_jax.core.sampling_process import SamplingProcess
from easytune_jax.finetune import lora
from easytune_jax.finetune.apply_fns import Decoder, Denoiser, Reward
from easytune_jax.finetune.config import FinetuneConfig
from easytune_jax.finetune.per_step import make_per_step_update
from easytune_jax.finetune.trajectory import make_trajectory_update


def make_update_fn(
  config: FinetuneConfig,
  denoise: Denoiser,
  reward: Reward,
  process: SamplingProcess,
  tx: optax.GradientTransformation,
  *,
  decode: Decoder | None = None,
  ema_decay: float = 0.0,
  jit: bool = True,
  donate: bool = True,
) -> Callable:
  """The update of config.method, driven the same way for every row of `METHODS`:

    update(state, x_T [B, ...], cond, uncond, rng, data_batch=None, base_params=None) -> (state, metrics)

  Per-step rows (EasyTune) apply K optimizer updates per call, trajectory rows one; metrics always hold
  scalar loss, reward, grad_norm, finite (bool) and skipped. `jit` wraps it in `jax.jit`; `donate` (default)
  donates the state's buffers to the call (XLA writes the new params / optimizer state over the old ones
  instead of allocating and copying a second state): the state passed in is DELETED by the call. Keep using
  only the returned state; pass `jax.tree.map(jnp.copy, state)` where the same start state is needed again
  (timing repeats, tests), and build a fresh state from a copy of params that are still used elsewhere (the
  base params of the held-out score or the KL regulariser: `create_train_state` does not copy them).

  Adapter fine-tuning (`config.lora.enabled`, finetune/lora.py): the state holds the adapter (its params and
  optimizer state only) and `base_params` (required) is the frozen base the adapter applies to; the method
  runs on `lora.adapt(denoise, base_params, scale)` and its KL regulariser compares with the base.
  """
  build = make_per_step_update if config.policy.per_step_updates else make_trajectory_update
  if config.lora.enabled:
    fn = _adapter_update(build, config, denoise, reward, process, tx, decode, ema_decay)
  else:
    fn = build(config, denoise, reward, process, tx, decode=decode, ema_decay=ema_decay)
  if jit:
    fn = jax.jit(fn, donate_argnums=(0,) if donate else ())
  return fn


def _adapter_update(build, config, denoise, reward, process, tx, decode, ema_decay) -> Callable:
  """The update of `build` on the adapter in `state.params`, the base passed as `base_params` (frozen: held
  constant, no optimizer state). The method is built inside the traced call, around the base it receives."""
  scale = config.lora.scale

  def update(state, x_T, cond, uncond, rng, data_batch=None, base_params=None):
    if base_params is None:
      raise ValueError(
        "finetune: FinetuneConfig.lora (adapter fine-tuning) needs `base_params`: the frozen base params the "
        "adapter in the state applies to"
      )
    inner = build(
      config, lora.adapt(denoise, base_params, scale), reward, process, tx, decode=decode, ema_decay=ema_decay
    )
    ref = lora.reference_adapter(state.params, base_params) if config.regularizer == "kl" else None
    return inner(state, x_T, cond, uncond, rng, data_batch, ref)

  return update


def compiled_memory(fn: Callable, *args, donate_argnums: tuple = (), **kwargs) -> dict:
  """XLA's compiled memory analysis of `jax.jit(fn, donate_argnums=donate_argnums)(*args, **kwargs)`, in
  bytes (lowered and compiled only: nothing runs and nothing is donated).

  Returns {'temp', 'argument', 'output', 'alias', 'total'} with total = temp + argument + output - alias
  ('alias': output bytes written over donated arguments). Deterministic and available on CPU, so it is
  the figure to report (docs/benchmark/README.md reports it).
  """
  compiled = jax.jit(fn, donate_argnums=donate_argnums).lower(*args, **kwargs).compile()
  m = compiled.memory_analysis()
  if m is None:
    raise RuntimeError("compiled_memory: this backend gives no memory analysis")
  out = {
    "temp": int(m.temp_size_in_bytes),
    "argument": int(m.argument_size_in_bytes),
    "output": int(m.output_size_in_bytes),
    "alias": int(m.alias_size_in_bytes),
  }
  out["total"] = out["temp"] + out["argument"] + out["output"] - out["alias"]
  return out
