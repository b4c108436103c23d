"""Reward fine-tuning of diffusion samplers: EasyTune and the DRaFT-K / ReFL / AlignProp / DRTune baselines.

Model-agnostic: every builder takes apply functions, never concrete networks (contracts in WORKSPACE.md):

  denoise(params, x_t [B, ...], t int32 [B], cond) -> model output [B, ...]   (eps / sample / v)
  reward(x [B, ...], cond, t: None | int32 [B]) -> [B]  (higher is better, differentiable in x)
  decode(z [B, ...], cond) -> x (optional; e.g. a frozen VAE decoder latent -> motion features)

`cond` is ONE pytree handed to `denoise`, `decode` and `reward`: put in it whatever each needs (text
embeddings for the denoiser, lengths/mask for the decoder, reward-text features ...). For classifier-free
guidance `uncond` must have `cond`'s structure (both go through one batched denoiser call).

Notation: DDIM timesteps t_1 > ... > t_T, step i maps x_{t_i} -> x_{t_{i+1}} and gives
x0_hat_i = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t); guidance eps = eps_u + w (eps_c - eps_u).

  EasyTune (K):  for i in the last K steps: loss_i(theta) = -R(decode(x0_hat_i(theta; sg(x_{t_i}))) [, t_i]);
                 g_i = grad loss_i is applied by the optimizer at once (K updates per trajectory); the chain
                 continues from x_{t_{i+1}} without gradient. 'frozen' sampler: trajectory and g_i use the
                 parameters theta_old of the start of the batch (the official ft_mld_chain.py); 'online':
                 both use the latest parameters (the official ft_mld.py, which updates the model in place).
                 Measured (docs/benchmark): at T = 50 the frozen variant's 50 updates from theta_old
                 diverge at learning rates the online variant trains stably with.
  DRaFT-K:       loss = -R(decode(x_0)), gradient through the last K steps, sg at x_{t_{T-K}}.
  ReFL (M):      i_stop ~ U{T-M..T-1}; chain without gradient to x_{t_{i_stop}}; loss on x0_hat_{i_stop}.
  AlignProp (p): mask_i ~ Bernoulli(p) once per trajectory (resampled until non-empty); masked steps run
                 the denoiser with gradient, the others with its output stopped (as torch.no_grad in the
                 official code); the gradient chains through every step's DDIM update to x_0.
  DRTune:        sg on every step's denoiser INPUT; K steps s + j * (T_train // K) (s random) run the
                 denoiser with gradient; i_min ~ U{T-M..T-1}; loss on x0_hat_{i_min}.

One table, one executor: every method is a row of `METHODS` (a `StepPolicy`: which steps run the denoiser
with gradient, where the input is stopped, which output is scored, per-step or per-trajectory updates) and
one executor runs them all (`_run_span`: a no-gradient prefix, then a differentiated span). A new method is
one row (tests/test_method_table.py adds one); configs, builders, the benchmark and the launchers read the
table.

Memory (docs/benchmark/README.md): EasyTune's update is ONE `lax.scan` whose body takes `jax.value_and_grad` of the
one-step loss and applies optax in the carry, so its temporaries do not grow with T. Trajectory losses
store residuals per differentiated step; `remat=True` checkpoints each step (the fair baseline setting).
The no-gradient parts of the trajectory losses are computed with `stop_gradient(params)`, so autodiff
neither differentiates nor stores them (checked by `compiled_memory` in the tests). AlignProp's and
DRTune's masks are random, so their fixed-shape scans reserve one differentiated step's residuals per step
(memory ~ DRaFT-T) unless `remat=True`.

Speed: with the 'frozen' sampler EasyTune's K gradients are independent (all at theta_old, on theta_old's
trajectory); `grad_chunk=C` computes them C at a time with one vmapped `value_and_grad` after a no-gradient
pass over those C steps, and applies them in step order (same updates; memory grows with C, still flat in T).
Every jitted update donates its state (`make_update_fn(donate=True)`). `compute_dtype='bfloat16'` runs the
networks in bfloat16 with float32 master params and optimizer state.

Example with your own denoiser and reward:

  import jax, jax.numpy as jnp, optax
  from easytune_jax import finetune
  from easytune_jax.core import schedules
  from easytune_jax.core.optim import OptimConfig, apply_gradients, create_train_state, make_optimizer

  def denoise(p, x, t, cond):                     # x [B, D], t int32 [B], cond {'c': [B, D]}
    h = jnp.tanh(x @ p['w1'] + cond['c'] + p['tw'] * t[:, None] / 1000.0)
    return h @ p['w2']
  def reward(x, cond, t):                         # [B], higher is better
    return -jnp.sum((x - cond['c']) ** 2, axis=-1)

  D = 8
  params = {'w1': jnp.eye(D) * 0.5, 'w2': jnp.eye(D) * 0.5, 'tw': jnp.zeros(D)}
  cfg = finetune.FinetuneConfig(method='easytune', num_steps=10, guidance_scale=2.0,
                                optim=OptimConfig(learning_rate=1e-3))
  schedule = schedules.make_schedule()
  tx = make_optimizer(cfg.optim)           # or make_optimizer(cfg.optim, trainable_mask)
  update = finetune.make_update_fn(cfg, denoise, reward, schedule, tx)   # jitted
  state = create_train_state(params, tx)
  cond = {'c': jnp.ones((4, D))}; uncond = {'c': jnp.zeros((4, D))}
  for step in range(3):
    rng = jax.random.fold_in(jax.random.key(0), step)
    x_T = jax.random.normal(jax.random.fold_in(rng, 1), (4, D))
    state, metrics = update(state, x_T, cond, uncond, rng)   # 10 optimizer updates per call
  print(metrics['reward'], metrics['reward_per_step'])

References: EasyTune (ICLR 2026); Clark et al., DRaFT, arXiv 2309.17400; Xu et al., ImageReward/ReFL,
arXiv 2304.05977; Prabhudesai et al., AlignProp, arXiv 2310.03739; Wu et al., DRTune, arXiv 2405.00760.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from easytune_jax.core import sampling, schedules
from easytune_jax.core.optim import OptimConfig, apply_gradients

Denoiser = Callable[[Any, jax.Array, jax.Array, Any], jax.Array]
Reward = Callable[[jax.Array, Any, jax.Array | None], jax.Array]
Decoder = Callable[[jax.Array, Any], jax.Array]

METHODS = ("easytune", "draft", "refl", "alignprop", "drtune")
SAMPLER_VARIANTS = ("frozen", "online")
REWARD_INPUTS = ("x0_hat", "x_prev")
REWARD_TIMESTEPS = (None, "t")
REGULARIZERS = ("none", "diffusion", "kl")
COMPUTE_DTYPES = ("float32", "bfloat16")
REWARD_NOISE = ("per_batch", "per_step")

# Key streams folded into a trajectory's key (`fold_in(rng, stream)`), then per step (`fold_in(., i)`). Distinct
# large constants, so that they never meet the small fold_in indices callers use on the same key (x_T, cond).
DROPOUT_STREAM = 0x64726F70  # "drop"
REWARD_STREAM = 0x72657764  # "rewd"

sg = jax.lax.stop_gradient


def dropout_key(rng: jax.Array, step) -> jax.Array:
  """The denoiser's dropout key of step `step` (0..T-1) of the trajectory with key `rng`:
  fold_in(fold_in(rng, DROPOUT_STREAM), step). Every call of the denoiser at that step (the no-gradient
  sampler, the gradient step, the KL base output) uses it, so they see the same masks."""
  return jax.random.fold_in(jax.random.fold_in(rng, DROPOUT_STREAM), step)


def reward_key(rng: jax.Array, step) -> jax.Array:
  """The reward's key when it scores step `step`'s output ('per_step' reward noise; a final sample x_0
  is step T-1's output): fold_in(fold_in(rng, REWARD_STREAM), step)."""
  return jax.random.fold_in(jax.random.fold_in(rng, REWARD_STREAM), step)


class _Keys(NamedTuple):
  """A trajectory's keys: noise (DDIM eta > 0), dropout (denoiser dropout), reward (per-step reward noise);
  each None when that part is deterministic / off. Per-step keys are folded in by the step index."""

  noise: jax.Array | None = None
  dropout: jax.Array | None = None
  reward: jax.Array | None = None


def _trajectory_keys(config: FinetuneConfig, rng: jax.Array, noise_rng: jax.Array | None) -> _Keys:
  return _Keys(
    noise_rng if config.eta > 0 else None,
    rng if config.denoiser_dropout else None,
    rng if config.reward_noise == "per_step" else None,
  )


# --------------------------------------------------------------------------------------------- config
@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
  """Which method and its hyper-parameters. Defaults: the CPU setting (EasyTune over all CPU_NUM_STEPS DDIM steps,
  guidance CPU_GUIDANCE_SCALE, AdamW lr 2e-4 with 10 warm-up updates); the official fine-tuning (T = NUM_STEPS,
  w = GUIDANCE_SCALE, lr 1e-5 with 1000 warm-up updates, k = 10, ...) is the 'paper' preset of configs/finetune.py.

  k, m, p, t_train: the hyper-parameters of the method's row in `METHODS` (its `uses`); what k means is the
     row's (EasyTune: train the last k steps, None = all T; DRaFT: gradient through the last k, None = 1;
     DRTune: number of training steps, None = min(5, t_train)).
  m: ReFL / DRTune: the loss step is drawn among the last m steps (None = min(10, T)).
  p: AlignProp: probability that a step carries gradient.
  t_train: DRTune: the k training steps are evenly spaced over the first t_train steps (None = T).
  reward_input: 'x0_hat' scores the one-step clean estimate; 'x_prev' scores the step's noisy output
     x_{t_{i+1}} (the step's INPUT carries no gradient, so a step-aware reward scores its output).
  reward_timestep: None calls reward(x, cond, None); 't' passes the scored sample's timestep int32 [B]
     (t_i for x0_hat, max(t_{i+1}, 0) for x_prev, 0 for a final sample x_0).
  regularizer: 'diffusion' adds reg_weight * denoising loss on a data batch; 'kl' adds
     reg_weight * mean((out_theta - out_base)^2) at the visited x_t (guided outputs, base params frozen).
  grad_chunk: per-step methods (EasyTune) with the 'frozen' sampler: the K per-step gradients (all at theta_old, on a trajectory
     theta_old produced) are computed C = min(grad_chunk, K) at a time by one vmapped `value_and_grad`, then
     applied in order by the optimizer; the same updates as grad_chunk = 1 (one step after the other) to
     float rounding. Memory grows with C (C gradients and C steps' residuals live at once).
  compute_dtype: 'bfloat16' runs the denoiser, the decoder and the reward in bfloat16 (params and inputs cast
     at the apply boundary, outputs cast back to float32); params, gradients, optimizer state and the DDIM
     arithmetic stay float32. Weights the decoder / reward close over are not arguments of the update: cast
     them with `cast_floating` to run those networks in bfloat16 too.
  denoiser_dropout: run the denoiser in training mode (dropout on) at every step, the no-gradient ones
     included, as the official fine-tuning does (`denoiser.train()`): the denoiser is then called with a
     keyword `rng` (it must accept one: `denoise(params, x_t, t, cond, rng=key)`), the key of step i being
     `dropout_key(rng, i)` of the trajectory's key (the update's `rng`; a trajectory loss's own `rng`).
     False (default): `denoise(params, x_t, t, cond)`, deterministic, as before this option existed.
  reward_noise: how a stochastic reward gets its noise. 'per_batch' (default): the reward is called
     `reward(x, cond, t)` and draws from whatever key its `cond` carries (the harness's key per batch, shared
     by every scored step of the trajectory). 'per_step': `reward(x, cond, t, rng=reward_key(rng, i))` when
     it scores step i's output (a fresh draw per scored step, as the official reward draws per call); the
     reward must accept `rng` (a deterministic one may ignore it).
  """

  method: str = "easytune"
  num_steps: int = sampling.CPU_NUM_STEPS
  k: int | None = None
  m: int | None = None
  p: float = 0.5
  t_train: int | None = None
  guidance_scale: float = sampling.CPU_GUIDANCE_SCALE
  eta: float = 0.0
  timestep_spacing: str = "leading"
  steps_offset: int = 1
  sampler_variant: str = "frozen"
  remat: bool = False
  reward_input: str = "x0_hat"
  reward_timestep: str | None = None
  reward_scale: float = 1.0
  regularizer: str = "none"
  reg_weight: float = 0.0
  grad_chunk: int = 1
  compute_dtype: str = "float32"
  denoiser_dropout: bool = False
  reward_noise: str = "per_batch"
  optim: OptimConfig = OptimConfig(learning_rate=2e-4, warmup_steps=10)

  def __post_init__(self):
    name = "FinetuneConfig"
    if self.method not in METHODS:
      raise ValueError(f"{name}.method: expected one of {tuple(METHODS)}, found {self.method!r}")
    T = self.num_steps
    if T < 1:
      raise ValueError(f"{name}.num_steps: expected >= 1, found {T}")
    if self.k is not None and not 1 <= self.k <= T:
      raise ValueError(f"{name}.k: expected 1 <= k <= num_steps={T}, found {self.k}")
    if self.m is not None and not 1 <= self.m <= T:
      raise ValueError(f"{name}.m: expected 1 <= m <= num_steps={T}, found {self.m}")
    if not 0.0 < self.p <= 1.0:
      raise ValueError(f"{name}.p: expected a probability in (0, 1], found {self.p}")
    if self.t_train is not None and not 1 <= self.t_train <= T:
      raise ValueError(f"{name}.t_train: expected 1 <= t_train <= num_steps={T}, found {self.t_train}")
    if self.guidance_scale < 0:
      raise ValueError(f"{name}.guidance_scale: expected >= 0, found {self.guidance_scale}")
    if self.eta < 0:
      raise ValueError(f"{name}.eta: expected >= 0, found {self.eta}")
    if self.sampler_variant not in SAMPLER_VARIANTS:
      raise ValueError(f"{name}.sampler_variant: expected one of {SAMPLER_VARIANTS}, found {self.sampler_variant!r}")
    if self.reward_input not in REWARD_INPUTS:
      raise ValueError(f"{name}.reward_input: expected one of {REWARD_INPUTS}, found {self.reward_input!r}")
    if self.reward_timestep not in REWARD_TIMESTEPS:
      raise ValueError(f"{name}.reward_timestep: expected one of {REWARD_TIMESTEPS}, found {self.reward_timestep!r}")
    if self.regularizer not in REGULARIZERS:
      raise ValueError(f"{name}.regularizer: expected one of {REGULARIZERS}, found {self.regularizer!r}")
    if self.reg_weight < 0:
      raise ValueError(f"{name}.reg_weight: expected >= 0, found {self.reg_weight}")
    if self.grad_chunk < 1:
      raise ValueError(f"{name}.grad_chunk: expected >= 1, found {self.grad_chunk}")
    if self.grad_chunk > 1 and (not self.policy.per_step_updates or self.sampler_variant != "frozen"):
      raise ValueError(
        f"{name}.grad_chunk: batched per-step gradients need a per-step method (easytune) with "
        f"sampler_variant='frozen' (independent gradients at theta_old), found "
        f"grad_chunk={self.grad_chunk} with method={self.method!r}, "
        f"sampler_variant={self.sampler_variant!r}"
      )
    if self.compute_dtype not in COMPUTE_DTYPES:
      raise ValueError(f"{name}.compute_dtype: expected one of {COMPUTE_DTYPES}, found {self.compute_dtype!r}")
    if self.reward_noise not in REWARD_NOISE:
      raise ValueError(f"{name}.reward_noise: expected one of {REWARD_NOISE}, found {self.reward_noise!r}")
    if self.policy.check is not None:
      self.policy.check(self)
    sampling.SamplerConfig(
      num_steps=T,
      guidance_scale=self.guidance_scale,
      eta=self.eta,
      timestep_spacing=self.timestep_spacing,
      steps_offset=self.steps_offset,
    )

  @property
  def policy(self) -> StepPolicy:
    """The method's row of the table `METHODS`."""
    return METHODS[self.method]

  @property
  def num_grad_steps(self) -> int:
    """K resolved by the method's row when k is None (EasyTune: T, DRaFT: 1, DRTune: min(5, t_train))."""
    return self.k if self.k is not None else self.policy.default_k(self)

  @property
  def chunk_size(self) -> int:
    """C resolved: min(grad_chunk, K) (1 = the sequential path)."""
    return min(self.grad_chunk, self.num_grad_steps)

  @property
  def stop_range(self) -> int:
    """M resolved (None -> min(10, T))."""
    return self.m if self.m is not None else min(10, self.num_steps)

  @property
  def train_span(self) -> int:
    return self.t_train if self.t_train is not None else self.num_steps

  @property
  def updates_per_trajectory(self) -> int:
    """Optimizer updates per `update` call: K for per-step methods (EasyTune), 1 for the trajectory methods
    (size schedules by it)."""
    return self.num_grad_steps if self.policy.per_step_updates else 1

  def sampler_config(self) -> sampling.SamplerConfig:
    return sampling.SamplerConfig(
      num_steps=self.num_steps,
      guidance_scale=self.guidance_scale,
      eta=self.eta,
      timestep_spacing=self.timestep_spacing,
      steps_offset=self.steps_offset,
    )


# --------------------------------------------------------------------------------------------- shared step
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
class _Ctx:
  """The static pieces every builder closes over."""

  denoise: Denoiser
  reward: Reward
  decode: Decoder | None
  schedule: schedules.Schedule
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
    return sampling.guided_denoise(
      self.denoise, params, x_in, self.timesteps.t[i], cond, uncond, self.guidance_scale, rng=key
    )

  def ddim(self, out, x_t, i, rng):
    """DDIM update of x_t with a given model output -> (x_prev, x0_hat)."""
    noise = None
    if self.eta > 0:
      if rng is None:
        raise ValueError("finetune: eta > 0 needs an rng for the DDIM noise")
      noise = sampling.step_noise(rng, i, x_t.shape, x_t.dtype)
    return schedules.ddim_step(
      self.schedule, out, x_t, self.timesteps.t[i], self.timesteps.prev_t[i], eta=self.eta, noise=noise
    )

  def _call_reward(self, x, cond, t, i, reward_rng):
    if self.decode is not None:
      x = self.decode(x, cond)
    tt = None if self.reward_timestep is None else jnp.broadcast_to(jnp.asarray(t, jnp.int32), x.shape[:1])
    if reward_rng is None:
      r = self.reward(x, cond, tt)
    else:
      r = self.reward(x, cond, tt, rng=reward_key(reward_rng, i))
    if r.shape != x.shape[:1]:
      raise ValueError(f"finetune: reward must return shape [B]={x.shape[:1]}, found {r.shape}")
    return r

  def score_step(self, x0_hat, x_prev, i, cond, reward_rng=None):
    """Reward [B] of step i's output: x0_hat (timestep t_i) or x_prev (timestep max(prev_t_i, 0)); with the
    trajectory's `reward_rng`, the reward draws with `reward_key(reward_rng, i)`."""
    if self.reward_input == "x0_hat":
      return self._call_reward(x0_hat, cond, self.timesteps.t[i], i, reward_rng)
    return self._call_reward(x_prev, cond, jnp.maximum(self.timesteps.prev_t[i], 0), i, reward_rng)

  def score_final(self, x0, cond, reward_rng=None):
    """Reward [B] of a final sample x_0 (timestep 0; step T-1's output for the reward key)."""
    return self._call_reward(x0, cond, 0, self.T - 1, reward_rng)

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


def cast_floating(tree: Any, dtype: Any) -> Any:
  """`tree` with every floating-point array leaf cast to `dtype` (integer, bool and key leaves, and
  non-array leaves, unchanged)."""

  def cast(x):
    if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating):
      return jnp.asarray(x).astype(dtype)
    return x

  return jax.tree.map(cast, tree)


