"""The tiny trained pipeline: a synthetic dataset, a base generator, an SPM reward and an evaluator, each trained
for a few steps. The one builder used by the tests (session fixture), `launch/benchmark.py` without model
directories, and anyone who wants every stage's outputs in seconds.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence

from easytune_jax.data.humanml3d import load_dataset
from easytune_jax.data.synthetic import write_synthetic_dataset
from easytune_jax.models.spm import SPMConfig
from easytune_jax.rewards.spm_objective import RewardTrainConfig
from easytune_jax.train import base
from easytune_jax.train import evaluator as te
from easytune_jax.train import reward as R


@dataclasses.dataclass(frozen=True)
class TinyPipeline:
  data: str
  generator: str
  reward: str
  evaluator: str


TINY_BASE_OVERRIDES = (
  "data.batch_size=8",
  "data.max_length=32",
  "data.text_max_length=16",
  "data.num_val_batches=1",
  "vae.latent_dim=16",
  "vae.width=32",
  "vae.ff_dim=64",
  "vae.num_heads=2",
  "denoiser.width=32",
  "denoiser.num_layers=1",
  "denoiser.ff_dim=64",
  "denoiser.num_heads=2",
  "text.width=32",
  "text.ff_dim=64",
  "text.num_heads=2",
  "vae_optim.warmup_steps=0",
  "vae_optim.decay_steps=0",
  "diffusion_optim.warmup_steps=0",
  "diffusion_optim.decay_steps=0",
  "log_every=2",
  "checkpoint_every=2",
  "vae_steps=6",
  "diffusion_steps=6",
)


def build_tiny_pipeline(
  root: str,
  *,
  num_motions: int = 48,
  base_overrides: Sequence[str] = TINY_BASE_OVERRIDES,
  max_length: int = 32,
  reward_steps: int = 4,
  evaluator_steps: int = 4,
  seed: int = 5,
  progress: bool = False,
) -> TinyPipeline:
  """A synthetic dataset + base generator + SPM reward + evaluator under `root` (what the tests, the
  benchmark's own-pipeline mode and the notebooks build). Defaults: the seconds-long test sizes; pass `base_overrides` of
  `train.base.apply_overrides` (e.g. the 'tiny' config with fewer steps) and larger step counts for a
  pipeline whose models have learned something. `max_length` is the reward's and evaluator's window (keep
  it equal to the generator's data.max_length). Existing stages are resumed by their trainers."""
  root_p = pathlib.Path(root)
  data = root_p / "data"
  if not (data / "Mean.npy").exists():
    write_synthetic_dataset(str(data), num_motions=num_motions, seed=seed, min_len=40, max_len=72)
  cfg = base.apply_overrides(base.BaseConfig(), list(base_overrides))  # BaseConfig(): the 'tiny' preset
  base.train_and_sample(cfg, str(root_p / "base"), str(data), 0, progress=progress)
  rcfg = RewardTrainConfig(
    model=SPMConfig(word_dim=16, latent_dim=16, ff_dim=32, num_layers=1, num_heads=2, patch_size=4),
    batch_size=8,
    max_length=max_length,
    text_max_length=12,
    log_every=max(1, reward_steps // 4),
    checkpoint_every=max(100, reward_steps),
  )
  R.train_reward(
    rcfg, root_p / "reward", load_dataset(str(data), "train"), mode="M1T1", steps=reward_steps, progress=progress
  )
  ecfg = te.EvaluatorTrainConfig(  # the 'tiny' preset's other values
    steps=evaluator_steps,
    max_length=max_length,
    eval_every=max(100, evaluator_steps),
    checkpoint_every=max(100, evaluator_steps),
    log_every=max(2, evaluator_steps // 4),
  )
  te.train_evaluator(ecfg, str(root_p / "evaluator"), str(data), progress=progress)
  return TinyPipeline(str(data), str(root_p / "base"), str(root_p / "reward"), str(root_p / "evaluator"))
