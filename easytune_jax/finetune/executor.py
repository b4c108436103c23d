"""The one executor that runs every row of the method table on every sampling process: the static pieces of a run
(`StepContext`: guided denoiser output, the process's step, reward of a step or a final sample, KL to the base),
the no-gradient prefix of a trajectory (`nograd_prefix`) and its differentiated span (`run_span`).

Notation: the process's grid t_1 > ... > t_T (DDIM timesteps, or flow times), step i maps x_{t_i} -> x_{t_{i+1}}
and gives the one-step clean estimate x0_hat_i (DDIM: (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t); flow:
x_t - t v); guidance out = out_u + w (out_c - out_u) on the model output (eps, sample, v or velocity).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from easytune_jax.core import sampling
from easytune_jax.core.sampling_process import SamplingProcess
from easytune_jax.finetune.apply_fns import (
  Decoder,
  Denoiser,
  Reward,
  TrajectoryKeys,
  dropout_key,
  reward_key,
  with_compute_dtype,
)
from easytune_jax.finetune.config import FinetuneConfig
from easytune_jax.finetune.methods import Choice, StepPolicy

sg = jax.lax.stop_gradient


def trajectory_keys(
  config: FinetuneConfig, rng: jax.Array, noise_rng: jax.Array | None, process: SamplingProcess
) -> TrajectoryKeys:
  """The trajectory's keys under `config`: `noise_rng` when the process's step is stochastic (eta > 0, DDPM), `rng` for the denoiser's dropout and for
  per-step reward noise; None for each part that is off."""
  return TrajectoryKeys(
    noise_rng if process.needs_noise(config.eta) else None,
    rng if config.denoiser_dropout else None,
    rng if config.reward_noise == "per_step" else None,
  )


class StepAux(NamedTuple):
  """One step's by-products, all without gradient. x_prev, x0_hat [B, ...]; reward [B]; kl []."""

  x_prev: jax.Array
  x0_hat: jax.Array
  reward: jax.Array
  kl: jax.Array


class TrajectoryAux(NamedTuple):
  """By-products of a trajectory loss (no gradient), with the random choices so tests can check them.

  x_scored: what the reward scored [B, ...] (x_0, or x0_hat at the loss step); reward [B]; kl [];
  grad_mask bool [T]: steps whose denoiser ran with gradient; loss_index int32 []: the step whose output
  is scored (T-1 for DRaFT/AlignProp, i_stop for ReFL, i_min for DRTune); offset int32 []: DRTune's s.
  """

  x_scored: jax.Array
  reward: jax.Array
  kl: jax.Array
  grad_mask: jax.Array
  loss_index: jax.Array
  offset: jax.Array


