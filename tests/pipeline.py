"""One tiny trained pipeline (dataset, base generator, reward model, evaluator) shared by the tests that
need trained models: the fine-tuning runner, the benchmark, the quickstart and the reliability tests.

Sizes and step counts are the smallest that still exercise every code path; the model configs equal those
of tests/test_base_train.py and tests/test_spm_train.py so compiled steps are shared within a session.
"""

import dataclasses
import pathlib

from easytune_jax import generate
from easytune_jax.data.humanml3d import load_dataset
from easytune_jax.data.synthetic import write_synthetic_dataset
from easytune_jax.models.spm import SPMConfig
from easytune_jax.train import base
from easytune_jax.train import evaluator as te
from easytune_jax.train import reward as R

BASE_OVERRIDES = [
    "data.batch_size=8", "data.max_length=32", "data.text_max_length=16", "data.num_val_batches=1",
    "vae.latent_dim=16", "vae.width=32", "vae.ff_dim=64", "vae.num_heads=2",
    "denoiser.width=32", "denoiser.num_layers=1", "denoiser.ff_dim=64", "denoiser.num_heads=2",
    "text.width=32", "text.ff_dim=64", "text.num_heads=2",
    "vae_optim.warmup_steps=0", "vae_optim.decay_steps=0", "diffusion_optim.warmup_steps=0",
    "diffusion_optim.decay_steps=0", "log_every=2", "checkpoint_every=2", "vae_steps=6", "diffusion_steps=6"]
REWARD = R.RewardTrainConfig(
    model=SPMConfig(word_dim=16, latent_dim=16, ff_dim=32, num_layers=1, num_heads=2, patch_size=4),
    batch_size=8, max_length=32, text_max_length=12, log_every=1, checkpoint_every=100)


@dataclasses.dataclass(frozen=True)
class Pipeline:
  data: str
  generator: str
  reward: str
  evaluator: str


_CACHE = {}


def build(root: pathlib.Path) -> Pipeline:
  if "p" in _CACHE:
    return _CACHE["p"]
  data = root / "data"
  write_synthetic_dataset(str(data), num_motions=48, seed=5, min_len=40, max_len=72)
  cfg = base.apply_overrides(base.get_config("tiny"), BASE_OVERRIDES)
  generate.train_and_sample(cfg, str(root / "base"), str(data), 0, progress=False)
  R.train_reward(REWARD, root / "reward", load_dataset(str(data), "train"), mode="M1T1", steps=4,
                 progress=False)
  ecfg = dataclasses.replace(te.get_config("tiny"), steps=4, max_length=32, eval_every=100,
                             checkpoint_every=100, log_every=2)
  te.train_evaluator(ecfg, str(root / "evaluator"), str(data), progress=False)
  _CACHE["p"] = Pipeline(str(data), str(root / "base"), str(root / "reward"), str(root / "evaluator"))
  return _CACHE["p"]
