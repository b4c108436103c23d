"""Torch-free conversion of an official EasyTune SPM checkpoint into Flax params and a reward workdir.

The official `train_spm.py` saves `torch.save({'state_dict': sd}, path)` where `sd` is the SPM's state dict
without the sentence-T5 text model (`clip.*`). Its keys (for C = latent width, F = ff width, D = motion
features, E = text embedding width, n = (num_layers - 1) / 2):

* `query_motion_pos_encoder.pe`, `query_text_pos_encoder.pe`, `query_pos_decoder.pe`  [500, 1, C]
* `{motion,text}_encoder.{input_blocks.i, middle_block, output_blocks.i}.` + `self_attn.in_proj_weight` [3C, C],
  `self_attn.in_proj_bias` [3C], `self_attn.out_proj.{weight [C, C], bias}`, `linear1.{weight [F, C], bias}`,
  `linear2.{weight [C, F], bias}`, `norm{1,2}.{weight, bias}` [C];
  `{motion,text}_encoder.linear_blocks.i.{weight [C, 2C], bias}`; `{motion,text}_encoder.norm.{weight, bias}`
  (ONE shared LayerNorm, stored under both names, so both copies must be equal);
* `decoder.*`: the same per block plus `multihead_attn.*` and `norm3.*`; `decoder.linear_blocks.i.*`, `decoder.norm.*`;
* `global_{motion,text}_token` [1, C], `dist_{motion,text}_layer.{weight [2C, C], bias [2C]}`,
  `skel_embedding.{weight [C, D], bias}`, `text_embedding.{weight [C, E], bias}`,
  `final_layer.{weight [D, C], bias [D]}`, `time_embedding.linear_1.{weight [C, 2C], bias}`,
  `time_embedding.linear_2.{weight [C, C], bias}`.

:func:`convert_spm_state` validates every key and shape (missing, unexpected, mis-shaped -> ValueError naming
the file, the key, the expected and the found shape) and maps Linear weights to kernels (transposed),
LayerNorm weights to scales, packed attention in-projections to `in_proj_kernel`, [500, 1, C] tables to
[500, C]. `bundles.reward.convert_spm_checkpoint` writes a reward workdir that `bundles.reward.load_reward` reads;
nothing is written unless the whole file converts.
"""

from __future__ import annotations

import collections
import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from easytune_jax.interop.torch_zip import load_torch_checkpoint
from easytune_jax.models.spm import SPMConfig, init_spm
from easytune_jax.models.spm_official import MAX_POSITIONS

_WHERE = __name__.replace(".", "/") + ".py"
IGNORED_PREFIXES = ("clip.",)  # the sentence-T5 text model, present only in unfiltered state dicts


def official_state_shapes(config: SPMConfig, text_emb_dim: int = 1024) -> collections.OrderedDict[str, tuple]:
  """The official SPM state-dict keys and shapes for `config` (arch 'official'), in registration order."""
  c, f, d = config.latent_dim, config.ff_dim, config.dim_motion
  n = (config.num_layers - 1) // 2
  out = collections.OrderedDict()
  for name in ("query_motion_pos_encoder", "query_text_pos_encoder", "query_pos_decoder"):
    out[f"{name}.pe"] = (MAX_POSITIONS, 1, c)

  def attn(prefix):
    out[f"{prefix}.in_proj_weight"] = (3 * c, c)
    out[f"{prefix}.in_proj_bias"] = (3 * c,)
    out[f"{prefix}.out_proj.weight"] = (c, c)
    out[f"{prefix}.out_proj.bias"] = (c,)

  def layer(prefix, decoder):
    attn(f"{prefix}.self_attn")
    if decoder:
      attn(f"{prefix}.multihead_attn")
    out.update(
      {
        f"{prefix}.linear1.weight": (f, c),
        f"{prefix}.linear1.bias": (f,),
        f"{prefix}.linear2.weight": (c, f),
        f"{prefix}.linear2.bias": (c,),
      }
    )
    for k in (1, 2, 3) if decoder else (1, 2):
      out.update({f"{prefix}.norm{k}.weight": (c,), f"{prefix}.norm{k}.bias": (c,)})

  def stack(prefix, decoder):
    blocks = [f"input_blocks.{i}" for i in range(n)] + ["middle_block"] + [f"output_blocks.{i}" for i in range(n)]
    for b in blocks:
      layer(f"{prefix}.{b}", decoder)
    for i in range(n):
      out.update({f"{prefix}.linear_blocks.{i}.weight": (c, 2 * c), f"{prefix}.linear_blocks.{i}.bias": (c,)})
    out.update({f"{prefix}.norm.weight": (c,), f"{prefix}.norm.bias": (c,)})

  stack("motion_encoder", False)
  stack("text_encoder", False)
  stack("decoder", True)
  for s in ("motion", "text"):
    out[f"global_{s}_token"] = (1, c)
    out[f"dist_{s}_layer.weight"] = (2 * c, c)
    out[f"dist_{s}_layer.bias"] = (2 * c,)
  out.update(
    {
      "skel_embedding.weight": (c, d),
      "skel_embedding.bias": (c,),
      "text_embedding.weight": (c, text_emb_dim),
      "text_embedding.bias": (c,),
      "final_layer.weight": (d, c),
      "final_layer.bias": (d,),
      "time_embedding.linear_1.weight": (c, 2 * c),
      "time_embedding.linear_1.bias": (c,),
      "time_embedding.linear_2.weight": (c, c),
      "time_embedding.linear_2.bias": (c,),
    }
  )
  return out


