"""Noise schedules and DDIM/DDPM maths with diffusers' semantics, as pure jit-able functions; `Schedule` is the
diffusion implementation of the sampling-process protocol (core/sampling_process.py).

Conventions follow diffusers' `DDPMScheduler` / `DDIMScheduler` exactly (the schedulers MLD and EasyTune
use): `alphas_cumprod = cumprod(1 - betas)`, DDIM inference timesteps with `timestep_spacing` and
`steps_offset`, `prev_timestep = t - num_train_timesteps // num_inference_steps`, and
`final_alpha_cumprod = 1 if set_alpha_to_one else alphas_cumprod[0]`.

References:
  Ho et al., Denoising Diffusion Probabilistic Models, 2020 (arXiv 2006.11239).
  Song et al., Denoising Diffusion Implicit Models, 2021 (arXiv 2010.02502), eq. 12.
  Salimans & Ho, Progressive Distillation, 2022 (v-prediction, arXiv 2202.00512).
"""

from __future__ import annotations

import dataclasses
import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from easytune_jax.core.sampling_process import Timesteps

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
SAMPLERS = ("ddim", "ddpm")


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
  """Training noise schedule and its sampling rule. Defaults are MLD's (diffusers DDIMScheduler settings).

  sampler: 'ddim' (DDIM eq. 12; `SamplerConfig.eta` sets its noise) or 'ddpm' (DDPM's ancestral posterior step as
  diffusers' DDPMScheduler, variance 'fixed_small', always stochastic; eta unused)."""

  num_train_timesteps: int = 1000
  beta_schedule: str = "scaled_linear"
  beta_start: float = 0.00085
  beta_end: float = 0.012
  prediction_type: str = "epsilon"
  set_alpha_to_one: bool = False
  clip_sample: bool = False
  clip_sample_range: float = 1.0
  sampler: str = "ddim"

  def __post_init__(self):
    if self.sampler not in SAMPLERS:
      raise ValueError(f"DiffusionConfig.sampler: expected one of {SAMPLERS}, found {self.sampler!r}")
    if self.beta_schedule not in BETA_SCHEDULES:
      raise ValueError(f"DiffusionConfig.beta_schedule: expected one of {BETA_SCHEDULES}, found {self.beta_schedule!r}")
    if self.prediction_type not in PREDICTION_TYPES:
      raise ValueError(
        f"DiffusionConfig.prediction_type: expected one of {PREDICTION_TYPES}, found {self.prediction_type!r}"
      )
    if self.num_train_timesteps < 1:
      raise ValueError(f"DiffusionConfig.num_train_timesteps: expected >= 1, found {self.num_train_timesteps}")


@flax.struct.dataclass
class Schedule:
  """A noise schedule as a pytree, and the DDIM / DDPM sampling process (the protocol of
  core/sampling_process.py). Arrays are float32 (or float64 under x64); the rest is static."""

  betas: jax.Array  # [N]
  alphas_cumprod: jax.Array  # [N]
  final_alpha_cumprod: jax.Array  # [] value of abar used when prev_timestep < 0
  num_train_timesteps: int = flax.struct.field(pytree_node=False, default=1000)
  prediction_type: str = flax.struct.field(pytree_node=False, default="epsilon")
  clip_sample: bool = flax.struct.field(pytree_node=False, default=False)
  clip_sample_range: float = flax.struct.field(pytree_node=False, default=1.0)
  sampler: str = flax.struct.field(pytree_node=False, default="ddim")

  # ------------------------------------------------------------------ the sampling-process protocol
  @property
  def kind(self) -> str:
    return self.sampler

  def timesteps(self, config) -> Timesteps:
    """The inference timesteps of `config` (a SamplerConfig: num_steps, timestep_spacing, steps_offset)."""
    ts, prev = ddim_timesteps(self.num_train_timesteps, config.num_steps, config.timestep_spacing, config.steps_offset)
    return Timesteps(jnp.asarray(ts), jnp.asarray(prev))

  def model_time(self, t: jax.Array) -> jax.Array:
    return t

  def reward_time(self, t: jax.Array) -> jax.Array:
    return jnp.maximum(jnp.asarray(t, jnp.int32), 0)

  def sample_train_time(self, rng: jax.Array, batch_size: int) -> jax.Array:
    return sample_train_timesteps(rng, batch_size, self)

  def add_noise(self, x0, noise, t):
    return add_noise(self, x0, noise, t)

  def training_target(self, x0, noise, t):
    return training_target(self, x0, noise, t)

  def predict_x0_eps(self, model_output, x_t, t):
    return predict_x0_eps(self, model_output, x_t, t)

  def needs_noise(self, eta: float) -> bool:
    return self.sampler == "ddpm" or eta > 0

  def step(self, model_output, x_t, t, prev_t, eta: float = 0.0, noise=None):
    """One sampling step (DDIM with `eta`, or DDPM's ancestral step) -> (x_prev, x0_hat)."""
    if self.sampler == "ddpm":
      return ddpm_step(self, model_output, x_t, t, prev_t, noise)
    return ddim_step(self, model_output, x_t, t, prev_t, eta=eta, noise=noise)


