"""Presets of launch/finetune.py: `RunConfig` (bundles/finetuned.py; the method's `FinetuneConfig` under `.finetune`).

'tiny' = `RunConfig()`: the CPU setting (T = CPU_NUM_STEPS, w = CPU_GUIDANCE_SCALE, lr 2e-4, 10 warm-up updates).
'paper' = the official EasyTune fine-tuning (ft_mld_chain.py --ft_type EZtune --ft_k 10, configs/ft_mld_t2m.yaml):
T = NUM_STEPS DDIM steps (eta 0), w = GUIDANCE_SCALE, AdamW lr 1e-5 with 1000 warm-up updates, clip 1.0, k = 10,
batch 64, and the official code's randomness: the denoiser in training mode (dropout on at every step,
`denoiser_dropout`) and fresh reward noise per scored step (`reward_noise='per_step'`); 'tiny' keeps the
deterministic denoiser and the per-batch reward key (WORKSPACE.md, "Randomness of the paper setting").
'quickstart' = the quickstart's EasyTune run (pipelines/quickstart.py `run_config`: lr 5e-5, 5 warm-up updates,
24 trajectories of batch 16; tests/test_lora.py checks it is that run's config): the full fine-tuning that docs/lora compares LoRA with
(`--config=quickstart --config.finetune.lora.rank=8 ...`).
"""

from __future__ import annotations

import dataclasses

from easytune_jax import finetune as ft
from easytune_jax.bundles.finetuned import RunConfig
from easytune_jax.configs import lookup
from easytune_jax.core.optim import OptimConfig
from easytune_jax.core.sampling import GUIDANCE_SCALE, NUM_STEPS


def paper() -> RunConfig:
  return dataclasses.replace(
    RunConfig(),
    finetune=ft.FinetuneConfig(
      num_steps=NUM_STEPS,
      guidance_scale=GUIDANCE_SCALE,
      k=10,
      denoiser_dropout=True,
      reward_noise="per_step",
      optim=OptimConfig(learning_rate=1e-5, warmup_steps=1000),
    ),
    batch_size=64,
  )


def quickstart() -> RunConfig:
  return dataclasses.replace(
    RunConfig(),
    finetune=ft.FinetuneConfig(optim=OptimConfig(learning_rate=5e-5, warmup_steps=5)),
    trajectories=24,
    eval_every=6,
    heldout_size=64,
  )


PRESETS = {"tiny": RunConfig, "paper": paper, "quickstart": quickstart}


def get_config(name: str = "tiny") -> RunConfig:
  return lookup(PRESETS, name, "configs/finetune.py")
