"""`FinetuneConfig`: which method of the table `METHODS` and its hyper-parameters, validated on creation."""

from __future__ import annotations

import dataclasses

from easytune_jax.core import sampling
from easytune_jax.core.optim import OptimConfig
from easytune_jax.finetune.apply_fns import COMPUTE_DTYPES
from easytune_jax.finetune.lora import LoraConfig
from easytune_jax.finetune.methods import METHODS, StepPolicy

SAMPLER_VARIANTS = ("frozen", "online")
REWARD_INPUTS = ("x0_hat", "x_prev")
REWARD_TIMESTEPS = (None, "t")
REGULARIZERS = ("none", "diffusion", "kl")
REWARD_NOISE = ("per_batch", "per_step")


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
  min_k: MotionRFT: the gradient step k is drawn from U{min_k..T} (official default 1; k = T gives a zero gradient).
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
  lora: adapter fine-tuning (`LoraConfig`, finetune/lora.py: rank, alpha, target patterns, leaves trained
     whole); off by default (every parameter trains). When on, the update's state holds the adapter only and
     the update takes the frozen base params as its `base_params` (`make_update_fn`).
  """

  method: str = "easytune"
  num_steps: int = sampling.CPU_NUM_STEPS
  k: int | None = None
  m: int | None = None
  p: float = 0.5
  t_train: int | None = None
  min_k: int = 1
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
  lora: LoraConfig = LoraConfig()

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
    if not 1 <= self.min_k <= T:
      raise ValueError(f"{name}.min_k: expected 1 <= min_k <= num_steps={T}, found {self.min_k}")
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
