"""Presets of launch/profile_step.py: `ProfileConfig` (bench/profile.py); 'tiny' (the default: the test sizes)
or 'paper' (the official checkpoints' sizes, batch 32, 196 frames)."""

from __future__ import annotations

from easytune_jax.bench.profile import ProfileConfig

PRESETS = {"tiny": lambda: ProfileConfig(size="tiny"), "paper": lambda: ProfileConfig(size="paper")}


def get_config(name: str = "tiny") -> ProfileConfig:
  return PRESETS[name]()
