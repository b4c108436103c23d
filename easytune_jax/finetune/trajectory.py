"""Trajectory rows (DRaFT-K, ReFL, AlignProp, DRTune): the loss of one sampled trajectory
(`make_trajectory_loss`) and its update, one gradient = one optimizer update (`make_trajectory_update`)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from easytune_jax.core.optim import apply_gradients
from easytune_jax.core.sampling_process import SamplingProcess
from easytune_jax.finetune.apply_fns import Decoder, Denoiser, Reward, with_compute_dtype
from easytune_jax.finetune.config import FinetuneConfig
from easytune_jax.finetune.executor import nograd_prefix, run_span, sg, step_context, trajectory_keys
from easytune_jax.finetune.regularizers import check_regularizer_inputs, diffusion_loss


def make_trajectory_loss(
  config: FinetuneConfig,
  denoise: Denoiser,
  reward: Reward,
  process: SamplingProcess,
  decode: Decoder | None = None,
) -> Callable:
  """A trajectory row's loss (DRaFT-K, ReFL, AlignProp, DRTune, ...):
  `loss(params, x_T, cond, uncond, rng, base_params=None) -> (loss [], TrajectoryAux)`; one `jax.grad` of
  it is one update.

  (noise_rng, choice_rng) = split(rng); choice = row.choose(choice_rng, config); steps 0..start-1 run
  without gradient (`sampling.sample` for a static start, a `fori_loop` for a random one; nothing stored);
  the span of row.span(config) steps runs from the stopped x_{t_start} (`run_span`). With
  `denoiser_dropout` / reward_noise='per_step' the step keys are `dropout_key(rng, i)` / `reward_key(rng, i)`
  of this `rng` (the update passes split(update rng)[0]).
  """
  policy = config.policy
  if policy.per_step_updates:
    raise ValueError(
      f"make_trajectory_loss: method {config.method!r} updates per step, not per trajectory "
      "(its update is `make_per_step_update`)"
    )
  ctx = step_context(config, denoise, reward, process, decode)
  length = policy.span(config)

  def loss_fn(params, x_T, cond, uncond, rng, base_params=None):
    noise_rng, choice_rng = jax.random.split(rng)
    keys = trajectory_keys(config, rng, noise_rng, ctx.process)
    choice = policy.choose(choice_rng, config)
    if policy.scores == "final" and isinstance(choice.start, int) and choice.start + length != ctx.T:
      raise ValueError(
        f"StepPolicy({policy.label}): scores='final' needs the span to end at step T-1, "
        f"found start {choice.start} + span {length} != T={ctx.T}"
      )
    x = sg(nograd_prefix(ctx, params, x_T, choice.start, cond, uncond, keys))
    loss, (aux, _, _) = run_span(ctx, policy, params, x, choice, length, config.remat, keys, cond, uncond, base_params)
    return loss, aux

  return loss_fn


def make_trajectory_update(
  config: FinetuneConfig,
  denoise: Denoiser,
  reward: Reward,
  process: SamplingProcess,
  tx: optax.GradientTransformation,
  *,
  decode: Decoder | None = None,
  ema_decay: float = 0.0,
) -> Callable:
  """One update per trajectory for a trajectory row: `update(state, x_T, cond, uncond, rng, data_batch=None,
  base_params=None) -> (state, metrics)`; metrics: loss, reward, grad_norm, finite, skipped, kl,
  loss_index, grad_mask [T], offset."""
  loss_fn = make_trajectory_loss(config, denoise, reward, process, decode)
  use_data = config.regularizer == "diffusion"
  denoise = with_compute_dtype(denoise, reward, decode, config.compute_dtype)[0]

  def update(state, x_T, cond, uncond, rng, data_batch=None, base_params=None):
    check_regularizer_inputs(config, data_batch, base_params)
    loss_rng, reg_rng = jax.random.split(rng)

    def total(p):
      loss, aux = loss_fn(p, x_T, cond, uncond, loss_rng, base_params)
      if use_data:
        loss = loss + config.reg_weight * diffusion_loss(
          denoise, process, p, data_batch, reg_rng, config.denoiser_dropout
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
