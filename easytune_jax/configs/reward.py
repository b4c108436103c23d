"""Presets of launch/train_reward.py: `RewardTrainConfig` (rewards/spm_objective.py)."""

from __future__ import annotations

from easytune_jax.rewards.spm_objective import RewardTrainConfig

PRESETS = {
  "tiny": RewardTrainConfig,
  "paper": RewardTrainConfig.paper,
  "official": RewardTrainConfig.official,
  "paper_tmr": RewardTrainConfig.paper_tmr,
}


def get_config(name: str = "tiny") -> RewardTrainConfig:
  return PRESETS[name]()
