"""Presets of launch/train_base.py: `BaseConfig` (models/generator.py); '<size>' for MLD, '<size>_<kind>' for every
other row of the generator table (`models.generator.GENERATORS`: '<size>_mdm', '<size>_flow').

'tiny' (CPU: widths 64, 1-layer VAE encoder/decoder, 3-layer skip denoiser, no dropout, 64-frame windows, sample
prediction, the CPU sampler, ~1.5 min for both stages) is `BaseConfig()`. 'small' (one GPU, minutes to an hour,
sample prediction) and 'paper' (MLD sizes: latent [1, 256], 9 layers, 4 heads, ff 1024, dropout 0.1, skip, epsilon
prediction; MDM: width 512, 8 layers, no skip, sample prediction as in MDM) sample with MLD's NUM_STEPS DDIM steps
at w = GUIDANCE_SCALE. Step counts of 'paper' are round numbers, not MLD's epoch schedule.
"""

from __future__ import annotations

import functools

from easytune_jax.configs import lookup
from easytune_jax.core.optim import OptimConfig
from easytune_jax.core.sampling import GUIDANCE_SCALE, NUM_STEPS, SamplerConfig
from easytune_jax.core.schedules import DiffusionConfig
from easytune_jax.models.denoiser import DenoiserConfig
from easytune_jax.models.generator import GENERATORS, BaseConfig, DataConfig
from easytune_jax.models.text_encoder import TextEncoderConfig
from easytune_jax.models.vae import VAEConfig

# MLD's DDIM sampler, what 'small' and 'paper' generators are made for (recorded in their workdirs).
MLD_SAMPLER = SamplerConfig(num_steps=NUM_STEPS, guidance_scale=GUIDANCE_SCALE)


def tiny(model: str = "mld") -> BaseConfig:
  return BaseConfig(model=model)


def small(model: str = "mld") -> BaseConfig:
  return BaseConfig(
    model=model,
    data=DataConfig(batch_size=64, max_length=196, text_max_length=32, num_val_batches=8),
    vae=VAEConfig(
      latent_dim=128, width=128, encoder_layers=5, decoder_layers=5, ff_dim=512, dropout=0.1, logvar_offset=0.0
    ),
    denoiser=DenoiserConfig(width=128, num_layers=5, ff_dim=512, dropout=0.1),
    text=TextEncoderConfig(width=128, num_layers=2, ff_dim=512, dropout=0.1),
    vae_optim=OptimConfig(learning_rate=2e-4, warmup_steps=1000, decay_steps=49000),
    diffusion_optim=OptimConfig(learning_rate=1e-4, warmup_steps=1000, decay_steps=99000),
    sampler=MLD_SAMPLER,
    vae_steps=50_000,
    diffusion_steps=100_000,
    ema_decay=0.999,
    log_every=100,
    checkpoint_every=5000,
    eval_every=5000,
  )


def paper(model: str = "mld") -> BaseConfig:
  if GENERATORS[model].latent:  # MLD's latent denoiser (epsilon prediction for MLD; flow predicts the velocity)
    denoiser = DenoiserConfig(width=256, num_layers=9, num_heads=4, ff_dim=1024, dropout=0.1, skip=True)
    prediction_type = "epsilon"
  else:  # MDM's motion-space denoiser, sample prediction
    denoiser = DenoiserConfig(width=512, num_layers=8, num_heads=4, ff_dim=1024, dropout=0.1, skip=False)
    prediction_type = "sample"
  return BaseConfig(
    model=model,
    data=DataConfig(batch_size=64, max_length=196, text_max_length=32, num_val_batches=16),
    diffusion=DiffusionConfig(prediction_type=prediction_type),
    # MLD's VAE: latent [1, 256] (width = latent_dim), 9 layers, 4 heads, ff 1024, dropout 0.1, skip encoder
    vae=VAEConfig(
      latent_size=1,
      latent_dim=256,
      width=256,
      encoder_layers=9,
      decoder_layers=9,
      num_heads=4,
      ff_dim=1024,
      dropout=0.1,
      skip=True,
      logvar_offset=0.0,
    ),
    denoiser=denoiser,
    # width 256 to match MLD's latent width (MLD itself uses a frozen CLIP: kind='precomputed' with CLIP token
    # embeddings, embed_dim=768, num_layers=0, is the closest match)
    text=TextEncoderConfig(width=256, num_layers=4, num_heads=4, ff_dim=1024, dropout=0.1),
    vae_optim=OptimConfig(learning_rate=1e-4, warmup_steps=1000, decay_steps=299_000),
    diffusion_optim=OptimConfig(learning_rate=1e-4, warmup_steps=1000, decay_steps=299_000),
    sampler=MLD_SAMPLER,
    vae_steps=300_000,
    diffusion_steps=300_000,
    ema_decay=0.9999,
    log_every=100,
    checkpoint_every=10_000,
    eval_every=10_000,
  )


PRESETS = {
  f"{name}{suffix}": functools.partial(make, model)
  for name, make in (("tiny", tiny), ("small", small), ("paper", paper))
  for suffix, model in [("", "mld")] + [(f"_{kind}", kind) for kind in GENERATORS if kind != "mld"]
}


def get_config(name: str = "tiny") -> BaseConfig:
  return lookup(PRESETS, name, "configs/base.py")
