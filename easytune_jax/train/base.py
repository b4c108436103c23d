"""Base text-to-motion generator training: MLD (VAE, then latent diffusion) or MDM (motion-space diffusion).

Importable from notebooks: `train_and_evaluate(config, workdir, data_dir)` runs everything;
`train_vae(...)` and `train_diffusion(...)` run one stage each. Work directory layout:

    <workdir>/config.json            the effective config (vocab size filled in)
    <workdir>/tokenizer.json         the word vocabulary (built from the train captions once)
    <workdir>/vae/checkpoints/       orbax TrainState of the VAE (MLD only)
    <workdir>/vae/metrics.*          JSONL / CSV / TensorBoard scalars
    <workdir>/diffusion/checkpoints/ orbax TrainState of {"denoiser", "text"}
    <workdir>/diffusion/metrics.*

Checkpoint metadata carries the config, the dataset Mean/Std, the tokenizer path and the latent scale, so
`easytune_jax.`load_generator` (bundles/generator.py)(workdir)` rebuilds everything. Per-step randomness is
`fold_in(stage_key, step)` and batches are `batching.batch_at(dataset, step)`, so a resumed run is
identical to an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from easytune_jax.bundles import generator
from easytune_jax.core import parallel, schedules
from easytune_jax.core.checkpoint import Checkpointer, CheckpointError
from easytune_jax.core.config import apply_overrides, check_config_matches, config_to_dict  # noqa: F401  (callers override base configs)
from easytune_jax.core.metric_writer import MetricWriter
from easytune_jax.core.optim import apply_gradients, create_train_state
from easytune_jax.data import batching
from easytune_jax.data.humanml3d import MotionDataset, load_dataset
from easytune_jax.data.safe_io import write_json
from easytune_jax.data.text import TextEmbeddings, Tokenizer
from easytune_jax.models.generator import (
  MODELS,  # noqa: F401
  BaseConfig,
  DataConfig,  # noqa: F401
  Modules,  # noqa: F401
  build_modules,
  diffusion_tx,  # noqa: F401
  encode_latents,
  init_diffusion_params,
  init_vae_params,
  make_cond,
  text_inputs,
  vae_tx,
)
from easytune_jax.models.text_encoder import drop_condition
from easytune_jax.models.vae import MotionVAE, features_to_joints, vae_loss
from easytune_jax.train.loop import train_loop

_ARRAY_KEYS = ("motion", "mask", "length", "tokens", "token_mask", "text_emb", "text_emb_mask")


def _arrays(batch) -> dict:
  arrays = batch[0] if isinstance(batch, tuple) else batch
  return {k: jnp.asarray(v) for k, v in arrays.items() if k in _ARRAY_KEYS}


def _train_batch(config: BaseConfig, dataset, tokenizer, emb, step: int, mesh):
  """The training batch of `step`; on a mesh, this process's rows of it as arrays (`batching.make_batch` rows)."""
  rows = None if mesh is None else parallel.host_local_slice(config.data.batch_size)
  batch = batching.batch_at(
    dataset, step, config.data.batch_size, config.seed, tokenizer, rows=rows, **_batch_kwargs(config, emb)
  )
  return batch if mesh is None else _arrays(batch)


def _model_key(config: BaseConfig) -> BaseConfig:
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
  step = _vae_step_fn(_model_key(config), mesh)
  mean, std = jnp.asarray(mean), jnp.asarray(std)
  return lambda state, batch: step(state, _arrays(batch), mean, std, key)


def diffusion_loss(
  config: BaseConfig, params: dict, vae_params, batch: dict, rng: jax.Array, latent_scale, deterministic: bool = False
) -> tuple[jax.Array, dict]:
  """DDPM loss at uniformly random t with per-example unconditional dropout (prob cond_drop_prob).
  MLD: MSE over the latent; MDM: MSE over valid frames only."""
  m = build_modules(config)
  schedule = schedules.make_schedule(config.diffusion)
  k_z, k_t, k_noise, k_drop, k_text, k_den = jax.random.split(rng, 6)
  if config.model == "mld":
    x0 = jax.lax.stop_gradient(encode_latents(config, vae_params, batch, k_z, latent_scale))
  else:
    x0 = batch["motion"]
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
  # MDM: the loss counts valid frames only; MLD: every latent element.
  mask = batch["mask"] if config.model == "mdm" else None
  loss = schedules.denoising_loss(schedule, predict, x0, k_t, k_noise, mask)
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
  step = _diffusion_step_fn(_model_key(config), mesh)
  scale = jnp.float32(latent_scale)
  return lambda state, batch: step(state, _arrays(batch), vae_params, scale, key)


