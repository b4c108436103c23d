"""Shared Flax building blocks: timestep embeddings, masked transformer encoders, distribution tokens.

Masks are boolean with True = valid position; padded positions never influence valid ones (keys are masked
in attention, and padded queries are zeroed on output where a caller asks for it).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


def timestep_embedding(
  t: jax.Array, dim: int, flip_sin_to_cos: bool = True, downscale_freq_shift: float = 0.0, max_period: float = 10000.0
) -> jax.Array:
  """Sinusoidal timestep features [B, dim] exactly as diffusers' `get_timestep_embedding`.

  MLD uses flip_sin_to_cos=True, freq_shift=0: emb = [cos(t w_k), sin(t w_k)],
  w_k = exp(-log(max_period) k / (dim/2 - shift)).
  """
  half = dim // 2
  exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - downscale_freq_shift)
  emb = jnp.asarray(t, jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
  emb = jnp.concatenate([jnp.sin(emb), jnp.cos(emb)], axis=-1)
  if flip_sin_to_cos:
    emb = jnp.concatenate([emb[:, half:], emb[:, :half]], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


class TimestepMLP(nn.Module):
  """Sinusoidal features -> Linear -> SiLU -> Linear (diffusers' TimestepEmbedding). t [B] -> [B, out_dim]."""

  out_dim: int
  freq_dim: int | None = None

  @nn.compact
  def __call__(self, t: jax.Array) -> jax.Array:
    h = timestep_embedding(t, self.freq_dim or self.out_dim)
    return nn.Dense(self.out_dim)(nn.silu(nn.Dense(self.out_dim)(h)))


def sinusoidal_positions(length: int, dim: int) -> jax.Array:
  """Absolute sine/cosine positional encodings [length, dim] (Vaswani et al.)."""
  pos = jnp.arange(length, dtype=jnp.float32)[:, None]
  div = jnp.exp(jnp.arange(0, dim, 2, dtype=jnp.float32) * (-math.log(10000.0) / dim))
  pe = jnp.zeros((length, dim), jnp.float32)
  pe = pe.at[:, 0::2].set(jnp.sin(pos * div))
  return pe.at[:, 1::2].set(jnp.cos(pos * div)[:, : dim // 2])


class TorchMultiheadAttention(nn.Module):
  """`torch.nn.MultiheadAttention` (batch-first here) as the official MLD and SPM modules use it: packed input
  projection `in_proj_kernel` [C, 3C] (columns q | k | v) with `in_proj_bias` [3C], q scaled by head_dim**-0.5,
  softmax over keys with padded keys removed, dropout on the attention weights, `out_proj`.

  q [B, Lq, C], kv [B, Lk, C], key_mask bool [B, Lk] (True = attend) or None -> [B, Lq, C]. The heads are moved
  in front of the sequence before the two batched products ([B, H, L, d] operands, the layout XLA's batched dot
  takes without copies; docs/benchmark/profile/README.md has the measurements).
  """

  num_heads: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, q: jax.Array, kv: jax.Array, key_mask: jax.Array | None = None, deterministic: bool = True):
    c = q.shape[-1]
    hd = c // self.num_heads
    xavier = nn.initializers.xavier_uniform()
    w = self.param("in_proj_kernel", xavier, (c, 3 * c))
    b = self.param("in_proj_bias", nn.initializers.zeros, (3 * c,))
    heads = lambda x: x.reshape(x.shape[:2] + (self.num_heads, hd)).transpose(0, 2, 1, 3)  # [B, H, L, d]
    qh = heads(q @ w[:, :c] + b[:c]) * hd**-0.5
    kh = heads(kv @ w[:, c : 2 * c] + b[c : 2 * c])
    vh = heads(kv @ w[:, 2 * c :] + b[2 * c :])
    logits = jnp.einsum("bhqd,bhkd->bhqk", qh, kh)
    if key_mask is not None:
      # torch adds -inf; the most negative finite value gives the same weights (exp underflows to exactly 0)
      # and keeps a row whose keys are all padded finite.
      logits = jnp.where(key_mask[:, None, None, :], logits, jnp.finfo(logits.dtype).min)
    weights = nn.Dropout(self.dropout)(jax.nn.softmax(logits, axis=-1), deterministic=deterministic)
    out = jnp.einsum("bhqk,bhkd->bhqd", weights, vh).transpose(0, 2, 1, 3).reshape(q.shape[:2] + (c,))
    return nn.Dense(c, name="out_proj", kernel_init=xavier, bias_init=nn.initializers.zeros)(out)


# Skip transformers can run their identical layers as `lax.scan`s (`run_skip_layers`): XLA then compiles one
# input-half layer and one output-half layer instead of every layer. Measured on the 2-core CPU at the paper
# size (docs/benchmark/profile/README.md) it compiled and ran SLOWER than the unrolled layers (VAE decode
# fwd+bwd: 59 s / 25 s scanned vs 24 s / 7 s unrolled), so the default is off; measure again on an
# accelerator. Modules with a `scan_layers` attribute read this default when theirs is None.
SCAN_LAYERS = False


def resolve_scan(scan_layers: bool | None) -> bool:
  """A module's `scan_layers` attribute, `SCAN_LAYERS` when it is None."""
  return SCAN_LAYERS if scan_layers is None else bool(scan_layers)


def stack_trees(trees):
  """Stacks equally shaped pytrees leaf by leaf along a new leading axis (the layer axis of a scan)."""
  return jax.tree.map(lambda *a: jnp.stack(a), *trees)


def run_skip_layers(
  apply_block: Callable, apply_linear: Callable, params, n: int, x: jax.Array, rng: jax.Array | None = None
) -> jax.Array:
  """MLD's skip-connected stack (without its final norm) from its layers' params, with two `lax.scan`s.

  The stack is (n input blocks, the middle block) -> skips = the input blocks' outputs -> n times
  x = block_i(linear_i(concat[x, skip_{n-1-i}])). The input blocks and the middle block are identical layers and
  run as one scan (its per-layer outputs are the skips); the n (linear, output block) pairs run as a second
  scan. The parameter tree is the unrolled module's (`input_blocks_i`, `middle_block`, `linear_blocks_i`,
  `output_blocks_i`): the layers' subtrees are stacked here, inside the traced function, so that checkpoints
  and converters keep their per-layer names.

  Args:
    apply_block: `apply_block(layer_params, x, rng) -> x` of one block (rng None when deterministic).
    apply_linear: `apply_linear(linear_params, h) -> x` of one fusing Linear(2C -> C).
    params: the stack's params {input_blocks_i, middle_block, linear_blocks_i, output_blocks_i}.
    n: (num_layers - 1) / 2 (>= 1).
    x: [B, L, C].
    rng: a dropout key or None; layer j (0..2n in execution order) gets `fold_in(rng, j)`, so the dropout
      masks differ from the unrolled module's (same distribution).
  Returns: [B, L, C].
  """
  keys = None if rng is None else jax.vmap(lambda j: jax.random.fold_in(rng, j))(jnp.arange(2 * n + 1))
  # Frozen params (a reward, a decoder) are constants of the caller's program; the barrier keeps XLA from
  # constant-folding their stacked copies at compile time (the stacking then runs as a copy at run time).
  params = jax.lax.optimization_barrier(dict(params))
  first = stack_trees([params[f"input_blocks_{i}"] for i in range(n)] + [params["middle_block"]])

  def body_in(h, inp):
    p, k = inp
    h = apply_block(p, h, k)
    return h, h

  x, hs = jax.lax.scan(body_in, x, (first, None if keys is None else keys[: n + 1]))
  second = (
    stack_trees([params[f"linear_blocks_{i}"] for i in range(n)]),
    stack_trees([params[f"output_blocks_{i}"] for i in range(n)]),
    hs[:n][::-1],
    None if keys is None else keys[n + 1 :],
  )

  def body_out(h, inp):
    pl, pb, skip, k = inp
    return apply_block(pb, apply_linear(pl, jnp.concatenate([h, skip], axis=-1)), k), None

  x, _ = jax.lax.scan(body_out, x, second)
  return x


class EncoderLayer(nn.Module):
  """Transformer encoder layer (self-attention + GELU feed-forward), post-norm as PyTorch's default
  (MLD's `normalize_before=False`) or pre-norm. x [B, L, C], mask [B, L] bool."""

  num_heads: int
  ff_dim: int
  dropout: float = 0.1
  norm_first: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None, deterministic: bool = True) -> jax.Array:
    attn_mask = None if mask is None else mask[:, None, None, :]
    attn = nn.MultiHeadDotProductAttention(
      num_heads=self.num_heads, dropout_rate=self.dropout, deterministic=deterministic
    )
    drop = lambda h: nn.Dropout(self.dropout)(h, deterministic=deterministic)

    def ff(h):
      h = nn.Dense(self.ff_dim)(h)
      h = drop(nn.gelu(h, approximate=False))
      return nn.Dense(x.shape[-1])(h)

    if self.norm_first:
      h = nn.LayerNorm()(x)
      x = x + drop(attn(h, h, mask=attn_mask))
      return x + drop(ff(nn.LayerNorm()(x)))
    x = nn.LayerNorm()(x + drop(attn(x, x, mask=attn_mask)))
    return nn.LayerNorm()(x + drop(ff(x)))


class TransformerEncoder(nn.Module):
  """A stack of encoder layers; with `skip=True`, MLD's SkipTransformerEncoder: (n-1)/2 input blocks,
  a middle block, (n-1)/2 output blocks each fusing the matching input block's output through
  Linear(concat[x, skip]); a final LayerNorm. x [B, L, C] -> [B, L, C]."""

  num_layers: int
  num_heads: int
  ff_dim: int
  dropout: float = 0.1
  skip: bool = False
  norm_first: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None, deterministic: bool = True):
    layer = lambda: EncoderLayer(self.num_heads, self.ff_dim, self.dropout, self.norm_first)
    if not self.skip:
      for _ in range(self.num_layers):
        x = layer()(x, mask, deterministic)
      return nn.LayerNorm()(x) if self.norm_first else x
    if self.num_layers % 2 != 1:
      raise ValueError(f"TransformerEncoder(skip=True).num_layers: expected an odd number, found {self.num_layers}")
    n = (self.num_layers - 1) // 2
    skips = []
    for _ in range(n):
      x = layer()(x, mask, deterministic)
      skips.append(x)
    x = layer()(x, mask, deterministic)
    for _ in range(n):
      x = nn.Dense(x.shape[-1])(jnp.concatenate([x, skips.pop()], axis=-1))
      x = layer()(x, mask, deterministic)
    return nn.LayerNorm()(x)


