"""Classifier-free guided sampling as one jitted `lax.scan`, model- and process-agnostic.

Everything takes a denoiser `denoise(params, x_t, t, cond) -> model_output` (see WORKSPACE.md) and a sampling
process (core/sampling_process.py: a DDIM / DDPM `schedules.Schedule` or a `flow.FlowProcess`), so the same sampler
drives the MLD latent denoiser, the MDM motion denoiser, the flow generator and a user's own network. The denoiser
is called with the process's `model_time(t)` (int32 DDPM timesteps; float times for flow).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from easytune_jax.core import schedules
from easytune_jax.core.flow import FlowConfig, make_flow
from easytune_jax.core.sampling_process import SamplingProcess, Timesteps

Denoiser = Callable[[Any, jax.Array, jax.Array, Any], jax.Array]


# Each default defined once. The paper setting (MLD: 50 DDIM steps, classifier-free guidance 7.5) and the CPU
# setting of the tiny models (10 steps at guidance 2.5). Config classes default to the CPU setting (WORKSPACE.md,
# "Configs"); the presets of easytune_jax/configs/ name the paper one.
NUM_STEPS = 50
GUIDANCE_SCALE = 7.5
CPU_NUM_STEPS = 10
CPU_GUIDANCE_SCALE = 2.5


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """Sampling settings of any process. Defaults: the CPU setting (CPU_NUM_STEPS steps, guidance CPU_GUIDANCE_SCALE),
  eta 0 (deterministic DDIM / the flow ODE; > 0 the stochastic step), leading spacing (MLD's); MLD's own sampler is
  `SamplerConfig(num_steps=NUM_STEPS, guidance_scale=GUIDANCE_SCALE)`. timestep_spacing / steps_offset are DDIM's
  and DDPM's (a flow's grid is its `time_shift`)."""

  num_steps: int = CPU_NUM_STEPS
  guidance_scale: float = CPU_GUIDANCE_SCALE
  eta: float = 0.0
  timestep_spacing: str = "leading"
  steps_offset: int = 1

  def __post_init__(self):
    if self.num_steps < 1:
      raise ValueError(f"SamplerConfig.num_steps: expected >= 1, found {self.num_steps}")
    if self.guidance_scale < 0:
      raise ValueError(f"SamplerConfig.guidance_scale: expected >= 0, found {self.guidance_scale}")
    if self.eta < 0:
      raise ValueError(f"SamplerConfig.eta: expected >= 0, found {self.eta}")


def make_process(config: schedules.DiffusionConfig | FlowConfig) -> SamplingProcess:
  """The sampling process of a process config: a DDIM / DDPM `Schedule` or a `FlowProcess`."""
  if isinstance(config, FlowConfig):
    return make_flow(config)
  if isinstance(config, schedules.DiffusionConfig):
    return schedules.make_schedule(config)
  raise TypeError(f"make_process: expected a DiffusionConfig or a FlowConfig, found {type(config).__name__}")


def make_timesteps(process: SamplingProcess, config: SamplerConfig) -> Timesteps:
  """The sampling grid of `process` under `config` (`process.timesteps`)."""
  return process.timesteps(config)


def _concat(a: Any, b: Any) -> Any:
  return jax.tree.map(lambda u, v: jnp.concatenate([u, v], axis=0), a, b)


def guided_denoise(
  denoise: Denoiser,
  params: Any,
  x_t: jax.Array,
  t: jax.Array,
  cond: Any,
  uncond: Any,
  guidance_scale: float | jax.Array,
  rng: jax.Array | None = None,
) -> jax.Array:
  """Classifier-free guidance: out_u + w (out_c - out_u), both branches in ONE batched call.

  Args:
    x_t: [B, ...]; t: int32 [B] or scalar; cond/uncond: pytrees with leading dim B.
    guidance_scale: w. With `uncond=None` the conditional output is returned (no guidance).
    rng: None calls `denoise(params, x, t, cond)` (deterministic); a key calls it with `rng=rng` (the
      denoiser's dropout on, masks drawn over the batched [2B, ...] call, as the official one-call CFG).
  """
  kw = {} if rng is None else {"rng": rng}
  if uncond is None:
    return denoise(params, x_t, jnp.broadcast_to(t, x_t.shape[:1]), cond, **kw)
  b = x_t.shape[0]
  t = jnp.broadcast_to(t, (b,))
  out = denoise(params, jnp.concatenate([x_t, x_t]), jnp.concatenate([t, t]), _concat(uncond, cond), **kw)
  out_u, out_c = out[:b], out[b:]
  return out_u + guidance_scale * (out_c - out_u)


def denoise_step(
  denoise: Denoiser,
  params: Any,
  process: SamplingProcess,
  x_t: jax.Array,
  t: jax.Array,
  prev_t: jax.Array,
  cond: Any,
  uncond: Any,
  guidance_scale: float | jax.Array,
  eta: float = 0.0,
  noise: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """One guided step of `process`: x_t -> (x_prev [B, ...], x0_hat [B, ...]); t, prev_t in the process's time."""
  out = guided_denoise(denoise, params, x_t, process.model_time(t), cond, uncond, guidance_scale)
  return process.step(out, x_t, t, prev_t, eta=eta, noise=noise)


class SampleOutput(NamedTuple):
  """x0: the final sample [B, ...]; trajectory: x_{t_i} fed to each step [T, B, ...] (or None);
  x0_hats: each step's one-step clean estimate [T, B, ...] (or None)."""

  x0: jax.Array
  trajectory: jax.Array | None
  x0_hats: jax.Array | None


def step_noise(rng: jax.Array | None, index: jax.Array, shape, dtype) -> jax.Array:
  """Per-step sampling noise (DDIM eta > 0, DDPM, flow SDE), derived by fold_in so any step can be reproduced alone."""
  return jax.random.normal(jax.random.fold_in(rng, index), shape, dtype)


def sample(
  denoise: Denoiser,
  params: Any,
  process: SamplingProcess,
  timesteps: Timesteps,
  x_T: jax.Array,
  cond: Any,
  uncond: Any = None,
  guidance_scale: float | jax.Array = GUIDANCE_SCALE,
  eta: float = 0.0,
  rng: jax.Array | None = None,
  return_trajectory: bool = False,
  start_index: int = 0,
  stop_index: int | None = None,
) -> SampleOutput:
  """Runs guided steps `start_index..stop_index-1` of `process` as one `lax.scan`. Jit it from outside.

  Args:
    x_T: the input of step `start_index` [B, ...] (pure noise when start_index = 0).
    eta: 0 deterministic (DDIM, flow ODE); a stochastic step (eta > 0, or DDPM) needs `rng` (noise of step i is
      `normal(fold_in(rng, i))`).
    return_trajectory: also return every step's input x_{t_i} and x0_hat_i (memory grows with T).
  Returns:
    SampleOutput with the output of the last step run.
  """
  stop_index = timesteps.t.shape[0] if stop_index is None else stop_index
  idx = jnp.arange(start_index, stop_index)
  stochastic = process.needs_noise(eta)
  if stochastic and rng is None:
    raise ValueError(f"sample: a stochastic step ({process.kind}, eta={eta}) needs an `rng`")

  def body(x, i):
    noise = step_noise(rng, i, x.shape, x.dtype) if stochastic else None
    x_prev, x0_hat = denoise_step(
      denoise, params, process, x, timesteps.t[i], timesteps.prev_t[i], cond, uncond, guidance_scale, eta, noise
    )
    return x_prev, ((x, x0_hat) if return_trajectory else None)

  x0, ys = jax.lax.scan(body, x_T, idx)
  if return_trajectory:
    return SampleOutput(x0, ys[0], ys[1])
  return SampleOutput(x0, None, None)