# --------------------------------------------------------------------------------------------- data
def build_tokenizer(config: BaseConfig, dataset: MotionDataset, workdir: str) -> Tokenizer:
  """Loads <workdir>/tokenizer.json if present (resume), else builds it from the train captions."""
  path = os.path.join(workdir, "tokenizer.json")
  if os.path.exists(path):
    return Tokenizer.load(path)
  tok = Tokenizer.build([c for e in dataset.entries for c, _ in e.captions], max_length=config.data.text_max_length)
  os.makedirs(workdir, exist_ok=True)
  tok.save(path)
  return tok


def _batch_kwargs(config: BaseConfig, text_embeddings: TextEmbeddings | None) -> dict:
  return dict(max_length=config.data.max_length, unit_length=config.data.unit_length, text_embeddings=text_embeddings)


def _text_embeddings(config: BaseConfig) -> TextEmbeddings | None:
  if config.text.kind != "precomputed":
    return None
  if not config.data.text_embeddings:
    raise ValueError("config: text.kind='precomputed' needs data.text_embeddings (path of the .npz)")
  return TextEmbeddings(config.data.text_embeddings)


def validation_batches(
  config: BaseConfig, dataset: MotionDataset, tokenizer: Tokenizer, text_embeddings: TextEmbeddings | None = None
) -> list[dict]:
  """Fixed held-out batches: the first num_val_batches * batch_size entries, crops drawn from a fixed
  seed (so every evaluation sees the same windows)."""
  n = min(len(dataset), config.data.num_val_batches * config.data.batch_size)
  rng = np.random.default_rng([config.seed, 99])
  out = []
  for s in range(0, n, config.data.batch_size):
    idx = np.arange(s, min(s + config.data.batch_size, n))
    arrays, _ = batching.make_batch(dataset, idx, rng, tokenizer, **_batch_kwargs(config, text_embeddings))
    out.append(_arrays(arrays))
  return out


# --------------------------------------------------------------------------------------------- stages
def _metadata(config: BaseConfig, dataset: MotionDataset, stage: str, latent_scale: float = 1.0) -> dict:
  return {
    "stage": stage,
    "config": config_to_dict(config),
    "mean": dataset.mean.tolist(),
    "std": dataset.std.tolist(),
    "tokenizer": "tokenizer.json",
    "latent_scale": float(latent_scale),
    "dataset": {
      "root": str(dataset.root),
      "kind": dataset.info.kind,
      "dim": dataset.info.dim,
      "joints_num": dataset.info.joints_num,
    },
  }


# Fields that never change a stage's result (run length, logging, the sampler of the samples) or that only the
# other stage reads: a VAE can be resumed (or reused by a new denoiser) whatever the denoiser/text/diffusion
# settings are.
_RESUME_IGNORE = (
  "vae_steps",
  "diffusion_steps",
  "log_every",
  "checkpoint_every",
  "eval_every",
  "data.num_val_batches",
  "sampler.",
)
_VAE_IGNORE = (
  "denoiser.",
  "text.",
  "diffusion.",
  "diffusion_optim.",
  "sampler.",
  "cond_drop_prob",
  "scale_latents",
  "data.text_max_length",
  "data.text_embeddings",
)


