"""The sampling-process protocol: what a generator's noise process must say so that one sampler, one trainer and
one fine-tuning executor run it.

A process is a static pytree (closed over by jitted code) with these methods; implementations:

  `schedules.Schedule`  DDPM training schedule; sampled by DDIM (eta; epsilon / sample / v prediction) or by DDPM's
                        ancestral rule (`DiffusionConfig.sampler`); integer timesteps.
  `flow.FlowProcess`    the linear interpolant (rectified flow), velocity prediction, continuous time; Euler ODE
                        sampling (eta = 0) or its ancestral SDE sampler with the same marginals (eta > 0).

Sampling grid and step:
  timesteps(sampler_config) -> Timesteps(t [T], prev_t [T]): step i maps a sample at time t[i] to time prev_t[i]
      (the process's own time: int32 DDPM timesteps, float flow times; t[0] is pure noise).
  step(model_output, x_t, t, prev_t, eta=0., noise=None) -> (x_next, x0_hat): one update and its one-step clean
      estimate; `needs_noise(eta)` says whether `noise` (x_t's shape, N(0, I)) must be given.
  model_time(t): the value the network is conditioned on (DDPM: t itself; flow: time_scale * s).
  reward_time(t): int32 timestep a step-aware reward sees for a sample at time t (a final sample has time 0 -> 0).
Training:
  sample_train_time(rng, B) -> t [B];  add_noise(x0, noise, t) -> x_t;  training_target(x0, noise, t) -> target.
  `denoising_loss` below is the loss of every process.
The prior is N(0, I) for every process (`prior`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp


class Timesteps(NamedTuple):
  """A sampling grid: t [T] (each step's input time, noise first) and prev_t [T] (its output time): int32 DDPM
  timesteps for diffusion (prev_t < 0: final_alpha_cumprod), float times in [0, 1] for flow matching."""

  t: jax.Array
  prev_t: jax.Array


class SamplingProcess(Protocol):
  """Structural type of a process (see the module docstring); `kind` names it ('ddim', 'ddpm', 'flow')."""

  kind: str

  def timesteps(self, config: Any) -> Timesteps: ...

  def model_time(self, t: jax.Array) -> jax.Array: ...

  def reward_time(self, t: jax.Array) -> jax.Array: ...

  def sample_train_time(self, rng: jax.Array, batch_size: int) -> jax.Array: ...

  def add_noise(self, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array: ...

  def training_target(self, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array: ...

  def predict_x0_eps(self, model_output: jax.Array, x_t: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]: ...

  def needs_noise(self, eta: float) -> bool: ...

  def step(
    self, model_output: jax.Array, x_t: jax.Array, t: jax.Array, prev_t: jax.Array, eta: float = 0.0, noise=None
  ) -> tuple[jax.Array, jax.Array]: ...


def prior(rng: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
  """x_T ~ N(0, I) of `shape` (every process starts from standard normal noise)."""
  return jax.random.normal(rng, shape, dtype)


def denoising_loss(
  process: SamplingProcess,
  predict: Callable[[jax.Array, jax.Array], jax.Array],
  x0: jax.Array,
  t_key: jax.Array,
  noise_key: jax.Array,
  mask: jax.Array | None = None,
) -> jax.Array:
  """A process's training loss: mean over (masked) elements of (predict(x_t, model_time(t)) - target)^2 with
  t = process.sample_train_time(t_key, B), noise ~ N(0, I) from `noise_key`, x_t = add_noise(x0, noise, t) and the
  process's target (DDPM: by prediction_type; flow: the velocity). x0 [B, ...]; `mask` bool/float [B, L] (leading
  dims of x0; positions beyond a sequence's length do not count). The base trainer's loss and the fine-tuning
  'diffusion' regulariser."""
  t = process.sample_train_time(t_key, x0.shape[0])
  noise = jax.random.normal(noise_key, x0.shape, x0.dtype)
  x_t = process.add_noise(x0, noise, t)
  target = process.training_target(x0, noise, t)
  err = jnp.square(predict(x_t, process.model_time(t)) - target)
  if mask is None:
    return jnp.mean(err)
  w = jnp.asarray(mask, err.dtype).reshape(mask.shape + (1,) * (err.ndim - mask.ndim))
  w = jnp.broadcast_to(w, err.shape)
  return jnp.sum(err * w) / jnp.maximum(jnp.sum(w), 1.0)
