"""Evaluator training: statistics vs a float64 reference, vocabulary, learning, checkpoints/resume, loaders."""

import dataclasses
import json
import pickle

import numpy as np
import pytest

from easytune_jax.bundles import evaluator as evaluator_bundle
from easytune_jax.bundles.evaluator import load_official_evaluator, load_trained_evaluator
from easytune_jax.configs import evaluator as presets
from easytune_jax.core.checkpoint import Checkpointer, CheckpointError
from easytune_jax.core.metric_writer import read_metrics
from easytune_jax.data.humanml3d import load_dataset
from easytune_jax.data.synthetic import write_synthetic_dataset
from easytune_jax.models import evaluator as ev
from easytune_jax.train import evaluator as te
from tests import reference_data

DATA = reference_data.ROOT
STEPS = 60
_RUN = {}


def tiny_run(tmp_path_factory):
  """A 220-motion synthetic dataset (test split: 33 entries) and a tiny evaluator trained 60 steps on its
  train split; shared with test_evaluation.py within one session (training compiles for ~30 s on CPU)."""
  if "run" not in _RUN:
    base = tmp_path_factory.mktemp("ev_run")
    data = base / "data"
    write_synthetic_dataset(str(data), 220, seed=3)
    cfg = dataclasses.replace(
      presets.get_config("tiny"), steps=STEPS, max_length=96, eval_every=30, checkpoint_every=30, log_every=10
    )
    out = te.train_evaluator(cfg, str(base / "ev"), str(data), progress=False)
    _RUN["run"] = (data, base / "ev", out)
  return _RUN["run"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  return tiny_run(tmp_path_factory)


def test_evaluator_statistics_match_float64_reference(run):
  data, work, _ = run
  train = load_dataset(str(data), "train")
  frames = np.concatenate([e.motion for e in train.entries]).astype(np.float64)
  mean = frames.mean(0)
  std = frames.std(0)  # population std, then averaged within the 7 HumanML3D groups
  for a, b in [(0, 1), (1, 3), (3, 4), (4, 67), (67, 193), (193, 259), (259, 263)]:
    std[a:b] = std[a:b].mean()
  std[:4] /= 25.0
  std[-4:] /= 25.0
  got_m, got_s = np.load(work / "mean.npy"), np.load(work / "std.npy")
  assert got_m.dtype == np.float32 and got_m.shape == (263,)
  np.testing.assert_allclose(got_m, mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got_s, std, rtol=1e-5)
  # The evaluator space is not the dataset space: root/contact std differ from the dataset's by ~25x.
  ratio = train.std / got_s
  assert 20 < ratio[0] < 30 and 20 < ratio[-1] < 30 and 0.8 < ratio[100] < 1.25


def test_vocabulary_from_train_tokens(run):
  data, work, out = run
  vocab = json.loads((work / "vocab.json").read_text())
  train = load_dataset(str(data), "train")
  words = {t.partition("/")[0] for e in train.entries for _, toks in e.captions for t in toks}
  assert vocab["sos"] == 0 and vocab["eos"] == 1 and vocab["unk"] == 2
  assert set(vocab) == words | {"sos", "eos", "unk"}
  assert sorted(vocab.values()) == list(range(len(vocab)))
  assert out["config"].model.vocab_size == len(vocab)
  cfg = json.loads((work / "config.json").read_text())
  assert cfg["model"]["vocab_size"] == len(vocab) and cfg["seed"] == presets.get_config("tiny").seed


def test_training_learns_and_logs(run):
  _, work, out = run
  logs = [m for m in read_metrics(work) if "loss" in m]
  assert [m["step"] for m in logs] == list(range(1, STEPS + 1))
  first, last = np.mean([m["loss"] for m in logs[:10]]), np.mean([m["loss"] for m in logs[-10:]])
  assert last < first - 0.3, (first, last)
  val = out["val"]
  # 10 validation entries form one group: chance R@1 is 0.1; matched pairs are closer than shuffled ones.
  assert val["val/R_precision_top_3"] > 0.5, val
  assert val["val/Matching_score"] < val["val/shuffled_Matching_score"], val
  assert any("val/R_precision_top_1" in m for m in read_metrics(work))


def test_resume_restores_finished_run_and_loader_embeds(run):
  data, work, out = run
  ck = Checkpointer(work / "checkpoints")
  assert ck.all_steps() == [30, 60]
  meta = ck.metadata()
  ck.close()
  assert meta["stage"] == "evaluator" and len(meta["dataset_mean"]) == 263
  again = te.train_evaluator(out["config"], str(work), str(data), progress=False)
  assert again["steps"] == STEPS
  assert again["val"] == pytest.approx(out["val"], abs=1e-6)
  with pytest.raises(CheckpointError, match="different config.*batch_size"):
    te.train_evaluator(dataclasses.replace(out["config"], batch_size=16), str(work), str(data), progress=False)

  evl = load_trained_evaluator(str(work), max_length=96)
  train = load_dataset(str(data), "train")
  np.testing.assert_array_equal(evl.dataset_mean, train.mean)
  x, lens, toks = te.validation_samples(train, 96, seed=0)
  x, lens, toks = x[:40], lens[:40], toks[:40]
  traces = lambda: (evaluator_bundle._embed_motion_jit._cache_size(), evaluator_bundle._embed_text_jit._cache_size())  # noqa: E731
  before = traces()
  m = evl.embed_motion(x, lens)
  t = evl.embed_text(toks)
  assert m.shape == (40, 64) and t.shape == (40, 64) and m.dtype == np.float32
  # Reference: renormalise by hand from the saved statistics, embed with the pure function.
  me, se = np.load(work / "mean.npy"), np.load(work / "std.npy")
  mask = np.arange(96)[None] < lens[:, None]
  xe = ev.renorm_for_evaluator(x, train.mean, train.std, me, se, mask=mask)
  ref = ev.evaluator_embed_motion(evl.params, xe, lens, config=evl.config)
  np.testing.assert_allclose(m, np.asarray(ref), rtol=2e-4, atol=2e-4)
  # Content beyond each length is ignored; fewer rows / shorter frames do not retrace.
  junk = np.where(mask[..., None], x, 7.0)
  np.testing.assert_allclose(evl.embed_motion(junk[:5, :90], lens[:5]), m[:5], rtol=1e-5, atol=1e-5)
  evl.embed_text(toks[:3])
  assert all(a - b <= 1 for a, b in zip(traces(), before))  # at most one new trace per function
  with pytest.raises(ValueError, match=r"expected x_norm \[B, L, 263\]"):
    evl.embed_motion(x[..., :10], lens)
  with pytest.raises(ValueError, match="lengths expected in"):
    evl.embed_motion(x[:2, :40], np.array([44, 40]))
  with pytest.raises(FileNotFoundError, match="config.json: missing"):
    load_trained_evaluator(str(work / "nowhere"))


def test_official_loader_matches_direct_path(tmp_path):
  from tests import test_evaluator as tev  # torch-zip writer of the evaluator tests

  for name in ("t2m_mean.npy", "t2m_std.npy"):
    reference_data.path(f"evaluator_stats/{name}")  # FileNotFoundError (a failure) when missing
  cfg = ev.EvaluatorConfig(
    dim_pose=263,
    dim_word=300,
    dim_text_hidden=8,
    dim_movement_enc_hidden=12,
    dim_movement_latent=10,
    dim_motion_hidden=14,
    dim_coemb=6,
  )
  (tmp_path / "text_mot_match" / "model").mkdir(parents=True)
  tev.write_torch_zip(tmp_path / "text_mot_match" / "model" / "finest.tar", tev.random_state(cfg, seed=5))
  words = ["sos", "eos", "unk", "a", "person", "walk", "forward"]
  vectors = np.random.default_rng(1).normal(size=(len(words), 300)).astype(np.float32)
  np.save(tmp_path / "our_vab_data.npy", vectors)
  (tmp_path / "our_vab_words.pkl").write_bytes(pickle.dumps(words))
  (tmp_path / "our_vab_idx.pkl").write_bytes(pickle.dumps({w: i for i, w in enumerate(words)}))
  real = DATA / "humanml3d_sample"
  dmean, dstd = np.load(real / "Mean.npy"), np.load(real / "Std.npy")
  off = load_official_evaluator(
    str(tmp_path),
    str(tmp_path),
    str(DATA / "evaluator_stats"),
    dataset_mean=dmean,
    dataset_std=dstd,
    config=cfg,
    batch_size=4,
  )
  np.testing.assert_allclose(off.eval_mean, np.load(DATA / "evaluator_stats" / "t2m_mean.npy"), rtol=1e-6)
  toks = [["a/DET", "person/NOUN", "walk/VERB", "forward/ADV"], ["a/DET", "zebra/NOUN"]]
  w, p, l = off.vectorizer(toks)
  assert w.shape == (2, 22, 300)
  ref_t = ev.evaluator_embed_text(off.params, w, p, l, config=cfg)
  np.testing.assert_allclose(off.embed_text(toks), np.asarray(ref_t), rtol=1e-5, atol=1e-5)
  x = (np.load(real / "new_joint_vecs" / "012314.npy")[:168] - dmean) / dstd
  # Padding is dataset-space zeros, renormalised like the frames (docs/humanml3d_format.md#evaluator-motion-input).
  xpad = np.pad(x[None], ((0, 0), (0, 28), (0, 0)))
  xe = ev.renorm_for_evaluator(xpad, dmean, dstd, off.eval_mean, off.eval_std, mask=np.arange(196)[None] < 168)
  assert abs(float(xe[0, -1, 3]) - float((dmean[3] - off.eval_mean[3]) / off.eval_std[3])) < 1e-4
  ref_m = ev.evaluator_embed_motion(off.params, xe, np.array([168]), config=cfg)
  got = off.embed_motion(x[None], [168])
  np.testing.assert_allclose(got, np.asarray(ref_m), rtol=1e-4, atol=1e-5)
  with pytest.raises(FileNotFoundError, match="T2M evaluator checkpoint"):
    load_official_evaluator(
      str(tmp_path / "x"),
      str(tmp_path),
      str(DATA / "evaluator_stats"),
      dataset_mean=dmean,
      dataset_std=dstd,
      config=cfg,
    )


def test_config_validation():
  with pytest.raises(ValueError, match="loss: expected one of"):
    dataclasses.replace(presets.get_config("tiny"), loss="triplet")
  with pytest.raises(ValueError, match="max_length: expected a multiple of unit_length=4"):
    dataclasses.replace(presets.get_config("tiny"), max_length=90)
  with pytest.raises(ValueError, match="expected 'tiny' or 'paper'"):
    presets.get_config("huge")
  assert presets.get_config("paper").model.dim_motion_hidden == 1024
  d = te.config_to_dict(presets.get_config("tiny"))
  assert te.config_from_dict(d) == presets.get_config("tiny") == te.EvaluatorTrainConfig()