def _check_resume(ckpt: Checkpointer, config: BaseConfig, stage: str) -> None:
  if ckpt.latest_step() is None:
    return
  saved = ckpt.metadata()["config"]
  ignore = _RESUME_IGNORE + (_VAE_IGNORE if stage == "vae" else ())
  check_config_matches(saved, config_to_dict(config), str(ckpt.directory), ignore=ignore)


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
  err = _reconstruction_fn(_model_key(config))
  mean, std = jnp.asarray(mean), jnp.asarray(std)
  tot = np.zeros(4)
  for b in batches:
    tot += np.array([float(v) for v in err(vae_params, b["motion"], b["mask"], mean, std)])
  return {"val/mpjpe_m": float(tot[0] / max(tot[1], 1)), "val/feature_l1": float(tot[2] / max(tot[3], 1))}


def train_vae(
  config: BaseConfig,
  workdir: str,
  dataset: MotionDataset,
  tokenizer: Tokenizer,
  val_dataset: MotionDataset | None = None,
  progress: bool = True,
  mesh=None,
) -> tuple[Any, dict]:
  """Trains (or resumes, or just restores when finished) the VAE. Returns (vae params, final val metrics);
  the params are the EMA copy when ema_decay > 0. `mesh` (`parallel.make_mesh`): data-parallel / FSDP steps
  (config.data.batch_size is the GLOBAL batch and must divide the device count)."""
  if config.model != "mld":
    raise ValueError(f"train_vae: only the 'mld' model has a VAE, found model={config.model!r}")
  stage_dir = pathlib.Path(workdir) / "vae"
  ckpt = Checkpointer(stage_dir / "checkpoints")
  _check_resume(ckpt, config, "vae")
  writer = MetricWriter(stage_dir)
  root = jax.random.PRNGKey(config.seed)
  tx = vae_tx(config)
  state = create_train_state(init_vae_params(config, jax.random.fold_in(root, 10)), tx, use_ema=config.ema_decay > 0)
  emb = _text_embeddings(config)
  val = validation_batches(config, val_dataset if val_dataset is not None else dataset, tokenizer, emb)
  eval_fn = lambda s, step: reconstruction_error(
    config, s.ema_params if s.ema_params is not None else s.params, val, dataset.mean, dataset.std
  )
  batch_fn = lambda step: _train_batch(config, dataset, tokenizer, emb, step, mesh)
  try:
    result = train_loop(
      state=state,
      step_fn=make_vae_step(config, dataset.mean, dataset.std, jax.random.fold_in(root, 0), mesh),
      batch_fn=batch_fn,
      num_steps=config.vae_steps,
      checkpointer=ckpt,
      writer=writer,
      metadata=_metadata(config, dataset, "vae"),
      log_every=config.log_every,
      checkpoint_every=config.checkpoint_every,
      eval_fn=eval_fn,
      eval_every=config.eval_every,
      desc="vae",
      progress=progress,
    )
    s = result.state
    params = s.ema_params if s.ema_params is not None else s.params
    final = eval_fn(s, result.last_step)
    writer.write(result.last_step, final)
  finally:
    writer.close()
    ckpt.close()
  return params, {**final, "step": result.last_step}


@functools.lru_cache(maxsize=16)
def _encode_fn(config: BaseConfig):
  return jax.jit(lambda v, b: encode_latents(config, v, b, None, 1.0))


def measure_latent_scale(
  config: BaseConfig, vae_params, dataset: MotionDataset, tokenizer: Tokenizer, num_batches: int = 4
) -> float:
  """1 / std of the posterior means over the first training batches (deterministic), as Stable Diffusion's
  latent scale factor: the diffusion then runs on unit-scale latents. 1.0 when scale_latents is off."""
  if config.model != "mld" or not config.scale_latents:
    return 1.0
  emb = _text_embeddings(config)
  zs = []
  for s in range(num_batches):
    b = _arrays(
      batching.batch_at(dataset, s, config.data.batch_size, config.seed, tokenizer, **_batch_kwargs(config, emb))
    )
    zs.append(np.asarray(_encode_fn(_model_key(config))(vae_params, b)))
  return float(1.0 / max(np.std(np.concatenate(zs)), 1e-6))


@functools.lru_cache(maxsize=16)
def _val_loss_fn(config: BaseConfig):
  cfg = dataclasses.replace(config, cond_drop_prob=0.0)
  return jax.jit(lambda p, v, b, k, scale: diffusion_loss(cfg, p, v, b, k, scale, deterministic=True)[0])


