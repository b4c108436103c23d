"""Presets of launch/generate.py: `GenerateConfig` (bundles/export.py). 'default' = `GenerateConfig()`, the default:
each generator samples with its own setting (the DDIM steps and guidance scale its workdir records; bundles/generator.py
`resolve_sampler`); 'paper' forces NUM_STEPS DDIM steps, w = GUIDANCE_SCALE (the converted official MLD's setting),
'tiny' the CPU setting (CPU_NUM_STEPS, CPU_GUIDANCE_SCALE), whatever the generator records; 'realign' is 'paper' with
ReAlign's reward guidance (`realign_guidance`, the rule of its code: core/guidance.py)."""

from __future__ import annotations

import dataclasses

from easytune_jax.bundles.export import GenerateConfig
from easytune_jax.configs import lookup
from easytune_jax.core import sampling
from easytune_jax.core.guidance import REALIGN_SCALE, GuidanceConfig


def paper() -> GenerateConfig:
  return dataclasses.replace(GenerateConfig(), num_steps=sampling.NUM_STEPS, guidance_scale=sampling.GUIDANCE_SCALE)


def tiny() -> GenerateConfig:
  return dataclasses.replace(
    GenerateConfig(), num_steps=sampling.CPU_NUM_STEPS, guidance_scale=sampling.CPU_GUIDANCE_SCALE
  )


def realign_guidance() -> GuidanceConfig:
  """ReAlign's guidance (wengwanjiang/ReAlign: `MLD._diffusion_reverse`, `SPM.GradGuidance_MLD`, run.sh): after every
  step, lambda = 100 times the gradient of the batch-mean reward of the decoded new sample, scored at the step's
  input timestep; one gradient step, no normalisation or clipping. Also the launchers' 'realign' presets."""
  return GuidanceConfig(
    scale=REALIGN_SCALE,
    schedule="constant",
    start_step=0,
    stop_step=None,
    every=1,
    position="after_step",
    reward_input="sample",
    reward_timestep="step",
    reduction="mean",
    normalize="none",
    clip=0.0,
    grad_steps=1,
  )


def realign() -> GenerateConfig:
  return dataclasses.replace(paper(), guidance=realign_guidance(), reward="spm")


PRESETS = {"default": GenerateConfig, "paper": paper, "tiny": tiny, "realign": realign}


def get_config(name: str = "default") -> GenerateConfig:
  return lookup(PRESETS, name, "configs/generate.py")
