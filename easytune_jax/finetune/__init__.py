"""Reward fine-tuning of diffusion and flow samplers: EasyTune and the DRaFT-K / ReFL / AlignProp / DRTune /
MotionRFT baselines.

Model-agnostic: every builder takes apply functions, never concrete networks, and a sampling process
(core/sampling_process.py: a DDIM / DDPM `schedules.Schedule` or a flow-matching `flow.FlowProcess`; contracts in
WORKSPACE.md):

  denoise(params, x_t [B, ...], t [B], cond) -> model output [B, ...]   (eps / sample / v, or the flow velocity;
                                                                         t is the process's model_time)
  reward(x [B, ...], cond, t: None | int32 [B]) -> [B]  (higher is better, differentiable in x)
  decode(z [B, ...], cond) -> x (optional; e.g. a frozen VAE decoder latent -> motion features)

`cond` is ONE pytree handed to `denoise`, `decode` and `reward`: put in it whatever each needs (text
embeddings for the denoiser, lengths/mask for the decoder, reward-text features ...). For classifier-free
guidance `uncond` must have `cond`'s structure (both go through one batched denoiser call).

Notation: the process's grid t_1 > ... > t_T, step i maps x_{t_i} -> x_{t_{i+1}} and gives the one-step clean
estimate x0_hat_i (DDIM: (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t); flow: x_t - t v); guidance
out = out_u + w (out_c - out_u).

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
  MotionRFT:     k ~ U{min_k..T}; chain without gradient to x_{t_k}; one step with gradient, loss on x0_hat_k
                 (on a flow: the official one Euler jump x_k - t_k v to the end; k = T: zero gradient).

One table, one executor: every method is a row of `METHODS` (a `StepPolicy`: which steps run the denoiser
with gradient, where the input is stopped, which output is scored, per-step or per-trajectory updates) and
one executor runs them all (`executor.run_span`: a no-gradient prefix, then a differentiated span). A new
method is one row (tests/test_method_table.py adds one); configs, builders, the benchmark and the launchers
read the table.

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

LoRA / partial-parameter fine-tuning (`FinetuneConfig.lora`, finetune/lora.py): every method then trains an
adapter (low-rank factors of the targeted kernels, B = 0 at the start, and optionally leaves trained whole) on
`denoise(merge(base, adapter), ...)`; the state holds only the adapter and its optimizer state, the frozen base
is the update's `base_params`.

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
  schedule = schedules.make_schedule()     # DDIM; core.flow.make_flow() for a flow-matching (velocity) model
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

Modules (this package exports their public API; import it from `easytune_jax.finetune`):
  methods.py       the method table `METHODS` (`StepPolicy` rows, `Choice`, the rows' random choices)
  config.py        `FinetuneConfig` (a row's name and its hyper-parameters, validated) and the option tuples
  apply_fns.py     the apply functions' types, their per-step keys (`dropout_key`, `reward_key`) and
                   compute dtype (`with_compute_dtype`, `cast_floating`)
  executor.py      the one executor: `StepContext` (guided output, DDIM step, scores, KL), `run_span`,
                   `nograd_prefix`
  per_step.py      per-step rows (EasyTune): `make_step_loss`, `make_per_step_update`
  trajectory.py    trajectory rows: `make_trajectory_loss`, `make_trajectory_update`
  regularizers.py  the 'diffusion' regulariser's loss (`diffusion_loss`) and the regularisers' input checks
  lora.py          adapter fine-tuning (`LoraConfig`: LoRA factors and leaves trained whole) as a functional
                   reparameterisation of the params: `init_adapter`, `merge`, `adapt`, `fingerprint`
  update.py        `make_update_fn` (every method's update) and `compiled_memory`
"""

from easytune_jax.finetune import lora
from easytune_jax.finetune.apply_fns import (
  COMPUTE_DTYPES,
  DROPOUT_STREAM,
  REWARD_STREAM,
  cast_floating,
  dropout_key,
  reward_key,
  with_compute_dtype,
)
from easytune_jax.finetune.config import (
  REGULARIZERS,
  REWARD_INPUTS,
  REWARD_NOISE,
  REWARD_TIMESTEPS,
  SAMPLER_VARIANTS,
  FinetuneConfig,
)
from easytune_jax.finetune.executor import StepAux, TrajectoryAux
from easytune_jax.finetune.lora import LoraConfig
from easytune_jax.finetune.methods import METHODS, Choice, StepPolicy, alignprop_mask, drtune_choices, motionrft_choices
from easytune_jax.finetune.per_step import make_per_step_update, make_step_loss
from easytune_jax.finetune.regularizers import diffusion_loss
from easytune_jax.finetune.trajectory import make_trajectory_loss, make_trajectory_update
from easytune_jax.finetune.update import compiled_memory, make_update_fn

__all__ = [
  "COMPUTE_DTYPES",
  "DROPOUT_STREAM",
  "METHODS",
  "REGULARIZERS",
  "REWARD_INPUTS",
  "REWARD_NOISE",
  "REWARD_STREAM",
  "REWARD_TIMESTEPS",
  "SAMPLER_VARIANTS",
  "Choice",
  "FinetuneConfig",
  "LoraConfig",
  "StepAux",
  "StepPolicy",
  "TrajectoryAux",
  "alignprop_mask",
  "cast_floating",
  "compiled_memory",
  "diffusion_loss",
  "dropout_key",
  "drtune_choices",
  "motionrft_choices",
  "make_per_step_update",
  "make_step_loss",
  "make_trajectory_loss",
  "make_trajectory_update",
  "lora",
  "make_update_fn",
  "reward_key",
  "with_compute_dtype",
]