def validation_diffusion_loss(config: BaseConfig, params, vae_params, batches, latent_scale: float) -> dict:
  """Deterministic held-out diffusion loss: fixed keys per batch, no dropout, no unconditional drop."""
  f = _val_loss_fn(_model_key(config))
  key = jax.random.PRNGKey(1234)
  losses = [
    float(f(params, vae_params, b, jax.random.fold_in(key, i), jnp.float32(latent_scale)))
    for i, b in enumerate(batches)
  ]
  return {"val/diffusion_loss": float(np.mean(losses))}


def train_diffusion(
  config: BaseConfig,
  workdir: str,
  dataset: MotionDataset,
  tokenizer: Tokenizer,
  vae_params=None,
  val_dataset: MotionDataset | None = None,
  progress: bool = True,
  vae_step: int | None = None,
  mesh=None,
) -> tuple[dict, dict]:
  """Trains (or resumes) the denoiser and the text encoder in the frozen VAE's latent space (MLD) or on
  motion features (MDM). Returns ({"denoiser", "text"} params (EMA when enabled), final val metrics).

  `vae_step` (the VAE checkpoint's step) is stored in the metadata: resuming a diffusion run on a VAE that
  was trained further since would mix two latent spaces, so it raises instead. `mesh`: as in `train_vae`."""
  if config.model == "mld" and vae_params is None:
    raise ValueError("train_diffusion: model='mld' needs the trained vae_params")
  stage_dir = pathlib.Path(workdir) / "diffusion"
  ckpt = Checkpointer(stage_dir / "checkpoints")
  _check_resume(ckpt, config, "diffusion")
  if ckpt.latest_step() is not None and config.model == "mld":
    saved = ckpt.metadata().get("vae_step")
    if saved != vae_step:
      ckpt.close()
      raise CheckpointError(
        f"{ckpt.directory}: diffusion checkpoint was trained on the VAE at step {saved}, but the VAE is now "
        f"at step {vae_step}; delete {stage_dir} to retrain the diffusion on the new latent space"
      )
  writer = MetricWriter(stage_dir)
  root = jax.random.PRNGKey(config.seed)
  latent_scale = measure_latent_scale(config, vae_params, dataset, tokenizer)
  logging.info("latent scale: %.5f", latent_scale)
  tx = diffusion_tx(config)
  state = create_train_state(
    init_diffusion_params(config, jax.random.fold_in(root, 11)), tx, use_ema=config.ema_decay > 0
  )
  emb = _text_embeddings(config)
  val = validation_batches(config, val_dataset if val_dataset is not None else dataset, tokenizer, emb)
  eval_fn = lambda s, step: validation_diffusion_loss(
    config, s.ema_params if s.ema_params is not None else s.params, vae_params, val, latent_scale
  )
  batch_fn = lambda step: _train_batch(config, dataset, tokenizer, emb, step, mesh)
  try:
    result = train_loop(
      state=state,
      step_fn=make_diffusion_step(config, vae_params, latent_scale, jax.random.fold_in(root, 1), mesh),
      batch_fn=batch_fn,
      num_steps=config.diffusion_steps,
      checkpointer=ckpt,
      writer=writer,
      metadata={**_metadata(config, dataset, "diffusion", latent_scale), "vae_step": vae_step},
      log_every=config.log_every,
      checkpoint_every=config.checkpoint_every,
      eval_fn=eval_fn,
      eval_every=config.eval_every,
      desc="diffusion",
      progress=progress,
    )
    s = result.state
    final = eval_fn(s, result.last_step)
    writer.write(result.last_step, final)
  finally:
    writer.close()
    ckpt.close()
  return (s.ema_params if s.ema_params is not None else s.params), final


def load_data(config: BaseConfig, data_dir: str) -> tuple[MotionDataset, MotionDataset]:
  """(train, held-out) datasets; the held-out split falls back to 'test' when 'val' is missing/too small."""
  kw = dict(min_len=config.data.min_len, max_len=config.data.max_len)
  train = load_dataset(data_dir, config.data.train_split, **kw)
  val = None
  for split in (config.data.val_split, "test"):
    if os.path.exists(os.path.join(data_dir, f"{split}.txt")):
      val = load_dataset(data_dir, split, mean=train.mean, std=train.std, **kw)
      if len(val):
        break
  return train, (val if val is not None and len(val) else train)


