"""CLIP text transformer (``CLIPModel.get_text_features``) and its byte-level BPE tokenizer in Flax, torch-free.

The original MLD conditions on ``openai/clip-vit-large-patch14`` through HF: the tokenizer pads every caption to 77
tokens (``padding="max_length"``, truncation), and the model runs on ``input_ids`` only (no attention mask):

    text -> NFC, runs of whitespace -> " ", lower-case -> split (``'s 't 're 've 'm 'll 'd``, letter runs, single
         digits, runs of other non-space characters) -> bytes -> BPE with ``</w>`` word ends
         -> <|startoftext|> ids[:75] <|endoftext|>, padded with the pad token (``<|endoftext|>``) to 77
         -> token + position embeddings -> pre-LN transformer blocks with a causal mask (quick_gelu MLP)
         -> final LayerNorm (``last_hidden_state`` [B, 77, D], MLD's "clip_hidden")
         -> the state at the EOS position (argmax of ids when the config's eos_token_id is the legacy 2, else the
            first eos_token_id) -> text_projection (no bias) [B, P] (MLD's "clip" features).

Weight import (:func:`load_clip_text`) reads a HF CLIP folder: ``config.json`` (``CLIPModel``, with ``text_config``,
or ``CLIPTextModelWithProjection``), ``model.safetensors`` or ``pytorch_model.bin``, and ``tokenizer.json`` or
``vocab.json`` + ``merges.txt``; vision weights are ignored. The tokenizer is HF ``tokenizers`` (Rust, no torch), set
up as transformers' ``CLIPTokenizer``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from easytune_jax.data.safe_io import read_json
from easytune_jax.models.hf_weights import StateDict, find_file, load_folder_weights, require
from easytune_jax.models.t5_encoder import activation

SOT, EOT = "<|startoftext|>", "<|endoftext|>"


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer (HF ``tokenizers``)

# CLIP's pre-tokenizer split: the regex of the original CLIP and of HF's CLIPTokenizer (the special tokens are
# matched as added tokens before it sees the text).
SPLIT_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def _split_pre_tokenizer():
  from tokenizers import Regex, pre_tokenizers

  return pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="removed", invert=True)


def build_clip_tokenizer(vocab: dict, merges: Sequence[tuple[str, str]], unk_token: str = EOT):
  """A ``tokenizers.Tokenizer`` set up as transformers' ``CLIPTokenizer`` (5.x; the ``CLIPConverter`` of 4.x) builds
  it from ``vocab.json`` + ``merges.txt``: byte-level BPE with ``</w>`` word ends (unknown -> ``unk_token``),
  normaliser NFC -> whitespace runs to one space -> lower-case, pre-tokeniser :data:`SPLIT_PATTERN` then
  byte-level, post-processor ``<|startoftext|> ... <|endoftext|>``, the two special tokens as added tokens (matched
  on the raw text). Its ``to_str()`` is the ``tokenizer.json`` transformers saves for such a folder
  (tests/test_text_encoders.py compares them)."""
  from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

  for tok in (SOT, EOT, unk_token):
    if tok not in vocab:
      raise ValueError(f"vocab.json: expected the special token {tok!r} in the vocabulary")
  tokenizer = Tokenizer(
    models.BPE(
      vocab=dict(vocab),
      merges=[tuple(m) for m in merges],
      dropout=None,
      continuing_subword_prefix="",
      end_of_word_suffix="</w>",
      fuse_unk=False,
      unk_token=unk_token,
    )
  )
  tokenizer.normalizer = normalizers.Sequence(
    [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
  )
  tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
    [_split_pre_tokenizer(), pre_tokenizers.ByteLevel(add_prefix_space=False)]
  )
  tokenizer.decoder = decoders.ByteLevel()
  tokenizer.post_processor = processors.RobertaProcessing(
    (EOT, vocab[EOT]),
    (SOT, vocab[SOT]),
    False,
    False,  # sep, cls, trim_offsets, add_prefix_space
  )
  tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (SOT, EOT)])
  return tokenizer


def pre_tokenize(text: str) -> list[str]:
  """The pieces CLIP's split pattern (:data:`SPLIT_PATTERN`) cuts a normalised text into (whitespace dropped)."""
  return [piece for piece, _ in _split_pre_tokenizer().pre_tokenize_str(text)]


