"""Text conditioning for the base generators: a learned word-level encoder or precomputed embeddings.

Both paths produce the condition pytree the denoisers take (WORKSPACE.md, denoiser contract):

    cond = {"text": float32 [B, Lt, C], "text_mask": bool [B, Lt]}

`kind="learned"`: token ids from `easytune_jax.data.text.Tokenizer` -> embedding + sinusoidal positions ->
a small masked transformer. Trained together with the denoiser, FROZEN during fine-tuning.
`kind="precomputed"`: token embeddings [B, Lt, E] computed elsewhere (T5 / CLIP, read by
`data.text.TextEmbeddings`) -> Linear(E -> C) (-> the same optional transformer).

The unconditional input for classifier-free guidance is a learned null embedding (`null_text`, [C]) in
position 0 with only that position valid, so it has the same [B, Lt, C] structure as `cond` and works for
both paths (an empty caption has no precomputed embedding on disk).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from easytune_jax.models.layers import TransformerEncoder, sinusoidal_positions

TEXT_KINDS = ("learned", "precomputed")


@dataclasses.dataclass(frozen=True)
class TextEncoderConfig:
  """Defaults are the tiny CPU sizes ('paper' in configs/base.py). `vocab_size` (learned) / `embed_dim`
  (precomputed) are set from the data when the model is built (the tokenizer's vocabulary / the embeddings
  file)."""

  kind: str = "learned"
  vocab_size: int = 0
  embed_dim: int = 0
  width: int = 64
  num_layers: int = 1
  num_heads: int = 4
  ff_dim: int = 128
  dropout: float = 0.0  # tiny CPU default: dropout RNG dominates CPU compile and step time; 'paper' uses 0.1

  def __post_init__(self):
    if self.kind not in TEXT_KINDS:
      raise ValueError(f"TextEncoderConfig.kind: expected one of {TEXT_KINDS}, found {self.kind!r}")
    if self.width % self.num_heads:
      raise ValueError(
        f"TextEncoderConfig.width: expected a multiple of num_heads={self.num_heads}, found {self.width}"
      )


class TextEncoder(nn.Module):
  """`__call__(inputs, mask)`: inputs int32 token ids [B, Lt] (learned) or float [B, Lt, E] (precomputed),
  mask bool [B, Lt] -> cond {"text": [B, Lt, C] (zero at padded tokens), "text_mask": [B, Lt]}.
  `null(batch_size, length)` -> the unconditional pytree of the same structure."""

  config: TextEncoderConfig

  def setup(self):
    cfg = self.config
    if cfg.kind == "learned":
      if cfg.vocab_size <= 0:
        raise ValueError(
          f"TextEncoderConfig.vocab_size: expected the tokenizer's vocabulary size (> 0), found {cfg.vocab_size}"
        )
      self.embed = nn.Embed(cfg.vocab_size, cfg.width, embedding_init=nn.initializers.normal(0.02))
    else:
      self.proj = nn.Dense(cfg.width)
    if cfg.num_layers > 0:
      self.encoder = TransformerEncoder(cfg.num_layers, cfg.num_heads, cfg.ff_dim, cfg.dropout)
    self.null_text = self.param("null_text", nn.initializers.normal(0.02), (cfg.width,))

  def __call__(self, inputs: jax.Array, mask: jax.Array, deterministic: bool = True) -> dict:
    cfg = self.config
    if cfg.kind == "learned":
      if not jnp.issubdtype(inputs.dtype, jnp.integer) or inputs.ndim != 2:
        raise ValueError(
          f"TextEncoder(kind='learned'): expected int token ids [B, Lt], found {inputs.dtype} {inputs.shape}"
        )
      h = self.embed(inputs)
    else:
      if inputs.ndim != 3 or (cfg.embed_dim and inputs.shape[-1] != cfg.embed_dim):
        raise ValueError(
          f"TextEncoder(kind='precomputed'): expected embeddings [B, Lt, {cfg.embed_dim or 'E'}], found {inputs.shape}"
        )
      h = self.proj(inputs.astype(jnp.float32))
    if mask.shape != inputs.shape[:2]:
      raise ValueError(f"TextEncoder: mask shape {mask.shape} does not match inputs {inputs.shape[:2]}")
    if cfg.num_layers > 0:
      h = h + sinusoidal_positions(h.shape[1], cfg.width)[None]
      h = self.encoder(h, mask, deterministic)
    h = h * mask[..., None].astype(h.dtype)
    return {"text": h, "text_mask": mask.astype(bool)}

  def null(self, batch_size: int, length: int) -> dict:
    """Unconditional input: null embedding at position 0, zeros elsewhere, mask True at 0 only."""
    text = jnp.zeros((batch_size, length, self.config.width), jnp.float32)
    text = text.at[:, 0].set(self.null_text)
    mask = jnp.zeros((batch_size, length), bool).at[:, 0].set(True)
    return {"text": text, "text_mask": mask}


def drop_condition(rng: jax.Array, cond: dict, uncond: dict, prob: float) -> dict:
  """Classifier-free-guidance training: replaces `cond` by `uncond` per example with probability `prob`.
  Leaves of both pytrees share the leading batch dimension B."""
  b = jax.tree.leaves(cond)[0].shape[0]
  drop = jax.random.bernoulli(rng, prob, (b,))
  return jax.tree.map(lambda c, u: jnp.where(drop.reshape((b,) + (1,) * (c.ndim - 1)), u, c), cond, uncond)
