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
`easytune_jax.generate.load_generator(workdir)` rebuilds everything. Per-step randomness is
`fold_in(stage_key, step)` and batches are `batching.batch_at(dataset, step)`, so a resumed run is
identical to an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import time
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from easytune_jax import parallel, schedules
from easytune_jax.data import batching
from easytune_jax.data.humanml3d import MotionDataset, load_dataset
from easytune_jax.data.text import TextEmbeddings, Tokenizer
from easytune_jax.models.denoiser import DenoiserConfig, LatentDenoiser, MotionDenoiser
from easytune_jax.models.layers import reparameterize
from easytune_jax.models.text_encoder import TextEncoder, TextEncoderConfig, drop_condition
from easytune_jax.models.vae import MotionVAE, VAEConfig, features_to_joints, vae_loss
from easytune_jax.sampling import SamplerConfig
from easytune_jax.schedules import DiffusionConfig
from easytune_jax.train import common

MODELS = ("mld", "mdm")


# --------------------------------------------------------------------------------------------- config
@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Batching. `max_length` is the fixed padded window in frames (multiple of unit_length); the tiny CPU
  config trains on random 64-frame windows (HumanML3D's own limit is 196)."""

  batch_size: int = 32
  max_length: int = 64
  unit_length: int = 4
  text_max_length: int = 24
  min_len: int = 40
  max_len: int = 200
  train_split: str = "train"
  val_split: str = "val"
  text_embeddings: str = ""      # .npz of precomputed token embeddings (text.kind == "precomputed")
  num_val_batches: int = 2

  def __post_init__(self):
    if self.max_length % self.unit_length:
      raise ValueError(f"DataConfig.max_length: expected a multiple of unit_length={self.unit_length}, "
                       f"found {self.max_length}")


@dataclasses.dataclass(frozen=True)
class BaseConfig:
  """Everything the base-generator training needs. Defaults are the tiny CPU config (VAE 500 + diffusion 800
  steps, about 1.5 minutes on 2 cores; the quickstart trains 1500 + 1500 in about 2.5 minutes)."""

  model: str = "mld"
  seed: int = 0
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  vae: VAEConfig = dataclasses.field(default_factory=VAEConfig)
  denoiser: DenoiserConfig = dataclasses.field(default_factory=DenoiserConfig)
  text: TextEncoderConfig = dataclasses.field(default_factory=TextEncoderConfig)
  # The tiny config predicts the clean sample (MDM's choice): with 1000 CPU steps an epsilon-predicting
  # denoiser stayed at chance R-precision (its x0 estimate at high t was noise), a sample-predicting one reached
  # the VAE's own reconstruction R-precision (WORKSPACE "Base generator"). 'paper' keeps MLD's epsilon.
  diffusion: DiffusionConfig = dataclasses.field(
      default_factory=lambda: DiffusionConfig(prediction_type="sample"))
  sampler: SamplerConfig = dataclasses.field(default_factory=SamplerConfig)
  vae_optim: common.OptimConfig = dataclasses.field(
      default_factory=lambda: common.OptimConfig(learning_rate=1e-3, warmup_steps=50, decay_steps=450))
  diffusion_optim: common.OptimConfig = dataclasses.field(
      default_factory=lambda: common.OptimConfig(learning_rate=1e-3, warmup_steps=50, decay_steps=750))
  vae_steps: int = 500
  diffusion_steps: int = 800
  cond_drop_prob: float = 0.1      # unconditional dropout for classifier-free guidance
  ema_decay: float = 0.0           # 0 disables the EMA copy; generation uses EMA params when present
  scale_latents: bool = True       # multiply latents by 1/std (measured once on training batches)
  log_every: int = 50
  checkpoint_every: int = 500
  eval_every: int = 0              # periodic validation; 0: only once at the end of each stage

  def __post_init__(self):
    if self.model not in MODELS:
      raise ValueError(f"BaseConfig.model: expected one of {MODELS}, found {self.model!r}")
    if not 0.0 <= self.cond_drop_prob < 1.0:
      raise ValueError(f"BaseConfig.cond_drop_prob: expected in [0, 1), found {self.cond_drop_prob}")


def get_config(name: str = "tiny", model: str = "mld") -> BaseConfig:
  """Named configs: 'tiny' (CPU: widths 64, 1-layer VAE encoder/decoder, 3-layer skip denoiser, no dropout,
  64-frame windows, sample prediction, ~1.5 min for both stages), 'small' (one GPU, minutes to an hour, sample
  prediction), 'paper' (MLD sizes: latent [1, 256], 9 layers, 4 heads, ff 1024, dropout 0.1, skip, epsilon
  prediction; MDM: width 512, 8 layers, sample prediction as in MDM). Step counts of 'paper' are round
  numbers, not MLD's epoch schedule."""
  if name == "tiny":
    return BaseConfig(model=model)
  if name == "small":
    return BaseConfig(
        model=model, data=DataConfig(batch_size=64, max_length=196, text_max_length=32, num_val_batches=8),
        vae=VAEConfig(latent_dim=128, width=128, encoder_layers=5, decoder_layers=5, ff_dim=512,
                      dropout=0.1, logvar_offset=0.0),
        denoiser=DenoiserConfig(width=128, num_layers=5, ff_dim=512, dropout=0.1),
        text=TextEncoderConfig(width=128, num_layers=2, ff_dim=512, dropout=0.1),
        vae_optim=common.OptimConfig(learning_rate=2e-4, warmup_steps=1000, decay_steps=49000),
        diffusion_optim=common.OptimConfig(learning_rate=1e-4, warmup_steps=1000, decay_steps=99000),
        vae_steps=50_000, diffusion_steps=100_000, ema_decay=0.999, log_every=100, checkpoint_every=5000,
        eval_every=5000)
  if name == "paper":
    den = DenoiserConfig.paper() if model == "mld" else DenoiserConfig.mdm_paper()
    return BaseConfig(
        model=model, data=DataConfig(batch_size=64, max_length=196, text_max_length=32, num_val_batches=16),
        diffusion=DiffusionConfig(prediction_type="epsilon" if model == "mld" else "sample"),
        vae=VAEConfig.paper(), denoiser=den, text=TextEncoderConfig.paper(),
        vae_optim=common.OptimConfig(learning_rate=1e-4, warmup_steps=1000, decay_steps=299_000),
        diffusion_optim=common.OptimConfig(learning_rate=1e-4, warmup_steps=1000, decay_steps=299_000),
        vae_steps=300_000, diffusion_steps=300_000, ema_decay=0.9999, log_every=100,
        checkpoint_every=10_000, eval_every=10_000)
  raise ValueError(f"config name: expected 'tiny', 'small' or 'paper', found {name!r}")


def config_to_dict(config) -> dict:
  return dataclasses.asdict(config)


config_from_dict = common.config_from_dict


def _parse_value(text: str, current: Any, key: str):
  if isinstance(current, bool):
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
      return True
    if low in ("0", "false", "no", "off"):
      return False
    raise ValueError(f"override {key}={text!r}: expected a boolean (true/false)")
  try:
    if isinstance(current, int):
      return int(text)
    if isinstance(current, float):
      return float(text)
  except ValueError:
    raise ValueError(f"override {key}={text!r}: expected {type(current).__name__}") from None
  return text


def apply_overrides(config, overrides: Sequence[str]):
  """Applies `key=value` strings ('vae.width=32', 'diffusion.prediction_type=sample') to a frozen dataclass
  config, converting each value to the type of the field it replaces."""
  for item in overrides:
    if "=" not in item:
      raise ValueError(f"override {item!r}: expected 'key=value'")
    key, text = item.split("=", 1)
    config = _override(config, key.strip().split("."), text, key.strip())
  return config


def _override(obj, path, text, full):
  names = [f.name for f in dataclasses.fields(obj)]
  if path[0] not in names:
    raise ValueError(f"override {full!r}: {type(obj).__name__} has no field {path[0]!r}; fields: {names}")
  cur = getattr(obj, path[0])
  if len(path) > 1:
    if not dataclasses.is_dataclass(cur):
      raise ValueError(f"override {full!r}: {path[0]!r} is not a nested config")
    return dataclasses.replace(obj, **{path[0]: _override(cur, path[1:], text, full)})
  if dataclasses.is_dataclass(cur):
    raise ValueError(f"override {full!r}: {path[0]!r} is a config group; set one of its fields")
  return dataclasses.replace(obj, **{path[0]: _parse_value(text, cur, full)})


# --------------------------------------------------------------------------------------------- models
@dataclasses.dataclass(frozen=True)
class Modules:
  vae: Optional[MotionVAE]
  denoiser: Any
  text: TextEncoder


def build_modules(config: BaseConfig) -> Modules:
  vae = MotionVAE(config.vae) if config.model == "mld" else None
  den = LatentDenoiser(config.denoiser) if config.model == "mld" else MotionDenoiser(config.denoiser)
  return Modules(vae, den, TextEncoder(config.text))


def init_vae_params(config: BaseConfig, rng: jax.Array) -> Any:
  vae = MotionVAE(config.vae)
  length = config.data.max_length
  return vae.init(rng, jnp.zeros((1, length, config.vae.nfeats)), jnp.ones((1, length), bool))


def _dummy_text_inputs(config: BaseConfig, b: int = 1):
  lt = config.data.text_max_length
  if config.text.kind == "learned":
    return jnp.zeros((b, lt), jnp.int32), jnp.ones((b, lt), bool)
  return jnp.zeros((b, lt, config.text.embed_dim)), jnp.ones((b, lt), bool)


def init_diffusion_params(config: BaseConfig, rng: jax.Array) -> dict:
  """{"denoiser": ..., "text": ...} (the text encoder trains with the denoiser here)."""
  m = build_modules(config)
  k_text, k_den = jax.random.split(rng)
  tok, tmask = _dummy_text_inputs(config)
  text_params = m.text.init(k_text, tok, tmask)
  cond = m.text.apply(text_params, tok, tmask)
  if config.model == "mld":
    x = jnp.zeros((1, config.vae.latent_size, config.vae.latent_dim))
  else:
    x = jnp.zeros((1, config.data.max_length, config.vae.nfeats))
    cond = {**cond, "frame_mask": jnp.ones((1, config.data.max_length), bool)}
  return {"denoiser": m.denoiser.init(k_den, x, jnp.zeros((1,), jnp.int32), cond), "text": text_params}


def text_inputs(config: BaseConfig, batch: dict) -> tuple[jax.Array, jax.Array]:
  """The text encoder's inputs from a data batch (token ids, or precomputed embeddings)."""
  if config.text.kind == "learned":
    return batch["tokens"], batch["token_mask"]
  if "text_emb" not in batch:
    raise ValueError("batch: text.kind='precomputed' needs 'text_emb' (set data.text_embeddings to the .npz)")
  return batch["text_emb"], batch["text_emb_mask"]


def make_cond(config: BaseConfig, text: TextEncoder, text_params, inputs, mask, frame_mask=None,
              deterministic: bool = True, rng: Optional[jax.Array] = None) -> tuple[dict, dict]:
  """(cond, uncond) for the denoiser. MDM adds `frame_mask` [B, L] to both."""
  rngs = None if rng is None else {"dropout": rng}
  cond = text.apply(text_params, inputs, mask, deterministic, rngs=rngs)
  uncond = text.apply(text_params, mask.shape[0], mask.shape[1], method=TextEncoder.null)
  if config.model == "mdm":
    cond = {**cond, "frame_mask": frame_mask}
    uncond = {**uncond, "frame_mask": frame_mask}
  return cond, uncond


def vae_tx(config: BaseConfig):
  return common.make_optimizer(config.vae_optim)


def diffusion_tx(config: BaseConfig):
  return common.make_optimizer(config.diffusion_optim)


# --------------------------------------------------------------------------------------------- steps
_ARRAY_KEYS = ("motion", "mask", "length", "tokens", "token_mask", "text_emb", "text_emb_mask")


def _arrays(batch) -> dict:
  arrays = batch[0] if isinstance(batch, tuple) else batch
  return {k: jnp.asarray(v) for k, v in arrays.items() if k in _ARRAY_KEYS}


def _local(batch, mesh):
  """On a mesh, each process keeps its rows of the (identical on every host) global batch."""
  return batch if mesh is None else parallel.local_rows(_arrays(batch))


def _model_key(config: BaseConfig) -> BaseConfig:
  """The config with the fields that do not change compiled code zeroed: jitted functions are cached on it,
  so a resumed (or longer) run with the same model reuses the compiled steps."""
  return dataclasses.replace(config, vae_steps=0, diffusion_steps=0, log_every=0, checkpoint_every=0,
                             eval_every=0, data=dataclasses.replace(config.data, num_val_batches=0))


def _jit(step, mesh):
  """Plain jit on one device; on a mesh the batch (argument 1) is split and the state FSDP-sharded."""
  return jax.jit(step) if mesh is None else parallel.jit_sharded(step, mesh, batch_argnums=(1,))


@functools.lru_cache(maxsize=16)
def _vae_step_fn(config: BaseConfig, mesh=None):
  vae, tx = MotionVAE(config.vae), vae_tx(config)

  def step(state, batch, mean, std, key):
    k_z, k_drop = jax.random.split(jax.random.fold_in(key, state.step))

    def loss_fn(params):
      recon, mu, logvar = vae.apply(params, batch["motion"], batch["mask"], k_z, deterministic=False,
                                    rngs={"dropout": k_drop})
      return vae_loss(recon, batch["motion"], batch["mask"], mu, logvar, config.vae, mean, std)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state, finite = common.apply_gradients(state, grads, tx, loss, config.ema_decay)
    return state, {**metrics, "grad_norm": optax.tree.norm(grads), "finite": finite}

  return _jit(step, mesh)


def make_vae_step(config: BaseConfig, mean: np.ndarray, std: np.ndarray, key: jax.Array, mesh=None):
  """`(state, batch) -> (state, metrics)` for the VAE, jitted; dropout and z-sampling keys are
  `fold_in(key, state.step)`. `mesh`: data-parallel / FSDP step (same result as one device)."""
  step = _vae_step_fn(_model_key(config), mesh)
  mean, std = jnp.asarray(mean), jnp.asarray(std)
  return lambda state, batch: step(state, _arrays(batch), mean, std, key)


def encode_latents(config: BaseConfig, vae_params, batch: dict, rng: Optional[jax.Array],
                   latent_scale) -> jax.Array:
  """z [B, latent_size, latent_dim] in diffusion space (sampled from q(z|x) when rng is given) * scale."""
  mu, logvar = MotionVAE(config.vae).apply(vae_params, batch["motion"], batch["mask"],
                                           method=MotionVAE.encode)
  z = mu if rng is None else reparameterize(rng, mu, logvar)
  return z * latent_scale


def diffusion_loss(config: BaseConfig, params: dict, vae_params, batch: dict, rng: jax.Array,
                   latent_scale, deterministic: bool = False) -> tuple[jax.Array, dict]:
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
  cond, uncond = make_cond(config, m.text, params["text"], inputs, tmask, batch["mask"],
                           deterministic=deterministic, rng=None if deterministic else k_text)
  if config.cond_drop_prob > 0:
    cond = drop_condition(k_drop, cond, uncond, config.cond_drop_prob)
  b = x0.shape[0]
  t = schedules.sample_train_timesteps(k_t, b, schedule)
  noise = jax.random.normal(k_noise, x0.shape, x0.dtype)
  x_t = schedules.add_noise(schedule, x0, noise, t)
  target = schedules.training_target(schedule, x0, noise, t)
  pred = m.denoiser.apply(params["denoiser"], x_t, t, cond, deterministic,
                          rngs=None if deterministic else {"dropout": k_den})
  err = (pred - target) ** 2
  if config.model == "mdm":
    w = batch["mask"][..., None].astype(err.dtype)
    loss = jnp.sum(err * w) / jnp.maximum(jnp.sum(w) * err.shape[-1], 1.0)
  else:
    loss = jnp.mean(err)
  return loss, {"loss": loss}


@functools.lru_cache(maxsize=16)
def _diffusion_step_fn(config: BaseConfig, mesh=None):
  tx = diffusion_tx(config)

  def step(state, batch, vae_params, latent_scale, key):
    rng = jax.random.fold_in(key, state.step)
    (loss, metrics), grads = jax.value_and_grad(
        lambda p: diffusion_loss(config, p, vae_params, batch, rng, latent_scale), has_aux=True)(state.params)
    state, finite = common.apply_gradients(state, grads, tx, loss, config.ema_decay)
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
  tok = Tokenizer.build([c for e in dataset.entries for c, _ in e.captions],
                        max_length=config.data.text_max_length)
  os.makedirs(workdir, exist_ok=True)
  tok.save(path)
  return tok


def _batch_kwargs(config: BaseConfig, text_embeddings: Optional[TextEmbeddings]) -> dict:
  return dict(max_length=config.data.max_length, unit_length=config.data.unit_length,
              text_embeddings=text_embeddings)


def _text_embeddings(config: BaseConfig) -> Optional[TextEmbeddings]:
  if config.text.kind != "precomputed":
    return None
  if not config.data.text_embeddings:
    raise ValueError("config: text.kind='precomputed' needs data.text_embeddings (path of the .npz)")
  return TextEmbeddings(config.data.text_embeddings)


def validation_batches(config: BaseConfig, dataset: MotionDataset, tokenizer: Tokenizer,
                       text_embeddings: Optional[TextEmbeddings] = None) -> list[dict]:
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
  return {"stage": stage, "config": config_to_dict(config), "mean": dataset.mean.tolist(),
          "std": dataset.std.tolist(), "tokenizer": "tokenizer.json", "latent_scale": float(latent_scale),
          "dataset": {"root": str(dataset.root), "kind": dataset.info.kind, "dim": dataset.info.dim,
                      "joints_num": dataset.info.joints_num}}


# Fields that never change a stage's result (run length, logging) or that only the other stage reads: a VAE
# can be resumed (or reused by a new denoiser) whatever the denoiser/text/diffusion settings are.
_RESUME_IGNORE = ("vae_steps", "diffusion_steps", "log_every", "checkpoint_every", "eval_every",
                  "data.num_val_batches")
_VAE_IGNORE = ("denoiser.", "text.", "diffusion.", "diffusion_optim.", "sampler.", "cond_drop_prob",
               "scale_latents", "data.text_max_length", "data.text_embeddings")


def _check_resume(ckpt: common.Checkpointer, config: BaseConfig, stage: str) -> None:
  if ckpt.latest_step() is None:
    return
  saved = ckpt.metadata()["config"]
  ignore = _RESUME_IGNORE + (_VAE_IGNORE if stage == "vae" else ())
  common.check_config_matches(saved, config_to_dict(config), str(ckpt.directory), ignore=ignore)


@functools.lru_cache(maxsize=16)
def _reconstruction_fn(config: BaseConfig):
  vae = MotionVAE(config.vae)

  @jax.jit
  def err(params, motion, mask, mean, std):
    recon, _, _ = vae.apply(params, motion, mask)
    d = jnp.linalg.norm(features_to_joints(recon, mean, std) - features_to_joints(motion, mean, std), axis=-1)
    w = mask[..., None].astype(d.dtype)
    return (jnp.sum(d * w), jnp.sum(w) * d.shape[-1], jnp.sum(jnp.abs(recon - motion) * mask[..., None]),
            jnp.sum(mask) * motion.shape[-1])
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


def train_vae(config: BaseConfig, workdir: str, dataset: MotionDataset, tokenizer: Tokenizer,
              val_dataset: Optional[MotionDataset] = None, progress: bool = True, mesh=None) -> tuple[Any, dict]:
  """Trains (or resumes, or just restores when finished) the VAE. Returns (vae params, final val metrics);
  the params are the EMA copy when ema_decay > 0. `mesh` (`parallel.make_mesh`): data-parallel / FSDP steps
  (config.data.batch_size is the GLOBAL batch and must divide the device count)."""
  if config.model != "mld":
    raise ValueError(f"train_vae: only the 'mld' model has a VAE, found model={config.model!r}")
  stage_dir = pathlib.Path(workdir) / "vae"
  ckpt = common.Checkpointer(stage_dir / "checkpoints")
  _check_resume(ckpt, config, "vae")
  writer = common.MetricWriter(stage_dir)
  root = jax.random.PRNGKey(config.seed)
  tx = vae_tx(config)
  state = common.create_train_state(init_vae_params(config, jax.random.fold_in(root, 10)), tx,
                                    use_ema=config.ema_decay > 0)
  emb = _text_embeddings(config)
  val = validation_batches(config, val_dataset if val_dataset is not None else dataset, tokenizer, emb)
  eval_fn = lambda s, step: reconstruction_error(config, s.ema_params if s.ema_params is not None else s.params,
                                                 val, dataset.mean, dataset.std)
  batch_fn = lambda step: _local(batching.batch_at(
      dataset, step, config.data.batch_size, config.seed, tokenizer, **_batch_kwargs(config, emb)), mesh)
  try:
    result = common.train_loop(
        state=state, step_fn=make_vae_step(config, dataset.mean, dataset.std, jax.random.fold_in(root, 0), mesh),
        batch_fn=batch_fn, num_steps=config.vae_steps, checkpointer=ckpt, writer=writer,
        metadata=_metadata(config, dataset, "vae"), log_every=config.log_every,
        checkpoint_every=config.checkpoint_every, eval_fn=eval_fn,
        eval_every=config.eval_every, desc="vae", progress=progress)
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


def measure_latent_scale(config: BaseConfig, vae_params, dataset: MotionDataset, tokenizer: Tokenizer,
                         num_batches: int = 4) -> float:
  """1 / std of the posterior means over the first training batches (deterministic), as Stable Diffusion's
  latent scale factor: the diffusion then runs on unit-scale latents. 1.0 when scale_latents is off."""
  if config.model != "mld" or not config.scale_latents:
    return 1.0
  emb = _text_embeddings(config)
  zs = []
  for s in range(num_batches):
    b = _arrays(batching.batch_at(dataset, s, config.data.batch_size, config.seed, tokenizer,
                                  **_batch_kwargs(config, emb)))
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
  losses = [float(f(params, vae_params, b, jax.random.fold_in(key, i), jnp.float32(latent_scale)))
            for i, b in enumerate(batches)]
  return {"val/diffusion_loss": float(np.mean(losses))}


def train_diffusion(config: BaseConfig, workdir: str, dataset: MotionDataset, tokenizer: Tokenizer,
                    vae_params=None, val_dataset: Optional[MotionDataset] = None, progress: bool = True,
                    vae_step: Optional[int] = None, mesh=None) -> tuple[dict, dict]:
  """Trains (or resumes) the denoiser and the text encoder in the frozen VAE's latent space (MLD) or on
  motion features (MDM). Returns ({"denoiser", "text"} params (EMA when enabled), final val metrics).

  `vae_step` (the VAE checkpoint's step) is stored in the metadata: resuming a diffusion run on a VAE that
  was trained further since would mix two latent spaces, so it raises instead. `mesh`: as in `train_vae`."""
  if config.model == "mld" and vae_params is None:
    raise ValueError("train_diffusion: model='mld' needs the trained vae_params")
  stage_dir = pathlib.Path(workdir) / "diffusion"
  ckpt = common.Checkpointer(stage_dir / "checkpoints")
  _check_resume(ckpt, config, "diffusion")
  if ckpt.latest_step() is not None and config.model == "mld":
    saved = ckpt.metadata().get("vae_step")
    if saved != vae_step:
      ckpt.close()
      raise common.CheckpointError(
          f"{ckpt.directory}: diffusion checkpoint was trained on the VAE at step {saved}, but the VAE is now "
          f"at step {vae_step}; delete {stage_dir} to retrain the diffusion on the new latent space")
  writer = common.MetricWriter(stage_dir)
  root = jax.random.PRNGKey(config.seed)
  latent_scale = measure_latent_scale(config, vae_params, dataset, tokenizer)
  logging.info("latent scale: %.5f", latent_scale)
  tx = diffusion_tx(config)
  state = common.create_train_state(init_diffusion_params(config, jax.random.fold_in(root, 11)), tx,
                                    use_ema=config.ema_decay > 0)
  emb = _text_embeddings(config)
  val = validation_batches(config, val_dataset if val_dataset is not None else dataset, tokenizer, emb)
  eval_fn = lambda s, step: validation_diffusion_loss(
      config, s.ema_params if s.ema_params is not None else s.params, vae_params, val, latent_scale)
  batch_fn = lambda step: _local(batching.batch_at(
      dataset, step, config.data.batch_size, config.seed, tokenizer, **_batch_kwargs(config, emb)), mesh)
  try:
    result = common.train_loop(
        state=state, step_fn=make_diffusion_step(config, vae_params, latent_scale, jax.random.fold_in(root, 1),
                                                 mesh),
        batch_fn=batch_fn, num_steps=config.diffusion_steps, checkpointer=ckpt, writer=writer,
        metadata={**_metadata(config, dataset, "diffusion", latent_scale), "vae_step": vae_step},
        log_every=config.log_every,
        checkpoint_every=config.checkpoint_every, eval_fn=eval_fn,
        eval_every=config.eval_every, desc="diffusion", progress=progress)
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
  return dataclasses.replace(config, text=text, data=data,
                             vae=dataclasses.replace(config.vae, nfeats=dataset.info.dim))


def train_and_evaluate(config: BaseConfig, workdir: str, data_dir: Optional[str] = None,
                       dataset: Optional[MotionDataset] = None, val_dataset: Optional[MotionDataset] = None,
                       progress: bool = True, mesh=None) -> dict:
  """Runs (or resumes) both stages (on `mesh` when given). Returns {"config", "vae": val metrics,
  "diffusion": val metrics, "seconds": {"vae", "diffusion"}}."""
  if dataset is None:
    if data_dir is None:
      raise ValueError("train_and_evaluate: pass data_dir or dataset")
    dataset, val_dataset = load_data(config, data_dir)
  os.makedirs(workdir, exist_ok=True)
  tokenizer = build_tokenizer(config, dataset, workdir)
  config = finalize_config(config, dataset, tokenizer)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(config_to_dict(config), f, indent=1)
  out = {"config": config, "seconds": {}}
  vae_params = None
  if config.model == "mld":
    t0 = time.time()
    vae_params, out["vae"] = train_vae(config, workdir, dataset, tokenizer, val_dataset, progress, mesh)
    out["seconds"]["vae"] = time.time() - t0
    logging.info("VAE: %s (%.1f s)", out["vae"], out["seconds"]["vae"])
  t0 = time.time()
  _, out["diffusion"] = train_diffusion(config, workdir, dataset, tokenizer, vae_params, val_dataset, progress,
                                        vae_step=out["vae"]["step"] if vae_params is not None else None,
                                        mesh=mesh)
  out["seconds"]["diffusion"] = time.time() - t0
  logging.info("diffusion: %s (%.1f s)", out["diffusion"], out["seconds"]["diffusion"])
  return out
