"""Text-conditioned transformer denoisers: MLD-style in the VAE latent, MDM-style on motion features.

Both run one transformer encoder (MLD's skip variant by default) over the token sequence
[time token, text tokens, x tokens] with sinusoidal positions over the whole sequence (MLD's `query_pos`).
The time token is diffusers' sinusoidal embedding (flip_sin_to_cos=True, freq_shift=0) through an MLP;
text tokens are the condition's [B, Lt, C] features through a linear projection (MLD's `emb_proj`);
padded text tokens (and, for MDM, padded frames) are masked as attention keys.

The output's meaning (epsilon / sample / v) is the schedule's `prediction_type`; the modules do not care.

References: MLD (arXiv 2212.04048, `mld_denoiser.py`); Tevet et al., Human Motion Diffusion Model (MDM),
ICLR 2023, arXiv 2209.14916.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from easytune_jax.models.layers import TimestepMLP, TransformerEncoder, sinusoidal_positions


@dataclasses.dataclass(frozen=True)
class DenoiserConfig:
  """Defaults are the tiny CPU sizes; MLD's denoiser (width 256, 9 layers, 4 heads, ff 1024, dropout 0.1, skip)
  and MDM's (width 512, 8 layers, 4 heads, ff 1024, no skip) are in the 'paper' presets of configs/base.py."""

  width: int = 64
  num_layers: int = 3
  num_heads: int = 4
  ff_dim: int = 128
  dropout: float = 0.0  # tiny CPU default: dropout RNG dominates CPU compile and step time; 'paper' uses 0.1
  skip: bool = True

  def __post_init__(self):
    if self.skip and self.num_layers % 2 != 1:
      raise ValueError(f"DenoiserConfig.num_layers: skip=True needs an odd number, found {self.num_layers}")
    if self.width % self.num_heads:
      raise ValueError(f"DenoiserConfig.width: expected a multiple of num_heads={self.num_heads}, found {self.width}")


def _check_cond(cond, b):
  for k in ("text", "text_mask"):
    if k not in cond:
      raise ValueError(
        f"cond: missing key '{k}' (expected {{'text': [B, Lt, C], 'text_mask': [B, Lt]}}), found keys {sorted(cond)}"
      )
  if cond["text"].ndim != 3 or cond["text"].shape[0] != b or cond["text_mask"].shape != cond["text"].shape[:2]:
    raise ValueError(
      f"cond: expected text [B={b}, Lt, C] and text_mask [B, Lt], found "
      f"{cond['text'].shape} and {cond['text_mask'].shape}"
    )


class _ConditionalTransformer(nn.Module):
  """x tokens [B, N, F] with x_mask [B, N], t [B], cond -> outputs [B, N, out_dim]."""

  config: DenoiserConfig
  out_dim: int

  @nn.compact
  def __call__(self, x, x_mask, t, cond, deterministic: bool = True):
    cfg = self.config
    b, n = x.shape[:2]
    _check_cond(cond, b)
    t = jnp.broadcast_to(jnp.asarray(t), (b,))
    time = TimestepMLP(cfg.width, name="time_embed")(t)[:, None]
    text = nn.Dense(cfg.width, name="text_proj")(cond["text"])
    h = nn.Dense(cfg.width, name="input_proj")(x)
    seq = jnp.concatenate([time, text, h], axis=1)
    seq = seq + sinusoidal_positions(seq.shape[1], cfg.width)[None]
    mask = jnp.concatenate([jnp.ones((b, 1), bool), cond["text_mask"].astype(bool), x_mask], axis=1)
    out = TransformerEncoder(cfg.num_layers, cfg.num_heads, cfg.ff_dim, cfg.dropout, skip=cfg.skip)(
      seq, mask, deterministic
    )
    return nn.Dense(self.out_dim, name="output_proj")(out[:, -n:])


class LatentDenoiser(nn.Module):
  """MLD denoiser. x_t [B, latent_size, latent_dim], t int32 [B], cond {"text", "text_mask"} ->
  prediction [B, latent_size, latent_dim]."""

  config: DenoiserConfig

  @nn.compact
  def __call__(self, x_t, t, cond, deterministic: bool = True):
    if x_t.ndim != 3:
      raise ValueError(f"LatentDenoiser: x_t expected [B, latent_size, latent_dim], found {x_t.shape}")
    x_mask = jnp.ones(x_t.shape[:2], bool)
    return _ConditionalTransformer(self.config, x_t.shape[-1], name="net")(x_t, x_mask, t, cond, deterministic)


class MotionDenoiser(nn.Module):
  """MDM-style denoiser on motion features. x_t [B, L, D], t int32 [B],
  cond {"text", "text_mask", "frame_mask": bool [B, L]} -> prediction [B, L, D], zero at padded frames
  (padded frames are masked as keys, so they never change a valid frame's output)."""

  config: DenoiserConfig

  @nn.compact
  def __call__(self, x_t, t, cond, deterministic: bool = True):
    if "frame_mask" not in cond:
      raise ValueError(f"MotionDenoiser: cond needs 'frame_mask' bool [B, L]; found keys {sorted(cond)}")
    mask = cond["frame_mask"].astype(bool)
    if x_t.ndim != 3 or mask.shape != x_t.shape[:2]:
      raise ValueError(
        f"MotionDenoiser: expected x_t [B, L, D] and frame_mask [B, L], found {x_t.shape} and {mask.shape}"
      )
    out = _ConditionalTransformer(self.config, x_t.shape[-1], name="net")(x_t, mask, t, cond, deterministic)
    return jnp.where(mask[..., None], out, 0.0)
