"""The T5 encoder and sentence-T5 (as sentence-transformers lays out ``sentence-t5-large``) in Flax, torch-free.

EasyTune's official MLD and SPM read the frozen ``sentence-transformers/sentence-t5-large`` model through
``SentenceTransformer.encode``: the MLD denoiser reads the 768-d ``sentence_embedding`` (as [B, 1, 768]), the SPM
reads the 1024-d ``token_embeddings`` [B, L, 1024] with its ``attention_mask`` (L = the longest caption of the
batch). This module reproduces that pipeline:

    text -> SentencePiece ids + </s> (truncated to max_seq_length, padded to the batch's longest with <pad>)
         -> T5 encoder (token embeddings [B, L, d_model], the encoder's last hidden state)
         -> mean pooling over valid tokens -> Dense(d_model -> S, no bias, identity) -> L2 normalisation [B, S]

T5 encoder facts (HF ``T5EncoderModel``): token embedding without scaling; per block a pre-norm self-attention
without biases and *without* 1/sqrt(d) scaling, plus a relative position bias (bidirectional log buckets) that
only block 0 owns and all blocks share; a pre-norm feed-forward (``relu``: wo(act(wi x)); ``gated-*``:
wo(act(wi_0 x) * wi_1 x), ``gated-gelu`` meaning the tanh GELU); RMS "T5 LayerNorm" (weight only, no mean);
a final RMS norm. Masked keys get ``finfo(float32).min`` added to their scores, as in HF.

Weight import (:func:`load_sentence_t5`) reads the folder users download (``modules.json``; the Transformer module's
``config.json``, ``model.safetensors`` or ``pytorch_model.bin``, ``spiece.model`` or ``tokenizer.json``,
``sentence_bert_config.json``; ``1_Pooling/config.json``; ``2_Dense/config.json`` + weights; a Normalize module),
with no torch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from easytune_jax.data.safe_io import read_json
from easytune_jax.models.hf_weights import StateDict, find_file, load_folder_weights, require

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

  @classmethod
  def from_hf(cls, d: dict, path: str = "config.json") -> T5Config:
    """From a HF ``config.json`` dict (``feed_forward_proj`` decoded as ``T5Config`` does)."""
    ff = d.get("feed_forward_proj", "relu")
    parts = ff.split("-")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
      raise ValueError(f"{path}: field 'feed_forward_proj': expected 'ACT' or 'gated-ACT', found {ff!r}")
    act = "gelu_new" if ff == "gated-gelu" else parts[-1]
    return cls(
      vocab_size=int(require(d, "vocab_size", path)),
      d_model=int(require(d, "d_model", path)),
      d_kv=int(require(d, "d_kv", path)),
      d_ff=int(require(d, "d_ff", path)),
      num_layers=int(require(d, "num_layers", path)),
      num_heads=int(require(d, "num_heads", path)),
      relative_attention_num_buckets=int(d.get("relative_attention_num_buckets", 32)),
      relative_attention_max_distance=int(d.get("relative_attention_max_distance", 128)),
      layer_norm_epsilon=float(d.get("layer_norm_epsilon", 1e-6)),
      dense_act_fn=act,
      is_gated_act=parts[0] == "gated" and len(parts) == 2,
    )


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


def t5_params_from_state_dict(sd: StateDict, cfg: T5Config, prefix: str = "") -> dict:
  """Maps HF ``T5EncoderModel`` / ``T5Model`` tensors (``shared.weight``, ``encoder.block.{i}...``) to the
  params of :class:`T5Encoder`. Linear weights [out, in] become kernels [in, out]."""
  e = f"{prefix}encoder."
  params = {
    "shared": {
      "embedding": sd.get(
        f"{prefix}shared.weight", (cfg.vocab_size, cfg.d_model), alternatives=[f"{e}embed_tokens.weight"]
      )
    },
    "relative_attention_bias": sd.get(
      f"{e}block.0.layer.0.SelfAttention.relative_attention_bias.weight",
      (cfg.relative_attention_num_buckets, cfg.num_heads),
    ),
    "final_layer_norm": {"weight": sd.get(f"{e}final_layer_norm.weight", (cfg.d_model,))},
  }
  lin = lambda key, n_out, n_in: {"kernel": sd.get(key, (n_out, n_in)).T}  # noqa: E731
  for i in range(cfg.num_layers):
    a, f = f"{e}block.{i}.layer.0.", f"{e}block.{i}.layer.1."
    blk = {
      "attn_norm": {"weight": sd.get(f"{a}layer_norm.weight", (cfg.d_model,))},
      "ff_norm": {"weight": sd.get(f"{f}layer_norm.weight", (cfg.d_model,))},
      "o": lin(f"{a}SelfAttention.o.weight", cfg.d_model, cfg.inner_dim),
      "wo": lin(f"{f}DenseReluDense.wo.weight", cfg.d_model, cfg.d_ff),
    }
    for n in ("q", "k", "v"):
      blk[n] = lin(f"{a}SelfAttention.{n}.weight", cfg.inner_dim, cfg.d_model)
    for n in ("wi_0", "wi_1") if cfg.is_gated_act else ("wi",):
      blk[n] = lin(f"{f}DenseReluDense.{n}.weight", cfg.d_ff, cfg.d_model)
    params[f"block_{i}"] = blk
  return params


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer


class T5Tokenizer:
  """T5's tokenizer with T5's conventions, as ``SentenceTransformer`` calls the HF T5 tokenizer: strip (and
  optionally lower-case) the text, the model's ids, truncate to ``max_length - 1`` pieces, append ``</s>``; batches
  are padded with ``<pad>`` to the longest row (``padding=True``) or to ``max_length``.

  Two backends, the same ids: ``sentencepiece`` on a ``spiece.model`` (``T5Tokenizer(path)``, the layout of the
  released ``sentence-t5-large``), or HF ``tokenizers`` on a ``tokenizer.json`` (:meth:`from_tokenizer_json`, what
  transformers >= 5 saves: a Unigram model converted from the SentencePiece one; tests/test_text_encoders.py checks
  that both give the same ids).

  Not reproduced with ``spiece.model``: HF's added-token matching (a literal ``</s>`` or ``<extra_id_0>`` inside a
  caption is split into pieces there, while HF maps it to the special id; the ``tokenizer.json`` backend does as HF).

  Attributes:
    max_length: truncation length including ``</s>`` (sentence-transformers' ``max_seq_length``).
    pad_id, eos_id: the model's ids (T5: 0 and 1). path: the tokenizer file.
    sp: the ``sentencepiece.SentencePieceProcessor`` or None. tokenizer: the ``tokenizers.Tokenizer`` or None.
  """

  def __init__(self, spm_path: str, max_length: int = 256, do_lower_case: bool = False):
    import sentencepiece  # the spiece.model backend

    if not os.path.exists(spm_path):
      raise FileNotFoundError(f"{spm_path}: SentencePiece model not found")
    sp = sentencepiece.SentencePieceProcessor(model_file=spm_path)
    self.sp, self.tokenizer = sp, None
    self._setup(spm_path, max_length, do_lower_case, int(sp.eos_id()), int(sp.pad_id()), int(sp.get_piece_size()))

  @classmethod
  def from_tokenizer_json(
    cls,
    path: str,
    max_length: int = 256,
    do_lower_case: bool = False,
    eos_token: str = "</s>",
    pad_token: str = "<pad>",
  ) -> T5Tokenizer:
    """From a HF ``tokenizer.json`` (its normaliser, pre-tokeniser and Unigram model; ``</s>`` is appended here)."""
    from tokenizers import Tokenizer

    if not os.path.exists(path):
      raise FileNotFoundError(f"{path}: tokenizer file not found")
    try:
      tok = Tokenizer.from_file(path)
    except Exception as e:  # tokenizers raises a bare Exception
      raise ValueError(f"{path}: not a HF tokenizers file ({e})") from None
    tok.no_truncation()
    tok.no_padding()
    self = cls.__new__(cls)
    self.sp, self.tokenizer = None, tok
    eos, pad = tok.token_to_id(eos_token), tok.token_to_id(pad_token)
    self._setup(
      path,
      max_length,
      do_lower_case,
      -1 if eos is None else eos,
      -1 if pad is None else pad,
      tok.get_vocab_size(with_added_tokens=True),
    )
    return self

  def _setup(self, path: str, max_length: int, do_lower_case: bool, eos_id: int, pad_id: int, size: int) -> None:
    if max_length < 1:
      raise ValueError(f"T5Tokenizer.max_length: expected >= 1, found {max_length}")
    if eos_id < 0 or pad_id < 0:
      raise ValueError(
        f"{path}: expected a T5 tokenizer with </s> and <pad> ids, found eos_id={eos_id}, pad_id={pad_id}"
      )
    self.path = path
    self.max_length = int(max_length)
    self.do_lower_case = bool(do_lower_case)
    self.eos_id, self.pad_id = eos_id, pad_id
    self._size = int(size)

  @property
  def vocab_size(self) -> int:
    """Pieces of the model (with the added tokens of a ``tokenizer.json``)."""
    return self._size

  def encode(self, text: str) -> list[int]:
    """Ids of one text: pieces (truncated to ``max_length - 1``) + ``</s>``."""
    text = str(text).strip()
    if self.do_lower_case:
      text = text.lower()
    if self.tokenizer is not None:
      pieces = list(self.tokenizer.encode(text, add_special_tokens=False).ids)
    else:
      pieces = list(self.sp.encode(text))
    return pieces[: self.max_length - 1] + [self.eos_id]

  def __call__(
    self, texts: Sequence[str], padding: str = "longest", pad_to: int | None = None
  ) -> tuple[np.ndarray, np.ndarray]:
    """Batch of texts -> (ids int32 [B, L], mask bool [B, L]).

    Args:
      texts: B strings.
      padding: ``"longest"`` (L = longest row, as sentence-transformers) or ``"max_length"``.
      pad_to: optional L >= the longest row (overrides ``padding``).
    """
    rows = [self.encode(t) for t in texts]
    longest = max((len(r) for r in rows), default=1)
    length = self.max_length if padding == "max_length" else longest
    if pad_to is not None:
      if pad_to < longest:
        raise ValueError(f"T5Tokenizer: pad_to={pad_to} is shorter than the longest row ({longest})")
      length = pad_to
    ids = np.full((len(rows), length), self.pad_id, np.int32)
    mask = np.zeros((len(rows), length), bool)
    for i, r in enumerate(rows):
      ids[i, : len(r)] = r
      mask[i, : len(r)] = True
    return ids, mask


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


def _next_bucket(n: int) -> int:
  """Padded length for jit reuse: the next power of two >= max(n, 8)."""
  return max(8, 1 << (int(n) - 1).bit_length())


class SentenceT5:
  """Loaded sentence-T5: tokenizer + params + a jitted pure apply.

  Attributes:
    config: the :class:`SentenceT5Config` read from the folder.
    params: the Flax params of :class:`SentenceT5Model`.
    tokenizer: the :class:`T5Tokenizer`.
    apply: jitted ``apply(params, ids [B, L], mask [B, L]) -> (tokens [B, L, D], sentence [B, S])``.
  """

  def __init__(self, config: SentenceT5Config, params: dict, tokenizer: T5Tokenizer):
    self.config = config
    self.params = params
    self.tokenizer = tokenizer
    self.model = SentenceT5Model(config)
    self.apply = jax.jit(lambda p, ids, mask: self.model.apply({"params": p}, ids, mask))

  def encode(self, texts: Sequence[str], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``SentenceTransformer.encode(texts, output_value=None)`` on one batch, in JAX.

    Rows are run in chunks of ``min(batch_size, next power of two >= B)`` rows (the last chunk filled with
    ``</s>``-only rows) at a power-of-two padded length, so repeated calls reuse compilations; outputs are cut back
    to the longest caption of ``texts`` (padded positions come out exactly as in the reference: T5 has no absolute
    positions and masked keys get zero weight).

    Returns:
      token_embeddings float32 [B, L, d_model], attention mask bool [B, L], sentence_embedding float32 [B, S].
    """
    texts = list(texts)
    if not texts:
      raise ValueError("SentenceT5.encode: expected at least one text")
    ids, mask = self.tokenizer(texts)
    length = ids.shape[1]
    padded = _next_bucket(length)
    pad_ids = np.full((ids.shape[0], padded), self.tokenizer.pad_id, np.int32)
    pad_mask = np.zeros((ids.shape[0], padded), bool)
    pad_ids[:, :length], pad_mask[:, :length] = ids, mask
    toks, sents = [], []
    bs = min(batch_size, 1 << (len(texts) - 1).bit_length())  # rows bucketed to a power of two too
    for s in range(0, len(texts), bs):
      i, m = pad_ids[s : s + bs], pad_mask[s : s + bs]
      n = i.shape[0]
      if n < bs:  # fill with '</s>'-only rows
        fill_i = np.full((bs - n, padded), self.tokenizer.pad_id, np.int32)
        fill_i[:, 0] = self.tokenizer.eos_id
        fill_m = np.zeros((bs - n, padded), bool)
        fill_m[:, 0] = True
        i, m = np.concatenate([i, fill_i]), np.concatenate([m, fill_m])
      t, e = self.apply(self.params, jnp.asarray(i), jnp.asarray(m))
      toks.append(np.asarray(t)[:n, :length])
      sents.append(np.asarray(e)[:n])
    return np.concatenate(toks), mask, np.concatenate(sents)

  def embeddings(
    self, texts: Sequence[str], output: str = "sentence", batch_size: int = 64
  ) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings [B, Lt, E], mask [B, Lt]) in the precomputed-embeddings layout of ``data.text``.

    Args:
      output: ``"sentence"`` -> [B, 1, S] with an all-True mask (what the official MLD denoiser reads);
        ``"tokens"`` -> token embeddings [B, L, d_model], zero at padded tokens, with the attention mask (the SPM).
    """
    tokens, mask, sentence = self.encode(texts, batch_size)
    if output == "sentence":
      return sentence[:, None, :], np.ones((len(sentence), 1), bool)
    if output == "tokens":
      return tokens * mask[..., None], mask
    raise ValueError(f"SentenceT5.embeddings: output expected 'sentence' or 'tokens', found {output!r}")


_DENSE_ACTS = {"torch.nn.modules.linear.Identity": "identity", "torch.nn.modules.activation.Tanh": "tanh"}


_LEGACY_POOLING = {
  "pooling_mode_cls_token": "cls",
  "pooling_mode_mean_tokens": "mean",
  "pooling_mode_max_tokens": "max",
  "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
  "pooling_mode_weightedmean_tokens": "weightedmean",
  "pooling_mode_lasttoken": "lasttoken",
}


def _pooling_mode(cfg: dict, path: str) -> str:
  """The one pooling mode of a ``1_Pooling/config.json`` (new ``pooling_mode`` or legacy boolean keys)."""
  if "pooling_mode" in cfg:
    mode = cfg["pooling_mode"]
    modes = [mode] if isinstance(mode, str) else list(mode)
  else:
    modes = [name for key, name in _LEGACY_POOLING.items() if cfg.get(key)]
  if len(modes) != 1 or modes[0] not in POOLING_MODES:
    raise ValueError(f"{path}: expected exactly one pooling mode of {POOLING_MODES}, found {modes}")
  return modes[0]


def load_sentence_t5(folder: str) -> SentenceT5:
  """Loads a sentence-transformers T5 folder (e.g. ``sentence-t5-large``) without torch.

  Reads ``modules.json`` (modules: a Transformer, a Pooling, any number of Dense, an optional Normalize; a
  folder without ``modules.json`` is read as ``sentence-t5``'s default layout: Transformer at the root,
  ``1_Pooling``, ``2_Dense``, Normalize). The Transformer folder gives ``config.json``, the weights
  (``model.safetensors`` or ``pytorch_model.bin``), the tokenizer (``spiece.model``, read by sentencepiece, else HF's
  ``tokenizer.json``, read by ``tokenizers``, which is all transformers >= 5 saves) and ``sentence_bert_config.json``
  (``max_seq_length``, ``do_lower_case``; when it has no ``max_seq_length``, as sentence-transformers >= 3 writes it,
  the ``model_max_length`` of ``tokenizer_config.json``, else 512).

  Raises:
    FileNotFoundError: a file is missing (named). KeyError / ValueError: a weight is missing or mis-shaped (file,
    key and shapes named), or a config field is missing / unsupported.
  """
  folder = os.fspath(folder)
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"{folder}: sentence-transformers folder not found")
  modules_path = os.path.join(folder, "modules.json")
  if os.path.exists(modules_path):
    with open(modules_path) as f:
      modules = json.load(f)
    if not isinstance(modules, list):
      raise ValueError(f"{modules_path}: expected a JSON list of modules")
  else:
    modules = [
      {"path": "", "type": "sentence_transformers.models.Transformer"},
      {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
      {"path": "2_Dense", "type": "sentence_transformers.models.Dense"},
      {"path": "3_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
  kinds = [str(m.get("type", "")).split(".")[-1] for m in modules]
  body = kinds[2:-1] if kinds[-1:] == ["Normalize"] else kinds[2:]
  if kinds[:2] != ["Transformer", "Pooling"] or any(k != "Dense" for k in body):
    raise ValueError(
      f"{modules_path}: expected modules Transformer, Pooling, Dense (any number), Normalize "
      f"(optional) in this order, found {kinds}"
    )

  tdir = os.path.join(folder, modules[0].get("path", ""))
  cfg_path = os.path.join(tdir, "config.json")
  hf = read_json(cfg_path, "config file", dict)
  if hf.get("model_type", "t5") not in ("t5", "mt5"):
    raise ValueError(f"{cfg_path}: expected model_type 't5', found {hf.get('model_type')!r}")
  t5 = T5Config.from_hf(hf, cfg_path)
  st_cfg = {}
  st_path = os.path.join(tdir, "sentence_bert_config.json")
  if os.path.exists(st_path):
    st_cfg = read_json(st_path, "config file", dict)
  max_len = st_cfg.get("max_seq_length")
  if not max_len:  # sentence-transformers >= 3 keeps it as the tokenizer's model_max_length
    tc_path = os.path.join(tdir, "tokenizer_config.json")
    mml = read_json(tc_path, "tokenizer config file", dict).get("model_max_length") if os.path.exists(tc_path) else None
    max_len = int(mml) if isinstance(mml, (int, float)) and 0 < mml < 1e6 else 512
  # spiece.model (sentencepiece) when present, as the released sentence-t5 folders hold it; else tokenizer.json (HF
  # tokenizers), all that transformers >= 5 saves
  tok_path = find_file(tdir, ["spiece.model", "tokenizer.json"], "tokenizer (SentencePiece model or HF tokenizer.json)")
  lower = bool(st_cfg.get("do_lower_case", False))
  if tok_path.endswith(".json"):
    tokenizer = T5Tokenizer.from_tokenizer_json(tok_path, int(max_len), lower)
  else:
    tokenizer = T5Tokenizer(tok_path, int(max_len), lower)

  sd = load_folder_weights(tdir)
  params = {"encoder": t5_params_from_state_dict(sd, t5)}
  pooling, feats, biases, acts, normalize = "mean", [], [], [], False
  width = t5.d_model
  for m, kind in zip(modules[1:], kinds[1:]):
    mdir = os.path.join(folder, m.get("path", ""))
    if kind == "Pooling":
      pool_path = os.path.join(mdir, "config.json")
      pool = read_json(pool_path, "pooling config file", dict)
      pooling = _pooling_mode(pool, pool_path)
      dim = pool.get("embedding_dimension", pool.get("word_embedding_dimension", width))
      if dim != width:
        raise ValueError(f"{pool_path}: field 'word_embedding_dimension': expected {width} (d_model), found {dim}")
    elif kind == "Dense":
      dpath = os.path.join(mdir, "config.json")
      dc = read_json(dpath, "Dense config file", dict)
      n_in, n_out = int(require(dc, "in_features", dpath)), int(require(dc, "out_features", dpath))
      if n_in != width:
        raise ValueError(f"{dpath}: field 'in_features': expected {width} (the previous module's width), found {n_in}")
      act_name = dc.get("activation_function", "torch.nn.modules.activation.Tanh")  # sentence-transformers' default
      if dc.get("use_residual", False) or dc.get("module_input_name", "sentence_embedding") != "sentence_embedding":
        raise ValueError(f"{dpath}: unsupported Dense options (use_residual / module_input_name): {dc}")
      if act_name not in _DENSE_ACTS:
        raise ValueError(
          f"{dpath}: field 'activation_function': expected one of {sorted(_DENSE_ACTS)}, found {act_name!r}"
        )
      bias = bool(dc.get("bias", True))
      dsd = load_folder_weights(mdir)
      p = {"kernel": dsd.get("linear.weight", (n_out, n_in)).T}
      if bias:
        p["bias"] = dsd.get("linear.bias", (n_out,))
      params[f"dense_{len(feats)}"] = p
      feats.append((n_in, n_out))
      biases.append(bias)
      acts.append(_DENSE_ACTS[act_name])
      width = n_out
    elif kind == "Normalize":
      normalize = True
  cfg = SentenceT5Config(
    t5=t5,
    pooling=pooling,
    dense_features=tuple(feats),
    dense_bias=tuple(biases),
    dense_activation=tuple(acts),
    normalize=normalize,
    max_seq_length=int(max_len),
    do_lower_case=tokenizer.do_lower_case,
  )
  if tokenizer.vocab_size > t5.vocab_size:
    raise ValueError(
      f"{tokenizer.path}: {tokenizer.vocab_size} pieces, more than the vocab_size {t5.vocab_size} of {cfg_path}"
    )
  params = jax.tree_util.tree_map(jnp.asarray, params)
  return SentenceT5(cfg, params, tokenizer)
