"""Torch-free import of the official MLD checkpoint (`mld_humanml_v1.ckpt` and EasyTune's fine-tuned `.ckpt`).

The file is a `torch.save` zip of `{"state_dict": {...}, ...}` (the whole MLD module's state dict, as
`train_mld.py` / `ft_mld.py` save it). Its `vae.*` and `denoiser.*` entries become the Flax params of
:class:`~easytune_jax.models.mld_official.OfficialMLDVAE` and
:class:`~easytune_jax.models.mld_official.OfficialMLDDenoiser`; every other top-level group (`text_encoder.*`,
the T2M evaluator's `t2m_*`, a reward model) is ignored and counted in the report.

Name mapping (PyTorch -> Flax): `a.input_blocks.3.b` <-> `a/input_blocks_3/b` (also output_blocks,
linear_blocks); Linear `weight` [out, in] -> `kernel` [in, out]; LayerNorm `weight` -> `scale`;
`self_attn.in_proj_weight` [3C, C] -> `in_proj_kernel` [C, 3C]; the feed-forward's `linear1` / `linear2` sit
under `ff/`; `emb_proj.1` (after the ReLU) -> `emb_proj`; learned position tables `pe` [max_len, 1, C] ->
`pe` [max_len, C]; `mem_pos.pe` -> `mem_pos`.

Every expected key must be present with its exact shape and finite values, and no unknown key may appear under
`vae.` / `denoiser.`: otherwise :class:`OfficialCheckpointError` names the file, the key(s), expected and found
shapes. Nothing is written by these functions.
"""

from __future__ import annotations

import functools
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from easytune_jax.interop.torch_zip import load_torch_checkpoint
from easytune_jax.models.mld_official import OfficialDenoiserConfig, OfficialVAEConfig, init_denoiser, init_vae

MODULES = ("vae", "denoiser")
_INDEXED = re.compile(r"^(input_blocks|output_blocks|linear_blocks)_(\d+)$")


class OfficialCheckpointError(ValueError):
  """The checkpoint does not hold the official MLD parameters this config expects."""


# ---------------------------------------------------------------------------------------------- names
def torch_key(module: str, path: tuple[str, ...]) -> str:
  """Flax param path (under "params") of `module` ('vae' / 'denoiser') -> the official state-dict key."""
  parts = []
  for p in path[:-1]:
    m = _INDEXED.match(p)
    if m:
      parts += [m.group(1), m.group(2)]
    elif p == "ff":
      continue
    elif p == "emb_proj":
      parts += ["emb_proj", "1"]
    else:
      parts.append(p)
  leaf = path[-1]
  if leaf == "mem_pos":
    parts += ["mem_pos", "pe"]
  else:
    parts.append({"kernel": "weight", "scale": "weight", "in_proj_kernel": "in_proj_weight"}.get(leaf, leaf))
  return ".".join([module] + parts)


def _to_torch_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
  leaf = path[-1]
  if leaf in ("kernel", "in_proj_kernel"):
    return tuple(reversed(shape))
  if leaf in ("pe", "mem_pos"):
    return (shape[0], 1, shape[1])
  return tuple(shape)


def _from_torch(path: tuple[str, ...], arr: np.ndarray) -> np.ndarray:
  leaf = path[-1]
  if leaf in ("kernel", "in_proj_kernel"):
    return arr.T
  if leaf in ("pe", "mem_pos"):
    return arr[:, 0, :]
  return arr


@functools.lru_cache(maxsize=8)
def flax_param_shapes(vae_config: OfficialVAEConfig, denoiser_config: OfficialDenoiserConfig) -> dict:
  """{"vae": ..., "denoiser": ...} param trees of ShapeDtypeStructs (jax.eval_shape, cached per config pair)."""
  key = jax.random.PRNGKey(0)
  return {
    "vae": jax.eval_shape(lambda: init_vae(vae_config, key))["params"],
    "denoiser": jax.eval_shape(lambda: init_denoiser(denoiser_config, key))["params"],
  }


def expected_state_shapes(
  vae_config: OfficialVAEConfig, denoiser_config: OfficialDenoiserConfig
) -> dict[str, tuple[int, ...]]:
  """The official state-dict keys (`vae.*`, `denoiser.*`) and their PyTorch shapes for these configs."""
  out = {}
  for module, tree in flax_param_shapes(vae_config, denoiser_config).items():
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
      names = tuple(k.key for k in path)
      out[torch_key(module, names)] = _to_torch_shape(names, tuple(leaf.shape))
  return out


