"""The text tower of a HF CLIP folder (e.g. ``openai/clip-vit-large-patch14``), torch-free.

:func:`load_clip_text` reads ``config.json`` (``CLIPModel``, with ``text_config``, or
``CLIPTextModelWithProjection``), ``model.safetensors`` or ``pytorch_model.bin``, and ``tokenizer.json`` or
``vocab.json`` + ``merges.txt`` (:mod:`easytune_jax.interop.clip_tokenizer`); vision weights are ignored. The HF
tensors are mapped onto the Flax network :class:`~easytune_jax.models.clip_text.CLIPTextModel`; :class:`CLIPText`
is the loaded encoder (tokenizer + params + jitted apply).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from easytune_jax.data.safe_io import read_json
from easytune_jax.interop.clip_tokenizer import EOT, CLIPTokenizer
from easytune_jax.interop.hf_weights import StateDict, find_file, load_folder_weights, require
from easytune_jax.models.clip_text import CLIPTextConfig, CLIPTextModel


def clip_text_config_from_hf(d: dict, path: str = "config.json") -> CLIPTextConfig:
  """From a ``CLIPModel`` config (``text_config`` + top-level ``projection_dim``) or a text-only config."""
  if "text_config" in d:
    t = dict(d["text_config"] or {})
    proj = int(d.get("projection_dim", t.get("projection_dim", 512)))
  else:
    t = d
    proj = int(d.get("projection_dim", 512))
  return CLIPTextConfig(
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
  cfg = clip_text_config_from_hf(read_json(cfg_path, "config file", dict), cfg_path)
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
  "CLIPText",
  "load_clip_text",
  "clip_text_config_from_hf",
  "clip_text_params_from_state_dict",
]