def make_betas(schedule: str, num_train_timesteps: int, beta_start: float, beta_end: float) -> np.ndarray:
  """Betas [N] in float64 numpy, exactly as diffusers builds them."""
  n = num_train_timesteps
  if schedule == "linear":
    return np.linspace(beta_start, beta_end, n, dtype=np.float64)
  if schedule == "scaled_linear":
    return np.linspace(beta_start**0.5, beta_end**0.5, n, dtype=np.float64) ** 2
  if schedule == "squaredcos_cap_v2":
    abar = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.array([min(1 - abar((i + 1) / n) / abar(i / n), 0.999) for i in range(n)], np.float64)
  raise ValueError(f"beta_schedule: expected one of {BETA_SCHEDULES}, found {schedule!r}")


def make_schedule(config: DiffusionConfig = DiffusionConfig(), dtype=None) -> Schedule:
  """Builds the schedule pytree; arrays in `dtype` (default: jnp float, i.e. float32 unless x64)."""
  betas = make_betas(config.beta_schedule, config.num_train_timesteps, config.beta_start, config.beta_end)
  abar = np.cumprod(1.0 - betas)
  final = 1.0 if config.set_alpha_to_one else abar[0]
  dtype = dtype or jnp.asarray(0.0).dtype
  return Schedule(
    betas=jnp.asarray(betas, dtype),
    alphas_cumprod=jnp.asarray(abar, dtype),
    final_alpha_cumprod=jnp.asarray(final, dtype),
    num_train_timesteps=config.num_train_timesteps,
    prediction_type=config.prediction_type,
    clip_sample=config.clip_sample,
    clip_sample_range=config.clip_sample_range,
    sampler=config.sampler,
  )


def ddim_timesteps(
  num_train_timesteps: int, num_inference_steps: int, spacing: str = "leading", steps_offset: int = 1
) -> tuple[np.ndarray, np.ndarray]:
  """DDIM inference timesteps t_1 > ... > t_T and their predecessors, as diffusers' `set_timesteps`.

  Returns:
    (timesteps, prev_timesteps): int32 numpy arrays [T]. `prev_timesteps[i] = timesteps[i] - N // T`
    (diffusers' rule for every spacing); a negative value means "use final_alpha_cumprod".
  """
  n, T = num_train_timesteps, num_inference_steps
  if not 1 <= T <= n:
    raise ValueError(f"num_inference_steps: expected 1..{n} (num_train_timesteps), found {T}")
  if spacing == "leading":
    ratio = n // T
    ts = (np.arange(0, T) * ratio).round()[::-1].astype(np.int64) + steps_offset
  elif spacing == "trailing":
    ratio = n / T
    ts = np.round(np.arange(n, 0, -ratio)).astype(np.int64) - 1
  elif spacing == "linspace":
    ts = np.linspace(0, n - 1, T).round()[::-1].astype(np.int64)
  else:
    raise ValueError(f"timestep_spacing: expected one of {TIMESTEP_SPACINGS}, found {spacing!r}")
  if ts.max() >= n:
    raise ValueError(f"steps_offset={steps_offset} pushes timestep {ts.max()} past num_train_timesteps={n}")
  prev = ts - n // T
  return ts.astype(np.int32), prev.astype(np.int32)


def _bcast(v: jax.Array, x: jax.Array) -> jax.Array:
  """Reshapes per-example values [B] (or a scalar) to broadcast against x [B, ...]."""
  v = jnp.asarray(v, x.dtype)
  return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def alpha_bar(schedule: Schedule, t: jax.Array) -> jax.Array:
  """abar_t for integer timesteps t (any shape); t < 0 gives final_alpha_cumprod."""
  t = jnp.asarray(t)
  return jnp.where(t >= 0, schedule.alphas_cumprod[jnp.maximum(t, 0)], schedule.final_alpha_cumprod)


