"""The generator's configuration and networks: MLD (motion VAE + latent denoiser) or MDM (motion-space denoiser).

`BaseConfig` (defaults: the tiny CPU setting; the presets 'small' / 'paper' are in easytune_jax/configs/base.py)
says which networks, their sizes, the diffusion schedule, the sampler and the training budget; `build_modules` / `init_*_params` / `make_cond` build and call
them. Training lives in `train/base.py`; loading a trained or converted generator in `bundles/generator.py`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from easytune_jax.core.optim import OptimConfig, make_optimizer
from easytune_jax.core.sampling import SamplerConfig
from easytune_jax.core.schedules import DiffusionConfig
from easytune_jax.models.denoiser import DenoiserConfig, LatentDenoiser, MotionDenoiser
from easytune_jax.models.layers import reparameterize
from easytune_jax.models.text_encoder import TextEncoder, TextEncoderConfig
from easytune_jax.models.vae import MotionVAE, VAEConfig

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
  text_embeddings: str = ""  # .npz of precomputed token embeddings (text.kind == "precomputed")
  num_val_batches: int = 2

  def __post_init__(self):
    if self.max_length % self.unit_length:
      raise ValueError(
        f"DataConfig.max_length: expected a multiple of unit_length={self.unit_length}, found {self.max_length}"
      )


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
  # the VAE's own reconstruction R-precision (WORKSPACE "Base generator"). 'paper' (configs/base.py) keeps MLD's
  # epsilon.
  diffusion: DiffusionConfig = dataclasses.field(default_factory=lambda: DiffusionConfig(prediction_type="sample"))
  # The sampler the model is made for (generation and evaluation use it unless told otherwise): the CPU setting
  # here (SamplerConfig's default: core/sampling.py CPU_NUM_STEPS / CPU_GUIDANCE_SCALE), MLD's 50 steps / w 7.5
  # in 'small' and 'paper'.
  sampler: SamplerConfig = dataclasses.field(default_factory=SamplerConfig)
  vae_optim: OptimConfig = dataclasses.field(
    default_factory=lambda: OptimConfig(learning_rate=1e-3, warmup_steps=50, decay_steps=450)
  )
  diffusion_optim: OptimConfig = dataclasses.field(
    default_factory=lambda: OptimConfig(learning_rate=1e-3, warmup_steps=50, decay_steps=750)
  )
  vae_steps: int = 500
  diffusion_steps: int = 800
  cond_drop_prob: float = 0.1  # unconditional dropout for classifier-free guidance
  ema_decay: float = 0.0  # 0 disables the EMA copy; generation uses EMA params when present
  scale_latents: bool = True  # multiply latents by 1/std (measured once on training batches)
  log_every: int = 50
  checkpoint_every: int = 500
  eval_every: int = 0  # periodic validation; 0: only once at the end of each stage

  def __post_init__(self):
    if self.model not in MODELS:
      raise ValueError(f"BaseConfig.model: expected one of {MODELS}, found {self.model!r}")
    if not 0.0 <= self.cond_drop_prob < 1.0:
      raise ValueError(f"BaseConfig.cond_drop_prob: expected in [0, 1), found {self.cond_drop_prob}")


# --------------------------------------------------------------------------------------------- models
@dataclasses.dataclass(frozen=True)
class Modules:
  vae: MotionVAE | None
  denoiser: Any
  text: TextEncoder


def build_modules(config: BaseConfig) -> Modules:
  vae = MotionVAE(config.vae) if config.model == "mld" else None
  den = LatentDenoiser(config.denoiser) if config.model == "mld" else MotionDenoiser(config.denoiser)
  return Modules(vae, den, TextEncoder(config.text))


def init_vae_params(config: BaseConfig, rng: jax.Array) -> Any:
  vae = MotionVAE(config.vae)
  length = config.data.max_length
  init = lambda r: vae.init(r, jnp.zeros((1, length, config.vae.nfeats)), jnp.ones((1, length), bool))
  return jax.jit(init)(rng)


def _dummy_text_inputs(config: BaseConfig, b: int = 1):
  lt = config.data.text_max_length
  if config.text.kind == "learned":
    return jnp.zeros((b, lt), jnp.int32), jnp.ones((b, lt), bool)
  return jnp.zeros((b, lt, config.text.embed_dim)), jnp.ones((b, lt), bool)


def init_diffusion_params(config: BaseConfig, rng: jax.Array) -> dict:
  """{"denoiser": ..., "text": ...} (the text encoder trains with the denoiser here; one compiled program)."""
  return jax.jit(functools.partial(_init_diffusion_params, config))(rng)


def _init_diffusion_params(config: BaseConfig, rng: jax.Array) -> dict:
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


def make_cond(
  config: BaseConfig,
  text: TextEncoder,
  text_params,
  inputs,
  mask,
  frame_mask=None,
  deterministic: bool = True,
  rng: jax.Array | None = None,
) -> tuple[dict, dict]:
  """(cond, uncond) for the denoiser. MDM adds `frame_mask` [B, L] to both."""
  rngs = None if rng is None else {"dropout": rng}
  cond = text.apply(text_params, inputs, mask, deterministic, rngs=rngs)
  uncond = text.apply(text_params, mask.shape[0], mask.shape[1], method=TextEncoder.null)
  if config.model == "mdm":
    cond = {**cond, "frame_mask": frame_mask}
    uncond = {**uncond, "frame_mask": frame_mask}
  return cond, uncond


def vae_tx(config: BaseConfig):
  return make_optimizer(config.vae_optim)


def diffusion_tx(config: BaseConfig):
  return make_optimizer(config.diffusion_optim)


# --------------------------------------------------------------------------------------------- steps


def encode_latents(config: BaseConfig, vae_params, batch: dict, rng: jax.Array | None, latent_scale) -> jax.Array:
  """z [B, latent_size, latent_dim] in diffusion space (sampled from q(z|x) when rng is given) * scale."""
  mu, logvar = MotionVAE(config.vae).apply(vae_params, batch["motion"], batch["mask"], method=MotionVAE.encode)
  z = mu if rng is None else reparameterize(rng, mu, logvar)
  return z * latent_scale
