"""CLIP's text transformer (``CLIPModel.get_text_features``) as a Flax network.

The original MLD conditions on ``openai/clip-vit-large-patch14`` through HF; the model runs on ``input_ids`` only
(no attention mask):

    ids [B, 77] -> token + position embeddings -> pre-LN transformer blocks with a causal mask (quick_gelu MLP)
         -> final LayerNorm (``last_hidden_state`` [B, 77, D], MLD's "clip_hidden")
         -> the state at the EOS position (argmax of ids when the config's eos_token_id is the legacy 2, else the
            first eos_token_id) -> text_projection (no bias) [B, P] (MLD's "clip" features).

Reading a HF CLIP folder (config, weights, tokenizer) is :mod:`easytune_jax.interop.clip`
(:func:`~easytune_jax.interop.clip.load_clip_text`); the tokenizer is :mod:`easytune_jax.interop.clip_tokenizer`.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from easytune_jax.models.t5_encoder import activation


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
  """Sizes of a CLIP text tower (defaults: ViT-L/14's)."""

  vocab_size: int = 49408
  hidden_size: int = 768
  intermediate_size: int = 3072
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  max_position_embeddings: int = 77
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  projection_dim: int = 768
  eos_token_id: int = 2

  def __post_init__(self):
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(
        f"CLIPTextConfig.hidden_size: expected a multiple of num_attention_heads="
        f"{self.num_attention_heads}, found {self.hidden_size}"
      )


class CLIPTextModel(nn.Module):
  """``__call__(ids int32 [B, L]) -> (last_hidden_state [B, L, D], text_features [B, P])`` (no padding mask, as
  the official MLD calls it; L <= max_position_embeddings)."""

  config: CLIPTextConfig

  @nn.compact
  def __call__(self, ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    cfg = self.config
    b, l = ids.shape
    d, h = cfg.hidden_size, cfg.num_attention_heads
    x = nn.Embed(cfg.vocab_size, d, name="token_embedding")(ids)
    pos = self.param("position_embedding", nn.initializers.normal(0.01), (cfg.max_position_embeddings, d))
    x = x + pos[:l][None]
    causal = jnp.tril(jnp.ones((l, l), bool))
    neg = jnp.finfo(jnp.float32).min
    for i in range(cfg.num_hidden_layers):
      y = nn.LayerNorm(cfg.layer_norm_eps, name=f"layer_{i}_ln1")(x)
      q, k, v = (nn.Dense(d, name=f"layer_{i}_{n}")(y).reshape(b, l, h, d // h) for n in ("q", "k", "v"))
      scores = jnp.einsum("bqhd,bkhd->bhqk", q * (d // h) ** -0.5, k)
      scores = jnp.where(causal[None, None], scores, neg)
      attn = jax.nn.softmax(scores.astype(jnp.float32), axis=-1)
      x = x + nn.Dense(d, name=f"layer_{i}_out")(jnp.einsum("bhqk,bkhd->bqhd", attn, v).reshape(b, l, d))
      y = nn.LayerNorm(cfg.layer_norm_eps, name=f"layer_{i}_ln2")(x)
      y = activation(cfg.hidden_act, nn.Dense(cfg.intermediate_size, name=f"layer_{i}_fc1")(y))
      x = x + nn.Dense(d, name=f"layer_{i}_fc2")(y)
    x = nn.LayerNorm(cfg.layer_norm_eps, name="final_layer_norm")(x)
    if cfg.eos_token_id == 2:  # legacy configs: the EOS token has the highest id
      eos = jnp.argmax(ids, axis=-1)
    else:
      eos = jnp.argmax((ids == cfg.eos_token_id).astype(jnp.int32), axis=-1)
    pooled = x[jnp.arange(b), eos]
    return x, nn.Dense(cfg.projection_dim, use_bias=False, name="text_projection")(pooled)
