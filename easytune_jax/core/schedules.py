"""Noise schedules and DDIM/DDPM maths with diffusers' semantics, as pure jit-able functions.

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

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
  """Training noise schedule. Defaults are MLD's (diffusers DDIMScheduler settings)."""

  num_train_timesteps: int = 1000
  beta_schedule: str = "scaled_linear"
  beta_start: float = 0.00085
  beta_end: float = 0.012
  prediction_type: str = "epsilon"
  set_alpha_to_one: bool = False
  clip_sample: bool = False
  clip_sample_range: float = 1.0

  def __post_init__(self):
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
  """A noise schedule as a pytree. Arrays are float32 (or float64 under x64); the rest is static."""

  betas: jax.Array  # [N]
  alphas_cumprod: jax.Array  # [N]
  final_alpha_cumprod: jax.Array  # [] value of abar used when prev_timestep < 0
  num_train_timesteps: int = flax.struct.field(pytree_node=False, default=1000)
  prediction_type: str = flax.struct.field(pytree_node=False, default="epsilon")
  clip_sample: bool = flax.struct.field(pytree_node=False, default=False)
  clip_sample_range: float = flax.struct.field(pytree_node=False, default=1.0)


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


def denoising_loss(
  schedule: Schedule,
  predict,
  x0: jax.Array,
  t_key: jax.Array,
  noise_key: jax.Array,
  mask: jax.Array | None = None,
) -> jax.Array:
  """The DDPM training loss: mean over (masked) elements of (predict(x_t, t) - target)^2 with
  t ~ U{0, ..., N-1} drawn from `t_key`, noise ~ N(0, I) from `noise_key`, x_t = add_noise(x0, noise, t) and the
  target of the schedule's prediction_type. x0 [B, ...]; `mask` bool/float [B, L] (leading dims of x0; positions
  beyond a sequence's length do not count). The base trainer's loss and the fine-tuning 'diffusion' regulariser."""
  t = sample_train_timesteps(t_key, x0.shape[0], schedule)
  noise = jax.random.normal(noise_key, x0.shape, x0.dtype)
  x_t = add_noise(schedule, x0, noise, t)
  target = training_target(schedule, x0, noise, t)
  err = jnp.square(predict(x_t, t) - target)
  if mask is None:
    return jnp.mean(err)
  w = jnp.asarray(mask, err.dtype).reshape(mask.shape + (1,) * (err.ndim - mask.ndim))
  w = jnp.broadcast_to(w, err.shape)
  return jnp.sum(err * w) / jnp.maximum(jnp.sum(w), 1.0)
