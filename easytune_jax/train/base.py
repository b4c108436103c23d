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

This module holds the two stages and their drivers; the data they read is `train/base_data.py` (tokenizer,
datasets, training and held-out batches), their jitted steps and held-out measures `train/base_steps.py`.
"""

from __future__ import annotations

import os
import pathlib
import time
from typing import Any

import jax
from absl import logging

from easytune_jax.bundles import generator
from easytune_jax.core.checkpoint import Checkpointer, CheckpointError
from easytune_jax.core.config import apply_overrides, check_config_matches, config_to_dict  # noqa: F401  (callers override base configs)
from easytune_jax.core.metric_writer import MetricWriter
from easytune_jax.core.optim import create_train_state
from easytune_jax.data.humanml3d import MotionDataset
from easytune_jax.data.safe_io import write_json
from easytune_jax.data.text import Tokenizer
from easytune_jax.models.generator import (
  GENERATORS,  # noqa: F401
  BaseConfig,
  DataConfig,  # noqa: F401
  Modules,  # noqa: F401
  diffusion_tx,  # noqa: F401
  init_diffusion_params,
  init_vae_params,
  kind_of,
  vae_tx,
)
from easytune_jax.train.base_data import (
  build_tokenizer,
  finalize_config,
  load_data,
  load_text_embeddings,
  train_batch,
  validation_batches,
)
from easytune_jax.train.base_steps import (
  make_diffusion_step,
  make_vae_step,
  measure_latent_scale,
  reconstruction_error,
  validation_diffusion_loss,
)
from easytune_jax.train.loop import train_loop


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
  if not kind_of(config).latent:
    raise ValueError(f"train_vae: model={config.model!r} runs on motion features and has no VAE")
  stage_dir = pathlib.Path(workdir) / "vae"
  ckpt = Checkpointer(stage_dir / "checkpoints")
  _check_resume(ckpt, config, "vae")
  writer = MetricWriter(stage_dir)
  root = jax.random.PRNGKey(config.seed)
  tx = vae_tx(config)
  state = create_train_state(init_vae_params(config, jax.random.fold_in(root, 10)), tx, use_ema=config.ema_decay > 0)
  emb = load_text_embeddings(config)
  val = validation_batches(config, val_dataset if val_dataset is not None else dataset, tokenizer, emb)
  eval_fn = lambda s, step: reconstruction_error(
    config, s.ema_params if s.ema_params is not None else s.params, val, dataset.mean, dataset.std
  )
  batch_fn = lambda step: train_batch(config, dataset, tokenizer, emb, step, mesh)
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
  latent = kind_of(config).latent
  if latent and vae_params is None:
    raise ValueError(f"train_diffusion: model={config.model!r} runs in the VAE latent and needs the trained vae_params")
  stage_dir = pathlib.Path(workdir) / "diffusion"
  ckpt = Checkpointer(stage_dir / "checkpoints")
  _check_resume(ckpt, config, "diffusion")
  if ckpt.latest_step() is not None and latent:
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
  emb = load_text_embeddings(config)
  val = validation_batches(config, val_dataset if val_dataset is not None else dataset, tokenizer, emb)
  eval_fn = lambda s, step: validation_diffusion_loss(
    config, s.ema_params if s.ema_params is not None else s.params, vae_params, val, latent_scale
  )
  batch_fn = lambda step: train_batch(config, dataset, tokenizer, emb, step, mesh)
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
  if kind_of(config).latent:
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