def with_compute_dtype(
  denoise: Denoiser, reward: Reward, decode: Decoder | None, compute_dtype: str = "float32"
) -> tuple[Denoiser, Reward, Decoder | None]:
  """The three apply functions run in `compute_dtype` ('float32': returned unchanged).

  'bfloat16': the denoiser's params and every floating input (x [B, ...], cond pytrees) are cast to
  bfloat16 at the call, its output back to the dtype of x (float32), so the gradient reaching the float32
  master params is float32 (the cast's transpose); the decoder's and the reward's floating inputs are
  cast likewise and their outputs returned as float32. Integer timesteps and masks are untouched.
  """
  if compute_dtype not in COMPUTE_DTYPES:
    raise ValueError(f"with_compute_dtype: expected one of {COMPUTE_DTYPES}, found {compute_dtype!r}")
  if compute_dtype == "float32":
    return denoise, reward, decode
  dt = jnp.dtype(compute_dtype)

  def denoise_c(params, x_t, t, cond, **kw):  # kw: the optional dropout `rng`
    return denoise(cast_floating(params, dt), x_t.astype(dt), t, cast_floating(cond, dt), **kw).astype(x_t.dtype)

  def reward_c(x, cond, t, **kw):  # kw: the optional per-step reward `rng`
    return reward(x.astype(dt), cast_floating(cond, dt), t, **kw).astype(jnp.float32)

  decode_c = None
  if decode is not None:

    def decode_c(z, cond):
      return decode(z.astype(dt), cast_floating(cond, dt)).astype(jnp.float32)

  return denoise_c, reward_c, decode_c


