"""Presets of launch/evaluate.py: `EvaluateConfig` (eval/evaluation.py). 'paper' = `EvaluateConfig()`, the default
(the T2M protocol at the paper's sampler, NUM_STEPS / GUIDANCE_SCALE); 'tiny' samples with the CPU setting."""

from __future__ import annotations

import dataclasses

from easytune_jax.core import sampling
from easytune_jax.eval.evaluation import EvaluateConfig


def tiny() -> EvaluateConfig:
  return dataclasses.replace(
    EvaluateConfig(), num_steps=sampling.CPU_NUM_STEPS, guidance_scale=sampling.CPU_GUIDANCE_SCALE
  )


PRESETS = {"paper": EvaluateConfig, "tiny": tiny}


def get_config(name: str = "paper") -> EvaluateConfig:
  return PRESETS[name]()
