"""Presets of launch/finetune.py: `RunConfig` (the method's `FinetuneConfig` under `.finetune`).

'tiny' = `RunConfig()`: the CPU setting (T = CPU_NUM_STEPS, w = CPU_GUIDANCE_SCALE, lr 2e-4, 10 warm-up updates).
'paper' = EasyTune at MLD size: `FinetuneConfig()`'s defaults (T = NUM_STEPS, w = GUIDANCE_SCALE, lr 1e-5 with
1000 warm-up updates).
"""

from __future__ import annotations

import dataclasses

from easytune_jax import finetune as ft
from easytune_jax.train.finetune_runner import RunConfig


def paper() -> RunConfig:
  return dataclasses.replace(RunConfig(), finetune=ft.FinetuneConfig())


PRESETS = {"tiny": RunConfig, "paper": paper}


def get_config(name: str = "tiny") -> RunConfig:
  return PRESETS[name]()
