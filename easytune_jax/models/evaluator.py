"""T2M text-motion matching evaluator (Guo et al., CVPR 2022, "text_mot_match") in Flax Linen.

The architecture is the published one (docs/humanml3d_format.md#evaluator-networks), with PyTorch semantics:

* ``MovementConvEncoder``: Conv1d(D-4 -> H, k4 s2 p1), Dropout(0.2), LeakyReLU(0.2),
  Conv1d(H -> L, k4 s2 p1), Dropout(0.2), LeakyReLU(0.2), Linear(L -> L). Time is divided by 4.
* ``MotionEncoderBiGRUCo``: Linear(L -> Hm), bidirectional GRU (hidden Hm, learned initial state),
  [h_fwd, h_bwd] -> Linear(2Hm -> Hm), LayerNorm(eps 1e-5), LeakyReLU(0.2), Linear(Hm -> E).
* ``TextEncoderBiGRUCo``: word + Linear(15 -> W)(pos one-hot), Linear(W -> Ht), bidirectional GRU
  (hidden Ht, learned initial state), Linear(2Ht -> Ht), LayerNorm, LeakyReLU(0.2), Linear(Ht -> E).

PyTorch's packed sequences are reproduced by masking: the forward direction freezes its state after
``len`` steps; the backward direction keeps its initial state until step ``len - 1`` and then runs down to
step 0. GRU gate order is PyTorch's (r, z, n) with ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``.

Word inputs come in two flavours (both made on the host by :class:`~easytune_jax.data.word_vectors.WordVectorizer`):
* GloVe path (the official evaluator): float word vectors ``[B, 22, 300]`` looked up from ``our_vab_data``;
* learned path (``EvaluatorConfig.vocab_size`` set): int32 word ids ``[B, 22]`` embedded by an ``nn.Embed``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EvaluatorConfig:
  """Sizes of the T2M evaluator. Defaults are tiny CPU sizes; :meth:`official` is the layout of the official T2M
  checkpoint (what `t2m_convert` reads; not a preset: the 'paper' preset of configs/evaluator.py uses it).

  Attributes:
    dim_pose: dataset feature size D (263 HumanML3D, 251 KIT); the motion input has D - 4 dims.
    dim_word: word-vector size (300 for GloVe).
    dim_pos_ohot: POS one-hot size (15).
    dim_text_hidden: text GRU hidden size (512 official).
    dim_movement_enc_hidden: first conv channels (512 official).
    dim_movement_latent: second conv channels / movement latent (512 official).
    dim_motion_hidden: motion GRU hidden size (1024 official).
    dim_coemb: output embedding size, text and motion (512 official).
    vocab_size: None for the GloVe path (word vectors are inputs); an int for learned word vectors.
    dropout: dropout rate of the conv encoder (0.2; off when ``deterministic``).
    unit_length: temporal down-sampling of the conv encoder (4); GRU length = frames // unit_length.
    max_text_len: maximum number of word tokens before sos/eos are added (20 -> sequences of 22).
  """

  dim_pose: int = 263
  dim_word: int = 32
  dim_pos_ohot: int = 15
  dim_text_hidden: int = 64
  dim_movement_enc_hidden: int = 64
  dim_movement_latent: int = 64
  dim_motion_hidden: int = 128
  dim_coemb: int = 64
  vocab_size: int | None = None
  dropout: float = 0.2
  unit_length: int = 4
  max_text_len: int = 20

  @classmethod
  def official(cls, dim_pose: int = 263, **overrides) -> EvaluatorConfig:
    """The official T2M evaluator's sizes (docs/humanml3d_format.md#evaluator-checkpoint). ``dim_pose=251`` for
    KIT-ML."""
    kw = dict(
      dim_pose=dim_pose,
      dim_word=300,
      dim_pos_ohot=15,
      dim_text_hidden=512,
      dim_movement_enc_hidden=512,
      dim_movement_latent=512,
      dim_motion_hidden=1024,
      dim_coemb=512,
      vocab_size=None,
      dropout=0.2,
      unit_length=4,
      max_text_len=20,
    )
    kw.update(overrides)
    return cls(**kw)

  @property
  def motion_input_dim(self) -> int:
    return self.dim_pose - 4

  @property
  def text_seq_len(self) -> int:
    return self.max_text_len + 2


# --------------------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------------------

_xavier = nn.initializers.xavier_normal()  # T2M init_weight: xavier_normal_ weights, zero biases


def _leaky(x):
  return nn.leaky_relu(x, negative_slope=0.2)


def _length_mask(lengths, steps):
  return jnp.arange(steps)[None, :] < lengths[:, None]  # [B, T]


class GRUDirection(nn.Module):
  """One direction of a single-layer GRU with PyTorch equations, masked by length.

  Kernels are stored transposed relative to PyTorch (``kernel_ih = W_ih^T``, ``[in, 3H]``), gates in
  PyTorch order (r, z, n).
  """

  hidden: int
  reverse: bool = False

  @nn.compact
  def __call__(self, x, lengths, h0):
    """x [B, T, in], lengths int [B], h0 [B, H] -> final state [B, H]."""
    bound = 1.0 / np.sqrt(self.hidden)  # PyTorch's default GRU init U(-1/sqrt(H), 1/sqrt(H))
    init = nn.initializers.uniform(2 * bound)

    def shifted(key, shape, dtype=jnp.float32):
      return init(key, shape, dtype) - bound

    k_ih = self.param("kernel_ih", shifted, (x.shape[-1], 3 * self.hidden))
    b_ih = self.param("bias_ih", shifted, (3 * self.hidden,))
    k_hh = self.param("kernel_hh", shifted, (self.hidden, 3 * self.hidden))
    b_hh = self.param("bias_hh", shifted, (3 * self.hidden,))
    xp = x @ k_ih + b_ih  # input projections of all steps at once: [B, T, 3H]
    valid = _length_mask(lengths, x.shape[1])
    H = self.hidden

    def step(h, inp):
      xt, vt = inp
      hp = h @ k_hh + b_hh
      r = jax.nn.sigmoid(xt[:, :H] + hp[:, :H])
      z = jax.nn.sigmoid(xt[:, H : 2 * H] + hp[:, H : 2 * H])
      n = jnp.tanh(xt[:, 2 * H :] + r * hp[:, 2 * H :])
      h_new = (1.0 - z) * n + z * h
      # Packed-sequence semantics: steps at or beyond the length leave the state untouched, so the
      # forward state freezes after len steps and the backward scan effectively starts at len - 1.
      return jnp.where(vt[:, None], h_new, h), None

    h, _ = jax.lax.scan(
      step, h0.astype(xp.dtype), (jnp.swapaxes(xp, 0, 1), jnp.swapaxes(valid, 0, 1)), reverse=self.reverse
    )
    return h


class BiGRU(nn.Module):
  """Bidirectional GRU with a learned initial state (T2M's ``self.hidden``, shape (2, 1, H) in torch)."""

  hidden: int

  @nn.compact
  def __call__(self, x, lengths):
    """x [B, T, in], lengths [B] -> concat(final fwd, final bwd) [B, 2H]."""
    h0 = self.param("initial_hidden", nn.initializers.normal(1.0), (2, self.hidden))  # torch.randn
    b = x.shape[0]
    hf = GRUDirection(self.hidden, reverse=False, name="fwd")(x, lengths, jnp.broadcast_to(h0[0], (b, self.hidden)))
    hb = GRUDirection(self.hidden, reverse=True, name="bwd")(x, lengths, jnp.broadcast_to(h0[1], (b, self.hidden)))
    return jnp.concatenate([hf, hb], axis=-1)


class _OutputNet(nn.Module):
  """Linear(2H -> H), LayerNorm(H, eps 1e-5), LeakyReLU(0.2), Linear(H -> E)."""

  hidden: int
  out: int

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(self.hidden, kernel_init=_xavier, name="linear0")(x)
    # use_fast_variance=False: two-pass variance, as torch.nn.LayerNorm.
    x = nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, name="norm1")(x)
    x = _leaky(x)
    return nn.Dense(self.out, kernel_init=_xavier, name="linear3")(x)


