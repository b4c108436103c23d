"""Presets of launch/train_reward.py: `RewardTrainConfig` (rewards/spm_objective.py).

'tiny' = `RewardTrainConfig()`: the CPU run (our objective). 'official' = the official EasyTune SPM training: its
architecture (`SPMConfig.official()`, the official checkpoint's layout: sentence-T5 token embeddings as text input)
and objective (OFFICIAL_OBJECTIVE), batch 64 (configs/spm_h3d.yaml), lr 1e-4 pretraining / 1e-5 SPL, NoiseThr 0.5
(the README's), InfoNCE tau 0.1 / threshold 0.9, SPL tau 0.1, weight 0.01 (a converted official checkpoint records
the same values: bundles/reward.py OFFICIAL_TRAINING, checked equal by tests/test_config.py). 'paper' = 'official'.
'paper_tmr' = paper sizes with our TMR-style SPM and our objective.
"""

from __future__ import annotations

from easytune_jax.configs import lookup
from easytune_jax.models.spm import SPMConfig
from easytune_jax.rewards.spm_objective import OFFICIAL_OBJECTIVE, RewardTrainConfig


def official() -> RewardTrainConfig:
  return RewardTrainConfig(
    model=SPMConfig.official(),
    batch_size=64,
    max_length=196,
    text_max_length=32,
    num_steps=100_000,
    learning_rate=1e-4,
    spl_learning_rate=1e-5,
    noise_threshold=0.5,
    log_every=100,
    checkpoint_every=2000,
    **OFFICIAL_OBJECTIVE,
  )


def paper_tmr() -> RewardTrainConfig:
  return RewardTrainConfig(
    # EasyTune's (TMR's) SPM sizes: latent 256, ff 1024, 9 layers, 4 heads, dropout 0.1, one token per frame
    model=SPMConfig(latent_dim=256, ff_dim=1024, num_layers=9, num_heads=4, dropout=0.1, word_dim=256, patch_size=1),
    max_length=196,
    text_max_length=32,
    num_steps=100_000,
    learning_rate=1e-4,
    spl_learning_rate=1e-5,
    log_every=100,
    checkpoint_every=2000,
  )


PRESETS = {"tiny": RewardTrainConfig, "paper": official, "official": official, "paper_tmr": paper_tmr}


def get_config(name: str = "tiny") -> RewardTrainConfig:
  return lookup(PRESETS, name, "configs/reward.py")
