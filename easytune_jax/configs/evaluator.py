"""Presets of launch/train_evaluator.py: `EvaluatorTrainConfig` (train/evaluator.py)."""

from __future__ import annotations

import functools

from easytune_jax.train.evaluator import EvaluatorTrainConfig
from easytune_jax.train.evaluator import get_config as _get

PRESETS = {name: functools.partial(_get, name) for name in ("tiny", "paper")}


def get_config(name: str = "tiny") -> EvaluatorTrainConfig:
  return PRESETS[name]()
