"""Presets of launch/finetune.py: `RunConfig` (the method's `FinetuneConfig` under `.finetune`).

'tiny' = `RunConfig()`: the CPU setting (T = CPU_NUM_STEPS, w = CPU_GUIDANCE_SCALE, lr 2e-4, 10 warm-up updates).
'paper' = the official EasyTune fine-tuning (ft_mld_chain.py --ft_type EZtune --ft_k 10, configs/ft_mld_t2m.yaml):
`FinetuneConfig()`'s defaults (T = NUM_STEPS, w = GUIDANCE_SCALE, AdamW lr 1e-5 with 1000 warm-up updates, clip
1.0) with k = 10, batch 64, and the official code's randomness: the denoiser in training mode (dropout on at
every step, `denoiser_dropout`) and fresh reward noise per scored step (`reward_noise='per_step'`); 'tiny'
keeps the deterministic denoiser and the per-batch reward key (WORKSPACE.md, "Randomness of the paper setting").
"""

from __future__ import annotations

import dataclasses

from easytune_jax import finetune as ft
from easytune_jax.bundles.finetuned import RunConfig


def paper() -> RunConfig:
  return dataclasses.replace(
    RunConfig(),
    finetune=ft.FinetuneConfig(k=10, denoiser_dropout=True, reward_noise="per_step"),
    batch_size=64,
  )


PRESETS = {"tiny": RunConfig, "paper": paper}


def get_config(name: str = "tiny") -> RunConfig:
  return PRESETS[name]()