@dataclasses.dataclass(frozen=True)
class StepContext:
  """The static pieces every builder closes over."""

  denoise: Denoiser
  reward: Reward
  decode: Decoder | None
  process: SamplingProcess
  timesteps: sampling.Timesteps
  guidance_scale: float
  eta: float
  reward_input: str = "x0_hat"
  reward_timestep: str | None = None
  reward_scale: float = 1.0
  kl_weight: float = 0.0

  @property
  def T(self) -> int:
    return int(self.timesteps.t.shape[0])

  def out(self, params, x_in, i, cond, uncond, dropout_rng=None):
    """Guided denoiser output at step i for input x_in [B, ...]; with the trajectory's `dropout_rng`, the
    denoiser's dropout is on with the step's key `dropout_key(dropout_rng, i)`."""
    key = None if dropout_rng is None else dropout_key(dropout_rng, i)
    t = self.process.model_time(self.timesteps.t[i])
    return sampling.guided_denoise(self.denoise, params, x_in, t, cond, uncond, self.guidance_scale, rng=key)

  def step(self, out, x_t, i, rng):
    """The process's update of x_t at step i with a given model output -> (x_prev, x0_hat)."""
    noise = None
    if self.process.needs_noise(self.eta):
      if rng is None:
        raise ValueError(f"finetune: a stochastic step ({self.process.kind}, eta={self.eta}) needs an rng")
      noise = sampling.step_noise(rng, i, x_t.shape, x_t.dtype)
    return self.process.step(out, x_t, self.timesteps.t[i], self.timesteps.prev_t[i], eta=self.eta, noise=noise)

  def _call_reward(self, x, cond, t, i, reward_rng):
    if self.decode is not None:
      x = self.decode(x, cond)
    tt = None if self.reward_timestep is None else jnp.broadcast_to(self.process.reward_time(t), x.shape[:1])
    if reward_rng is None:
      r = self.reward(x, cond, tt)
    else:
      r = self.reward(x, cond, tt, rng=reward_key(reward_rng, i))
    if r.shape != x.shape[:1]:
      raise ValueError(f"finetune: reward must return shape [B]={x.shape[:1]}, found {r.shape}")
    return r

  def score_step(self, x0_hat, x_prev, i, cond, reward_rng=None):
    """Reward [B] of step i's output: x0_hat (time t_i) or x_prev (time prev_t_i), at the process's
    `reward_time` (DDIM: t_i, max(prev_t_i, 0)); with the trajectory's `reward_rng`, the reward draws with
    `reward_key(reward_rng, i)`."""
    if self.reward_input == "x0_hat":
      return self._call_reward(x0_hat, cond, self.timesteps.t[i], i, reward_rng)
    return self._call_reward(x_prev, cond, self.timesteps.prev_t[i], i, reward_rng)

  def score_final(self, x0, cond, reward_rng=None):
    """Reward [B] of a final sample x_0 (timestep 0; step T-1's output for the reward key)."""
    return self._call_reward(x0, cond, jnp.zeros((), self.timesteps.t.dtype), self.T - 1, reward_rng)

  def kl(self, out, base_params, x_in, i, cond, uncond, dropout_rng=None):
    """mean((out - out_base)^2) at the visited input; 0 when no KL regulariser is asked for."""
    if self.kl_weight == 0:
      return jnp.zeros((), out.dtype)
    if base_params is None:
      raise ValueError("finetune: regularizer='kl' needs `base_params` (the frozen base model's params)")
    base = sg(self.out(base_params, sg(x_in), i, cond, uncond, dropout_rng))
    return jnp.mean(jnp.square(out - base))

  def objective(self, reward, kl):
    return -self.reward_scale * jnp.mean(reward) + self.kl_weight * kl


def step_context(config: FinetuneConfig, denoise, reward, process, decode) -> StepContext:
  denoise, reward, decode = with_compute_dtype(denoise, reward, decode, config.compute_dtype)
  return StepContext(
    denoise=denoise,
    reward=reward,
    decode=decode,
    process=process,
    timesteps=sampling.make_timesteps(process, config.sampler_config()),
    guidance_scale=config.guidance_scale,
    eta=config.eta,
    reward_input=config.reward_input,
    reward_timestep=config.reward_timestep,
    reward_scale=config.reward_scale,
    kl_weight=config.reg_weight if config.regularizer == "kl" else 0.0,
  )