def _ctx(config: FinetuneConfig, denoise, reward, schedule, decode) -> _Ctx:
  denoise, reward, decode = with_compute_dtype(denoise, reward, decode, config.compute_dtype)
  return _Ctx(
    denoise=denoise,
    reward=reward,
    decode=decode,
    schedule=schedule,
    timesteps=sampling.make_timesteps(schedule, config.sampler_config()),
    guidance_scale=config.guidance_scale,
    eta=config.eta,
    reward_input=config.reward_input,
    reward_timestep=config.reward_timestep,
    reward_scale=config.reward_scale,
    kl_weight=config.reg_weight if config.regularizer == "kl" else 0.0,
  )


# --------------------------------------------------------------------------------------------- regulariser A
def diffusion_loss(
  denoise: Denoiser,
  schedule: schedules.Schedule,
  params: Any,
  data_batch: Mapping[str, Any],
  rng: jax.Array,
  dropout: bool = False,
) -> jax.Array:
  """Standard denoising loss on data: mean over (masked) elements of (denoise(x_t, t) - target)^2.

  data_batch: {'x0': [B, ...] clean data (latents or motion), 'cond': pytree [B, ...],
  optional 'mask': bool/float [B, L] (positions beyond a sequence's length do not count)}.
  t ~ U{0..N-1}, noise ~ N(0, I); the target follows the schedule's prediction_type. `dropout`: the denoiser
  runs with dropout on, key fold_in(rng, DROPOUT_STREAM) (t and noise are drawn as without it).
  """
  for key in ("x0", "cond"):
    if key not in data_batch:
      raise ValueError(f"finetune.diffusion_loss: data_batch needs key {key!r}, found {sorted(data_batch)}")
  k_t, k_n = jax.random.split(rng)
  kw = {"rng": jax.random.fold_in(rng, DROPOUT_STREAM)} if dropout else {}
  predict = lambda x_t, t: denoise(params, x_t, t, data_batch["cond"], **kw)  # noqa: E731
  return schedules.denoising_loss(schedule, predict, data_batch["x0"], k_t, k_n, data_batch.get("mask"))