class DecoderLayer(nn.Module):
  """Transformer decoder layer: self-attention, cross-attention to `memory`, feed-forward (post-norm)."""

  num_heads: int
  ff_dim: int
  dropout: float = 0.1

  @nn.compact
  def __call__(self, x, mask, memory, memory_mask, deterministic: bool = True):
    drop = lambda h: nn.Dropout(self.dropout)(h, deterministic=deterministic)
    mha = lambda: nn.MultiHeadDotProductAttention(
      num_heads=self.num_heads, dropout_rate=self.dropout, deterministic=deterministic
    )
    self_mask = None if mask is None else mask[:, None, None, :]
    x = nn.LayerNorm()(x + drop(mha()(x, x, mask=self_mask)))
    cross_mask = None if memory_mask is None else memory_mask[:, None, None, :]
    x = nn.LayerNorm()(x + drop(mha()(x, memory, mask=cross_mask)))
    h = drop(nn.gelu(nn.Dense(self.ff_dim)(x), approximate=False))
    return nn.LayerNorm()(x + drop(nn.Dense(x.shape[-1])(h)))


class TransformerDecoder(nn.Module):
  num_layers: int
  num_heads: int
  ff_dim: int
  dropout: float = 0.1

  @nn.compact
  def __call__(self, x, mask, memory, memory_mask=None, deterministic: bool = True):
    for _ in range(self.num_layers):
      x = DecoderLayer(self.num_heads, self.ff_dim, self.dropout)(x, mask, memory, memory_mask, deterministic)
    return x


