"""Presets of launch/generate.py: `GenerateConfig` (bundles/export.py). 'paper' = `GenerateConfig()`, the default
(NUM_STEPS DDIM steps, w = GUIDANCE_SCALE: the converted official MLD's setting); 'tiny' samples with the CPU
setting."""

from __future__ import annotations

import dataclasses

from easytune_jax.bundles.export import GenerateConfig
from easytune_jax.core import sampling


def tiny() -> GenerateConfig:
  return dataclasses.replace(
    GenerateConfig(), num_steps=sampling.CPU_NUM_STEPS, guidance_scale=sampling.CPU_GUIDANCE_SCALE
  )


PRESETS = {"paper": GenerateConfig, "tiny": tiny}


def get_config(name: str = "paper") -> GenerateConfig:
  return PRESETS[name]()