# --------------------------------------------------------------------------------------------- method table
class Choice(NamedTuple):
  """A trajectory's choices (drawn by the row's `choose`; traced values may be random).

  start: first step of the differentiated span (int, or int32 [] when random); the steps before it run
    without gradient and store nothing. grad_mask bool [T]: steps whose denoiser runs with gradient.
  loss_index int32 []: the step whose output is scored (rows with scores='step'). offset int32 []: a
    method-specific draw reported in the metrics (DRTune's s; 0 otherwise).
  """

  start: Any
  grad_mask: jax.Array
  loss_index: jax.Array
  offset: jax.Array


@dataclasses.dataclass(frozen=True)
class StepPolicy:
  """One row of the method table `METHODS`: how a method runs the T denoising steps.

  One executor runs every row (`make_trajectory_loss`, `make_per_step_update`): steps before
  `Choice.start` run without gradient; then a differentiated span of `span(config)` steps (static length)
  from a stopped input; the reward scores either the final sample x_0 or the loss step's output.

  label: display name (tables, plots). span: static number of steps in the differentiated span.
  choose: (rng, config) -> Choice (trajectory rows; per-step rows train the last `span` steps).
  masked: span steps outside grad_mask run the denoiser with its output stopped (lax.cond per step; the
    DDIM update still carries gradient); False: every step of the span runs with gradient.
  sg_every_input: stop_gradient on every denoiser input (else only at the span's start).
  scores: 'final' = R(decode(x_0)) (the span must end at step T-1); 'step' = R of the loss step's x0_hat
    (or x_prev, config.reward_input), step-aware; steps after the loss step are skipped.
  per_step_updates: each span step is its own one-step loss and optimizer update (EasyTune); else one
    update per trajectory. default_k: K when config.k is None. grad_steps: expected differentiated steps
    per trajectory (benchmark floor; None = K). uses: the FinetuneConfig hyper-parameters the row reads.
  check: optional config validation raising ValueError.
  """

  label: str
  span: Callable[[Any], int]
  choose: Callable[[jax.Array, Any], Choice] | None = None
  masked: bool = False
  sg_every_input: bool = False
  scores: str = "final"
  per_step_updates: bool = False
  default_k: Callable[[Any], int] = lambda c: 1
  grad_steps: Callable[[Any], float] | None = None
  uses: tuple = ()
  check: Callable[[Any], None] | None = None

  def __post_init__(self):
    if self.scores not in ("final", "step"):
      raise ValueError(f"StepPolicy({self.label}).scores: expected 'final' or 'step', found {self.scores!r}")
    if self.per_step_updates == (self.choose is not None):
      raise ValueError(f"StepPolicy({self.label}): a trajectory row needs `choose`, a per-step row none")