def finalize_config(config: BaseConfig, dataset: MotionDataset, tokenizer: Tokenizer) -> BaseConfig:
  """Fills in the data-dependent sizes: feature dim, vocabulary size, precomputed embedding dim."""
  text = dataclasses.replace(config.text, vocab_size=tokenizer.vocab_size)
  emb = _text_embeddings(config)
  if emb is not None:
    text = dataclasses.replace(text, embed_dim=emb.dim)
  data = config.data
  if emb is not None and emb.max_length != data.text_max_length:
    data = dataclasses.replace(data, text_max_length=emb.max_length)
  return dataclasses.replace(config, text=text, data=data, vae=dataclasses.replace(config.vae, nfeats=dataset.info.dim))


def train_and_evaluate(
  config: BaseConfig,
  workdir: str,
  data_dir: str | None = None,
  dataset: MotionDataset | None = None,
  val_dataset: MotionDataset | None = None,
  progress: bool = True,
  mesh=None,
) -> dict:
  """Runs (or resumes) both stages (on `mesh` when given). Returns {"config", "vae": val metrics,
  "diffusion": val metrics, "seconds": {"vae", "diffusion"}}."""
  if dataset is None:
    if data_dir is None:
      raise ValueError("train_and_evaluate: pass data_dir or dataset")
    dataset, val_dataset = load_data(config, data_dir)
  os.makedirs(workdir, exist_ok=True)
  tokenizer = build_tokenizer(config, dataset, workdir)
  config = finalize_config(config, dataset, tokenizer)
  write_json(os.path.join(workdir, "config.json"), config_to_dict(config))
  out = {"config": config, "seconds": {}}
  vae_params = None
  if config.model == "mld":
    t0 = time.time()
    vae_params, out["vae"] = train_vae(config, workdir, dataset, tokenizer, val_dataset, progress, mesh)
    out["seconds"]["vae"] = time.time() - t0
    logging.info("VAE: %s (%.1f s)", out["vae"], out["seconds"]["vae"])
  t0 = time.time()
  _, out["diffusion"] = train_diffusion(
    config,
    workdir,
    dataset,
    tokenizer,
    vae_params,
    val_dataset,
    progress,
    vae_step=out["vae"]["step"] if vae_params is not None else None,
    mesh=mesh,
  )
  out["seconds"]["diffusion"] = time.time() - t0
  logging.info("diffusion: %s (%.1f s)", out["diffusion"], out["seconds"]["diffusion"])
  return out


def train_and_sample(
  config: BaseConfig,
  workdir: str,
  data_dir: str,
  num_samples: int = 4,
  guidance_scale: float | None = None,
  num_steps: int | None = None,
  gif: bool = True,
  progress: bool = True,
) -> dict:
  """`train_and_evaluate` on `data_dir`, then `save_samples` of the first `num_samples` held-out
  captions (their own lengths, cut to the model's max_length) into <workdir>/samples/, sampled with
  `guidance_scale` / `num_steps` (default: `config.sampler`'s). This is what `launch/train_base.py` runs."""
  t0 = time.time()
  train, val = load_data(config, data_dir)
  out = train_and_evaluate(config, workdir, dataset=train, val_dataset=val, progress=progress)
  out["seconds"]["total_train"] = time.time() - t0
  if num_samples > 0:
    gen = generator.load_generator(workdir)
    entries = val.entries[:num_samples]
    texts = [e.captions[0][0] for e in entries]
    u = config.data.unit_length
    lengths = [min(gen.max_length, u * (e.length // u)) for e in entries]
    out["samples"] = generator.save_samples(
      gen,
      texts,
      lengths,
      os.path.join(workdir, "samples"),
      jax.random.PRNGKey(config.seed),
      config.sampler.guidance_scale if guidance_scale is None else guidance_scale,
      config.sampler.num_steps if num_steps is None else num_steps,
      gif,
    )
  return out
