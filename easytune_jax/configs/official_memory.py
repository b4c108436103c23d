"""Presets of launch/official_memory.py: `OfficialMemoryConfig` (bench/official_memory.py); 'paper' (the
default: the official checkpoints' sizes) or 'tiny' (the test sizes, seconds on a CPU)."""

from __future__ import annotations

from easytune_jax.bench.official_memory import OfficialMemoryConfig

PRESETS = {"paper": OfficialMemoryConfig, "tiny": lambda: OfficialMemoryConfig(size="tiny")}


def get_config(name: str = "paper") -> OfficialMemoryConfig:
  return PRESETS[name]()