def _zero():
  return jnp.zeros((), jnp.int32)


def _draft_choose(rng, c):
  T, K = c.num_steps, c.num_grad_steps
  return Choice(T - K, jnp.arange(T) >= T - K, jnp.asarray(T - 1, jnp.int32), _zero())


def _refl_choose(rng, c):
  T = c.num_steps
  i_stop = jax.random.randint(rng, (), T - c.stop_range, T, dtype=jnp.int32)
  return Choice(i_stop, jnp.arange(T) == i_stop, i_stop, _zero())


def alignprop_mask(rng: jax.Array, p: float, num_steps: int) -> jax.Array:
  """bool [T]: each step True with probability p, redrawn (fold_in(rng, attempt)) until one is True,
  i.e. the Bernoulli mask conditioned on being non-empty, as the official rejection loop."""
  draw = lambda j: jax.random.bernoulli(jax.random.fold_in(rng, j), p, (num_steps,))
  _, mask = jax.lax.while_loop(lambda c: ~jnp.any(c[1]), lambda c: (c[0] + 1, draw(c[0] + 1)), (0, draw(0)))
  return mask


def _alignprop_choose(rng, c):
  return Choice(0, alignprop_mask(rng, c.p, c.num_steps), jnp.asarray(c.num_steps - 1, jnp.int32), _zero())


