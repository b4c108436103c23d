"""The T5 encoder and sentence-T5 (as sentence-transformers lays out ``sentence-t5-large``) as Flax networks.

EasyTune's official MLD and SPM read the frozen ``sentence-transformers/sentence-t5-large`` model through
``SentenceTransformer.encode``: the MLD denoiser reads the 768-d ``sentence_embedding`` (as [B, 1, 768]), the SPM
reads the 1024-d ``token_embeddings`` [B, L, 1024] with its ``attention_mask`` (L = the longest caption of the
batch). This module holds the networks of that pipeline:

    ids -> T5 encoder (token embeddings [B, L, d_model], the encoder's last hidden state)
        -> mean pooling over valid tokens -> Dense(d_model -> S, no bias, identity) -> L2 normalisation [B, S]

T5 encoder facts (HF ``T5EncoderModel``): token embedding without scaling; per block a pre-norm self-attention
without biases and *without* 1/sqrt(d) scaling, plus a relative position bias (bidirectional log buckets) that
only block 0 owns and all blocks share; a pre-norm feed-forward (``relu``: wo(act(wi x)); ``gated-*``:
wo(act(wi_0 x) * wi_1 x), ``gated-gelu`` meaning the tanh GELU); RMS "T5 LayerNorm" (weight only, no mean);
a final RMS norm. Masked keys get ``finfo(float32).min`` added to their scores, as in HF.

Reading a downloaded folder (config, weights, tokenizer) is :mod:`easytune_jax.interop.sentence_t5`
(:func:`~easytune_jax.interop.sentence_t5.load_sentence_t5`); the tokenizer is
:mod:`easytune_jax.interop.t5_tokenizer`.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_ACTS = ("relu", "gelu", "gelu_new", "gelu_pytorch_tanh", "silu", "swish", "quick_gelu")


def activation(name: str, x: jax.Array) -> jax.Array:
  """The HF ``ACT2FN`` activations the T5 / CLIP configs name (float32 formulas as in transformers)."""
  if name == "relu":
    return jax.nn.relu(x)
  if name == "gelu":
    return jax.nn.gelu(x, approximate=False)
  if name in ("gelu_new", "gelu_pytorch_tanh"):
    return jax.nn.gelu(x, approximate=True)
  if name in ("silu", "swish"):
    return jax.nn.silu(x)
  if name == "quick_gelu":
    return x * jax.nn.sigmoid(1.702 * x)
  raise ValueError(f"activation: expected one of {_ACTS}, found {name!r}")


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Sizes of a T5 encoder (the fields of HF ``T5Config`` the encoder uses; defaults: sentence-t5-large)."""

  vocab_size: int = 32128
  d_model: int = 1024
  d_kv: int = 64
  d_ff: int = 4096
  num_layers: int = 24
  num_heads: int = 16
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  dense_act_fn: str = "relu"
  is_gated_act: bool = False

  def __post_init__(self):
    if self.dense_act_fn not in _ACTS:
      raise ValueError(f"T5Config.dense_act_fn: expected one of {_ACTS}, found {self.dense_act_fn!r}")

  @property
  def inner_dim(self) -> int:
    return self.num_heads * self.d_kv


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
  """Bidirectional T5 relative-position buckets (HF ``T5Attention._relative_position_bucket``, float32 logs).

  Args:
    length: sequence length L (queries = keys).

  Returns:
    int32 [L, L]: bucket of (key position - query position) for each (query, key).
  """
  pos = np.arange(length)
  rel = pos[None, :] - pos[:, None]
  half = num_buckets // 2
  out = (rel > 0).astype(np.int64) * half
  rel = np.abs(rel)
  max_exact = half // 2
  ratio = np.maximum(rel, 1).astype(np.float32) / np.float32(max_exact)
  large = max_exact + (
    np.log(ratio) / np.float32(math.log(max_distance / max_exact)) * np.float32(half - max_exact)
  ).astype(np.int64)
  large = np.minimum(large, half - 1)
  return (out + np.where(rel < max_exact, rel, large)).astype(np.int32)


class T5LayerNorm(nn.Module):
  """RMS norm with a weight and no bias / mean subtraction: ``w * x / sqrt(mean(x^2) + eps)``."""

  eps: float = 1e-6

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    w = self.param("weight", nn.initializers.ones, (x.shape[-1],))
    var = jnp.mean(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True)
    return w * (x * jax.lax.rsqrt(var + self.eps))


