"""The official MLD architecture (the MotionLCM-style MLD that EasyTune fine-tunes) as Flax Linen modules.

Restated from `wengwanjiang/EasyTune` (`configs/modules/{motion_vae,denoiser}.yaml`,
`mld/models/architectures/{mld_vae,mld_denoiser}.py`, `mld/models/operator/{attention,embeddings,
position_encoding}.py`), so that the released `mld_humanml_v1.ckpt` loads parameter for parameter
(`easytune_jax.interop.mld_convert`). Differences from our own `vae.py` / `denoiser.py` that matter for the
weights: learned position tables of 500 rows, LayerNorm eps 1e-5, a skip-connected transformer DECODER in the
VAE, PyTorch's packed attention projections, no input/output projections in the denoiser, and the denoiser's
token order [x tokens, time token, text tokens].

VAE (`OfficialMLDVAE`):
  encode: x [B, L, nfeats] -> skel_embedding -> prepend `global_motion_token` (2 * latent_size rows: mu
    tokens then logvar tokens) -> + learned positions (`query_pos_encoder`) over the whole sequence ->
    SkipTransformerEncoder (padded frames masked as keys; final LayerNorm) -> the first 2 * latent_size
    outputs are (mu, logvar).
  decode: queries = learned positions (`query_pos_decoder`) of the L frames (zeros + positions) ->
    SkipTransformerDecoder (self-attention with padded frames masked as keys, cross-attention to z without
    positions or mask; final LayerNorm) -> final_layer -> padded frames set to 0.
Denoiser (`OfficialMLDDenoiser`):
  time = Linear(768 -> d) -> SiLU -> Linear(d -> d) of the 768-d sinusoidal features of t (flip_sin_to_cos,
    shift 0); text = Linear(768 -> d)(ReLU(text features)); seq = [x (latent_size tokens), time, text tokens]
    + learned positions (`query_pos`); SkipTransformerEncoder WITHOUT any mask (the official module has none:
    `cond["text_mask"]` is ignored); output = the first latent_size tokens.
Transformer layers are post-norm (`normalize_before: false`) with exact GELU and dropout 0.1 on the attention
weights, after attention and inside / after the feed-forward, as PyTorch's `nn.MultiheadAttention` and the
official layers place it.

Reference: Chen et al., Executing your Commands via Motion Diffusion in Latent Space (MLD), CVPR 2023,
arXiv 2212.04048; Dai et al., MotionLCM, ECCV 2024, arXiv 2404.19759 (the code base EasyTune builds on).
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from easytune_jax.models.layers import TorchMultiheadAttention, resolve_scan, run_skip_layers, timestep_embedding

_xavier = nn.initializers.xavier_uniform()
_zeros = nn.initializers.zeros


def _check_common(name, latent_dim, num_heads, num_layers, max_len):
  if latent_dim % num_heads:
    raise ValueError(f"{name}.latent_dim: expected a multiple of num_heads={num_heads}, found {latent_dim}")
  if num_layers % 2 != 1:
    raise ValueError(f"{name}.num_layers: the skip transformer needs an odd number, found {num_layers}")
  if max_len < 1:
    raise ValueError(f"{name}.max_len: expected >= 1, found {max_len}")


@dataclasses.dataclass(frozen=True)
class OfficialVAEConfig:
  """`configs/modules/motion_vae.yaml` (arch encoder_decoder, learned positions, post-norm, gelu, final norm,
  no pre/post latent projections). Defaults are the paper sizes for HumanML3D (nfeats 263; KIT: 251);
  `tiny()` is a CPU test size."""

  nfeats: int = 263
  latent_size: int = 1  # model.latent_dim[0]
  latent_dim: int = 256  # model.latent_dim[1]: the transformer width
  ff_size: int = 1024
  num_layers: int = 9
  num_heads: int = 4
  dropout: float = 0.1
  norm_eps: float = 1e-5
  max_len: int = 500  # rows of each learned position table (PositionEmbeddingLearned1D's default)

  def __post_init__(self):
    _check_common("OfficialVAEConfig", self.latent_dim, self.num_heads, self.num_layers, self.max_len)
    if self.max_len < 2 * self.latent_size + 1:
      raise ValueError(
        f"OfficialVAEConfig.max_len: expected > 2 * latent_size = {2 * self.latent_size}, found {self.max_len}"
      )

  @classmethod
  def tiny(cls, **kw) -> OfficialVAEConfig:
    return cls(
      **{
        **dict(nfeats=12, latent_size=1, latent_dim=16, ff_size=32, num_layers=3, num_heads=2, dropout=0.0, max_len=40),
        **kw,
      }
    )


@dataclasses.dataclass(frozen=True)
class OfficialDenoiserConfig:
  """`configs/modules/denoiser.yaml` (arch trans_enc, learned positions, text_act relu, time_act silu, no
  post activation, post-norm, final norm, no pre/post projections). Defaults are the paper sizes.

  `time_cond_proj_dim`: MotionLCM's guidance-scale embedding (a bias-free Linear(cond_dim -> time_dim) added
  to the sinusoidal features, zero-initialised when `zero_init_cond`); None for the MLD that EasyTune tunes.
  `unused_mem_pos`: the original CLIP-conditioned MLD (ChenFengYe/motion-latent-diffusion) allocates a learned
  `mem_pos` table that its trans_enc path never reads; True only creates that parameter so such a checkpoint
  converts key for key (the EasyTune denoiser builds `mem_pos` only for arch trans_dec, so `add_mem_pos` has no
  effect on it).
  """

  latent_size: int = 1
  latent_dim: int = 256
  text_dim: int = 768
  time_dim: int = 768
  ff_size: int = 1024
  num_layers: int = 9
  num_heads: int = 4
  dropout: float = 0.1
  norm_eps: float = 1e-5
  flip_sin_to_cos: bool = True
  freq_shift: float = 0.0
  max_len: int = 500
  time_cond_proj_dim: int | None = None
  zero_init_cond: bool = True
  unused_mem_pos: bool = False

  def __post_init__(self):
    _check_common("OfficialDenoiserConfig", self.latent_dim, self.num_heads, self.num_layers, self.max_len)

  @classmethod
  def tiny(cls, **kw) -> OfficialDenoiserConfig:
    return cls(
      **{
        **dict(
          latent_size=1,
          latent_dim=16,
          text_dim=12,
          time_dim=10,
          ff_size=32,
          num_layers=3,
          num_heads=2,
          dropout=0.0,
          max_len=40,
        ),
        **kw,
      }
    )


# --------------------------------------------------------------------------------------------- layers
class _FeedForward(nn.Module):
  ff_size: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    h = nn.gelu(nn.Dense(self.ff_size, name="linear1", kernel_init=_xavier)(x), approximate=False)
    h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
    return nn.Dense(x.shape[-1], name="linear2", kernel_init=_xavier)(h)


class OfficialEncoderLayer(nn.Module):
  """Official `TransformerEncoderLayer.forward_post`: x = norm1(x + drop(attn(x))); x = norm2(x + drop(ff(x)))."""

  num_heads: int
  ff_size: int
  dropout: float = 0.0
  norm_eps: float = 1e-5

  @nn.compact
  def __call__(self, x, mask=None, deterministic: bool = True):
    drop = lambda h: nn.Dropout(self.dropout)(h, deterministic=deterministic)
    a = TorchMultiheadAttention(self.num_heads, self.dropout, name="self_attn")(x, x, mask, deterministic)
    x = nn.LayerNorm(self.norm_eps, name="norm1")(x + drop(a))
    f = _FeedForward(self.ff_size, self.dropout, name="ff")(x, deterministic)
    return nn.LayerNorm(self.norm_eps, name="norm2")(x + drop(f))


class OfficialDecoderLayer(nn.Module):
  """Official `TransformerDecoderLayer.forward_post`: self-attention (tgt key mask), norm1; cross-attention to
  memory (no mask), norm2; feed-forward, norm3."""

  num_heads: int
  ff_size: int
  dropout: float = 0.0
  norm_eps: float = 1e-5

  @nn.compact
  def __call__(self, x, memory, mask=None, deterministic: bool = True):
    drop = lambda h: nn.Dropout(self.dropout)(h, deterministic=deterministic)
    a = TorchMultiheadAttention(self.num_heads, self.dropout, name="self_attn")(x, x, mask, deterministic)
    x = nn.LayerNorm(self.norm_eps, name="norm1")(x + drop(a))
    a = TorchMultiheadAttention(self.num_heads, self.dropout, name="multihead_attn")(x, memory, None, deterministic)
    x = nn.LayerNorm(self.norm_eps, name="norm2")(x + drop(a))
    f = _FeedForward(self.ff_size, self.dropout, name="ff")(x, deterministic)
    return nn.LayerNorm(self.norm_eps, name="norm3")(x + drop(f))


class SkipTransformer(nn.Module):
  """Official `SkipTransformerEncoder` / `SkipTransformerDecoder` (`decoder=True`): (n-1)/2 `input_blocks_i`,
  a `middle_block`, (n-1)/2 `output_blocks_i` each preceded by `linear_blocks_i` = Linear(2C -> C) of
  concat[x, the matching input block's output] (last in, first out), then the final LayerNorm `norm`.
  x [B, L, C], mask [B, L] bool or None (keys of self-attention), memory [B, M, C] (decoder only).
  `scan_layers` (None = `layers.SCAN_LAYERS`): run the identical layers as `lax.scan`s over their stacked
  params (`layers.run_skip_layers`; same parameter tree, same outputs, a shorter compile)."""

  num_layers: int
  num_heads: int
  ff_size: int
  dropout: float = 0.0
  norm_eps: float = 1e-5
  decoder: bool = False
  scan_layers: bool | None = None

  @nn.compact
  def __call__(self, x, mask=None, memory=None, deterministic: bool = True):
    args = (self.num_heads, self.ff_size, self.dropout, self.norm_eps)
    n = (self.num_layers - 1) // 2
    if n and resolve_scan(self.scan_layers) and not self.is_initializing():
      # Same params, same function; the identical layers run as two lax.scans (layers.run_skip_layers).
      layer = (OfficialDecoderLayer if self.decoder else OfficialEncoderLayer)(*args, parent=None)
      linear = nn.Dense(x.shape[-1], parent=None)

      def apply_block(p, h, key):
        rngs = {} if key is None else {"dropout": key}
        if self.decoder:
          return layer.apply({"params": p}, h, memory, mask, deterministic, rngs=rngs)
        return layer.apply({"params": p}, h, mask, deterministic, rngs=rngs)

      rng = None if deterministic or not self.dropout else self.make_rng("dropout")
      x = run_skip_layers(apply_block, lambda p, h: linear.apply({"params": p}, h), self.variables["params"], n, x, rng)
      return nn.LayerNorm(self.norm_eps, name="norm")(x)

    def block(name, h):
      if self.decoder:
        return OfficialDecoderLayer(*args, name=name)(h, memory, mask, deterministic)
      return OfficialEncoderLayer(*args, name=name)(h, mask, deterministic)

    skips = []
    for i in range(n):
      x = block(f"input_blocks_{i}", x)
      skips.append(x)
    x = block("middle_block", x)
    for i in range(n):
      x = nn.Dense(x.shape[-1], name=f"linear_blocks_{i}", kernel_init=_xavier)(
        jnp.concatenate([x, skips.pop()], axis=-1)
      )
      x = block(f"output_blocks_{i}", x)
    return nn.LayerNorm(self.norm_eps, name="norm")(x)


class LearnedPositions(nn.Module):
  """`PositionEmbeddingLearned1D`: adds rows 0..L-1 of a learned table `pe` [max_len, C] (U[0, 1) init) to
  x [B, L, C]. (The PyTorch table is [max_len, 1, C]; the converter drops the middle axis.)"""

  max_len: int

  @nn.compact
  def __call__(self, x):
    pe = self.param("pe", nn.initializers.uniform(1.0), (self.max_len, x.shape[-1]))
    if x.shape[1] > self.max_len:
      raise ValueError(
        f"LearnedPositions: the table has max_len={self.max_len} rows, the sequence has {x.shape[1]} positions"
      )
    return x + pe[None, : x.shape[1]].astype(x.dtype)


def _check_motion(x, mask, nfeats):
  if x.ndim != 3 or x.shape[-1] != nfeats:
    raise ValueError(f"motion: expected [B, L, {nfeats}], found {x.shape}")
  if mask.shape != x.shape[:2] or mask.dtype != jnp.bool_:
    raise ValueError(f"mask: expected bool {x.shape[:2]}, found {mask.dtype} {mask.shape}")


# --------------------------------------------------------------------------------------------- VAE
class OfficialMLDVAE(nn.Module):
  """Official `MldVae` (encoder_decoder). `encode(x, mask)` -> (mu, logvar) each [B, latent_size, latent_dim];
  `decode(z, mask)` -> features [B, L, nfeats] (0 at padded frames); `__call__(x, mask, rng)` ->
  (recon, mu, logvar) with z ~ N(mu, exp(logvar)) (mu when rng is None)."""

  config: OfficialVAEConfig
  scan_layers: bool | None = None

  def setup(self):
    c = self.config
    self.skel_embedding = nn.Dense(c.latent_dim, kernel_init=_xavier)
    self.global_motion_token = self.param(
      "global_motion_token", nn.initializers.normal(1.0), (2 * c.latent_size, c.latent_dim)
    )
    self.query_pos_encoder = LearnedPositions(c.max_len)
    self.query_pos_decoder = LearnedPositions(c.max_len)
    self.encoder = SkipTransformer(
      c.num_layers, c.num_heads, c.ff_size, c.dropout, c.norm_eps, scan_layers=self.scan_layers
    )
    self.decoder = SkipTransformer(
      c.num_layers, c.num_heads, c.ff_size, c.dropout, c.norm_eps, decoder=True, scan_layers=self.scan_layers
    )
    self.final_layer = nn.Dense(c.nfeats, kernel_init=_xavier)

  def encode(self, x, mask, deterministic: bool = True):
    c = self.config
    _check_motion(x, mask, c.nfeats)
    b = x.shape[0]
    n2 = 2 * c.latent_size
    tokens = jnp.broadcast_to(self.global_motion_token[None].astype(x.dtype), (b, n2, c.latent_dim))
    seq = self.query_pos_encoder(jnp.concatenate([tokens, self.skel_embedding(x)], axis=1))
    seq_mask = jnp.concatenate([jnp.ones((b, n2), bool), mask], axis=1)
    dist = self.encoder(seq, seq_mask, deterministic=deterministic)[:, :n2]
    return dist[:, : c.latent_size], dist[:, c.latent_size :]

  def decode(self, z, mask, deterministic: bool = True):
    c = self.config
    if z.ndim != 3 or z.shape[1:] != (c.latent_size, c.latent_dim):
      raise ValueError(f"OfficialMLDVAE.decode: z expected [B, {c.latent_size}, {c.latent_dim}], found {z.shape}")
    if mask.ndim != 2 or mask.shape[0] != z.shape[0]:
      raise ValueError(f"OfficialMLDVAE.decode: mask expected bool [B={z.shape[0]}, L], found {mask.shape}")
    b, length = mask.shape
    queries = self.query_pos_decoder(jnp.zeros((b, length, c.latent_dim), z.dtype))
    h = self.decoder(queries, mask.astype(bool), memory=z, deterministic=deterministic)
    return jnp.where(mask[..., None], self.final_layer(h), 0.0)

  def __call__(self, x, mask, rng: jax.Array | None = None, deterministic: bool = True):
    mu, logvar = self.encode(x, mask, deterministic)
    z = mu if rng is None else mu + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mu.shape, mu.dtype)
    return self.decode(z, mask, deterministic), mu, logvar


# --------------------------------------------------------------------------------------------- denoiser
class OfficialTimestepEmbedding(nn.Module):
  """Official `TimestepEmbedding`: [cond_proj(timestep_cond) +] features -> linear_1 -> SiLU -> linear_2."""

  in_dim: int
  out_dim: int
  cond_proj_dim: int | None = None
  zero_init_cond: bool = True

  @nn.compact
  def __call__(self, h, timestep_cond=None):
    if self.cond_proj_dim is not None:
      init = _zeros if self.zero_init_cond else nn.initializers.lecun_normal()
      proj = nn.Dense(self.in_dim, use_bias=False, kernel_init=init, name="cond_proj")
      if timestep_cond is not None:
        h = h + proj(timestep_cond)
      elif self.is_initializing():
        proj(jnp.zeros(h.shape[:-1] + (self.cond_proj_dim,), h.dtype))
    h = nn.silu(nn.Dense(self.out_dim, name="linear_1")(h))
    return nn.Dense(self.out_dim, name="linear_2")(h)


class OfficialMLDDenoiser(nn.Module):
  """Official `MldDenoiser` (trans_enc). x_t [B, latent_size, latent_dim], t int [B] (or a scalar),
  cond {"text": [B, Lt, text_dim], "text_mask": ignored, optional "timestep_cond": [B, time_cond_proj_dim]}
  -> prediction [B, latent_size, latent_dim] (epsilon for the released MLD)."""

  config: OfficialDenoiserConfig
  scan_layers: bool | None = None

  @nn.compact
  def __call__(self, x_t, t, cond, deterministic: bool = True):
    c = self.config
    if x_t.ndim != 3 or x_t.shape[-1] != c.latent_dim:
      raise ValueError(f"OfficialMLDDenoiser: x_t expected [B, latent_size, {c.latent_dim}], found {x_t.shape}")
    if "text" not in cond:
      raise ValueError(f"cond: missing key 'text' (expected [B, Lt, {c.text_dim}]), found keys {sorted(cond)}")
    text = cond["text"]
    b, n = x_t.shape[:2]
    if text.ndim != 3 or text.shape[0] != b or text.shape[-1] != c.text_dim:
      raise ValueError(f"cond['text']: expected [B={b}, Lt, {c.text_dim}], found {text.shape}")
    if c.unused_mem_pos:
      self.param("mem_pos", nn.initializers.uniform(1.0), (c.max_len, c.latent_dim))
    t = jnp.broadcast_to(jnp.asarray(t), (b,))
    feats = timestep_embedding(t, c.time_dim, c.flip_sin_to_cos, c.freq_shift).astype(x_t.dtype)
    time = OfficialTimestepEmbedding(
      c.time_dim, c.latent_dim, c.time_cond_proj_dim, c.zero_init_cond, name="time_embedding"
    )(feats, cond.get("timestep_cond"))
    text = nn.Dense(c.latent_dim, name="emb_proj")(nn.relu(text.astype(x_t.dtype)))
    seq = jnp.concatenate([x_t, time[:, None], text], axis=1)
    seq = LearnedPositions(c.max_len, name="query_pos")(seq)
    out = SkipTransformer(
      c.num_layers, c.num_heads, c.ff_size, c.dropout, c.norm_eps, name="encoder", scan_layers=self.scan_layers
    )(seq, None, deterministic=deterministic)
    return out[:, :n]


# --------------------------------------------------------------------------------------------- helpers
def vae_init_inputs(config: OfficialVAEConfig, length: int = 8):
  return jnp.zeros((1, length, config.nfeats)), jnp.ones((1, length), bool)


def denoiser_init_inputs(config: OfficialDenoiserConfig, text_len: int = 1):
  x = jnp.zeros((1, config.latent_size, config.latent_dim))
  cond = {"text": jnp.zeros((1, text_len, config.text_dim)), "text_mask": jnp.ones((1, text_len), bool)}
  return x, jnp.zeros((1,), jnp.int32), cond


def init_vae(config: OfficialVAEConfig, rng: jax.Array):
  """{"params": ...} of `OfficialMLDVAE` (the init traces encode + decode; one compiled program)."""
  return jax.jit(lambda r: OfficialMLDVAE(config).init(r, *vae_init_inputs(config)))(rng)


def init_denoiser(config: OfficialDenoiserConfig, rng: jax.Array):
  """{"params": ...} of `OfficialMLDDenoiser` (one compiled program)."""
  return jax.jit(lambda r: OfficialMLDDenoiser(config).init(r, *denoiser_init_inputs(config)))(rng)


def param_count(tree) -> int:
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))
