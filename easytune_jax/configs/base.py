"""Presets of launch/train_base.py: `BaseConfig` ('<size>' for MLD, '<size>_mdm' for MDM; models/generator.py)."""

from __future__ import annotations

import functools

from easytune_jax.models.generator import BaseConfig
from easytune_jax.models.generator import get_config as _get

PRESETS = {
  f"{size}{suffix}": functools.partial(_get, size, model)
  for size in ("tiny", "small", "paper")
  for suffix, model in (("", "mld"), ("_mdm", "mdm"))
}


def get_config(name: str = "tiny") -> BaseConfig:
  return PRESETS[name]()