class MovementConvEncoder(nn.Module):
  """[B, T, D-4] -> [B, T // 4, latent]."""

  hidden: int
  latent: int
  dropout: float = 0.2

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    # Flax Conv is cross-correlation like torch.nn.Conv1d; kernel layout (k, in, out).
    x = nn.Conv(self.hidden, (4,), strides=(2,), padding=[(1, 1)], kernel_init=_xavier, name="conv0")(x)
    x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
    x = _leaky(x)
    x = nn.Conv(self.latent, (4,), strides=(2,), padding=[(1, 1)], kernel_init=_xavier, name="conv3")(x)
    x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
    x = _leaky(x)
    return nn.Dense(self.latent, kernel_init=_xavier, name="out_net")(x)


class MotionEncoderBiGRUCo(nn.Module):
  hidden: int
  out: int

  @nn.compact
  def __call__(self, movements, lengths):
    """movements [B, T', latent], lengths [B] (in T' units) -> [B, out]."""
    x = nn.Dense(self.hidden, kernel_init=_xavier, name="input_emb")(movements)
    h = BiGRU(self.hidden, name="gru")(x, lengths)
    return _OutputNet(self.hidden, self.out, name="output_net")(h)


class TextEncoderBiGRUCo(nn.Module):
  word_size: int
  hidden: int
  out: int

  @nn.compact
  def __call__(self, word_embs, pos_ohot, lengths):
    """word_embs [B, T, W], pos_ohot [B, T, 15], lengths [B] -> [B, out]."""
    x = word_embs + nn.Dense(self.word_size, kernel_init=_xavier, name="pos_emb")(pos_ohot)
    x = nn.Dense(self.hidden, kernel_init=_xavier, name="input_emb")(x)
    h = BiGRU(self.hidden, name="gru")(x, lengths)
    return _OutputNet(self.hidden, self.out, name="output_net")(h)


