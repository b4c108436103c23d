"""The generator kinds as one table (`GENERATORS`), the generator's configuration and its networks.

A kind is a row: which denoiser, which sampling process (core/sampling_process.py), whether the process runs in the
motion VAE's latent or on motion features, and whether the denoiser reads the frame mask. Rows: 'mld' (motion VAE +
latent denoiser, DDPM/DDIM), 'mdm' (motion-space denoiser, DDPM/DDIM), 'flow' (motion VAE + latent transformer
velocity network, flow matching). Everything kind-specific is read from the row through the helpers below
(`build_modules`, `model_shape`, `make_process`, `to_model_space`, `make_cond`, `loss_mask`); nothing else compares
kind names. A new generator is one row (plus its module); tests/test_generator_table.py adds one.

`BaseConfig` (defaults: the tiny CPU setting; the presets 'small' / 'paper' are in easytune_jax/configs/base.py)
says which kind, the networks' sizes, the process, the sampler and the training budget. Training lives in
`train/base.py`; loading a trained or converted generator in `bundles/generator.py`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from easytune_jax.core.flow import FlowConfig, make_flow
from easytune_jax.core.optim import OptimConfig, make_optimizer
from easytune_jax.core.sampling import SamplerConfig
from easytune_jax.core.sampling_process import SamplingProcess
from easytune_jax.core.schedules import DiffusionConfig, make_schedule
from easytune_jax.models.denoiser import DenoiserConfig, LatentDenoiser, MotionDenoiser
from easytune_jax.models.layers import reparameterize
from easytune_jax.models.text_encoder import TextEncoder, TextEncoderConfig
from easytune_jax.models.vae import MotionVAE, VAEConfig


@dataclasses.dataclass(frozen=True)
class GeneratorKind:
  """One row of `GENERATORS`.

  label: display name. latent: the process runs in the motion VAE's latent (trained first, frozen; motion <->
  model space through it), else directly on normalised motion features. denoiser: BaseConfig -> the Flax module
  `(x_t, t, cond, deterministic) -> model output`. process: BaseConfig -> the sampling process. frame_cond: the
  denoiser reads cond['frame_mask'] bool [B, L] (and the training loss counts valid frames only).
  """

  label: str
  latent: bool
  denoiser: Callable[[Any], nn.Module]
  process: Callable[[Any], SamplingProcess]
  frame_cond: bool = False


def _diffusion(config) -> SamplingProcess:
  return make_schedule(config.diffusion)


def _flow(config) -> SamplingProcess:
  return make_flow(config.flow)


# The generator kinds, one row each (module docstring). configs/base.py has presets '<size>_<kind>' for each.
GENERATORS: dict[str, GeneratorKind] = {
  "mld": GeneratorKind("MLD", latent=True, denoiser=lambda c: LatentDenoiser(c.denoiser), process=_diffusion),
  "mdm": GeneratorKind(
    "MDM", latent=False, denoiser=lambda c: MotionDenoiser(c.denoiser), process=_diffusion, frame_cond=True
  ),
  "flow": GeneratorKind("Flow", latent=True, denoiser=lambda c: LatentDenoiser(c.denoiser), process=_flow),
}


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
  # The flow-matching process of the 'flow' kind (the diffusion kinds read `diffusion`).
  flow: FlowConfig = dataclasses.field(default_factory=FlowConfig)
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
    if self.model not in GENERATORS:
      raise ValueError(f"BaseConfig.model: expected one of {tuple(GENERATORS)}, found {self.model!r}")
    if not 0.0 <= self.cond_drop_prob < 1.0:
      raise ValueError(f"BaseConfig.cond_drop_prob: expected in [0, 1), found {self.cond_drop_prob}")


# --------------------------------------------------------------------------------------------- models
@dataclasses.dataclass(frozen=True)
class Modules:
  vae: MotionVAE | None
  denoiser: Any
  text: TextEncoder


def kind_of(config: BaseConfig) -> GeneratorKind:
  """The row of `config.model`."""
  return GENERATORS[config.model]


def build_modules(config: BaseConfig) -> Modules:
  kind = kind_of(config)
  return Modules(MotionVAE(config.vae) if kind.latent else None, kind.denoiser(config), TextEncoder(config.text))


def make_process(config: BaseConfig) -> SamplingProcess:
  """The kind's sampling process (DDIM / DDPM schedule, flow)."""
  return kind_of(config).process(config)


def model_shape(config: BaseConfig) -> tuple[int, int]:
  """Per-example shape of x_t: (latent_size, latent_dim) in a VAE latent, (max_length, nfeats) on features."""
  if kind_of(config).latent:
    return (config.vae.latent_size, config.vae.latent_dim)
  return (config.data.max_length, config.vae.nfeats)


def loss_mask(config: BaseConfig, batch: dict) -> jax.Array | None:
  """The training loss's element mask: the frame mask [B, L] for frame-conditioned kinds, else None (all)."""
  return batch["mask"] if kind_of(config).frame_cond else None


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
  x = jnp.zeros((1,) + model_shape(config))
  if kind_of(config).frame_cond:
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
  """(cond, uncond) for the denoiser. Frame-conditioned kinds (MDM) add `frame_mask` [B, L] to both."""
  rngs = None if rng is None else {"dropout": rng}
  cond = text.apply(text_params, inputs, mask, deterministic, rngs=rngs)
  uncond = text.apply(text_params, mask.shape[0], mask.shape[1], method=TextEncoder.null)
  if kind_of(config).frame_cond:
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


def to_model_space(config: BaseConfig, vae_params, batch: dict, rng: jax.Array | None, latent_scale) -> jax.Array:
  """A data batch's motion in the space the process runs in [B, *model_shape]: the VAE latent (`encode_latents`,
  posterior mean when rng is None) for latent kinds, the normalised features themselves otherwise."""
  if kind_of(config).latent:
    return encode_latents(config, vae_params, batch, rng, latent_scale)
  return batch["motion"]