def run_span(
  ctx: StepContext,
  policy: StepPolicy,
  params,
  x,
  choice: Choice,
  length: int,
  remat: bool,
  keys: TrajectoryKeys,
  cond,
  uncond,
  base_params,
):
  """Runs the differentiated span: steps choice.start .. start+length-1 from x (held constant).

  Step i runs the denoiser at params with gradient (or, for masked rows off grad_mask, with its output
  stopped); its input is stopped for sg_every_input rows; the DDIM update always carries gradient through x.
  Returns (loss [], (TrajectoryAux, x_end, x0_at)): aux.x_scored is x_0 or the loss step's scored output;
  x_end the span's last output (x_prev of a one-step span); x0_at the loss step's x0_hat ('step' rows).
  """
  p0 = sg(params)
  track = policy.scores == "step"

  def step(x, i):
    """-> (x_prev, x0_hat, kl [], carries_grad bool [])."""
    x_in = sg(x) if policy.sg_every_input else x

    def with_grad(x_in):
      out = ctx.out(params, x_in, i, cond, uncond, keys.dropout)
      return out, ctx.kl(out, base_params, x_in, i, cond, uncond, keys.dropout)

    def without(x_in):
      out = sg(ctx.out(p0, sg(x_in), i, cond, uncond, keys.dropout))
      return out, jnp.zeros((), out.dtype)

    if policy.masked:
      out, kl = jax.lax.cond(choice.grad_mask[i], with_grad, without, x_in)
      g = choice.grad_mask[i]
    else:
      (out, kl), g = with_grad(x_in), jnp.asarray(True)
    x_prev, x0_hat = ctx.step(out, x, i, keys.noise)
    return x_prev, x0_hat, kl, g

  if length == 1:  # one step (EasyTune's per-step loss, ReFL): no scan
    x_end, x0_at, kl, _ = (jax.checkpoint(step, prevent_cse=False) if remat else step)(x, choice.start)
    xp_at = x_end
  else:

    def body(carry, j):
      x, x0_at, xp_at, kl_sum, n = carry
      i = choice.start + j
      if track:  # steps after the loss step are skipped; the loss step's outputs are kept
        skip = lambda x: (x, jnp.zeros_like(x), jnp.zeros((), x.dtype), jnp.asarray(False))
        x_prev, x0_hat, kl, g = jax.lax.cond(i <= choice.loss_index, lambda x: step(x, i), skip, x)
        at = i == choice.loss_index
        x0_at, xp_at = jnp.where(at, x0_hat, x0_at), jnp.where(at, x_prev, xp_at)
      else:
        x_prev, _, kl, g = step(x, i)
      return (x_prev, x0_at, xp_at, kl_sum + kl, n + g.astype(jnp.int32)), None

    if remat:  # checkpoint the whole step (conds included): only the carry is stored per step
      body = jax.checkpoint(body, prevent_cse=False)
    empty = jnp.zeros_like(x) if track else jnp.zeros((), x.dtype)
    init = (x, empty, empty, jnp.zeros((), x.dtype), jnp.zeros((), jnp.int32))
    (x_end, x0_at, xp_at, kl_sum, n), _ = jax.lax.scan(body, init, jnp.arange(length))
    kl = kl_sum / jnp.maximum(n, 1).astype(kl_sum.dtype)
  if track:
    r = ctx.score_step(x0_at, xp_at, choice.loss_index, cond, keys.reward)
    scored = x0_at if ctx.reward_input == "x0_hat" else xp_at
  else:
    r, scored = ctx.score_final(x_end, cond, keys.reward), x_end
  aux = TrajectoryAux(
    sg(scored), sg(r), sg(kl), choice.grad_mask, jnp.asarray(choice.loss_index, jnp.int32), choice.offset
  )
  return ctx.objective(r, kl), (aux, sg(x_end), sg(x0_at))


def nograd_prefix(ctx: StepContext, params, x_T, start, cond, uncond, keys: TrajectoryKeys):
  """x_{t_start} from x_T through steps 0..start-1 without gradient (start: int or int32 [])."""
  p0 = sg(params)
  rng = keys.noise
  step = lambda i, x: ctx.step(ctx.out(p0, x, i, cond, uncond, keys.dropout), x, i, rng)[0]
  if isinstance(start, int):
    if start == 0:
      return x_T
    if keys.dropout is not None:  # the sampler below is deterministic; the same steps with dropout on
      return jax.lax.scan(lambda x, i: (step(i, x), None), x_T, jnp.arange(start))[0]
    return sampling.sample(
      ctx.denoise,
      p0,
      ctx.process,
      ctx.timesteps,
      x_T,
      cond,
      uncond,
      ctx.guidance_scale,
      ctx.eta,
      rng,
      stop_index=start,
    ).x0
  return jax.lax.fori_loop(0, start, step, x_T)