class T5Block(nn.Module):
  """One encoder block. ``__call__(x [B, L, D], bias [B|1, H, L, L]) -> [B, L, D]``."""

  config: T5Config

  @nn.compact
  def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
    cfg = self.config
    b, l, _ = x.shape
    dense = lambda n, name: nn.Dense(n, use_bias=False, name=name)  # noqa: E731
    h = T5LayerNorm(cfg.layer_norm_epsilon, name="attn_norm")(x)
    q, k, v = (dense(cfg.inner_dim, n)(h).reshape(b, l, cfg.num_heads, cfg.d_kv) for n in ("q", "k", "v"))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) + bias  # T5: no 1/sqrt(d_kv) scaling
    attn = jax.nn.softmax(scores.astype(jnp.float32), axis=-1)
    ctx = jnp.einsum("bhqk,bkhd->bqhd", attn, v).reshape(b, l, cfg.inner_dim)
    x = x + dense(cfg.d_model, "o")(ctx)
    h = T5LayerNorm(cfg.layer_norm_epsilon, name="ff_norm")(x)
    if cfg.is_gated_act:
      h = activation(cfg.dense_act_fn, dense(cfg.d_ff, "wi_0")(h)) * dense(cfg.d_ff, "wi_1")(h)
    else:
      h = activation(cfg.dense_act_fn, dense(cfg.d_ff, "wi")(h))
    return x + dense(cfg.d_model, "wo")(h)


class T5Encoder(nn.Module):
  """HF ``T5EncoderModel`` (inference). ``__call__(ids int32 [B, L], mask bool [B, L]) -> [B, L, d_model]``
  (the last hidden state, after the final RMS norm; padded positions are computed too, as in HF)."""

  config: T5Config

  @nn.compact
  def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
    cfg = self.config
    length = ids.shape[1]
    x = nn.Embed(cfg.vocab_size, cfg.d_model, name="shared")(ids)
    buckets = relative_position_buckets(length, cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance)
    table = self.param(
      "relative_attention_bias", nn.initializers.normal(1.0), (cfg.relative_attention_num_buckets, cfg.num_heads)
    )
    pos_bias = jnp.transpose(table[buckets], (2, 0, 1))[None]  # [1, H, L, L]
    neg = jnp.finfo(jnp.float32).min
    bias = pos_bias + jnp.where(mask[:, None, None, :], 0.0, neg).astype(jnp.float32)
    for i in range(cfg.num_layers):
      x = T5Block(cfg, name=f"block_{i}")(x, bias)
    return T5LayerNorm(cfg.layer_norm_epsilon, name="final_layer_norm")(x)


# ---------------------------------------------------------------------------------------------------------------
# sentence-T5

POOLING_MODES = ("mean", "max", "cls")


@dataclasses.dataclass(frozen=True)
class SentenceT5Config:
  """A sentence-transformers T5 model: encoder sizes, pooling, Dense head, normalisation, tokenizer length."""

  t5: T5Config = T5Config()
  pooling: str = "mean"
  dense_features: tuple = ((1024, 768),)  # (in, out) of each Dense module in order
  dense_bias: tuple = (False,)
  dense_activation: tuple = ("identity",)
  normalize: bool = True
  max_seq_length: int = 256
  do_lower_case: bool = False

  def __post_init__(self):
    if self.pooling not in POOLING_MODES:
      raise ValueError(f"SentenceT5Config.pooling: expected one of {POOLING_MODES}, found {self.pooling!r}")
    if not len(self.dense_features) == len(self.dense_bias) == len(self.dense_activation):
      raise ValueError("SentenceT5Config: dense_features, dense_bias and dense_activation need equal lengths")
    for act in self.dense_activation:
      if act not in ("identity", "tanh"):
        raise ValueError(f"SentenceT5Config.dense_activation: expected 'identity' or 'tanh', found {act!r}")

  @property
  def sentence_dim(self) -> int:
    return self.dense_features[-1][1] if self.dense_features else self.t5.d_model


class SentenceT5Model(nn.Module):
  """``__call__(ids [B, L], mask [B, L]) -> (token_embeddings [B, L, d_model], sentence [B, S])``.

  Pooling as sentence-transformers ``Pooling``: mean = sum(valid tokens) / max(count, 1e-9); max over valid
  tokens (padded set to -1e9); cls = token 0. Dense: x W^T (+ b), then the activation. Normalize: x / max(|x|,
  1e-12)."""

  config: SentenceT5Config

  @nn.compact
  def __call__(self, ids: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    cfg = self.config
    tokens = T5Encoder(cfg.t5, name="encoder")(ids, mask)
    m = mask.astype(jnp.float32)[..., None]
    if cfg.pooling == "mean":
      x = jnp.sum(tokens * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1e-9)
    elif cfg.pooling == "max":
      x = jnp.max(jnp.where(m > 0, tokens, -1e9), axis=1)
    else:
      x = tokens[:, 0]
    for i, ((_, n_out), bias, act) in enumerate(zip(cfg.dense_features, cfg.dense_bias, cfg.dense_activation)):
      x = nn.Dense(n_out, use_bias=bias, name=f"dense_{i}")(x)
      x = jnp.tanh(x) if act == "tanh" else x
    if cfg.normalize:
      x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return tokens, x