def add_noise(schedule: Schedule, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
  """Forward process q(x_t | x0): sqrt(abar_t) x0 + sqrt(1 - abar_t) noise. x0, noise [B, ...]; t [B]."""
  a = _bcast(alpha_bar(schedule, t), x0)
  return jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * noise


def velocity(schedule: Schedule, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
  """v = sqrt(abar_t) noise - sqrt(1 - abar_t) x0 (diffusers' `get_velocity`)."""
  a = _bcast(alpha_bar(schedule, t), x0)
  return jnp.sqrt(a) * noise - jnp.sqrt(1.0 - a) * x0


def training_target(schedule: Schedule, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
  """What the denoiser regresses during DDPM training, by the schedule's prediction_type."""
  if schedule.prediction_type == "epsilon":
    return noise
  if schedule.prediction_type == "sample":
    return x0
  return velocity(schedule, x0, noise, t)


def predict_x0_eps(
  schedule: Schedule, model_output: jax.Array, x_t: jax.Array, t: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Converts a model output to (x0_hat, eps_hat) for the schedule's prediction_type.

  epsilon: x0 = (x_t - sqrt(1-a) eps) / sqrt(a);  sample: eps = (x_t - sqrt(a) x0) / sqrt(1-a);
  v_prediction: x0 = sqrt(a) x_t - sqrt(1-a) v,  eps = sqrt(a) v + sqrt(1-a) x_t.
  If `clip_sample`, x0 is clipped to +-clip_sample_range (eps is not recomputed, as diffusers).
  """
  a = _bcast(alpha_bar(schedule, t), x_t)
  sa, sb = jnp.sqrt(a), jnp.sqrt(1.0 - a)
  if schedule.prediction_type == "epsilon":
    eps = model_output
    x0 = (x_t - sb * eps) / sa
  elif schedule.prediction_type == "sample":
    x0 = model_output
    eps = (x_t - sa * x0) / sb
  else:
    x0 = sa * x_t - sb * model_output
    eps = sa * model_output + sb * x_t
  if schedule.clip_sample:
    x0 = jnp.clip(x0, -schedule.clip_sample_range, schedule.clip_sample_range)
  return x0, eps


def ddim_step(
  schedule: Schedule,
  model_output: jax.Array,
  x_t: jax.Array,
  t: jax.Array,
  prev_t: jax.Array,
  eta: float = 0.0,
  noise: jax.Array | None = None,
  use_clipped_model_output: bool = False,
) -> tuple[jax.Array, jax.Array]:
  """One DDIM update x_t -> x_{prev_t} (DDIM eq. 12), returning (x_prev, x0_hat).

  sigma_t = eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev));
  x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma_t^2) eps + sigma_t * noise.

  Args:
    model_output: denoiser output [B, ...] (meaning from `schedule.prediction_type`).
    x_t: current sample [B, ...]. t, prev_t: int timesteps, scalar or [B].
    eta: 0 is deterministic DDIM; eta > 0 needs `noise` of x_t's shape.
  """
  x0, eps = predict_x0_eps(schedule, model_output, x_t, t)
  a_t = _bcast(alpha_bar(schedule, t), x_t)
  a_prev = _bcast(alpha_bar(schedule, prev_t), x_t)
  variance = (1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)
  std = eta * jnp.sqrt(variance)
  if use_clipped_model_output:
    eps = (x_t - jnp.sqrt(a_t) * x0) / jnp.sqrt(1.0 - a_t)
  x_prev = jnp.sqrt(a_prev) * x0 + jnp.sqrt(jnp.maximum(1.0 - a_prev - std**2, 0.0)) * eps
  if isinstance(eta, (int, float)) and eta == 0:
    return x_prev, x0
  if noise is None:
    raise ValueError("ddim_step: eta > 0 needs a `noise` array of x_t's shape")
  return x_prev + std * noise, x0


def sample_train_timesteps(
  rng: jax.Array, batch_size: int, schedule: Schedule, max_timestep: int | None = None
) -> jax.Array:
  """DDPM training timesteps t ~ U{0, ..., N-1} (or U{0, ..., max_timestep-1}), int32 [B]."""
  hi = schedule.num_train_timesteps if max_timestep is None else max_timestep
  return jax.random.randint(rng, (batch_size,), 0, hi, dtype=jnp.int32)


def ddpm_step(
  schedule: Schedule, model_output: jax.Array, x_t: jax.Array, t: jax.Array, prev_t: jax.Array, noise: jax.Array | None
) -> tuple[jax.Array, jax.Array]:
  """DDPM's ancestral step x_t -> x_{prev_t} as diffusers' `DDPMScheduler.step` (variance 'fixed_small'; abar of
  prev_t < 0 is 1): x_prev = c0 x0 + ct x_t + sqrt(var) noise with c0 = sqrt(a_prev) beta / (1 - a_t),
  ct = sqrt(a_t / a_prev) (1 - a_prev) / (1 - a_t), beta = 1 - a_t / a_prev, var = (1 - a_prev) / (1 - a_t) beta
  (clamped at 1e-20); no noise when t = 0. Returns (x_prev, x0_hat)."""
  if noise is None:
    raise ValueError("ddpm_step: the ancestral step needs a `noise` array of x_t's shape")
  x0, _ = predict_x0_eps(schedule, model_output, x_t, t)
  t = jnp.asarray(t)
  prev_t = jnp.asarray(prev_t)
  a_t = _bcast(schedule.alphas_cumprod[jnp.maximum(t, 0)], x_t)
  a_prev = _bcast(jnp.where(prev_t >= 0, schedule.alphas_cumprod[jnp.maximum(prev_t, 0)], 1.0), x_t)
  cur_alpha = a_t / a_prev
  cur_beta = 1.0 - cur_alpha
  mean = (jnp.sqrt(a_prev) * cur_beta / (1.0 - a_t)) * x0 + (jnp.sqrt(cur_alpha) * (1.0 - a_prev) / (1.0 - a_t)) * x_t
  var = jnp.maximum((1.0 - a_prev) / (1.0 - a_t) * cur_beta, 1e-20)
  add = _bcast(t > 0, x_t)
  return mean + jnp.where(add, jnp.sqrt(var) * noise, 0.0), x0
