"""Presets of launch/make_synthetic.py: `SyntheticConfig` (data/synthetic.py)."""

from __future__ import annotations

from easytune_jax.configs import lookup
from easytune_jax.data.synthetic import SyntheticConfig

PRESETS = {"default": SyntheticConfig}


def get_config(name: str = "default") -> SyntheticConfig:
  return lookup(PRESETS, name, "configs/synthetic.py")
