"""Presets of launch/export_merged.py: `ExportConfig` (bundles/finetuned.py); 'default' = `ExportConfig()` (the
run's final params, orbax only)."""

from __future__ import annotations

from easytune_jax.bundles.finetuned import ExportConfig
from easytune_jax.configs import lookup

PRESETS = {"default": ExportConfig}


def get_config(name: str = "default") -> ExportConfig:
  return lookup(PRESETS, name, "configs/export_merged.py")