def _state_dict(obj: Any, source: str) -> Mapping[str, np.ndarray]:
  """The state dict inside a loaded checkpoint: `obj['state_dict']`, or `obj` itself when it is one."""
  if isinstance(obj, Mapping) and "state_dict" in obj:
    obj = obj["state_dict"]
  if (
    not isinstance(obj, Mapping)
    or not obj
    or not all(isinstance(k, str) for k in obj)
    or not all(isinstance(v, np.ndarray) for v in obj.values())
  ):
    raise ValueError(
      f"{source}: expected a checkpoint {{'state_dict': {{name: tensor}}}} (official train_spm.py "
      f"layout) or a bare state dict, found {type(obj).__name__}"
    )
  return obj


def _require(state: Mapping[str, Any], key: str, ndim: int, source: str) -> tuple:
  if key not in state:
    raise ValueError(
      f"{source}: missing key {key!r} (needed to read the model sizes; is this an official SPM checkpoint?)"
    )
  shape = tuple(np.shape(state[key]))
  if len(shape) != ndim:
    raise ValueError(f"{source}: key {key!r}: expected a {ndim}-D tensor, found shape {shape}")
  return shape


def infer_official_config(state: Mapping[str, Any], source: str = "state dict", **overrides) -> tuple[SPMConfig, int]:
  """(SPMConfig.official with D, C, F, num_layers read from the tensors, text embedding width E).

  num_heads, dropout and mode are not stored in the weights: they come from `overrides` (defaults 4, 0.1,
  'M1T0', the official ones).
  """
  c, d = _require(state, "skel_embedding.weight", 2, source)
  _, e = _require(state, "text_embedding.weight", 2, source)
  f, _ = _require(state, "motion_encoder.middle_block.linear1.weight", 2, source)
  idx = {int(m.group(1)) for k in state for m in [re.match(r"motion_encoder\.input_blocks\.(\d+)\.", k)] if m}
  base = dict(dim_motion=d, latent_dim=c, ff_dim=f, num_layers=2 * len(idx) + 1)
  base.update(overrides)
  try:
    return SPMConfig.official(**base), e
  except ValueError as err:
    raise ValueError(f"{source}: the tensors give an invalid official SPM config: {err}") from err


def _flax_path(key: str) -> tuple[str, ...]:
  """'decoder.input_blocks.0.self_attn.in_proj_weight' -> ('decoder', 'input_blocks_0', 'self_attn',
  'in_proj_kernel'); Linear/LayerNorm leaf names are fixed by the caller from the tensor rank."""
  key = re.sub(r"(input_blocks|output_blocks|linear_blocks)\.(\d+)", r"\1_\2", key)
  parts = key.split(".")
  if parts[-1] == "in_proj_weight":
    parts[-1] = "in_proj_kernel"
  return tuple(parts)