class T2MEvaluator(nn.Module):
  """The full evaluator: ``embed_text`` and ``embed_motion``; ``__call__`` runs both (used by init)."""

  config: EvaluatorConfig

  def setup(self):
    c = self.config
    if c.vocab_size is not None:
      self.word_emb = nn.Embed(c.vocab_size, c.dim_word, name="word_emb")
    self.text_encoder = TextEncoderBiGRUCo(c.dim_word, c.dim_text_hidden, c.dim_coemb)
    self.movement_encoder = MovementConvEncoder(c.dim_movement_enc_hidden, c.dim_movement_latent, c.dropout)
    self.motion_encoder = MotionEncoderBiGRUCo(c.dim_motion_hidden, c.dim_coemb)

  def embed_text(self, words, pos_ohot, lengths):
    """words: int ids [B, T] (learned path) or vectors [B, T, dim_word]; lengths = sent_len [B]."""
    c = self.config
    if jnp.issubdtype(words.dtype, jnp.integer):
      if c.vocab_size is None:
        raise ValueError(
          "embed_text: got integer word ids but EvaluatorConfig.vocab_size is None "
          "(GloVe path expects word vectors [B, T, dim_word])"
        )
      words = self.word_emb(words)
    elif words.ndim != 3 or words.shape[-1] != c.dim_word:
      raise ValueError(f"embed_text: expected word vectors [B, T, {c.dim_word}], found {words.shape}")
    return self.text_encoder(words, pos_ohot, lengths)

  def embed_motion(self, motion, lengths, deterministic: bool = True):
    """motion [B, L, dim_pose - 4] in evaluator space, lengths = frame counts [B]."""
    c = self.config
    if motion.ndim != 3 or motion.shape[-1] != c.motion_input_dim:
      raise ValueError(
        f"embed_motion: expected motion [B, L, {c.motion_input_dim}] "
        f"(evaluator space, last 4 dims dropped), found {motion.shape}"
      )
    mov = self.movement_encoder(motion, deterministic=deterministic)
    return self.motion_encoder(mov, lengths // c.unit_length)

  def __call__(self, words, pos_ohot, text_lengths, motion, motion_lengths, deterministic: bool = True):
    return (self.embed_text(words, pos_ohot, text_lengths), self.embed_motion(motion, motion_lengths, deterministic))


# --------------------------------------------------------------------------------------------------
# Functional API
# --------------------------------------------------------------------------------------------------


def init_evaluator(key, config: EvaluatorConfig, batch: int = 2, motion_len: int = 16):
  """Random parameters (T2M initialisation) for ``config`` (one compiled program)."""
  c = config
  if c.vocab_size is None:
    words = jnp.zeros((batch, c.text_seq_len, c.dim_word), jnp.float32)
  else:
    words = jnp.zeros((batch, c.text_seq_len), jnp.int32)
  pos = jnp.zeros((batch, c.text_seq_len, c.dim_pos_ohot), jnp.float32)
  motion = jnp.zeros((batch, motion_len, c.motion_input_dim), jnp.float32)
  lens = jnp.full((batch,), 2, jnp.int32)
  motion_lens = jnp.full((batch,), motion_len, jnp.int32)
  return jax.jit(lambda k: T2MEvaluator(c).init(k, words, pos, lens, motion, motion_lens))(key)


def evaluator_embed_text(params, words, pos_ohot, lengths, *, config: EvaluatorConfig):
  """Text embeddings [B, dim_coemb].

  Args:
    words: GloVe vectors [B, T, dim_word] or, with ``config.vocab_size``, int32 ids [B, T].
    pos_ohot: [B, T, 15] POS one-hots.
    lengths: int32 [B] sentence lengths including sos/eos (``sent_len``).
  """
  return T2MEvaluator(config).apply(params, words, pos_ohot, lengths, method=T2MEvaluator.embed_text)


def evaluator_embed_motion(params, motion, lengths, *, config: EvaluatorConfig, deterministic: bool = True, rng=None):
  """Motion embeddings [B, dim_coemb].

  Args:
    motion: [B, L, dim_pose - 4] in evaluator space (see :func:`renorm_for_evaluator`).
    lengths: int32 [B] frame counts; the GRU sees ``lengths // unit_length`` steps.
    deterministic: False enables the conv encoder's dropout (training only); needs ``rng``.
  """
  rngs = None if deterministic else {"dropout": rng}
  return T2MEvaluator(config).apply(params, motion, lengths, deterministic, method=T2MEvaluator.embed_motion, rngs=rngs)


def renorm_for_evaluator(x_norm, mean_d, std_d, mean_e, std_e, mask=None):
  """Dataset-normalised features -> evaluator input (docs/humanml3d_format.md#evaluator-motion-input, MLD
  ``renorm4t2m``).

  ``((x * std_d + mean_d) - mean_e) / std_e`` with the last 4 dims (foot contacts) dropped. Padded frames
  must hold dataset-space zeros (the batch convention); with ``mask`` [B, L] they are forced to zero
  first, so they become ``(mean_d - mean_e) / std_e`` exactly as in the MLD-family protocol.

  Args:
    x_norm: [..., L, D] dataset-normalised features. Stats: [D]. Returns [..., L, D - 4] in x's dtype.
  """
  x = jnp.asarray(x_norm)
  d = x.shape[-1]
  for name, s in (("mean_d", mean_d), ("std_d", std_d), ("mean_e", mean_e), ("std_e", std_e)):
    if np.shape(s) != (d,):
      raise ValueError(f"renorm_for_evaluator: {name} expected shape ({d},), found {np.shape(s)}")
  dt = x.dtype
  if mask is not None:
    x = jnp.where(jnp.asarray(mask)[..., None], x, 0)
  out = ((x * jnp.asarray(std_d, dt) + jnp.asarray(mean_d, dt)) - jnp.asarray(mean_e, dt)) / jnp.asarray(std_e, dt)
  return out[..., :-4]


# --------------------------------------------------------------------------------------------------
# Training loss
# --------------------------------------------------------------------------------------------------


def evaluator_contrastive_loss(
  text_emb,
  motion_emb,
  *,
  kind: str = "infonce",
  temperature: float = 1.0,
  similarity: str = "euclidean",
  margin: float = 10.0,
  shift: int | jax.Array = 1,
):
  """Contrastive loss for evaluator training. Default: symmetric InfoNCE over the batch.

  * ``kind="infonce"`` (default): logits ``s_ij / temperature`` with ``s_ij = -||t_i - m_j||_2``
    (``similarity="euclidean"``, the distance the evaluation protocol ranks by) or the cosine similarity
    (``similarity="cosine"``); cross-entropy with the diagonal as targets, averaged over text->motion and
    motion->text.
  * ``kind="hinge"``: T2M's original ``ContrastiveLoss`` with ``negative_margin`` (10.0):
    ``mean(d(t_i, m_i)^2) + mean(max(margin - d(t_i, m_{(i+shift) % B}), 0)^2)`` where the negatives are the
    batch shifted by ``shift`` (T2M draws ``shift`` at random each step; pass a value in [1, B-1]).

  Args:
    text_emb, motion_emb: [B, E] matched pairs. Returns a scalar.
  """
  t = text_emb
  m = motion_emb
  if kind == "infonce":
    if similarity == "euclidean":
      d2 = jnp.sum(t**2, -1)[:, None] + jnp.sum(m**2, -1)[None, :] - 2.0 * t @ m.T
      # Small floor keeps the sqrt differentiable when a pair coincides.
      logits = -jnp.sqrt(jnp.maximum(d2, 0.0) + 1e-12)
    elif similarity == "cosine":
      tn = t / jnp.maximum(jnp.linalg.norm(t, axis=-1, keepdims=True), 1e-8)
      mn = m / jnp.maximum(jnp.linalg.norm(m, axis=-1, keepdims=True), 1e-8)
      logits = tn @ mn.T
    else:
      raise ValueError(f"evaluator_contrastive_loss: similarity must be 'euclidean' or 'cosine', found {similarity!r}")
    logits = logits / temperature
    labels = jnp.arange(t.shape[0])
    lt = -jnp.mean(jax.nn.log_softmax(logits, axis=1)[labels, labels])
    lm = -jnp.mean(jax.nn.log_softmax(logits, axis=0)[labels, labels])
    return 0.5 * (lt + lm)
  if kind == "hinge":
    pos = jnp.mean(jnp.sum((t - m) ** 2, -1))
    neg_m = jnp.roll(m, -shift, axis=0)  # row i gets m[(i + shift) % B]
    d_neg = jnp.sqrt(jnp.sum((t - neg_m) ** 2, -1) + 1e-12)
    neg = jnp.mean(jnp.maximum(margin - d_neg, 0.0) ** 2)
    return pos + neg
  raise ValueError(f"evaluator_contrastive_loss: kind must be 'infonce' or 'hinge', found {kind!r}")


def evaluator_loss(params, batch, *, config: EvaluatorConfig, rng=None, deterministic: bool = False, **loss_kwargs):
  """Contrastive loss of one evaluator batch; returns ``(loss, aux)`` with the embeddings' mean norms.

  ``batch``: ``words`` ([B, T, dim_word] vectors or [B, T] ids), ``pos_ohot`` [B, T, 15], ``text_lengths``
  [B], ``motion`` [B, L, dim_pose - 4] in evaluator space, ``motion_lengths`` [B] frames.
  """
  t = evaluator_embed_text(params, batch["words"], batch["pos_ohot"], batch["text_lengths"], config=config)
  m = evaluator_embed_motion(
    params, batch["motion"], batch["motion_lengths"], config=config, deterministic=deterministic, rng=rng
  )
  loss = evaluator_contrastive_loss(t, m, **loss_kwargs)
  aux = {"text_norm": jnp.mean(jnp.linalg.norm(t, axis=-1)), "motion_norm": jnp.mean(jnp.linalg.norm(m, axis=-1))}
  return loss, aux


def make_evaluator_train_step(
  config: EvaluatorConfig, optimizer, *, train_movement_encoder: bool = True, **loss_kwargs
):
  """Pure ``step(params, opt_state, batch, rng) -> (params, opt_state, metrics)`` for evaluator training.

  Dropout is on (training mode). T2M kept its movement encoder frozen (pre-trained by its motion
  autoencoder); from scratch we train it jointly by default, ``train_movement_encoder=False`` freezes it.
  Jit it with ``donate_argnums=(0, 1)``. ``optimizer`` is an optax ``GradientTransformation``.
  """

  def step(params, opt_state, batch, rng):
    (loss, aux), grads = jax.value_and_grad(evaluator_loss, has_aux=True)(
      params, batch, config=config, rng=rng, deterministic=False, **loss_kwargs
    )
    updates, opt_state = optimizer.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    if not train_movement_encoder:  # restore, so neither gradients nor weight decay move it
      new_params = {
        **new_params,
        "params": {**new_params["params"], "movement_encoder": params["params"]["movement_encoder"]},
      }
    params = new_params
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}
    return params, opt_state, metrics

  return step