class DistributionTokenEncoder(nn.Module):
  """Encodes a masked sequence into a Gaussian (mu, logvar) through learned distribution tokens
  (TMR / MLD-VAE style): the tokens are prepended, the encoder runs, the token outputs are read.

  x [B, L, C_in], mask [B, L] -> (mu, logvar), each [B, num_tokens, latent_dim].
  An optional `extra` [B, E, width] (e.g. a timestep token) is prepended after the distribution tokens.
  """

  latent_dim: int
  num_tokens: int = 1
  num_layers: int = 2
  num_heads: int = 4
  ff_dim: int = 256
  dropout: float = 0.1
  max_len: int = 256

  @nn.compact
  def __call__(self, x, mask, extra=None, deterministic: bool = True):
    b, length = x.shape[:2]
    width = self.latent_dim
    h = nn.Dense(width)(x) + sinusoidal_positions(length, width)[None]
    mu_tok = self.param("mu_token", nn.initializers.normal(0.02), (self.num_tokens, width))
    lv_tok = self.param("logvar_token", nn.initializers.normal(0.02), (self.num_tokens, width))
    toks = jnp.broadcast_to(jnp.concatenate([mu_tok, lv_tok])[None], (b, 2 * self.num_tokens, width))
    parts, masks = [toks], [jnp.ones((b, 2 * self.num_tokens), bool)]
    if extra is not None:
      parts.append(extra)
      masks.append(jnp.ones(extra.shape[:2], bool))
    parts.append(h)
    masks.append(mask)
    h = TransformerEncoder(self.num_layers, self.num_heads, self.ff_dim, self.dropout)(
      jnp.concatenate(parts, 1), jnp.concatenate(masks, 1), deterministic
    )
    mu = h[:, : self.num_tokens]
    logvar = h[:, self.num_tokens : 2 * self.num_tokens]
    return mu, logvar


def reparameterize(rng: jax.Array, mu: jax.Array, logvar: jax.Array) -> jax.Array:
  return mu + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mu.shape, mu.dtype)


def kl_to_standard_normal(mu: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mu, exp(logvar)) || N(0, I)), averaged over all elements (MLD/TMR convention)."""
  return jnp.mean(0.5 * (jnp.exp(logvar) + mu**2 - 1.0 - logvar))


def kl_between(mu_q, logvar_q, mu_p, logvar_p) -> jax.Array:
  """KL(N(mu_q, var_q) || N(mu_p, var_p)), averaged over all elements."""
  return jnp.mean(0.5 * (logvar_p - logvar_q + (jnp.exp(logvar_q) + (mu_q - mu_p) ** 2) / jnp.exp(logvar_p) - 1.0))