def convert_spm_state(
  state: Mapping[str, Any], config: SPMConfig, text_emb_dim: int = 1024, source: str = "state dict"
) -> dict:
  """Official SPM state dict -> Flax params `{'params': ...}` (float32 numpy) for `spm_module(config)`.

  Raises ValueError naming `source`, the key and the expected/found shapes on any missing, unexpected or
  mis-shaped tensor, and when the two copies of the shared encoder LayerNorm differ. `clip.*` keys (the
  text model, only in unfiltered state dicts) are ignored.
  """
  if config.arch != "official":
    raise ValueError(f"{_WHERE}: convert_spm_state: expected an SPMConfig with arch='official', found {config.arch!r}")
  expected = official_state_shapes(config, text_emb_dim)
  present = {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)}
  missing = [k for k in expected if k not in present]
  unexpected = sorted(k for k in present if k not in expected)
  if missing or unexpected:
    raise ValueError(
      f"{source}: not an official SPM state dict for {_sizes(config, text_emb_dim)}: missing keys "
      f"{missing[:8]}{' ...' if len(missing) > 8 else ''} ({len(missing)}), unexpected keys "
      f"{unexpected[:8]}{' ...' if len(unexpected) > 8 else ''} ({len(unexpected)})"
    )
  for k, shape in expected.items():
    found = tuple(np.shape(present[k]))
    if found != shape:
      raise ValueError(
        f"{source}: key {k!r}: expected shape {shape}, found {found} (model sizes {_sizes(config, text_emb_dim)})"
      )
  for k in ("weight", "bias"):
    a, b = np.asarray(present[f"motion_encoder.norm.{k}"]), np.asarray(present[f"text_encoder.norm.{k}"])
    if not np.array_equal(a, b):
      raise ValueError(
        f"{source}: keys 'motion_encoder.norm.{k}' and 'text_encoder.norm.{k}' differ (max abs "
        f"difference {float(np.max(np.abs(a - b))):.3g}); the official SPM shares one final "
        f"LayerNorm between its encoders, so they must be equal"
      )

  params: dict = {}
  for k in expected:
    v = np.asarray(present[k], np.float32)
    if not np.all(np.isfinite(v)):
      raise ValueError(f"{source}: key {k!r}: non-finite values")
    if k.startswith("text_encoder.norm."):
      continue
    if k.startswith("motion_encoder.norm."):
      path = ("encoder_norm", k.rsplit(".", 1)[1])
    elif k.startswith("decoder.norm."):
      path = ("decoder_norm", k.rsplit(".", 1)[1])
    else:
      path = _flax_path(k)
    leaf = path[-1]
    if k.endswith(".pe"):
      v = v.reshape(v.shape[0], v.shape[2])
    elif leaf == "in_proj_kernel" or (leaf == "weight" and v.ndim == 2):
      v = v.T
    if leaf == "weight":
      path = path[:-1] + (("kernel",) if v.ndim == 2 else ("scale",))
    node = params
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = np.ascontiguousarray(v)
  params = {"params": params}

  want = jax.eval_shape(lambda: init_spm(config, jax.random.key(0), text_emb_dim=text_emb_dim))
  got_paths = {jax.tree_util.keystr(p): np.shape(x) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
  want_paths = {jax.tree_util.keystr(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(want)[0]}
  if got_paths != want_paths:  # a bug of this module, not of the file
    diff = sorted(set(got_paths.items()) ^ set(want_paths.items()))[:6]
    raise AssertionError(f"{_WHERE}: converted tree does not match the Flax model: {diff}")
  return params


def _sizes(config: SPMConfig, e: int) -> str:
  return f"D={config.dim_motion}, text E={e}, C={config.latent_dim}, ff={config.ff_dim}, layers={config.num_layers}"


def load_official_spm(
  path: str | os.PathLike, config: SPMConfig | None = None, **overrides
) -> tuple[dict, SPMConfig, int]:
  """Reads an official SPM checkpoint file -> (Flax params, SPMConfig, text embedding width E).

  `config`: the expected architecture (validated against the file); default: inferred from the tensors with
  :func:`infer_official_config` (`overrides` for num_heads / dropout / mode / reward fields).
  """
  source = os.fspath(path)
  try:
    obj = load_torch_checkpoint(source)
  except FileNotFoundError:
    raise
  except Exception as err:  # zipfile / pickle / storage errors of damaged files
    raise ValueError(
      f"{source}: cannot read as a torch.save checkpoint ({type(err).__name__}: {err}); the file "
      f"is truncated, damaged or not a torch checkpoint"
    ) from err
  state = _state_dict(obj, source)
  if config is None:
    config, e = infer_official_config(state, source, **overrides)
  else:
    _, e = _require(state, "text_embedding.weight", 2, source)
  return convert_spm_state(state, config, e, source), config, e
