"""Presets of launch/generate.py: `GenerateConfig` (bundles/export.py). 'default' = `GenerateConfig()`, the default:
each generator samples with its own setting (the DDIM steps and guidance scale its workdir records; bundles/generator.py
`resolve_sampler`); 'paper' forces NUM_STEPS DDIM steps, w = GUIDANCE_SCALE (the converted official MLD's setting),
'tiny' the CPU setting (CPU_NUM_STEPS, CPU_GUIDANCE_SCALE), whatever the generator records."""

from __future__ import annotations

import dataclasses

from easytune_jax.bundles.export import GenerateConfig
from easytune_jax.configs import lookup
from easytune_jax.core import sampling


def paper() -> GenerateConfig:
  return dataclasses.replace(GenerateConfig(), num_steps=sampling.NUM_STEPS, guidance_scale=sampling.GUIDANCE_SCALE)


def tiny() -> GenerateConfig:
  return dataclasses.replace(
    GenerateConfig(), num_steps=sampling.CPU_NUM_STEPS, guidance_scale=sampling.CPU_GUIDANCE_SCALE
  )


PRESETS = {"default": GenerateConfig, "paper": paper, "tiny": tiny}


def get_config(name: str = "default") -> GenerateConfig:
  return lookup(PRESETS, name, "configs/generate.py")
