"""Per-step rows (EasyTune): the one-step loss (`make_step_loss`) and the update that applies K of them
(`make_per_step_update`: one `lax.scan` with `value_and_grad` inside the body and optax in the carry, or
`grad_chunk` vmapped gradients at theta_old)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from easytune_jax.core import sampling
from easytune_jax.core.optim import apply_gradients
from easytune_jax.core.sampling_process import SamplingProcess
from easytune_jax.finetune.apply_fns import Decoder, Denoiser, Reward, TrajectoryKeys
from easytune_jax.finetune.config import REWARD_INPUTS, REWARD_TIMESTEPS, FinetuneConfig
from easytune_jax.finetune.executor import (
  StepAux,
  StepContext,
  nograd_prefix,
  run_span,
  sg,
  step_context,
  trajectory_keys,
)
from easytune_jax.finetune.methods import METHODS, Choice, StepPolicy
from easytune_jax.finetune.regularizers import check_regularizer_inputs, diffusion_loss


def make_step_loss(
  denoise: Denoiser,
  reward: Reward,
  process: SamplingProcess,
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
  ctx = StepContext(
    denoise,
    reward,
    decode,
    process,
    timesteps,
    guidance_scale,
    eta,
    reward_input,
    reward_timestep,
    reward_scale,
    kl_weight,
  )
  return _step_loss_from_ctx(ctx, METHODS["easytune"])


def _step_loss_from_ctx(ctx: StepContext, policy: StepPolicy) -> Callable:
  def step_loss(
    params, x_t, step_index, cond, uncond=None, rng=None, base_params=None, dropout_rng=None, reward_rng=None
  ):
    i = jnp.asarray(step_index, jnp.int32)
    choice = Choice(i, None, i, jnp.zeros((), jnp.int32))
    keys = TrajectoryKeys(rng, dropout_rng, reward_rng)
    loss, (aux, x_prev, x0_hat) = run_span(
      ctx, policy, params, sg(x_t), choice, 1, False, keys, cond, uncond, base_params
    )
    return loss, StepAux(x_prev, x0_hat, aux.reward, aux.kl)

  return step_loss


def make_per_step_update(
  config: FinetuneConfig,
  denoise: Denoiser,
  reward: Reward,
  process: SamplingProcess,
  tx: optax.GradientTransformation,
  *,
  decode: Decoder | None = None,
  ema_decay: float = 0.0,
) -> Callable:
  """A per-step row's update (EasyTune): `update(state, x_T, cond, uncond, rng, data_batch=None,
  base_params=None)`.

  The first T-K steps run without gradient (`nograd_prefix`). Then, with C = config.chunk_size:

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
  ctx = step_context(config, denoise, reward, process, decode)
  step_loss = _step_loss_from_ctx(ctx, policy)
  T, K, C = ctx.T, policy.span(config), config.chunk_size
  frozen = config.sampler_variant == "frozen"
  use_data = config.regularizer == "diffusion"

  def update(state, x_T, cond, uncond, rng, data_batch=None, base_params=None):
    check_regularizer_inputs(config, data_batch, base_params)
    noise_rng, reg_rng = jax.random.split(rng)
    keys = trajectory_keys(config, rng, noise_rng, ctx.process)
    theta_old = state.params
    x = nograd_prefix(ctx, theta_old, x_T, T - K, cond, uncond, keys)

    def value_and_grad(at, x_t, i):
      """((loss [], StepAux), grads) of step i's loss at params `at`, x_t [B, ...] held constant."""

      def loss_fn(p):
        loss, aux = step_loss(p, x_t, i, cond, uncond, keys.noise, base_params, keys.dropout, keys.reward)
        if use_data:
          loss = loss + config.reg_weight * diffusion_loss(
            ctx.denoise, process, p, data_batch, jax.random.fold_in(reg_rng, i), config.denoiser_dropout
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
        return ctx.step(ctx.out(theta_old, x, i, cond, uncond, keys.dropout), x, i, keys.noise)[0], x

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