def drtune_choices(
  rng: jax.Array, num_steps: int, num_train: int, t_train: int, stop_range: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """DRTune's random choices: (grad_mask bool [T], offset s, i_min).

  Training steps s + j * (t_train // K), j < K, with s ~ U{0..t_train - K * (t_train // K)};
  i_min ~ U{T - M..T - 1}."""
  k_s, k_min = jax.random.split(rng)
  stride = t_train // num_train
  s = jax.random.randint(k_s, (), 0, t_train - stride * num_train + 1, dtype=jnp.int32)
  steps = s + stride * jnp.arange(num_train)
  mask = jnp.zeros((num_steps,), bool).at[steps].set(True)
  i_min = jax.random.randint(k_min, (), num_steps - stop_range, num_steps, dtype=jnp.int32)
  return mask, s, i_min


def _drtune_choose(rng, c):
  mask, s, i_min = drtune_choices(rng, c.num_steps, c.num_grad_steps, c.train_span, c.stop_range)
  return Choice(0, mask, i_min, s)


def _drtune_check(c):
  if c.k is not None and c.k > c.train_span:
    raise ValueError(f"FinetuneConfig.k: DRTune needs k <= t_train={c.train_span}, found {c.k}")
  if c.reward_input != "x0_hat":
    raise ValueError(
      f"FinetuneConfig.reward_input: DRTune scores x0_hat at i_min, expected 'x0_hat', found {c.reward_input!r}"
    )


# The methods, one row each. A new method is one row here (plus a FinetuneConfig field if it needs a new
# hyper-parameter); configs, the builders, the benchmark and the launchers read the table.
METHODS: dict[str, StepPolicy] = {
  # EasyTune: each of the last K steps is its own loss at a stopped input, scored step-aware, applied at once.
  "easytune": StepPolicy(
    "EasyTune",
    span=lambda c: c.num_grad_steps,
    sg_every_input=True,
    scores="step",
    per_step_updates=True,
    default_k=lambda c: c.num_steps,
    uses=("k",),
  ),
  # DRaFT-K: backprop through the last K steps into R(x_0).
  "draft": StepPolicy("DRaFT", span=lambda c: c.num_grad_steps, choose=_draft_choose, uses=("k",)),
  # ReFL: one step with gradient at i_stop ~ U{T-M..T-1}, scored at its x0_hat.
  "refl": StepPolicy(
    "ReFL", span=lambda c: 1, choose=_refl_choose, scores="step", grad_steps=lambda c: 1.0, uses=("m",)
  ),
  # AlignProp: all T steps, a Bernoulli(p) mask of steps run the denoiser with gradient, R(x_0).
  "alignprop": StepPolicy(
    "AlignProp",
    span=lambda c: c.num_steps,
    choose=_alignprop_choose,
    masked=True,
    grad_steps=lambda c: c.p * c.num_steps,
    uses=("p",),
  ),
  # DRTune: sg at every denoiser input, K evenly spaced training steps, scored at x0_hat of i_min.
  "drtune": StepPolicy(
    "DRTune",
    span=lambda c: c.num_steps,
    choose=_drtune_choose,
    masked=True,
    sg_every_input=True,
    scores="step",
    default_k=lambda c: min(5, c.train_span),
    uses=("k", "m", "t_train"),
    check=_drtune_check,
  ),
}


# --------------------------------------------------------------------------------------------- executor
def _run_span(
  ctx: _Ctx,
  policy: StepPolicy,
  params,
  x,
  choice: Choice,
  length: int,
  remat: bool,
  keys: _Keys,
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
    x_prev, x0_hat = ctx.ddim(out, x, i, keys.noise)
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


def _nograd_prefix(ctx: _Ctx, params, x_T, start, cond, uncond, keys: _Keys):
  """x_{t_start} from x_T through steps 0..start-1 without gradient (start: int or int32 [])."""
  p0 = sg(params)
  rng = keys.noise
  step = lambda i, x: ctx.ddim(ctx.out(p0, x, i, cond, uncond, keys.dropout), x, i, rng)[0]
  if isinstance(start, int):
    if start == 0:
      return x_T
    if keys.dropout is not None:  # the sampler below is deterministic; the same steps with dropout on
      return jax.lax.scan(lambda x, i: (step(i, x), None), x_T, jnp.arange(start))[0]
    return sampling.sample(
      ctx.denoise,
      p0,
      ctx.schedule,
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


# --------------------------------------------------------------------------------------------- one-step loss
def make_step_loss(
  denoise: Denoiser,
  reward: Reward,
  schedule: schedules.Schedule,
  timesteps: sampling.Timesteps,
  guidance_scale: float = sampling.CPU_GUIDANCE_SCALE,
  *,
  eta: float = 0.0,
  decode: Decoder | None = None,
  reward_input: str = "x0_hat",
  reward_timestep: str | None = None,
  reward_scale: float = 1.0,
  kl_weight: float = 0.0,
) -> Callable:
  """EasyTune's one-step loss (the executor's one-step span).

  Returns `step_loss(params, x_t, step_index, cond, uncond=None, rng=None, base_params=None, dropout_rng=None,
  reward_rng=None) -> (loss [], StepAux)` with x_t [B, ...] held constant (stop_gradient):

    out = guided(params, x_t, t_i);  (x_prev, x0_hat) = DDIM(out, x_t, t_i -> t_{i+1})
    loss = -reward_scale * mean_b R(decode(x0_hat)[, t_i]) + kl_weight * mean((out - out_base)^2)

  `rng` gives the DDIM noise when eta > 0 (normal(fold_in(rng, step_index)), as `sampling.sample`);
  `base_params` is needed when kl_weight > 0; `dropout_rng` / `reward_rng` (the trajectory's keys) turn on
  the denoiser's dropout (`dropout_key(dropout_rng, i)`) / give the reward `rng=reward_key(reward_rng, i)`.
  Pure and jit-able; step_index may be traced.
  """
  if reward_input not in REWARD_INPUTS:
    raise ValueError(f"make_step_loss.reward_input: expected one of {REWARD_INPUTS}, found {reward_input!r}")
  if reward_timestep not in REWARD_TIMESTEPS:
    raise ValueError(f"make_step_loss.reward_timestep: expected one of {REWARD_TIMESTEPS}, found {reward_timestep!r}")
  ctx = _Ctx(
    denoise,
    reward,
    decode,
    schedule,
    timesteps,
    guidance_scale,
    eta,
    reward_input,
    reward_timestep,
    reward_scale,
    kl_weight,
  )
  return _step_loss_from_ctx(ctx, METHODS["easytune"])


def _step_loss_from_ctx(ctx: _Ctx, policy: StepPolicy) -> Callable:
  def step_loss(
    params, x_t, step_index, cond, uncond=None, rng=None, base_params=None, dropout_rng=None, reward_rng=None
  ):
    i = jnp.asarray(step_index, jnp.int32)
    choice = Choice(i, None, i, _zero())
    keys = _Keys(rng, dropout_rng, reward_rng)
    loss, (aux, x_prev, x0_hat) = _run_span(
      ctx, policy, params, sg(x_t), choice, 1, False, keys, cond, uncond, base_params
    )
    return loss, StepAux(x_prev, x0_hat, aux.reward, aux.kl)

  return step_loss


def _check_regularizer_inputs(config, data_batch, base_params):
  if config.regularizer == "diffusion" and data_batch is None:
    raise ValueError("finetune: regularizer='diffusion' needs a `data_batch` {'x0', 'cond'[, 'mask']}")
  if config.regularizer == "kl" and base_params is None:
    raise ValueError("finetune: regularizer='kl' needs `base_params` (the frozen base model's params)")


# --------------------------------------------------------------------------------------------- per-step rows
def make_per_step_update(
  config: FinetuneConfig,
  denoise: Denoiser,
  reward: Reward,
  schedule: schedules.Schedule,
  tx: optax.GradientTransformation,
  *,
  decode: Decoder | None = None,
  ema_decay: float = 0.0,
) -> Callable:
  """A per-step row's update (EasyTune): `update(state, x_T, cond, uncond, rng, data_batch=None,
  base_params=None)`.

  The first T-K steps run without gradient (`_nograd_prefix`). Then, with C = config.chunk_size:

  - C = 1 (and always for 'online'): the last K steps are ONE `lax.scan` whose body takes
    `jax.value_and_grad` of the one-step loss (at theta_old for 'frozen', at the latest params for
    'online') and applies `apply_gradients` (non-finite steps are skipped) in the carry.
  - C > 1 ('frozen' only): a `lax.scan` over chunks of C steps. A chunk first runs its C DDIM steps without
    gradient at theta_old, keeping their inputs x_{t_i} [C, B, ...] (the same trajectory, eta > 0 noise
    included: it is drawn by step index), then takes the C gradients at theta_old with ONE vmapped
    `value_and_grad` and applies them in step order with `apply_gradients` (an inner scan), so the
    optimizer sees exactly the sequence of the C = 1 path. K % C leftover steps form one smaller chunk.
    Costs one extra no-gradient denoiser call per step; temporaries grow with C.

  Returns (state, metrics): state.step advanced by K; metrics: loss_per_step [K], reward_per_step [K]
  (batch mean), grad_norm_per_step [K], finite_per_step bool [K], reward [] (mean over steps),
  grad_norm [], finite bool [] (all steps finite), skipped int32 [] (steps skipped in this call).
  """
  policy = config.policy
  if not policy.per_step_updates:
    raise ValueError(
      f"make_per_step_update: method {config.method!r} updates once per trajectory "
      "(use make_trajectory_update or make_update_fn)"
    )
  ctx = _ctx(config, denoise, reward, schedule, decode)
  step_loss = _step_loss_from_ctx(ctx, policy)
  T, K, C = ctx.T, policy.span(config), config.chunk_size
  frozen = config.sampler_variant == "frozen"
  use_data = config.regularizer == "diffusion"

  def update(state, x_T, cond, uncond, rng, data_batch=None, base_params=None):
    _check_regularizer_inputs(config, data_batch, base_params)
    noise_rng, reg_rng = jax.random.split(rng)
    keys = _trajectory_keys(config, rng, noise_rng)
    theta_old = state.params
    x = _nograd_prefix(ctx, theta_old, x_T, T - K, cond, uncond, keys)

    def value_and_grad(at, x_t, i):
      """((loss [], StepAux), grads) of step i's loss at params `at`, x_t [B, ...] held constant."""

      def loss_fn(p):
        loss, aux = step_loss(p, x_t, i, cond, uncond, keys.noise, base_params, keys.dropout, keys.reward)
        if use_data:
          loss = loss + config.reg_weight * diffusion_loss(
            ctx.denoise, schedule, p, data_batch, jax.random.fold_in(reg_rng, i), config.denoiser_dropout
          )
        return loss, aux

      return jax.value_and_grad(loss_fn, has_aux=True)(at)

    def apply(st, grads, loss, reward):
      """One optimizer update; reward [B] of the step."""
      st, finite = apply_gradients(st, grads, tx, loss, ema_decay)
      return st, {"loss": loss, "reward": jnp.mean(reward), "grad_norm": optax.tree.norm(grads), "finite": finite}

    def body(carry, i):
      st, x_t = carry
      (loss, aux), grads = value_and_grad(theta_old if frozen else st.params, x_t, i)
      st, m = apply(st, grads, loss, aux.reward)
      return (st, aux.x_prev), m

    def chunk(carry, idx):
      """Steps idx [c] (consecutive): c no-gradient DDIM steps, c vmapped gradients, c ordered updates."""
      st, x_t = carry

      def nograd_step(x, i):
        return ctx.ddim(ctx.out(theta_old, x, i, cond, uncond, keys.dropout), x, i, keys.noise)[0], x

      x_next, xs = jax.lax.scan(nograd_step, x_t, idx)  # xs [c, B, ...]: the steps' inputs
      (loss, aux), grads = jax.vmap(lambda x, i: value_and_grad(theta_old, x, i))(xs, idx)
      st, m = jax.lax.scan(lambda s, a: apply(s, *a), st, (grads, loss, aux.reward))
      return (st, x_next), m

    skipped0 = state.skipped
    steps = jnp.arange(T - K, T)
    if C == 1 or not frozen:
      (state, _), ms = jax.lax.scan(body, (state, x), steps)
    else:
      n, rem = divmod(K, C)
      (state, x), ms = jax.lax.scan(chunk, (state, x), steps[: n * C].reshape(n, C))
      ms = jax.tree.map(lambda a: a.reshape((n * C,) + a.shape[2:]), ms)
      if rem:
        (state, _), m_rem = chunk((state, x), steps[n * C :])
        ms = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), ms, m_rem)
    metrics = {
      "loss_per_step": ms["loss"],
      "reward_per_step": ms["reward"],
      "grad_norm_per_step": ms["grad_norm"],
      "finite_per_step": ms["finite"],
      "loss": jnp.mean(ms["loss"]),
      "reward": jnp.mean(ms["reward"]),
      "grad_norm": jnp.mean(ms["grad_norm"]),
      "finite": jnp.all(ms["finite"]),
      "skipped": state.skipped - skipped0,
    }
    return state, metrics

  return update


# --------------------------------------------------------------------------------------------- trajectory rows
def make_trajectory_loss(
  config: FinetuneConfig,
  denoise: Denoiser,
  reward: Reward,
  schedule: schedules.Schedule,
  decode: Decoder | None = None,
) -> Callable:
  """A trajectory row's loss (DRaFT-K, ReFL, AlignProp, DRTune, ...):
  `loss(params, x_T, cond, uncond, rng, base_params=None) -> (loss [], TrajectoryAux)`; one `jax.grad` of
  it is one update.

  (noise_rng, choice_rng) = split(rng); choice = row.choose(choice_rng, config); steps 0..start-1 run
  without gradient (`sampling.sample` for a static start, a `fori_loop` for a random one; nothing stored);
  the span of row.span(config) steps runs from the stopped x_{t_start} (`_run_span`). With
  `denoiser_dropout` / reward_noise='per_step' the step keys are `dropout_key(rng, i)` / `reward_key(rng, i)`
  of this `rng` (the update passes split(update rng)[0]).
  """
  policy = config.policy
  if policy.per_step_updates:
    raise ValueError(
      f"make_trajectory_loss: method {config.method!r} updates per step, not per trajectory "
      "(its update is `make_per_step_update`)"
    )
  ctx = _ctx(config, denoise, reward, schedule, decode)
  length = policy.span(config)

  def loss_fn(params, x_T, cond, uncond, rng, base_params=None):
    noise_rng, choice_rng = jax.random.split(rng)
    keys = _trajectory_keys(config, rng, noise_rng)
    choice = policy.choose(choice_rng, config)
    if policy.scores == "final" and isinstance(choice.start, int) and choice.start + length != ctx.T:
      raise ValueError(
        f"StepPolicy({policy.label}): scores='final' needs the span to end at step T-1, "
        f"found start {choice.start} + span {length} != T={ctx.T}"
      )
    x = sg(_nograd_prefix(ctx, params, x_T, choice.start, cond, uncond, keys))
    loss, (aux, _, _) = _run_span(ctx, policy, params, x, choice, length, config.remat, keys, cond, uncond, base_params)
    return loss, aux

  return loss_fn


def make_trajectory_update(
  config: FinetuneConfig,
  denoise: Denoiser,
  reward: Reward,
  schedule: schedules.Schedule,
  tx: optax.GradientTransformation,
  *,
  decode: Decoder | None = None,
  ema_decay: float = 0.0,
) -> Callable:
  """One update per trajectory for a trajectory row: `update(state, x_T, cond, uncond, rng, data_batch=None,
  base_params=None) -> (state, metrics)`; metrics: loss, reward, grad_norm, finite, skipped, kl,
  loss_index, grad_mask [T], offset."""
  loss_fn = make_trajectory_loss(config, denoise, reward, schedule, decode)
  use_data = config.regularizer == "diffusion"
  denoise = with_compute_dtype(denoise, reward, decode, config.compute_dtype)[0]

  def update(state, x_T, cond, uncond, rng, data_batch=None, base_params=None):
    _check_regularizer_inputs(config, data_batch, base_params)
    loss_rng, reg_rng = jax.random.split(rng)

    def total(p):
      loss, aux = loss_fn(p, x_T, cond, uncond, loss_rng, base_params)
      if use_data:
        loss = loss + config.reg_weight * diffusion_loss(
          denoise, schedule, p, data_batch, reg_rng, config.denoiser_dropout
        )
      return loss, aux

    (loss, aux), grads = jax.value_and_grad(total, has_aux=True)(state.params)
    skipped0 = state.skipped
    state, finite = apply_gradients(state, grads, tx, loss, ema_decay)
    metrics = {
      "loss": loss,
      "reward": jnp.mean(aux.reward),
      "grad_norm": optax.tree.norm(grads),
      "finite": finite,
      "skipped": state.skipped - skipped0,
      "kl": aux.kl,
      "loss_index": aux.loss_index,
      "grad_mask": aux.grad_mask,
      "offset": aux.offset,
    }
    return state, metrics

  return update


def make_update_fn(
  config: FinetuneConfig,
  denoise: Denoiser,
  reward: Reward,
  schedule: schedules.Schedule,
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
  """
  build = make_per_step_update if config.policy.per_step_updates else make_trajectory_update
  fn = build(config, denoise, reward, schedule, tx, decode=decode, ema_decay=ema_decay)
  if jit:
    fn = jax.jit(fn, donate_argnums=(0,) if donate else ())
  return fn


# --------------------------------------------------------------------------------------------- memory
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
