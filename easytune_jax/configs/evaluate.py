"""Presets of launch/evaluate.py: `EvaluateConfig` (eval/evaluation.py). 'default' = `EvaluateConfig()`, the default:
the T2M protocol with each generator's own sampler (the DDIM steps and guidance scale its workdir records;
bundles/generator.py `resolve_sampler`); 'paper' forces the paper's sampler (NUM_STEPS / GUIDANCE_SCALE) on every
generator, 'tiny' the CPU setting (CPU_NUM_STEPS / CPU_GUIDANCE_SCALE); 'realign' is 'paper' with ReAlign's reward
guidance (configs/generate.py `realign_guidance`)."""

from __future__ import annotations

import dataclasses

from easytune_jax.configs import lookup
from easytune_jax.configs.generate import realign_guidance
from easytune_jax.core import sampling
from easytune_jax.eval.evaluation import EvaluateConfig


def paper() -> EvaluateConfig:
  return dataclasses.replace(EvaluateConfig(), num_steps=sampling.NUM_STEPS, guidance_scale=sampling.GUIDANCE_SCALE)


def tiny() -> EvaluateConfig:
  return dataclasses.replace(
    EvaluateConfig(), num_steps=sampling.CPU_NUM_STEPS, guidance_scale=sampling.CPU_GUIDANCE_SCALE
  )


def realign() -> EvaluateConfig:
  return dataclasses.replace(paper(), guidance=realign_guidance(), reward="spm")


PRESETS = {"default": EvaluateConfig, "paper": paper, "tiny": tiny, "realign": realign}


def get_config(name: str = "default") -> EvaluateConfig:
  return lookup(PRESETS, name, "configs/evaluate.py")