# ---------------------------------------------------------------------------------------------- configs
def _layers(state: Mapping[str, Any], prefix: str) -> int:
  idx = {int(m.group(1)) for k in state for m in [re.match(re.escape(prefix) + r"input_blocks\.(\d+)\.", k)] if m}
  return 2 * len(idx) + 1


def _shape(state, key, source):
  if key not in state:
    raise OfficialCheckpointError(f"{source}: missing key {key!r} (needed to read the model sizes)")
  return tuple(np.shape(state[key]))


def configs_from_state(
  state: Mapping[str, Any], num_heads: int = 4, source: str = "state dict", **overrides
) -> tuple[OfficialVAEConfig, OfficialDenoiserConfig]:
  """Reads the sizes (nfeats, latent [n, d], ff, layers, table rows, text / time dims, cond_proj, mem_pos) from
  the state dict's shapes. `num_heads` (not stored in the weights) applies to both; `overrides` such as
  vae_dropout=0.0 / denoiser_norm_eps=... set other fields."""
  sk = _shape(state, "vae.skel_embedding.weight", source)
  gm = _shape(state, "vae.global_motion_token", source)
  vae = dict(
    nfeats=sk[1],
    latent_dim=sk[0],
    latent_size=gm[0] // 2,
    num_heads=num_heads,
    ff_size=_shape(state, "vae.encoder.middle_block.linear1.weight", source)[0],
    num_layers=_layers(state, "vae.encoder."),
    max_len=_shape(state, "vae.query_pos_encoder.pe", source)[0],
  )
  l2 = _shape(state, "denoiser.time_embedding.linear_2.weight", source)
  l1 = _shape(state, "denoiser.time_embedding.linear_1.weight", source)
  den = dict(
    latent_size=vae["latent_size"],
    latent_dim=l2[0],
    time_dim=l1[1],
    num_heads=num_heads,
    text_dim=_shape(state, "denoiser.emb_proj.1.weight", source)[1],
    ff_size=_shape(state, "denoiser.encoder.middle_block.linear1.weight", source)[0],
    num_layers=_layers(state, "denoiser.encoder."),
    max_len=_shape(state, "denoiser.query_pos.pe", source)[0],
    unused_mem_pos="denoiser.mem_pos.pe" in state,
  )
  if "denoiser.time_embedding.cond_proj.weight" in state:
    den["time_cond_proj_dim"] = _shape(state, "denoiser.time_embedding.cond_proj.weight", source)[1]
  for k, v in overrides.items():
    group, _, field = k.partition("_")
    if group not in MODULES or not field:
      raise ValueError(f"configs_from_state: override {k!r} expected 'vae_<field>' or 'denoiser_<field>'")
    (vae if group == "vae" else den)[field] = v
  try:
    return OfficialVAEConfig(**vae), OfficialDenoiserConfig(**den)
  except (TypeError, ValueError) as e:
    raise OfficialCheckpointError(f"{source}: the shapes give an unsupported model: {e}") from None


# ---------------------------------------------------------------------------------------------- convert
def _set(tree: dict, path: tuple[str, ...], value):
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def convert_official_mld_state(
  state: Mapping[str, Any],
  vae_config: OfficialVAEConfig,
  denoiser_config: OfficialDenoiserConfig,
  dtype=np.float32,
  source: str = "state dict",
) -> tuple[dict, dict, dict]:
  """Official state dict -> (vae variables {"params": ...}, denoiser variables {"params": ...}, report).

  report: {"ignored": {top-level prefix: number of keys}, "converted": number of tensors}.
  Raises OfficialCheckpointError listing every missing / mis-shaped / non-finite / unexpected key.
  """
  if not isinstance(state, Mapping):
    raise OfficialCheckpointError(
      f"{source}: expected a state dict (mapping of names to tensors), found {type(state).__name__}"
    )
  problems, ignored = [], {}
  params = {m: {} for m in MODULES}
  expected = set()
  for module, tree in flax_param_shapes(vae_config, denoiser_config).items():
    cfg = vae_config if module == "vae" else denoiser_config
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
      names = tuple(k.key for k in path)
      key = torch_key(module, names)
      expected.add(key)
      want = _to_torch_shape(names, tuple(leaf.shape))
      if key not in state:
        problems.append(f"missing key {key!r} (expected shape {want})")
        continue
      arr = state[key]
      if not isinstance(arr, np.ndarray):
        problems.append(f"key {key!r}: expected a tensor of shape {want}, found {type(arr).__name__}")
        continue
      if tuple(arr.shape) != want:
        problems.append(f"key {key!r}: expected shape {want} (from {type(cfg).__name__}), found {tuple(arr.shape)}")
        continue
      if not np.issubdtype(arr.dtype, np.floating) and arr.dtype.name != "bfloat16":
        problems.append(f"key {key!r}: expected a floating-point tensor, found {arr.dtype}")
        continue
      arr = np.asarray(arr, np.float32)
      if not np.all(np.isfinite(arr)):
        problems.append(f"key {key!r}: holds non-finite values")
        continue
      _set(params[module], names, np.ascontiguousarray(_from_torch(names, arr), dtype=dtype))
  for key in state:
    top = str(key).split(".", 1)[0]
    if top in MODULES:
      if key not in expected:
        shape = tuple(np.shape(state[key])) if isinstance(state[key], np.ndarray) else type(state[key]).__name__
        cfg_name = type(vae_config if top == "vae" else denoiser_config).__name__
        problems.append(f"unexpected key {key!r} (shape {shape}) for {cfg_name}")
    else:
      ignored[top] = ignored.get(top, 0) + 1
  if problems:
    shown = "; ".join(problems[:12]) + (f"; ... and {len(problems) - 12} more" if len(problems) > 12 else "")
    raise OfficialCheckpointError(f"{source}: {len(problems)} problem(s) with the official MLD parameters: {shown}")
  report = {"ignored": dict(sorted(ignored.items())), "converted": len(expected)}
  return {"params": params["vae"]}, {"params": params["denoiser"]}, report


