"""The official EasyTune SPM architecture in Flax Linen (`SPMConfig(arch='official')`).

Re-stated from the facts of the official PyTorch model (wengwanjiang/EasyTune, `GradGuidance/spm.py` and
`GradGuidance/opt/{attention,embeddings,position_encoding}.py`), so that its checkpoints load through
:mod:`easytune_jax.interop.spm_convert` and produce the same latents:

* inputs: motion features [B, L, D] -> `skel_embedding` Linear(D -> C); text = sentence-T5-large token
  embeddings [B, Lt, 1024] -> `text_embedding` Linear(1024 -> C) (the input width is read from the data);
* each encoder's sequence is [distribution token, (timestep token), frames/tokens]; ONE learned positional
  table per stream (500 x C, uniform[0, 1) init) is added to the whole sequence, the distribution and time
  tokens included; padded frames are masked as attention keys;
* the timestep token is one embedding shared by both streams: diffusers' sinusoid with 2C channels
  (flip_sin_to_cos, no frequency shift) -> Linear(2C -> C) -> SiLU -> Linear(C -> C). It is present only when
  a timestep is passed (`t=None`: no token at all, unlike our TMR-style SPM which then uses t = 0);
* encoders and decoder are MLD's skip-connected transformers: (n-1)/2 input blocks, a middle block,
  (n-1)/2 output blocks each preceded by Linear(2C -> C) of concat[x, skip] (x first); post-norm layers
  (`normalize_before=False`), exact-erf GELU, dropout after attention, inside the feed-forward and after it,
  and on the attention weights; LayerNorm eps 1e-5;
* ONE final LayerNorm object is shared by the text and motion encoders (the official code passes the same
  module to both), without activation; the decoder has its own;
* the distribution token's output -> Linear(C -> 2C) -> (mu, logvar) = the two halves; the latent is the
  reparameterised sample mu + exp(logvar / 2) * eps (:func:`easytune_jax.models.layers.reparameterize`);
* decoder: queries = zeros + the decoder's learned positions [L, C]; self-attention masks padded frames;
  cross-attention reads the single latent token; Linear(C -> D); padded frames set to zero.

Parameter names mirror the PyTorch state-dict keys (`input_blocks_0` <-> `input_blocks.0`,
`kernel` = `weight`.T, `scale` <-> LayerNorm `weight`). The paper size (D = 263, text 1024, C = 256, 9 layers,
4 heads, ff 1024) has 26,515,975 unique parameters, as the official module.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from easytune_jax.models.layers import TorchMultiheadAttention, resolve_scan, run_skip_layers, timestep_embedding

MAX_POSITIONS = 500
LN_EPS = 1e-5
_WHERE = __name__.replace(".", "/") + ".py"
_xavier = nn.initializers.xavier_uniform()


def _dense(features: int, name: str | None = None, xavier: bool = True) -> nn.Dense:
  # The official skip transformers re-initialise every >= 2-D parameter with xavier_uniform.
  if xavier:
    return nn.Dense(features, kernel_init=_xavier, bias_init=nn.initializers.zeros, name=name)
  return nn.Dense(features, name=name)


def _layer_norm(name: str | None = None) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=LN_EPS, name=name)


class OfficialEncoderLayer(nn.Module):
  """Post-norm encoder layer: x = LN1(x + drop(attn(x))); x = LN2(x + drop(lin2(drop(gelu(lin1(x))))))."""

  num_heads: int
  ff_dim: int
  dropout: float = 0.1

  @nn.compact
  def __call__(self, x, mask, deterministic: bool = True):
    drop = lambda h: nn.Dropout(self.dropout)(h, deterministic=deterministic)
    a = TorchMultiheadAttention(self.num_heads, self.dropout, name="self_attn")(x, x, mask, deterministic)
    x = _layer_norm("norm1")(x + drop(a))
    h = drop(nn.gelu(_dense(self.ff_dim, "linear1")(x), approximate=False))
    return _layer_norm("norm2")(x + drop(_dense(x.shape[-1], "linear2")(h)))


class OfficialDecoderLayer(nn.Module):
  """Post-norm decoder layer: self-attention (padded queries masked as keys), cross-attention to `memory`
  (no mask), feed-forward; LN after each residual."""

  num_heads: int
  ff_dim: int
  dropout: float = 0.1

  @nn.compact
  def __call__(self, x, mask, memory, deterministic: bool = True):
    drop = lambda h: nn.Dropout(self.dropout)(h, deterministic=deterministic)
    a = TorchMultiheadAttention(self.num_heads, self.dropout, name="self_attn")(x, x, mask, deterministic)
    x = _layer_norm("norm1")(x + drop(a))
    a = TorchMultiheadAttention(self.num_heads, self.dropout, name="multihead_attn")(x, memory, None, deterministic)
    x = _layer_norm("norm2")(x + drop(a))
    h = drop(nn.gelu(_dense(self.ff_dim, "linear1")(x), approximate=False))
    return _layer_norm("norm3")(x + drop(_dense(x.shape[-1], "linear2")(h)))


class SkipTransformer(nn.Module):
  """MLD's SkipTransformerEncoder/Decoder without its final norm (applied by the caller: the encoders share
  one). x [B, L, C] -> [B, L, C]; `memory` [B, M, C] makes it a decoder. `scan_layers` (None =
  `layers.SCAN_LAYERS`): run the identical layers as `lax.scan`s over their stacked params
  (`layers.run_skip_layers`; same parameter tree, same outputs, a shorter compile)."""

  dim: int
  num_layers: int
  num_heads: int
  ff_dim: int
  dropout: float = 0.1
  decoder: bool = False
  scan_layers: bool | None = None

  def setup(self):
    if self.num_layers % 2 != 1:
      raise ValueError(f"{_WHERE}: SkipTransformer.num_layers: expected an odd number, found {self.num_layers}")
    n = (self.num_layers - 1) // 2
    layer = OfficialDecoderLayer if self.decoder else OfficialEncoderLayer
    make = lambda: layer(self.num_heads, self.ff_dim, self.dropout)
    self.input_blocks = [make() for _ in range(n)]
    self.middle_block = make()
    self.output_blocks = [make() for _ in range(n)]
    self.linear_blocks = [_dense(self.dim) for _ in range(n)]

  def _run(self, block, x, mask, memory, deterministic):
    return block(x, mask, memory, deterministic) if self.decoder else block(x, mask, deterministic)

  def __call__(self, x, mask, memory=None, deterministic: bool = True):
    n = len(self.input_blocks)
    if n and resolve_scan(self.scan_layers) and not self.is_initializing():
      # Same params, same function; the identical layers run as two lax.scans (layers.run_skip_layers).
      layer_cls = OfficialDecoderLayer if self.decoder else OfficialEncoderLayer
      layer = layer_cls(self.num_heads, self.ff_dim, self.dropout, parent=None)
      linear = nn.Dense(self.dim, parent=None)

      def apply_block(p, h, key):
        rngs = {} if key is None else {"dropout": key}
        if self.decoder:
          return layer.apply({"params": p}, h, mask, memory, deterministic, rngs=rngs)
        return layer.apply({"params": p}, h, mask, deterministic, rngs=rngs)

      rng = None if deterministic or not self.dropout else self.make_rng("dropout")
      return run_skip_layers(
        apply_block, lambda p, h: linear.apply({"params": p}, h), self.variables["params"], n, x, rng
      )
    skips = []
    for block in self.input_blocks:
      x = self._run(block, x, mask, memory, deterministic)
      skips.append(x)
    x = self._run(self.middle_block, x, mask, memory, deterministic)
    for block, linear in zip(self.output_blocks, self.linear_blocks):
      x = linear(jnp.concatenate([x, skips.pop()], axis=-1))
      x = self._run(block, x, mask, memory, deterministic)
    return x


class LearnedPositions(nn.Module):
  """PositionEmbeddingLearned1D: a [max_len, C] table (uniform[0, 1) init) added to the first L positions."""

  dim: int
  max_len: int = MAX_POSITIONS

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    pe = self.param("pe", nn.initializers.uniform(1.0), (self.max_len, self.dim))
    if x.shape[1] > self.max_len:
      raise ValueError(
        f"{_WHERE}: sequence of {x.shape[1]} positions (tokens included) exceeds the "
        f"{self.max_len} learned positions of the official SPM"
      )
    return x + pe[None, : x.shape[1]]


class OfficialTimestepEmbedding(nn.Module):
  """t [B] -> sinusoid(2C, flip_sin_to_cos, shift 0) -> linear_1 (2C -> C) -> SiLU -> linear_2 (C -> C)."""

  dim: int

  @nn.compact
  def __call__(self, t: jax.Array) -> jax.Array:
    h = timestep_embedding(t, 2 * self.dim, flip_sin_to_cos=True, downscale_freq_shift=0.0)
    h = nn.silu(nn.Dense(self.dim, name="linear_1")(h))
    return nn.Dense(self.dim, name="linear_2")(h)


class OfficialSPM(nn.Module):
  """The official SPM. Same methods and signatures as :class:`easytune_jax.models.spm.SPM`, except that
  `t=None` means *no timestep token* (the official behaviour); which encoder gets a timestep is the
  caller's choice (the official training passes it by stage, see `rewards/spm_loss.py`).

  `config`: an :class:`easytune_jax.models.spm.SPMConfig` with arch='official' (text_input='embeddings',
  patch_size=1, odd num_layers).
  """

  config: object
  scan_layers: bool | None = None

  def setup(self):
    c = self.config
    d = c.latent_dim
    stack = lambda decoder: SkipTransformer(
      d, c.num_layers, c.num_heads, c.ff_dim, c.dropout, decoder, scan_layers=self.scan_layers
    )
    self.skel_embedding = nn.Dense(d)
    self.text_embedding = nn.Dense(d)
    self.final_layer = nn.Dense(c.dim_motion)
    self.global_motion_token = self.param("global_motion_token", nn.initializers.normal(1.0), (1, d))
    self.global_text_token = self.param("global_text_token", nn.initializers.normal(1.0), (1, d))
    self.dist_motion_layer = nn.Dense(2 * d)
    self.dist_text_layer = nn.Dense(2 * d)
    self.query_motion_pos_encoder = LearnedPositions(d)
    self.query_text_pos_encoder = LearnedPositions(d)
    self.query_pos_decoder = LearnedPositions(d)
    self.time_embedding = OfficialTimestepEmbedding(d)
    self.motion_encoder = stack(False)
    self.text_encoder = stack(False)
    self.encoder_norm = _layer_norm()
    self.decoder = stack(True)
    self.decoder_norm = _layer_norm()

  def _encode(self, x, mask, t, token, positions, encoder, dist_layer, deterministic):
    b = x.shape[0]
    d = self.config.latent_dim
    parts = [jnp.broadcast_to(token[None], (b, 1, d))]
    masks = [jnp.ones((b, 1), bool)]
    if t is not None:
      tt = jnp.broadcast_to(jnp.asarray(t, jnp.int32), (b,))
      parts.append(self.time_embedding(tt)[:, None, :])
      masks.append(jnp.ones((b, 1), bool))
    parts.append(x)
    masks.append(mask.astype(bool))
    h = positions(jnp.concatenate(parts, axis=1))
    h = self.encoder_norm(encoder(h, jnp.concatenate(masks, axis=1), None, deterministic))
    dist = dist_layer(h[:, 0])
    return dist[:, :d], dist[:, d:]

  def encode_text(
    self, text: jax.Array, text_mask: jax.Array, t: jax.Array | None = None, deterministic: bool = True
  ) -> tuple[jax.Array, jax.Array]:
    """text float [B, Lt, E] token embeddings, text_mask bool [B, Lt], t None (no token) or int [B] / [].
    -> (mu, logvar) [B, latent]."""
    if text.ndim != 3:
      raise ValueError(
        f"{_WHERE}: text input: expected float token embeddings [B, Lt, E], found {text.dtype} {text.shape}"
      )
    x = self.text_embedding(text.astype(jnp.float32))
    return self._encode(
      x,
      text_mask,
      t,
      self.global_text_token,
      self.query_text_pos_encoder,
      self.text_encoder,
      self.dist_text_layer,
      deterministic,
    )

  def encode_motion(
    self, motion: jax.Array, mask: jax.Array, t: jax.Array | None = None, deterministic: bool = True
  ) -> tuple[jax.Array, jax.Array]:
    """motion [B, L, D] normalised features, mask bool [B, L], t None or int [B] / [] -> (mu, logvar)."""
    if motion.ndim != 3 or motion.shape[-1] != self.config.dim_motion:
      raise ValueError(f"{_WHERE}: motion input: expected [B, L, D={self.config.dim_motion}], found {motion.shape}")
    x = self.skel_embedding(motion)
    return self._encode(
      x,
      mask,
      t,
      self.global_motion_token,
      self.query_motion_pos_encoder,
      self.motion_encoder,
      self.dist_motion_layer,
      deterministic,
    )

  def decode(self, z: jax.Array, mask: jax.Array, deterministic: bool = True) -> jax.Array:
    """z [B, latent], mask bool [B, L] -> motion features [B, L, D], zero on padded frames."""
    b, length = mask.shape
    queries = self.query_pos_decoder(jnp.zeros((b, length, self.config.latent_dim), z.dtype))
    h = self.decoder_norm(self.decoder(queries, mask.astype(bool), z[:, None, :], deterministic))
    return self.final_layer(h) * mask[..., None].astype(h.dtype)

  def __call__(self, text, text_mask, motion, mask, t=None, deterministic: bool = True):
    """Runs every submodule (used by `init`): returns (text (mu, logvar), motion (mu, logvar), recon)."""
    tm = self.encode_text(text, text_mask, t, deterministic)
    mm = self.encode_motion(motion, mask, t, deterministic)
    return tm, mm, self.decode(mm[0], mask, deterministic)
