"""Reward trainer end to end on a tiny synthetic dataset: pretrain, resume, SPL from a checkpoint, reload."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from easytune_jax.bundles import reward as RB
from easytune_jax.core.checkpoint import CheckpointError
from easytune_jax.core.metric_writer import read_metrics
from easytune_jax.data.batching import batch_at
from easytune_jax.data.humanml3d import load_dataset
from easytune_jax.data.synthetic import write_synthetic_dataset
from easytune_jax.models.spm import SPMConfig, reward_apply
from easytune_jax.rewards import spm_objective as RO
from easytune_jax.train import reward as R

STEPS = 150  # pretraining steps of the tiny SPM: its retrieval on the training pairs is then far above chance
TINY = RO.RewardTrainConfig(
  model=SPMConfig(word_dim=16, latent_dim=16, ff_dim=32, num_layers=1, num_heads=2, patch_size=4),
  batch_size=8,
  max_length=32,
  text_max_length=12,
  log_every=1,
  checkpoint_every=100,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("synth")
  write_synthetic_dataset(str(root), num_motions=40, seed=3, min_len=40, max_len=60)
  return load_dataset(str(root), "train"), load_dataset(str(root), "test")


def test_pretrain_resume_spl_and_reload(data, tmp_path):
  train, test = data
  pre = tmp_path / "pre"
  r1 = R.train_reward(TINY, pre, train, mode="M1T1", steps=2, progress=False)
  assert r1["steps"] == 2 and r1["config"].model.mode == "M1T1"
  assert r1["config"].model.vocab_size == r1["tokenizer"].vocab_size
  # Resume: the same workdir continues from step 2 (the metrics file gets the new steps only).
  r2 = R.train_reward(
    TINY, pre, train, mode="M1T1", steps=STEPS, eval_dataset=train, eval_timesteps=(0, 300), progress=False
  )
  assert r2["steps"] == STEPS
  steps = [m["step"] for m in read_metrics(pre) if "loss" in m]
  assert steps == list(range(1, STEPS + 1))
  ret = json.loads((pre / "retrieval.json").read_text())
  assert {"t0/full", "t300/full"} <= set(ret)
  # The trained SPM retrieves its training pairs far above chance: measured (32 pairs, 150 steps) R@1 19% / 13%,
  # median rank 4.5 / 5, R@10 81% / 78% (text->motion / motion->text); the model after 2 steps, like any model
  # blind to text or motion, is at chance: R@1 3%, median rank 14.5 / 9.5 (chance: 100/N %, ~N/2). R@1 below
  # 100 rules out the tie collapse (equal similarities count as rank 1).
  n, clean = len(train), ret["t0/full"]
  for d in ("t2m", "m2t"):
    assert 2 * 100 / n <= clean[f"{d}/R1"] < 100 and clean[f"{d}/MedR"] <= n / 4, (d, clean)
    assert clean[f"{d}/R10"] >= 60, (d, clean)  # chance 10/N = 31%
  # A different model config in the same workdir is refused with the differing field named.
  with pytest.raises(CheckpointError, match="model.mode"):
    R.train_reward(TINY, pre, train, mode="M0T0", steps=4, progress=False)

  # SPL stage from the pretrained checkpoint: starts from its parameters, logs the SPL terms.
  spl_dir = tmp_path / "spl"
  r3 = R.train_reward(TINY, spl_dir, train, spl=True, init_from=pre, steps=2, progress=False)
  meta = RB.read_reward_metadata(spl_dir)
  assert meta["stage"] == "spl" and meta["optim"]["learning_rate"] == TINY.spl_learning_rate
  assert r3["config"].model == r2["config"].model
  logged = [m for m in read_metrics(spl_dir) if "loss" in m]
  assert len(logged) == 2 and all("spl" in m and 0 <= m["spl_correct_frac"] <= 1 for m in logged)

  # load_reward rebuilds the same reward; its tokenizer encodes captions for the cond.
  reward, params, cfg = RB.load_reward(spl_dir)
  tok = RB.load_reward_tokenizer(spl_dir)
  assert tok.vocab == r1["tokenizer"].vocab
  arrays, _ = batch_at(test, 0, 4, 0, tok, max_length=32)
  cond = {k: jnp.asarray(arrays[k]) for k in ("tokens", "token_mask", "mask")}
  x = jnp.asarray(arrays["motion"])
  t = jnp.full((4,), 200, jnp.int32)
  got, want, g = jax.jit(
    lambda x: (
      reward(x, cond, t),
      reward_apply(r3["params"], cfg.model, x, cond, t),
      jax.grad(lambda x: jnp.sum(reward(x, cond, t)))(x),
    )
  )(x)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
  assert np.all(np.isfinite(np.asarray(g))) and float(jnp.abs(g).sum()) > 0


def test_load_reward_errors(tmp_path):
  with pytest.raises(CheckpointError, match="no checkpoint"):
    RB.load_reward(tmp_path / "empty")