def read_official_state(path: str | os.PathLike) -> dict:
  """The state dict of an official checkpoint (`{"state_dict": ...}` or a bare state dict), torch-free."""
  path = os.fspath(path)
  try:
    ckpt = load_torch_checkpoint(path)
  except (zipfile.BadZipFile, EOFError, pickle.UnpicklingError, zipfile.LargeZipFile, OSError) as e:
    if isinstance(e, FileNotFoundError):
      raise
    raise OfficialCheckpointError(
      f"{path}: unreadable torch checkpoint (truncated or corrupt?): {type(e).__name__}: {e}"
    ) from None
  if isinstance(ckpt, Mapping) and "state_dict" in ckpt:
    ckpt = ckpt["state_dict"]
  if not isinstance(ckpt, Mapping) or not any(str(k).startswith(("vae.", "denoiser.")) for k in ckpt):
    keys = sorted(map(str, ckpt))[:8] if isinstance(ckpt, Mapping) else type(ckpt).__name__
    raise OfficialCheckpointError(
      f"{path}: expected an MLD checkpoint with 'state_dict' holding vae.* and denoiser.* keys, found {keys}"
    )
  return dict(ckpt)


def load_official_mld(
  path: str | os.PathLike,
  vae_config: OfficialVAEConfig | None = None,
  denoiser_config: OfficialDenoiserConfig | None = None,
  num_heads: int = 4,
  dtype=np.float32,
) -> tuple[dict, dict, dict]:
  """Official `.ckpt` -> (vae variables, denoiser variables, report with "vae_config" / "denoiser_config").

  Configs default to the sizes read from the file (`configs_from_state`, `num_heads` 4 as in the official
  configs); pass them to insist on a model (e.g. `OfficialVAEConfig()`, the paper size): any difference is
  then an error naming the key and both shapes.
  """
  path = os.fspath(path)
  state = read_official_state(path)
  if vae_config is None or denoiser_config is None:
    v, d = configs_from_state(state, num_heads, source=path)
    vae_config = vae_config or v
    denoiser_config = denoiser_config or d
  vae, den, report = convert_official_mld_state(state, vae_config, denoiser_config, dtype, source=path)
  return vae, den, {**report, "vae_config": vae_config, "denoiser_config": denoiser_config}


def to_official_state(vae_variables: dict, denoiser_variables: dict) -> dict[str, np.ndarray]:
  """Inverse mapping (Flax -> official keys and layouts), e.g. to write a checkpoint the official code loads."""
  out = {}
  for module, variables in (("vae", vae_variables), ("denoiser", denoiser_variables)):
    for path, leaf in jax.tree_util.tree_flatten_with_path(variables["params"])[0]:
      names = tuple(k.key for k in path)
      arr = np.asarray(leaf, np.float32)
      if names[-1] in ("kernel", "in_proj_kernel"):
        arr = arr.T
      elif names[-1] in ("pe", "mem_pos"):
        arr = arr[:, None, :]
      out[torch_key(module, names)] = np.ascontiguousarray(arr)
  return out
