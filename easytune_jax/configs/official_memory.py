"""Presets of launch/official_memory.py: `OfficialMemoryConfig` (bench/official_memory.py); 'paper' (the launcher's
default: the official checkpoints' sizes) or 'tiny' = `OfficialMemoryConfig()` (the test sizes, seconds on a CPU;
the same batch, frames and variants)."""

from __future__ import annotations

from easytune_jax.bench.official_memory import OfficialMemoryConfig
from easytune_jax.configs import lookup


def paper() -> OfficialMemoryConfig:
  return OfficialMemoryConfig(size="paper")


PRESETS = {"paper": paper, "tiny": OfficialMemoryConfig}


def get_config(name: str = "paper") -> OfficialMemoryConfig:
  return lookup(PRESETS, name, "configs/official_memory.py")
