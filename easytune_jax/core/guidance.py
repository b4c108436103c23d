"""Reward-guided sampling: training-free alignment at inference (ReAlign, Weng et al., arXiv 2511.19217).

At chosen steps of any sampling process (core/sampling_process.py: DDIM / DDPM, flow matching) the gradient of a
differentiable reward with respect to the current sample is added to it; no parameter changes. One `lax.scan`, as
`sampling.sample`; the process's `step` stays the one place of the update. With `GuidanceConfig.scale == 0` (the
class default) `guided_sample` IS `sampling.sample` (same call, same bits).

The guidance term of step i (`guidance_term`), for a sample x at that step:

  R(x)  = reduce_b score(input(x), time)            reduce: mean over the batch ('mean', ReAlign's) or 'sum'
  g     = clip(normalize(dR/dx))                    per-sample L2 norm over the non-batch dims
  x    <- x + w_i * g                               w_i = scale * schedule(i), only at the chosen steps

`score(z, t, key) -> [B]` is the caller's closure (decode a model-space sample, then the reward: `MotionTask.score`);
`input(x)` is x itself ('sample') or its one-step clean estimate through the denoiser ('clean_estimate', the
gradient flows through the network). `time` is the step-aware timestep the reward sees ('step': the step's input
timestep t_i, ReAlign's; 'sample': the guided sample's own time; 'none': None, clean scoring).

The ReAlign rule (the class default with scale REALIGN_SCALE; code wengwanjiang/ReAlign at 158a99b,
`mld/models/modeltype/mld.py` `MLD._diffusion_reverse` and `ReAlignModule/models/spm.py` `SPM.GradGuidance_MLD`):
after every DDIM step the new latent x_{t-1} is decoded by the VAE, scored by the step-aware reward with the
timestep t of the step that produced it, and moved by lambda_t2m * grad_x mean_b cos(text, motion); one gradient
step per denoising step, constant lambda (100 in its run.sh), no normalisation or clipping.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from easytune_jax.core import sampling
from easytune_jax.core.sampling_process import SamplingProcess, Timesteps

# ReAlign's lambda_t2m (run.sh of wengwanjiang/ReAlign: `--lambda_t2m 100`): the paper setting's scale.
REALIGN_SCALE = 100.0

SCHEDULES = ("constant", "increasing", "decreasing")
POSITIONS = ("after_step", "before_step")
REWARD_INPUTS = ("sample", "clean_estimate")
REWARD_TIMESTEPS = ("step", "sample", "none")
REDUCTIONS = ("mean", "sum")
NORMALIZATIONS = ("none", "unit")
GUIDE_STREAM = 0x67756964  # "guid": the reward's keys during guidance, apart from the sampler's noise keys

Score = Callable[[jax.Array, jax.Array | None, jax.Array | None], jax.Array]


@dataclasses.dataclass(frozen=True)
class GuidanceConfig:
  """Reward guidance of a sampler. The class default is off (scale 0); its other fields are ReAlign's rule.

  Attributes:
    scale: lambda, the step size of the guidance term (0: off, the plain sampler).
    schedule: the scale over steps i = 0..T-1: 'constant' (ReAlign), 'increasing' (scale (i+1)/T: strongest at
      the clean end), 'decreasing' (scale (T-i)/T: strongest at the noisy end).
    start_step, stop_step, every: guided steps are range(start_step, stop_step, every) of 0..T-1 (stop_step None:
      T; negative values count from the end, as Python slices). ReAlign guides every step.
    position: 'after_step' guides the step's output x_{prev} (ReAlign); 'before_step' guides the step's input x_t,
      then the step runs from the guided x_t.
    reward_input: 'sample' scores the guided sample itself (decoded; ReAlign); 'clean_estimate' scores its one-step
      clean estimate (one more guided denoiser call, differentiated through; the final sample is its own).
    reward_timestep: the timestep a step-aware reward sees: 'step' (the step's input timestep t_i, also after the
      step: ReAlign), 'sample' (the guided sample's own time), 'none' (None: clean scoring).
    reduction: the gradient of the batch 'mean' of the rewards (ReAlign; each sample's term is its own gradient
      / B) or of their 'sum' (each sample's own gradient).
    normalize: 'none' (ReAlign) or 'unit' (each sample's gradient divided by its L2 norm).
    clip: > 0 caps each sample's (normalised) gradient at this L2 norm before the scale; 0: no clipping.
    grad_steps: gradient steps per guided denoising step (ReAlign: 1).
  """

  scale: float = 0.0
  schedule: str = "constant"
  start_step: int = 0
  stop_step: int | None = None
  every: int = 1
  position: str = "after_step"
  reward_input: str = "sample"
  reward_timestep: str = "step"
  reduction: str = "mean"
  normalize: str = "none"
  clip: float = 0.0
  grad_steps: int = 1

  def __post_init__(self):
    name = "GuidanceConfig"
    choices = (
      ("schedule", SCHEDULES),
      ("position", POSITIONS),
      ("reward_input", REWARD_INPUTS),
      ("reward_timestep", REWARD_TIMESTEPS),
      ("reduction", REDUCTIONS),
      ("normalize", NORMALIZATIONS),
    )
    for field, allowed in choices:
      if getattr(self, field) not in allowed:
        raise ValueError(f"{name}.{field}: expected one of {allowed}, found {getattr(self, field)!r}")
    checks = (
      ("scale", np.isfinite(self.scale) and self.scale >= 0, ">= 0 (0: off)"),
      ("every", self.every >= 1, ">= 1"),
      ("clip", np.isfinite(self.clip) and self.clip >= 0, ">= 0 (0: no clipping)"),
      ("grad_steps", self.grad_steps >= 1, ">= 1"),
    )
    for field, ok, expected in checks:
      if not ok:
        raise ValueError(f"{name}.{field}: expected {expected}, found {getattr(self, field)}")

  @property
  def enabled(self) -> bool:
    return self.scale > 0

  def guided_steps(self, num_steps: int) -> np.ndarray:
    """bool [T]: which of the T steps are guided (start_step / stop_step / every)."""
    active = np.zeros(num_steps, bool)
    active[slice(self.start_step, self.stop_step, self.every)] = True
    return active

  def weights(self, num_steps: int) -> np.ndarray:
    """float32 [T]: w_i = scale * schedule(i) at the guided steps, 0 elsewhere."""
    i = np.arange(num_steps, dtype=np.float64)
    profile = {
      "constant": np.ones(num_steps),
      "increasing": (i + 1) / num_steps,
      "decreasing": (num_steps - i) / num_steps,
    }[self.schedule]
    return (self.scale * profile * self.guided_steps(num_steps)).astype(np.float32)

  def describe(self) -> str:
    if not self.enabled:
      return "no reward guidance"
    return (
      f"reward guidance: scale {self.scale:g} ({self.schedule}), steps {self.start_step}:"
      f"{'' if self.stop_step is None else self.stop_step}:{self.every}, {self.position}, scoring the "
      f"{self.reward_input} at timestep '{self.reward_timestep}', gradient of the batch {self.reduction}, "
      f"normalize {self.normalize}, clip {self.clip:g}, {self.grad_steps} gradient step(s) per step"
    )


def _per_sample_norm(g: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.sum(jnp.square(g), axis=tuple(range(1, g.ndim)), keepdims=True))


def transform_gradient(g: jax.Array, config: GuidanceConfig) -> jax.Array:
  """The configured normalisation and clipping of the reward gradients g [B, ...] (each sample on its own)."""
  if config.normalize == "unit":
    g = g / jnp.maximum(_per_sample_norm(g), 1e-12)
  if config.clip > 0:
    g = g * jnp.minimum(1.0, config.clip / jnp.maximum(_per_sample_norm(g), 1e-12))
  return g


def guidance_term(
  score: Score,
  x: jax.Array,
  reward_t: jax.Array | None,
  config: GuidanceConfig,
  key: jax.Array | None = None,
  clean_estimate: Callable[[jax.Array], jax.Array] | None = None,
) -> jax.Array:
  """The unscaled guidance term g [B, ...] of a sample x [B, ...]: `transform_gradient` of d reduce(score)/dx.

  `reward_t` (int32 [B] or None) is what the reward sees as timestep; `clean_estimate(x)` (reward_input
  'clean_estimate') maps x to the input the reward scores, differentiably."""

  def objective(x):
    z = x if clean_estimate is None else clean_estimate(x)
    r = score(z, reward_t, key)
    return jnp.mean(r) if config.reduction == "mean" else jnp.sum(r)

  return transform_gradient(jax.grad(objective)(x), config)


def guided_sample(
  denoise: sampling.Denoiser,
  params: Any,
  process: SamplingProcess,
  timesteps: Timesteps,
  x_T: jax.Array,
  cond: Any,
  uncond: Any = None,
  guidance_scale: float | jax.Array = sampling.GUIDANCE_SCALE,
  eta: float = 0.0,
  rng: jax.Array | None = None,
  *,
  score: Score | None = None,
  guidance: GuidanceConfig = GuidanceConfig(),
  weights: jax.Array | None = None,
  reward_rng: jax.Array | None = None,
  return_trajectory: bool = False,
) -> sampling.SampleOutput:
  """`sampling.sample` with reward guidance (module docstring) as one `lax.scan` over the whole grid (no
  start_index / stop_index). Jit it from outside.

  Args (beyond `sampling.sample`'s):
    score: `score(z [B, ...] model space, t int32 [B] | None, key | None) -> [B]`, differentiable in z (decode +
      reward); required when guidance is on.
    guidance: the rule; `scale == 0` returns `sampling.sample(...)` itself.
    weights: float [T] step weights w_i (default `guidance.weights(T)`; pass them as an argument to change the
      scale without recompiling). Steps outside `guidance.guided_steps(T)` are never guided.
    reward_rng: key of a stochastic reward: step i's j-th gradient step draws from
      fold_in(fold_in(fold_in(reward_rng, GUIDE_STREAM), i), j); None passes key=None to `score`.
  Returns:
    SampleOutput (trajectory: each step's input as guided, x0_hats: each step's own clean estimate).
  """
  if not guidance.enabled:
    return sampling.sample(
      denoise, params, process, timesteps, x_T, cond, uncond, guidance_scale, eta, rng, return_trajectory
    )
  if score is None:
    raise ValueError("guided_sample: guidance is on (GuidanceConfig.scale > 0): pass score=")
  num = timesteps.t.shape[0]
  active = guidance.guided_steps(num)
  w_all = jnp.asarray(guidance.weights(num) if weights is None else weights, x_T.dtype)
  if w_all.shape != (num,):
    raise ValueError(f"guided_sample: weights expected shape ({num},) (one per step), found {w_all.shape}")
  stochastic = process.needs_noise(eta)
  if stochastic and rng is None:
    raise ValueError(f"guided_sample: a stochastic step ({process.kind}, eta={eta}) needs an `rng`")
  batch = x_T.shape[0]

  def clean_estimate_at(time):
    def estimate(x):
      out = sampling.guided_denoise(denoise, params, x, process.model_time(time), cond, uncond, guidance_scale)
      return process.predict_x0_eps(out, x, time)[0]

    return estimate

  def guide(x, i, w, time, step_t, final):
    if guidance.reward_timestep == "none":
      reward_t = None
    else:
      reward_t = jnp.broadcast_to(process.reward_time(step_t if guidance.reward_timestep == "step" else time), (batch,))
    estimate = None
    if guidance.reward_input == "clean_estimate":
      estimate = clean_estimate_at(time)
      if final is not None:  # the grid's last output is clean already: it is its own estimate
        estimate = lambda x, _e=estimate: jax.lax.cond(final, lambda z: z, _e, x)  # noqa: E731
    for j in range(guidance.grad_steps):
      key = None if reward_rng is None else jax.random.fold_in(jax.random.fold_in(reward_rng, i), j)
      x = x + w * guidance_term(score, x, reward_t, guidance, key, estimate)
    return x

  if reward_rng is not None:
    reward_rng = jax.random.fold_in(reward_rng, GUIDE_STREAM)

  def body(x, inp):
    i, on, w = inp
    t, prev_t = timesteps.t[i], timesteps.prev_t[i]
    if guidance.position == "before_step":
      x = jax.lax.cond(on, lambda z: guide(z, i, w, t, t, None), lambda z: z, x)
    noise = sampling.step_noise(rng, i, x.shape, x.dtype) if stochastic else None
    x_prev, x0_hat = sampling.denoise_step(
      denoise, params, process, x, t, prev_t, cond, uncond, guidance_scale, eta, noise
    )
    if guidance.position == "after_step":
      x_prev = jax.lax.cond(on, lambda z: guide(z, i, w, prev_t, t, i == num - 1), lambda z: z, x_prev)
    return x_prev, ((x, x0_hat) if return_trajectory else None)

  x0, ys = jax.lax.scan(body, x_T, (jnp.arange(num), jnp.asarray(active), w_all))
  if return_trajectory:
    return sampling.SampleOutput(x0, ys[0], ys[1])
  return sampling.SampleOutput(x0, None, None)
