"""Flow matching (the linear interpolant / rectified flow) as a sampling process, in pure jit-able functions.

Convention (SD3's and rectified flow's): time s in [0, 1] runs from data (s = 0) to noise (s = 1),

  x_s = (1 - s) x0 + s eps,          the network predicts the velocity v = eps - x0 (d x_s / d s),
  x0_hat = x_s - s v,                eps_hat = x_s + (1 - s) v.

Sampling integrates the ODE from s = 1 down to s = 0 over a grid s_0 = 1 > s_1 > ... > s_T = 0 (uniform,
optionally shifted: s -> shift s / (1 + (shift - 1) s), SD3 / HY-Motion's `shift`). With eta = 0 a step is Euler's,
x_next = x_s + (s_next - s) v, which is also the deterministic DDIM step of this interpolant. With eta > 0 the step
is the ancestral (DDIM-eta) step of the same interpolant: it keeps the marginals of x_s and injects fresh noise,

  s_t^2 = eta^2 * sigma'^2 (sigma^2 - (alpha / alpha')^2 sigma'^2) / sigma^2   (alpha = 1 - s, sigma = s; ' = next),
  x_next = alpha' x0_hat + sqrt(sigma'^2 - s_t^2) eps_hat + s_t z,

(eta = 1 is the posterior of the Gaussian forward chain, DDPM's ancestral sampler for this interpolant). HY-Motion
and MotionRFT write the same flow with time reversed (t = 1 - s: t = 0 noise, v = x0 - eps); every formula here
maps onto theirs by that change of variable.

The network is conditioned on `time_scale * s` (default 1000: the range of the DDPM timesteps the sinusoidal time
embeddings were made for); a step-aware reward gets the DDPM-range integer `round(s * (reward_timesteps - 1))`.

References: Lipman et al., Flow Matching for Generative Modeling (arXiv 2210.02747); Liu et al., Rectified Flow
(arXiv 2209.03003); Esser et al., Scaling Rectified Flow Transformers (SD3, arXiv 2403.03206: time shift,
logit-normal training times).
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from easytune_jax.core.sampling_process import Timesteps

TRAIN_TIMES = ("uniform", "logit_normal")


@dataclasses.dataclass(frozen=True)
class FlowConfig:
  """A flow-matching process. time_shift: grid warp s -> shift s / (1 + (shift - 1) s) (1 = uniform);
  time_scale: the network sees time_scale * s; train_time: how training draws s ('uniform' U(0, 1) or SD3's
  'logit_normal' sigmoid(N(0, 1))); reward_timesteps: a step-aware reward sees round(s * (reward_timesteps - 1))."""

  time_shift: float = 1.0
  time_scale: float = 1000.0
  train_time: str = "uniform"
  reward_timesteps: int = 1000

  def __post_init__(self):
    if self.time_shift <= 0:
      raise ValueError(f"FlowConfig.time_shift: expected > 0, found {self.time_shift}")
    if self.time_scale <= 0:
      raise ValueError(f"FlowConfig.time_scale: expected > 0, found {self.time_scale}")
    if self.train_time not in TRAIN_TIMES:
      raise ValueError(f"FlowConfig.train_time: expected one of {TRAIN_TIMES}, found {self.train_time!r}")
    if self.reward_timesteps < 1:
      raise ValueError(f"FlowConfig.reward_timesteps: expected >= 1, found {self.reward_timesteps}")


def _bcast(v: jax.Array, x: jax.Array) -> jax.Array:
  v = jnp.asarray(v, x.dtype)
  return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def shift_time(s: np.ndarray, shift: float) -> np.ndarray:
  """The SD3 time shift shift * s / (1 + (shift - 1) * s) (identity for shift = 1), float64 numpy."""
  s = np.asarray(s, np.float64)
  return s if shift == 1.0 else shift * s / (1.0 + (shift - 1.0) * s)


def flow_grid(num_steps: int, shift: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
  """(s [T], s_next [T]) float64 numpy: s_i = shift(1 - i / T), s_next_i = s_{i+1}, s_next_{T-1} = 0."""
  if num_steps < 1:
    raise ValueError(f"num_steps: expected >= 1, found {num_steps}")
  grid = shift_time(1.0 - np.arange(num_steps + 1) / num_steps, shift)
  return grid[:-1], grid[1:]


@flax.struct.dataclass
class FlowProcess:
  """The linear-interpolant flow as a sampling process (`core/sampling_process.py`); everything is static."""

  time_shift: float = flax.struct.field(pytree_node=False, default=1.0)
  time_scale: float = flax.struct.field(pytree_node=False, default=1000.0)
  train_time: str = flax.struct.field(pytree_node=False, default="uniform")
  reward_timesteps: int = flax.struct.field(pytree_node=False, default=1000)

  kind = "flow"

  # ------------------------------------------------------------------ the protocol
  def timesteps(self, config):
    """The grid of `config` (a SamplerConfig: num_steps; timestep_spacing / steps_offset are DDIM's and unused):
    `sampling.Timesteps(t=s [T], prev_t=s_next [T])` in the default float dtype."""
    s, s_next = flow_grid(config.num_steps, self.time_shift)
    dtype = jnp.asarray(0.0).dtype
    return Timesteps(jnp.asarray(s, dtype), jnp.asarray(s_next, dtype))

  def model_time(self, s: jax.Array) -> jax.Array:
    """What the network is conditioned on: time_scale * s (float)."""
    return jnp.asarray(s) * self.time_scale

  def reward_time(self, s: jax.Array) -> jax.Array:
    """The DDPM-range timestep a step-aware reward sees for a sample at time s: int32 round(s * (N - 1))."""
    return jnp.round(jnp.asarray(s) * (self.reward_timesteps - 1)).astype(jnp.int32)

  def sample_train_time(self, rng: jax.Array, batch_size: int) -> jax.Array:
    """Training times s [B] in (0, 1): U(0, 1) or sigmoid(N(0, 1)) (train_time)."""
    if self.train_time == "uniform":
      return jax.random.uniform(rng, (batch_size,))
    return jax.nn.sigmoid(jax.random.normal(rng, (batch_size,)))

  def add_noise(self, x0: jax.Array, noise: jax.Array, s: jax.Array) -> jax.Array:
    """x_s = (1 - s) x0 + s noise; x0, noise [B, ...], s [B]."""
    s = _bcast(s, x0)
    return (1.0 - s) * x0 + s * noise

  def training_target(self, x0: jax.Array, noise: jax.Array, s: jax.Array) -> jax.Array:
    """The velocity v = noise - x0 (independent of s)."""
    del s
    return noise - x0

  def predict_x0_eps(self, model_output: jax.Array, x_t: jax.Array, s: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(x0_hat, eps_hat) from a velocity: x0 = x_s - s v, eps = x_s + (1 - s) v."""
    s = _bcast(s, x_t)
    return x_t - s * model_output, x_t + (1.0 - s) * model_output

  def needs_noise(self, eta: float) -> bool:
    return eta > 0

  def step(
    self,
    model_output: jax.Array,
    x_t: jax.Array,
    s: jax.Array,
    s_next: jax.Array,
    eta: float = 0.0,
    noise: jax.Array | None = None,
  ) -> tuple[jax.Array, jax.Array]:
    """One step x_s -> (x_{s_next}, x0_hat): Euler for eta = 0, the ancestral DDIM-eta step otherwise (module
    docstring). model_output: the velocity [B, ...]; s, s_next scalars or [B]."""
    x0, eps = self.predict_x0_eps(model_output, x_t, s)
    if isinstance(eta, (int, float)) and eta == 0:
      return x_t + _bcast(s_next - s, x_t) * model_output, x0
    if noise is None:
      raise ValueError("FlowProcess.step: eta > 0 needs a `noise` array of x_t's shape")
    sig, sig_n = _bcast(s, x_t), _bcast(s_next, x_t)
    a, a_n = 1.0 - sig, 1.0 - sig_n
    var = jnp.square(eta * sig_n) * (1.0 - jnp.square(a * sig_n / (a_n * sig)))
    var = jnp.clip(var, 0.0, jnp.square(sig_n))
    std = jnp.sqrt(var)
    return a_n * x0 + jnp.sqrt(jnp.square(sig_n) - var) * eps + std * noise, x0


def make_flow(config: FlowConfig = FlowConfig()) -> FlowProcess:
  return FlowProcess(
    time_shift=config.time_shift,
    time_scale=config.time_scale,
    train_time=config.train_time,
    reward_timesteps=config.reward_timesteps,
  )