class CLIPTokenizer:
  """CLIP's byte-level BPE through HF ``tokenizers``, as the HF ``CLIPTokenizer`` encodes with
  ``padding="max_length"``, ``truncation=True``: normalise (NFC, whitespace runs -> one space, lower-case), split
  (:data:`SPLIT_PATTERN`), map bytes to characters, BPE-merge with ``</w>`` on each word's last symbol, add
  ``<|startoftext|>`` / ``<|endoftext|>``, truncate to ``max_length``, pad with the pad token. Literal
  ``<|startoftext|>`` / ``<|endoftext|>`` in a caption are their special ids (HF's added tokens).

  Made from a folder's ``tokenizer.json`` (:meth:`from_tokenizer_json`) or from ``vocab.json`` + ``merges.txt``
  (:meth:`from_files`, :func:`build_clip_tokenizer`).

  Attributes:
    tokenizer: the ``tokenizers.Tokenizer`` (no truncation or padding; :meth:`__call__` uses a copy with both).
    encoder: token -> id. max_length: padded length (77). sot_id, eot_id, pad_id: special ids.
  """

  def __init__(self, tokenizer, max_length: int = 77, pad_token: str = EOT, path: str = "tokenizer"):
    from tokenizers import Tokenizer

    if max_length < 2:
      raise ValueError(f"CLIPTokenizer.max_length: expected >= 2, found {max_length}")
    ids = {tok: tokenizer.token_to_id(tok) for tok in (SOT, EOT, pad_token)}
    missing = [tok for tok, i in ids.items() if i is None]
    if missing:
      raise ValueError(f"{path}: expected the special token {missing[0]!r} in the vocabulary")
    self.max_length = int(max_length)
    self.sot_id, self.eot_id, self.pad_id = ids[SOT], ids[EOT], ids[pad_token]
    self.tokenizer = Tokenizer.from_str(tokenizer.to_str())
    self.tokenizer.no_truncation()
    self.tokenizer.no_padding()
    self._batch = Tokenizer.from_str(self.tokenizer.to_str())
    self._batch.enable_truncation(self.max_length)
    self._batch.enable_padding(length=self.max_length, pad_id=self.pad_id, pad_token=pad_token)
    self.encoder = self.tokenizer.get_vocab()
    empty = self.tokenizer.encode("").ids
    if empty != [self.sot_id, self.eot_id]:
      raise ValueError(
        f"{path}: expected a post-processor that wraps a text in {SOT} ... {EOT} (ids {self.sot_id}, "
        f"{self.eot_id}), an empty text gives {empty}"
      )

  @classmethod
  def from_files(cls, vocab_path: str, merges_path: str, max_length: int = 77, pad_token: str = EOT) -> CLIPTokenizer:
    """From ``vocab.json`` and ``merges.txt`` (read by ``tokenizers``; a ``#version`` first line is skipped)."""
    from tokenizers import models

    vocab = read_json(vocab_path, "vocab file", dict)
    if not os.path.exists(merges_path):
      raise FileNotFoundError(f"{merges_path}: merges file not found")
    try:
      _, merges = models.BPE.read_file(vocab_path, merges_path)
    except Exception as e:  # tokenizers raises a bare Exception
      raise ValueError(f"{merges_path}: expected lines of two space-separated symbols ({e})") from None
    try:
      tokenizer = build_clip_tokenizer(vocab, merges)
    except ValueError as e:
      raise ValueError(f"{vocab_path}: {str(e).removeprefix('vocab.json: ')}") from None
    return cls(tokenizer, max_length, pad_token, vocab_path)

  @classmethod
  def from_tokenizer_json(cls, path: str, max_length: int = 77, pad_token: str = EOT) -> CLIPTokenizer:
    """From a HF ``tokenizer.json`` (what ``transformers`` saves; its normaliser, pre-tokeniser, BPE and
    post-processor are used as saved)."""
    from tokenizers import Tokenizer

    if not os.path.exists(path):
      raise FileNotFoundError(f"{path}: tokenizer file not found")
    try:
      tokenizer = Tokenizer.from_file(path)
    except Exception as e:
      raise ValueError(f"{path}: not a HF tokenizers file ({e})") from None
    return cls(tokenizer, max_length, pad_token, path)

  def encode(self, text: str) -> list[int]:
    """Ids of one text without specials or truncation."""
    return list(self.tokenizer.encode(str(text), add_special_tokens=False).ids)

  def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Batch -> (ids int32 [B, max_length], mask bool [B, max_length]: True through ``<|endoftext|>``)."""
    ids = np.full((len(texts), self.max_length), self.pad_id, np.int32)
    mask = np.zeros((len(texts), self.max_length), bool)
    for i, t in enumerate(texts):  # one at a time: encode_batch's thread pool would warn in forked children
      enc = self._batch.encode(str(t))
      ids[i], mask[i] = enc.ids, enc.attention_mask
    return ids, mask


# ---------------------------------------------------------------------------------------------------------------
# Model


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

  @classmethod
  def from_hf(cls, d: dict, path: str = "config.json") -> CLIPTextConfig:
    """From a ``CLIPModel`` config (``text_config`` + top-level ``projection_dim``) or a text-only config."""
    if "text_config" in d:
      t = dict(d["text_config"] or {})
      proj = int(d.get("projection_dim", t.get("projection_dim", 512)))
    else:
      t = d
      proj = int(d.get("projection_dim", 512))
    return cls(
      vocab_size=int(require(t, "vocab_size", path)),
      hidden_size=int(require(t, "hidden_size", path)),
      intermediate_size=int(require(t, "intermediate_size", path)),
      num_hidden_layers=int(require(t, "num_hidden_layers", path)),
      num_attention_heads=int(require(t, "num_attention_heads", path)),
      max_position_embeddings=int(t.get("max_position_embeddings", 77)),
      hidden_act=str(t.get("hidden_act", "quick_gelu")),
      layer_norm_eps=float(t.get("layer_norm_eps", 1e-5)),
      projection_dim=proj,
      eos_token_id=int(t.get("eos_token_id", 2)),
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


def clip_text_params_from_state_dict(sd: StateDict, cfg: CLIPTextConfig) -> dict:
  """Maps HF ``CLIPModel`` / ``CLIPTextModelWithProjection`` tensors (``text_model.*``, ``text_projection.weight``)
  to :class:`CLIPTextModel` params (Linear [out, in] -> kernel [in, out])."""
  d, f = cfg.hidden_size, cfg.intermediate_size
  t = "text_model."
  lin = lambda key, n_out, n_in: {
    "kernel": sd.get(f"{key}.weight", (n_out, n_in)).T,  # noqa: E731
    "bias": sd.get(f"{key}.bias", (n_out,)),
  }
  ln = lambda key: {"scale": sd.get(f"{key}.weight", (d,)), "bias": sd.get(f"{key}.bias", (d,))}  # noqa: E731
  p = {
    "token_embedding": {"embedding": sd.get(f"{t}embeddings.token_embedding.weight", (cfg.vocab_size, d))},
    "position_embedding": sd.get(f"{t}embeddings.position_embedding.weight", (cfg.max_position_embeddings, d)),
    "final_layer_norm": ln(f"{t}final_layer_norm"),
    "text_projection": {"kernel": sd.get("text_projection.weight", (cfg.projection_dim, d)).T},
  }
  for i in range(cfg.num_hidden_layers):
    e = f"{t}encoder.layers.{i}."
    p[f"layer_{i}_ln1"], p[f"layer_{i}_ln2"] = ln(f"{e}layer_norm1"), ln(f"{e}layer_norm2")
    for n in ("q", "k", "v"):
      p[f"layer_{i}_{n}"] = lin(f"{e}self_attn.{n}_proj", d, d)
    p[f"layer_{i}_out"] = lin(f"{e}self_attn.out_proj", d, d)
    p[f"layer_{i}_fc1"] = lin(f"{e}mlp.fc1", f, d)
    p[f"layer_{i}_fc2"] = lin(f"{e}mlp.fc2", d, f)
  return p


class CLIPText:
  """Loaded CLIP text tower: tokenizer + params + a jitted pure apply.

  Attributes:
    config: :class:`CLIPTextConfig`. params: :class:`CLIPTextModel` params. tokenizer: :class:`CLIPTokenizer`.
    apply: jitted ``apply(params, ids [B, 77]) -> (last_hidden_state [B, 77, D], features [B, P])``.
  """

  def __init__(self, config: CLIPTextConfig, params: dict, tokenizer: CLIPTokenizer):
    self.config = config
    self.params = params
    self.tokenizer = tokenizer
    self.model = CLIPTextModel(config)
    self.apply = jax.jit(lambda p, ids: self.model.apply({"params": p}, ids))

  def encode(self, texts: Sequence[str], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Texts -> (features float32 [B, P] (``get_text_features``), last_hidden_state float32 [B, 77, D],
    ids int32 [B, 77]). Chunks of ``min(batch_size, next power of two >= B)`` rows (the last padded), so calls
    reuse compilations."""
    texts = list(texts)
    if not texts:
      raise ValueError("CLIPText.encode: expected at least one text")
    ids, _ = self.tokenizer(texts)
    bs = min(batch_size, 1 << (len(texts) - 1).bit_length())  # rows bucketed to a power of two
    feats, hidden = [], []
    for s in range(0, len(texts), bs):
      chunk = ids[s : s + bs]
      n = chunk.shape[0]
      if n < bs:
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], bs - n, axis=0)])
      hid, feat = self.apply(self.params, jnp.asarray(chunk))
      feats.append(np.asarray(feat)[:n])
      hidden.append(np.asarray(hid)[:n])
    return np.concatenate(feats), np.concatenate(hidden), ids

  def embeddings(
    self, texts: Sequence[str], output: str = "features", batch_size: int = 64
  ) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings [B, Lt, E], mask [B, Lt]) in the precomputed-embeddings layout of ``data.text``.

    Args:
      output: ``"features"`` -> [B, 1, P] (MLD's "clip"); ``"hidden"`` -> [B, 77, D] with an all-True mask (MLD's
        "clip_hidden" reads all 77 positions).
    """
    feats, hidden, _ = self.encode(texts, batch_size)
    if output == "features":
      return feats[:, None, :], np.ones((len(feats), 1), bool)
    if output == "hidden":
      return hidden, np.ones(hidden.shape[:2], bool)
    raise ValueError(f"CLIPText.embeddings: output expected 'features' or 'hidden', found {output!r}")


def load_clip_text(folder: str, max_length: int | None = None) -> CLIPText:
  """Loads the text tower of a HF CLIP folder (e.g. ``openai/clip-vit-large-patch14``) without torch.

  Args:
    folder: with ``config.json``, ``model.safetensors`` or ``pytorch_model.bin``, and the tokenizer: HF's
      ``tokenizer.json`` when present, else ``vocab.json`` + ``merges.txt`` (``tokenizer_config.json`` optional: its
      ``model_max_length`` and ``pad_token`` are used when present).
    max_length: tokenizer length; default ``model_max_length`` or ``max_position_embeddings`` (77).

  Raises:
    FileNotFoundError naming a missing file; KeyError / ValueError naming the file, the key and the shapes of a
    missing / mis-shaped weight or a missing config field.
  """
  folder = os.fspath(folder)
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"{folder}: CLIP folder not found")
  cfg_path = os.path.join(folder, "config.json")
  cfg = CLIPTextConfig.from_hf(read_json(cfg_path, "config file", dict), cfg_path)
  tok_cfg = {}
  tc_path = os.path.join(folder, "tokenizer_config.json")
  if os.path.exists(tc_path):
    tok_cfg = read_json(tc_path, "tokenizer config file", dict)
  pad = tok_cfg.get("pad_token", EOT)
  pad = pad.get("content", EOT) if isinstance(pad, dict) else (pad or EOT)
  if max_length is None:
    mml = tok_cfg.get("model_max_length")
    max_length = (
      int(mml) if isinstance(mml, (int, float)) and mml <= cfg.max_position_embeddings else cfg.max_position_embeddings
    )
  if max_length > cfg.max_position_embeddings:
    raise ValueError(
      f"load_clip_text: max_length {max_length} exceeds max_position_embeddings "
      f"{cfg.max_position_embeddings} of {cfg_path}"
    )
  if os.path.exists(os.path.join(folder, "tokenizer.json")):
    tokenizer = CLIPTokenizer.from_tokenizer_json(os.path.join(folder, "tokenizer.json"), max_length, pad)
  else:
    tokenizer = CLIPTokenizer.from_files(
      find_file(folder, ["vocab.json"], "vocab.json"), find_file(folder, ["merges.txt"], "merges.txt"), max_length, pad
    )
  sd = load_folder_weights(folder)
  params = jax.tree_util.tree_map(jnp.asarray, clip_text_params_from_state_dict(sd, cfg))
  return CLIPText(cfg, params, tokenizer)


__all__ = [
  "CLIPTokenizer",
  "CLIPTextConfig",
  "CLIPTextModel",
  "CLIPText",
  "load_clip_text",
  "pre_tokenize",
  "build_clip_tokenizer",
  "clip_text_params_from_state_dict",
]
