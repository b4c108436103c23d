"""Presets of launch/quickstart.py: `QuickstartConfig` (pipelines/quickstart.py; the CPU run is the only one)."""

from __future__ import annotations

from easytune_jax.configs import lookup
from easytune_jax.pipelines.quickstart import QuickstartConfig

PRESETS = {"tiny": QuickstartConfig}


def get_config(name: str = "tiny") -> QuickstartConfig:
  return lookup(PRESETS, name, "configs/quickstart.py")
