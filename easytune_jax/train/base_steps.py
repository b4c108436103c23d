"""The base trainer's compiled programs: the VAE and diffusion training steps (`make_vae_step`,
`make_diffusion_step`, `diffusion_loss`) and the held-out measures (`reconstruction_error`,
`validation_diffusion_loss`, `measure_latent_scale`). Each is jitted once per model: cached on `model_key(config)`,
the config without the fields that do not change compiled code."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from easytune_jax.core import parallel
from easytune_jax.core.optim import apply_gradients
from easytune_jax.core.sampling_process import denoising_loss
from easytune_jax.data import batching
from easytune_jax.data.humanml3d import MotionDataset
from easytune_jax.data.text import Tokenizer
from easytune_jax.models.generator import (
  BaseConfig,
  build_modules,
  diffusion_tx,
  encode_latents,
  kind_of,
  loss_mask,
  make_cond,
  make_process,
  text_inputs,
  to_model_space,
  vae_tx,
)
from easytune_jax.models.text_encoder import drop_condition
from easytune_jax.models.vae import MotionVAE, features_to_joints, vae_loss
from easytune_jax.train.base_data import batch_arrays, batch_kwargs, load_text_embeddings


def model_key(config: BaseConfig) -> BaseConfig:
  """The config with the fields that do not change compiled code zeroed: jitted functions are cached on it,
  so a resumed (or longer) run with the same model reuses the compiled steps."""
  return dataclasses.replace(
    config,
    vae_steps=0,
    diffusion_steps=0,
    log_every=0,
    checkpoint_every=0,
    eval_every=0,
    data=dataclasses.replace(config.data, num_val_batches=0),
  )


def _jit(step, mesh):
  """Plain jit on one device; on a mesh the batch (argument 1) is split and the state FSDP-sharded."""
  return jax.jit(step) if mesh is None else parallel.jit_sharded(step, mesh, batch_argnums=(1,))


@functools.lru_cache(maxsize=16)
def _vae_step_fn(config: BaseConfig, mesh=None):
  vae, tx = MotionVAE(config.vae), vae_tx(config)

  def step(state, batch, mean, std, key):
    k_z, k_drop = jax.random.split(jax.random.fold_in(key, state.step))

    def loss_fn(params):
      recon, mu, logvar = vae.apply(
        params, batch["motion"], batch["mask"], k_z, deterministic=False, rngs={"dropout": k_drop}
      )
      return vae_loss(recon, batch["motion"], batch["mask"], mu, logvar, config.vae, mean, std)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state, finite = apply_gradients(state, grads, tx, loss, config.ema_decay)
    return state, {**metrics, "grad_norm": optax.tree.norm(grads), "finite": finite}

  return _jit(step, mesh)


def make_vae_step(config: BaseConfig, mean: np.ndarray, std: np.ndarray, key: jax.Array, mesh=None):
  """`(state, batch) -> (state, metrics)` for the VAE, jitted; dropout and z-sampling keys are
  `fold_in(key, state.step)`. `mesh`: data-parallel / FSDP step (same result as one device)."""
  step = _vae_step_fn(model_key(config), mesh)
  mean, std = jnp.asarray(mean), jnp.asarray(std)
  return lambda state, batch: step(state, batch_arrays(batch), mean, std, key)


def diffusion_loss(
  config: BaseConfig, params: dict, vae_params, batch: dict, rng: jax.Array, latent_scale, deterministic: bool = False
) -> tuple[jax.Array, dict]:
  """The kind's process loss (`denoising_loss`: DDPM at uniformly random t, or flow matching) with per-example
  unconditional dropout (prob cond_drop_prob); MSE over the latent, or over valid frames (frame-conditioned kinds)."""
  m = build_modules(config)
  process = make_process(config)
  k_z, k_t, k_noise, k_drop, k_text, k_den = jax.random.split(rng, 6)
  x0 = jax.lax.stop_gradient(to_model_space(config, vae_params, batch, k_z, latent_scale))
  inputs, tmask = text_inputs(config, batch)
  cond, uncond = make_cond(
    config,
    m.text,
    params["text"],
    inputs,
    tmask,
    batch["mask"],
    deterministic=deterministic,
    rng=None if deterministic else k_text,
  )
  if config.cond_drop_prob > 0:
    cond = drop_condition(k_drop, cond, uncond, config.cond_drop_prob)
  predict = lambda x_t, t: m.denoiser.apply(  # noqa: E731
    params["denoiser"], x_t, t, cond, deterministic, rngs=None if deterministic else {"dropout": k_den}
  )
  loss = denoising_loss(process, predict, x0, k_t, k_noise, loss_mask(config, batch))
  return loss, {"loss": loss}


@functools.lru_cache(maxsize=16)
def _diffusion_step_fn(config: BaseConfig, mesh=None):
  tx = diffusion_tx(config)

  def step(state, batch, vae_params, latent_scale, key):
    rng = jax.random.fold_in(key, state.step)
    (loss, metrics), grads = jax.value_and_grad(
      lambda p: diffusion_loss(config, p, vae_params, batch, rng, latent_scale), has_aux=True
    )(state.params)
    state, finite = apply_gradients(state, grads, tx, loss, config.ema_decay)
    return state, {**metrics, "grad_norm": optax.tree.norm(grads), "finite": finite}

  return _jit(step, mesh)


def make_diffusion_step(config: BaseConfig, vae_params, latent_scale: float, key: jax.Array, mesh=None):
  """`(state, batch) -> (state, metrics)`: one DDPM step on {"denoiser", "text"} (VAE frozen), jitted;
  per-step randomness is `fold_in(key, state.step)`. `mesh`: data-parallel / FSDP step (same result)."""
  step = _diffusion_step_fn(model_key(config), mesh)
  scale = jnp.float32(latent_scale)
  return lambda state, batch: step(state, batch_arrays(batch), vae_params, scale, key)


@functools.lru_cache(maxsize=16)
def _reconstruction_fn(config: BaseConfig):
  vae = MotionVAE(config.vae)

  @jax.jit
  def err(params, motion, mask, mean, std):
    recon, _, _ = vae.apply(params, motion, mask)
    d = jnp.linalg.norm(features_to_joints(recon, mean, std) - features_to_joints(motion, mean, std), axis=-1)
    w = mask[..., None].astype(d.dtype)
    return (
      jnp.sum(d * w),
      jnp.sum(w) * d.shape[-1],
      jnp.sum(jnp.abs(recon - motion) * mask[..., None]),
      jnp.sum(mask) * motion.shape[-1],
    )

  return err


def reconstruction_error(config: BaseConfig, vae_params, batches: list[dict], mean, std) -> dict:
  """Held-out VAE reconstruction with z = mu: mean per-joint position error in metres over valid frames
  (`val/mpjpe_m`) and the mean absolute error of the normalised features (`val/feature_l1`)."""
  err = _reconstruction_fn(model_key(config))
  mean, std = jnp.asarray(mean), jnp.asarray(std)
  tot = np.zeros(4)
  for b in batches:
    tot += np.array([float(v) for v in err(vae_params, b["motion"], b["mask"], mean, std)])
  return {"val/mpjpe_m": float(tot[0] / max(tot[1], 1)), "val/feature_l1": float(tot[2] / max(tot[3], 1))}


@functools.lru_cache(maxsize=16)
def _encode_fn(config: BaseConfig):
  return jax.jit(lambda v, b: encode_latents(config, v, b, None, 1.0))


def measure_latent_scale(
  config: BaseConfig, vae_params, dataset: MotionDataset, tokenizer: Tokenizer, num_batches: int = 4
) -> float:
  """1 / std of the posterior means over the first training batches (deterministic), as Stable Diffusion's
  latent scale factor: the diffusion then runs on unit-scale latents. 1.0 when scale_latents is off."""
  if not kind_of(config).latent or not config.scale_latents:
    return 1.0
  emb = load_text_embeddings(config)
  zs = []
  for s in range(num_batches):
    b = batch_arrays(
      batching.batch_at(dataset, s, config.data.batch_size, config.seed, tokenizer, **batch_kwargs(config, emb))
    )
    zs.append(np.asarray(_encode_fn(model_key(config))(vae_params, b)))
  return float(1.0 / max(np.std(np.concatenate(zs)), 1e-6))


@functools.lru_cache(maxsize=16)
def _val_loss_fn(config: BaseConfig):
  cfg = dataclasses.replace(config, cond_drop_prob=0.0)
  return jax.jit(lambda p, v, b, k, scale: diffusion_loss(cfg, p, v, b, k, scale, deterministic=True)[0])


def validation_diffusion_loss(config: BaseConfig, params, vae_params, batches, latent_scale: float) -> dict:
  """Deterministic held-out diffusion loss: fixed keys per batch, no dropout, no unconditional drop."""
  f = _val_loss_fn(model_key(config))
  key = jax.random.PRNGKey(1234)
  losses = [
    float(f(params, vae_params, b, jax.random.fold_in(key, i), jnp.float32(latent_scale)))
    for i, b in enumerate(batches)
  ]
  return {"val/diffusion_loss": float(np.mean(losses))}
