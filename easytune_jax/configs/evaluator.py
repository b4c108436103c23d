"""Presets of launch/train_evaluator.py: `EvaluatorTrainConfig` (train/evaluator.py).

'tiny' (the CPU config: widths 64, 300 steps of batch 32 on whole 196-frame crops; ~1 min on 2 cores) is
`EvaluatorTrainConfig()`; 'paper' has the official T2M evaluator's sizes (`EvaluatorConfig.official()`, the
official checkpoint's layout) with learned 300-d word vectors, lr 1e-4.
"""

from __future__ import annotations

from easytune_jax.configs import lookup
from easytune_jax.core.optim import OptimConfig
from easytune_jax.models.evaluator import EvaluatorConfig
from easytune_jax.train.evaluator import EvaluatorTrainConfig


def paper() -> EvaluatorTrainConfig:
  return EvaluatorTrainConfig(
    model=EvaluatorConfig.official(),
    batch_size=32,
    steps=100_000,
    optim=OptimConfig(learning_rate=1e-4, warmup_steps=1000, decay_steps=99_000, end_lr_factor=0.1),
    log_every=100,
    checkpoint_every=5000,
    eval_every=5000,
  )


PRESETS = {"tiny": EvaluatorTrainConfig, "paper": paper}


def get_config(name: str = "tiny") -> EvaluatorTrainConfig:
  return lookup(PRESETS, name, "configs/evaluator.py")
