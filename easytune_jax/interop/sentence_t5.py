"""Sentence-T5 from a downloaded sentence-transformers folder (e.g. ``sentence-t5-large``), torch-free.

:func:`load_sentence_t5` reads the folder users download (``modules.json``; the Transformer module's
``config.json``, ``model.safetensors`` or ``pytorch_model.bin``, ``spiece.model`` or ``tokenizer.json``,
``sentence_bert_config.json``; ``1_Pooling/config.json``; ``2_Dense/config.json`` + weights; a Normalize module)
and maps the HF tensors onto the Flax networks of :mod:`easytune_jax.models.t5_encoder`; :class:`SentenceT5` is the
loaded encoder (tokenizer + params + jitted apply), ``SentenceTransformer.encode`` in JAX:

    text -> SentencePiece ids + </s> (:mod:`easytune_jax.interop.t5_tokenizer`)
         -> T5 encoder -> pooling -> Dense -> L2 normalisation
            (:class:`~easytune_jax.models.t5_encoder.SentenceT5Model`)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from easytune_jax.data.safe_io import read_json
from easytune_jax.interop.hf_weights import StateDict, find_file, load_folder_weights, require
from easytune_jax.interop.t5_tokenizer import T5Tokenizer
from easytune_jax.models.t5_encoder import POOLING_MODES, SentenceT5Config, SentenceT5Model, T5Config


def t5_config_from_hf(d: dict, path: str = "config.json") -> T5Config:
  """From a HF ``config.json`` dict (``feed_forward_proj`` decoded as ``T5Config`` does)."""
  ff = d.get("feed_forward_proj", "relu")
  parts = ff.split("-")
  if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
    raise ValueError(f"{path}: field 'feed_forward_proj': expected 'ACT' or 'gated-ACT', found {ff!r}")
  act = "gelu_new" if ff == "gated-gelu" else parts[-1]
  return T5Config(
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


def t5_params_from_state_dict(sd: StateDict, cfg: T5Config, prefix: str = "") -> dict:
  """Maps HF ``T5EncoderModel`` / ``T5Model`` tensors (``shared.weight``, ``encoder.block.{i}...``) to the
  params of :class:`~easytune_jax.models.t5_encoder.T5Encoder`. Linear weights [out, in] become kernels [in, out]."""
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
  t5 = t5_config_from_hf(hf, cfg_path)
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
