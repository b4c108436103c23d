"""Load the official T2M evaluator (``text_mot_match/model/finest.tar``) and GloVe files without torch.

``finest.tar`` is a ``torch.save`` zip read by :func:`easytune_jax.interop.torch_zip.load_torch_checkpoint`;
:func:`convert_t2m_state` maps its three state dicts (names per docs/humanml3d_format.md#evaluator-checkpoint) onto
:class:`~easytune_jax.models.evaluator.T2MEvaluator` parameters, validating every shape against an
:class:`EvaluatorConfig`.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from typing import Any

import numpy as np

from easytune_jax.data.safe_io import load_npy
from easytune_jax.data.word_vectors import WordVectorizer
from easytune_jax.interop.torch_zip import load_torch_checkpoint
from easytune_jax.models.evaluator import EvaluatorConfig

# --------------------------------------------------------------------------------------------------
# T2M state dicts -> Flax params
# --------------------------------------------------------------------------------------------------


def t2m_expected_shapes(config: EvaluatorConfig) -> dict[str, dict[str, tuple[int, ...]]]:
  """PyTorch parameter names and shapes of the three T2M state dicts for ``config``."""
  c = config

  def gru(prefix_in, h):
    out = {}
    for sfx in ("", "_reverse"):
      out[f"gru.weight_ih_l0{sfx}"] = (3 * h, prefix_in)
      out[f"gru.weight_hh_l0{sfx}"] = (3 * h, h)
      out[f"gru.bias_ih_l0{sfx}"] = (3 * h,)
      out[f"gru.bias_hh_l0{sfx}"] = (3 * h,)
    return out

  def head(h, e):
    return {
      "output_net.0.weight": (h, 2 * h),
      "output_net.0.bias": (h,),
      "output_net.1.weight": (h,),
      "output_net.1.bias": (h,),
      "output_net.3.weight": (e, h),
      "output_net.3.bias": (e,),
      "hidden": (2, 1, h),
    }

  mov = {
    "main.0.weight": (c.dim_movement_enc_hidden, c.motion_input_dim, 4),
    "main.0.bias": (c.dim_movement_enc_hidden,),
    "main.3.weight": (c.dim_movement_latent, c.dim_movement_enc_hidden, 4),
    "main.3.bias": (c.dim_movement_latent,),
    "out_net.weight": (c.dim_movement_latent, c.dim_movement_latent),
    "out_net.bias": (c.dim_movement_latent,),
  }
  mot = {
    "input_emb.weight": (c.dim_motion_hidden, c.dim_movement_latent),
    "input_emb.bias": (c.dim_motion_hidden,),
    **gru(c.dim_motion_hidden, c.dim_motion_hidden),
    **head(c.dim_motion_hidden, c.dim_coemb),
  }
  txt = {
    "pos_emb.weight": (c.dim_word, c.dim_pos_ohot),
    "pos_emb.bias": (c.dim_word,),
    "input_emb.weight": (c.dim_text_hidden, c.dim_word),
    "input_emb.bias": (c.dim_text_hidden,),
    **gru(c.dim_text_hidden, c.dim_text_hidden),
    **head(c.dim_text_hidden, c.dim_coemb),
  }
  return {"movement_encoder": mov, "motion_encoder": mot, "text_encoder": txt}


def _validated(state: Mapping[str, Any], config: EvaluatorConfig, source: str) -> dict[str, dict[str, np.ndarray]]:
  expected = t2m_expected_shapes(config)
  out = {}
  for module, shapes in expected.items():
    if module not in state:
      raise KeyError(f"{source}: missing state dict {module!r} (found keys {sorted(map(str, state))})")
    sd = state[module]
    out[module] = {}
    for key, shape in shapes.items():
      if key not in sd:
        raise KeyError(f"{source}: missing parameter '{module}.{key}' (expected shape {shape})")
      arr = np.asarray(sd[key])
      if arr.shape != shape:
        raise ValueError(
          f"{source}: parameter '{module}.{key}' expected shape {shape} from {config}, found {arr.shape}"
        )
      if not np.all(np.isfinite(arr)):
        raise ValueError(f"{source}: parameter '{module}.{key}' holds non-finite values")
      out[module][key] = arr
  return out


def convert_t2m_state(
  state: Mapping[str, Any], config: EvaluatorConfig, dtype=np.float32, source: str = "T2M state"
) -> dict:
  """T2M state dicts (``{'text_encoder', 'movement_encoder', 'motion_encoder'}`` -> numpy) -> Flax params.

  Linear ``W (out, in)`` becomes a Dense kernel ``W^T``; Conv1d ``W (out, in, k)`` becomes a Conv kernel
  ``(k, in, out)``; GRU ``W_ih (3H, in)`` becomes ``kernel_ih (in, 3H)`` keeping PyTorch's gate order; the
  learned initial state ``hidden (2, 1, H)`` becomes ``initial_hidden (2, H)``.
  """
  if config.vocab_size is not None:
    raise ValueError(
      "convert_t2m_state: the official checkpoint uses GloVe inputs; expected "
      f"EvaluatorConfig.vocab_size None, found {config.vocab_size}"
    )
  sd = _validated(state, config, source)

  def a(x):
    return np.ascontiguousarray(x, dtype=dtype)

  def dense(s, name):
    return {"kernel": a(s[f"{name}.weight"].T), "bias": a(s[f"{name}.bias"])}

  def gru(s):
    out = {"initial_hidden": a(s["hidden"][:, 0, :])}
    for flax_name, sfx in (("fwd", ""), ("bwd", "_reverse")):
      out[flax_name] = {
        "kernel_ih": a(s[f"gru.weight_ih_l0{sfx}"].T),
        "bias_ih": a(s[f"gru.bias_ih_l0{sfx}"]),
        "kernel_hh": a(s[f"gru.weight_hh_l0{sfx}"].T),
        "bias_hh": a(s[f"gru.bias_hh_l0{sfx}"]),
      }
    return out

  def head(s):
    return {
      "linear0": dense(s, "output_net.0"),
      "norm1": {"scale": a(s["output_net.1.weight"]), "bias": a(s["output_net.1.bias"])},
      "linear3": dense(s, "output_net.3"),
    }

  mv, mo, tx = sd["movement_encoder"], sd["motion_encoder"], sd["text_encoder"]
  params = {
    "movement_encoder": {
      "conv0": {"kernel": a(mv["main.0.weight"].transpose(2, 1, 0)), "bias": a(mv["main.0.bias"])},
      "conv3": {"kernel": a(mv["main.3.weight"].transpose(2, 1, 0)), "bias": a(mv["main.3.bias"])},
      "out_net": dense(mv, "out_net"),
    },
    "motion_encoder": {"input_emb": dense(mo, "input_emb"), "gru": gru(mo), "output_net": head(mo)},
    "text_encoder": {
      "pos_emb": dense(tx, "pos_emb"),
      "input_emb": dense(tx, "input_emb"),
      "gru": gru(tx),
      "output_net": head(tx),
    },
  }
  return {"params": params}


def load_t2m_evaluator(
  checkpoint_path: str | os.PathLike, config: EvaluatorConfig | None = None, dtype=np.float32
) -> dict:
  """``finest.tar`` -> Flax params for :class:`T2MEvaluator` (``config`` defaults to ``EvaluatorConfig.official()``)."""
  config = EvaluatorConfig.official() if config is None else config
  state = load_torch_checkpoint(checkpoint_path)
  if not isinstance(state, Mapping):
    raise ValueError(
      f"{checkpoint_path}: expected a dict with text_encoder/movement_encoder/motion_encoder, "
      f"found {type(state).__name__}"
    )
  return convert_t2m_state(state, config, dtype=dtype, source=os.fspath(checkpoint_path))


# --------------------------------------------------------------------------------------------------
# GloVe vocabulary (our_vab_data.npy, our_vab_words.pkl, our_vab_idx.pkl)
# --------------------------------------------------------------------------------------------------


class _PlainUnpickler(pickle.Unpickler):
  def find_class(self, module, name):  # word lists / dicts need no globals
    raise pickle.UnpicklingError(f"{self._path}: refusing to load global {module}.{name}")


def _load_plain_pickle(path: str):
  with open(path, "rb") as f:
    u = _PlainUnpickler(f)
    u._path = path
    return u.load()


def load_glove(glove_dir: str | os.PathLike, prefix: str = "our_vab", dim_word: int = 300):
  """Reads T2M's GloVe files -> ``(vectors float32 [V, dim_word], words list, word_to_idx dict)``."""
  glove_dir = os.fspath(glove_dir)
  paths = {k: os.path.join(glove_dir, f"{prefix}_{k}") for k in ("data.npy", "words.pkl", "idx.pkl")}
  for p in paths.values():
    if not os.path.exists(p):
      raise FileNotFoundError(f"GloVe file {p!r} does not exist")
  vectors = load_npy(paths["data.npy"], "GloVe vectors", ndim=2).astype(np.float32)
  words = _load_plain_pickle(paths["words.pkl"])
  idx = _load_plain_pickle(paths["idx.pkl"])
  if vectors.ndim != 2 or vectors.shape[1] != dim_word:
    raise ValueError(f"{paths['data.npy']}: expected shape (V, {dim_word}), found {vectors.shape}")
  if not isinstance(words, list) or len(words) != vectors.shape[0]:
    raise ValueError(
      f"{paths['words.pkl']}: expected a list of {vectors.shape[0]} words (one per row of "
      f"{prefix}_data.npy), found {type(words).__name__} of length {len(words)}"
    )
  if not isinstance(idx, dict):
    raise ValueError(f"{paths['idx.pkl']}: expected a dict word -> row, found {type(idx).__name__}")
  for i, w in enumerate(words):
    if idx.get(w) != i:
      raise ValueError(
        f"{paths['idx.pkl']}: word {w!r} expected index {i} (its position in {prefix}_words.pkl), found {idx.get(w)}"
      )
  return vectors, words, {str(k): int(v) for k, v in idx.items()}


def load_glove_vectorizer(glove_dir: str | os.PathLike, prefix: str = "our_vab") -> WordVectorizer:
  """A :class:`WordVectorizer` returning GloVe vectors (the official evaluator's text input)."""
  vectors, _, idx = load_glove(glove_dir, prefix)
  return WordVectorizer(idx, vectors)
