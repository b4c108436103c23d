"""Presets of launch/train_reward.py: `RewardTrainConfig` (train/reward.py)."""

from __future__ import annotations

from easytune_jax.train.reward import RewardTrainConfig

PRESETS = {
  "tiny": RewardTrainConfig,
  "paper": RewardTrainConfig.paper,
  "official": RewardTrainConfig.official,
  "paper_tmr": RewardTrainConfig.paper_tmr,
}


def get_config(name: str = "tiny") -> RewardTrainConfig:
  return PRESETS[name]()
