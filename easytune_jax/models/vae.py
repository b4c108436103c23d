"""MLD-style motion VAE: motion features [B, L, D] <-> a Gaussian latent [B, latent_size, latent_dim].

Encoder: learned distribution tokens (2 * latent_size) are prepended to the projected motion, sinusoidal
positions are added over the whole sequence, a (skip) transformer encoder runs with padded frames masked,
and the token outputs are read as (mu, logvar). Decoder: positional queries (sinusoidal or learned) for the
L frames attend to themselves (padded frames masked) and to the latent (memory); a linear head gives the
features; padded frames are set to exactly zero (as MLD's decoder does, docs/humanml3d_format.md#embeddings).

Reference: Chen et al., Executing your Commands via Motion Diffusion in Latent Space (MLD), CVPR 2023,
arXiv 2212.04048 (`mld/models/architectures/mld_vae.py`).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from easytune_jax.data.features import joints_num_for_dim, recover_from_ric
from easytune_jax.models.layers import (
  TransformerDecoder,
  TransformerEncoder,
  kl_to_standard_normal,
  reparameterize,
  sinusoidal_positions,
)

QUERY_POS = ("sine", "learned")


@dataclasses.dataclass(frozen=True)
class VAEConfig:
  """Defaults are the tiny CPU sizes; MLD's (latent [1, 256], 9 layers, 4 heads, ff 1024, dropout 0.1, skip
  encoder) are in the 'paper' preset of configs/base.py. `width` is the transformer width (MLD: equal to
  latent_dim)."""

  nfeats: int = 263
  latent_size: int = 1
  latent_dim: int = 64
  width: int = 64
  encoder_layers: int = 1
  decoder_layers: int = 1
  num_heads: int = 4
  ff_dim: int = 128
  dropout: float = 0.0  # tiny CPU default: dropout RNG dominates CPU compile and step time; 'paper' uses 0.1
  skip: bool = True  # MLD's SkipTransformerEncoder in the encoder (needs an odd layer count)
  query_pos: str = "sine"  # decoder queries: sinusoidal (any length) or learned (up to max_length)
  max_length: int = 196  # only used by learned queries
  kl_weight: float = 1e-4
  feature_weight: float = 1.0
  joint_weight: float = 1.0  # smooth-L1 on joint positions recovered from de-normalised features
  logvar_offset: float = -6.0  # added to the encoder's logvar output: < 0 starts training with a narrow
  # posterior (MLD: 0); short CPU runs otherwise spend their steps on z noise

  def __post_init__(self):
    if self.query_pos not in QUERY_POS:
      raise ValueError(f"VAEConfig.query_pos: expected one of {QUERY_POS}, found {self.query_pos!r}")
    if self.skip and self.encoder_layers % 2 != 1:
      raise ValueError(f"VAEConfig.encoder_layers: skip=True needs an odd number, found {self.encoder_layers}")
    if self.width % self.num_heads:
      raise ValueError(f"VAEConfig.width: expected a multiple of num_heads={self.num_heads}, found {self.width}")


class VAEEncoder(nn.Module):
  """x [B, L, D], mask [B, L] -> (mu, logvar), each [B, latent_size, latent_dim]."""

  config: VAEConfig

  @nn.compact
  def __call__(self, x, mask, deterministic: bool = True):
    cfg = self.config
    b, length = x.shape[:2]
    n = cfg.latent_size
    h = nn.Dense(cfg.width, name="input_proj")(x)
    tokens = self.param("dist_tokens", nn.initializers.normal(1.0), (2 * n, cfg.width))
    seq = jnp.concatenate([jnp.broadcast_to(tokens[None], (b, 2 * n, cfg.width)), h], axis=1)
    seq = seq + sinusoidal_positions(2 * n + length, cfg.width)[None]
    seq_mask = jnp.concatenate([jnp.ones((b, 2 * n), bool), mask], axis=1)
    out = TransformerEncoder(cfg.encoder_layers, cfg.num_heads, cfg.ff_dim, cfg.dropout, skip=cfg.skip)(
      seq, seq_mask, deterministic
    )
    dist = out[:, : 2 * n]
    if cfg.width != cfg.latent_dim:
      dist = nn.Dense(cfg.latent_dim, name="dist_proj")(dist)
    return dist[:, :n], dist[:, n:] + cfg.logvar_offset


class VAEDecoder(nn.Module):
  """z [B, latent_size, latent_dim], mask [B, L] -> features [B, L, D], exactly zero at padded frames."""

  config: VAEConfig

  @nn.compact
  def __call__(self, z, mask, deterministic: bool = True):
    cfg = self.config
    b, length = mask.shape
    if cfg.query_pos == "learned":
      if length > cfg.max_length:
        raise ValueError(f"VAEDecoder: learned queries cover max_length={cfg.max_length} frames, asked for {length}")
      pos = self.param("query_pos", nn.initializers.normal(0.02), (cfg.max_length, cfg.width))[:length]
    else:
      pos = sinusoidal_positions(length, cfg.width)
    queries = jnp.broadcast_to(pos[None], (b, length, cfg.width))
    memory = z if cfg.latent_dim == cfg.width else nn.Dense(cfg.width, name="latent_proj")(z)
    h = TransformerDecoder(cfg.decoder_layers, cfg.num_heads, cfg.ff_dim, cfg.dropout)(
      queries, mask, memory, None, deterministic
    )
    h = nn.LayerNorm()(h)
    out = nn.Dense(cfg.nfeats, name="head")(h)
    return jnp.where(mask[..., None], out, 0.0)


class MotionVAE(nn.Module):
  """`encode(x, mask)` -> (mu, logvar); `decode(z, mask)` -> features;
  `__call__(x, mask, rng)` -> (recon [B, L, D], mu, logvar) with z ~ q(z | x) (mu when rng is None)."""

  config: VAEConfig

  def setup(self):
    self.encoder = VAEEncoder(self.config)
    self.decoder = VAEDecoder(self.config)

  def encode(self, x, mask, deterministic: bool = True):
    _check_motion(x, mask, self.config.nfeats)
    return self.encoder(x, mask, deterministic)

  def decode(self, z, mask, deterministic: bool = True):
    want = (self.config.latent_size, self.config.latent_dim)
    if z.shape[1:] != want:
      raise ValueError(f"MotionVAE.decode: z expected shape [B, {want[0]}, {want[1]}], found {z.shape}")
    return self.decoder(z, mask, deterministic)

  def __call__(self, x, mask, rng: jax.Array | None = None, deterministic: bool = True):
    mu, logvar = self.encode(x, mask, deterministic)
    z = mu if rng is None else reparameterize(rng, mu, logvar)
    return self.decode(z, mask, deterministic), mu, logvar


def _check_motion(x, mask, nfeats):
  if x.ndim != 3 or x.shape[-1] != nfeats:
    raise ValueError(f"motion: expected [B, L, {nfeats}], found {x.shape}")
  if mask.shape != x.shape[:2] or mask.dtype != jnp.bool_:
    raise ValueError(f"mask: expected bool {x.shape[:2]}, found {mask.dtype} {mask.shape}")


def masked_smooth_l1(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
  """Smooth-L1 (Huber, delta 1 = PyTorch's SmoothL1Loss) averaged over the valid elements.
  pred, target [B, L, ...]; mask [B, L]."""
  err = optax.huber_loss(pred, target, delta=1.0)
  m = mask.reshape(mask.shape + (1,) * (err.ndim - mask.ndim)).astype(err.dtype)
  per_frame = err[0, 0].size
  return jnp.sum(err * m) / jnp.maximum(jnp.sum(m) * per_frame, 1.0)


def features_to_joints(features: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
  """Normalised features [..., L, D] -> joint positions [..., L, J, 3] in metres (de-normalise, then
  recover_from_ric)."""
  d = features.shape[-1]
  return recover_from_ric(features * std + mean, joints_num_for_dim(d))


def vae_loss(
  recon: jax.Array,
  target: jax.Array,
  mask: jax.Array,
  mu: jax.Array,
  logvar: jax.Array,
  config: VAEConfig,
  mean: jax.Array | None = None,
  std: jax.Array | None = None,
) -> tuple[jax.Array, dict]:
  """MLD VAE loss: feature_weight * smoothL1(features) + joint_weight * smoothL1(joints) + kl_weight * KL.

  recon, target: normalised features [B, L, D]; mask [B, L]; mu, logvar [B, n, d].
  The joint term needs the dataset `mean`, `std` [D]. Returns (loss, metrics).
  """
  rec = masked_smooth_l1(recon, target, mask)
  kl = kl_to_standard_normal(mu, logvar)
  loss = config.feature_weight * rec + config.kl_weight * kl
  metrics = {"loss_features": rec, "loss_kl": kl}
  if config.joint_weight > 0:
    if mean is None or std is None:
      raise ValueError("vae_loss: joint_weight > 0 needs the dataset mean and std")
    jl = masked_smooth_l1(features_to_joints(recon, mean, std), features_to_joints(target, mean, std), mask)
    loss = loss + config.joint_weight * jl
    metrics["loss_joints"] = jl
  metrics["loss"] = loss
  return loss, metrics
