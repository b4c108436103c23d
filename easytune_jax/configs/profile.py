"""Presets of launch/profile_step.py: `ProfileConfig` (bench/profile.py); 'tiny' = `ProfileConfig()` (the
launcher's default: the test sizes) or 'paper' (the official checkpoints' sizes, batch 32, 196 frames)."""

from __future__ import annotations

from easytune_jax.bench.profile import ProfileConfig
from easytune_jax.configs import lookup


def paper() -> ProfileConfig:
  return ProfileConfig(size="paper")


PRESETS = {"tiny": ProfileConfig, "paper": paper}


def get_config(name: str = "tiny") -> ProfileConfig:
  return lookup(PRESETS, name, "configs/profile.py")
