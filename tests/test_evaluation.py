"""The evaluation protocol with a briefly trained tiny evaluator: perfect vs bad generators, Real row, CI, files."""

import json

import numpy as np
import pytest

from easytune_jax import metrics as M
from easytune_jax.bundles.evaluator import load_trained_evaluator
from easytune_jax.data.humanml3d import load_dataset
from easytune_jax.eval import evaluation as E
from easytune_jax.eval import report, samples
from tests.test_train_evaluator import tiny_run


def perfect(captions, pos_tokens, lengths, rng, reference):
  """Returns the real crops themselves (an oracle generator)."""
  return reference


def bad(captions, pos_tokens, lengths, rng, reference):
  """Motions of other captions (the batch rolled by 7; the test split is length-sorted so lengths stay close),
  cut/zero-padded to the requested lengths."""
  x = np.roll(reference, 7, axis=0)
  return np.where((np.arange(x.shape[1])[None] < lengths[:, None])[..., None], x, 0.0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  data, work, _ = tiny_run(tmp_path_factory)
  test = load_dataset(str(data), "test")
  evl = load_trained_evaluator(str(work), max_length=196).with_dataset_stats(test.mean, test.std)
  calls = []

  def reward(x, captions, lengths):  # a stand-in reward: mean root height of the valid frames (dataset units)
    calls.append(x.shape)
    h = x[..., 3] * test.std[3] + test.mean[3]
    m = np.arange(x.shape[1])[None] < lengths[:, None]
    return (h * m).sum(1) / lengths

  good = E.evaluate(
    perfect,
    evl,
    test,
    replications=3,
    mm_num_samples=6,
    mm_num_repeats=4,
    mm_num_times=3,
    method="perfect",
    reward_fn=reward,
  )
  worse = E.evaluate(bad, evl, test, replications=3, quick=True, quick_replications=3, method="bad")
  return test, evl, good, worse, calls


def test_real_row_and_perfect_generator(setup):
  test, _, good, _, _ = setup
  m = good["metrics"]
  assert len(test) == 33 and good["counts"]["r_precision_groups"] == 1
  # Briefly trained tiny evaluator (60 steps): R@3 of real pairs far above the 3/32 chance.
  assert m["gt_R_precision_top_1"][0] > 3 / 32, m
  assert m["gt_R_precision_top_3"][0] > 0.5, m
  # The oracle generator IS the real motion: identical retrieval numbers and FID ~ 0.
  for k in ("R_precision_top_1", "R_precision_top_3", "Matching_score"):
    assert m[k][0] == pytest.approx(m[f"gt_{k}"][0], abs=1e-6)
  assert abs(m["FID"][0]) < 1e-3
  assert m["MultiModality"][0] == pytest.approx(0.0, abs=1e-5)  # 4 identical generations per caption
  # A second independent pass of the real loader (other captions/crops) is close but not identical.
  assert 0 < m["gt_FID"][0]


def test_bad_generator_scores_worse(setup):
  _, _, good, worse, _ = setup
  g, b = good["metrics"], worse["metrics"]
  assert b["R_precision_top_3"][0] < g["R_precision_top_3"][0] - 0.2
  assert b["R_precision_top_1"][0] < g["R_precision_top_1"][0]
  assert b["FID"][0] > g["FID"][0] + 1.0
  # Matched real pairs are closer than mismatched ones (MM-Dist of shuffled pairs is higher).
  assert b["Matching_score"][0] > b["gt_Matching_score"][0]
  assert "MultiModality" not in b and worse["counts"]["mm_num_samples"] == 0  # quick mode: no MM
  assert worse["counts"]["replications"] == 3


def test_ci_equals_summarize_replications(setup):
  _, _, good, _, _ = setup
  reps = good["replications"]
  assert len(reps) == 3
  for k, (mean, ci) in good["metrics"].items():
    v = np.array([r[k] for r in reps], np.float64)
    assert mean == pytest.approx(v.mean(), rel=1e-12, abs=1e-12)
    assert ci == pytest.approx(1.96 * v.std(ddof=0) / np.sqrt(3), rel=1e-9, abs=1e-12)
  assert good["metrics"] == {k: list(v) for k, v in M.summarize_replications(reps).items()}


def test_counts_clamped_and_recorded(setup):
  _, _, good, _, _ = setup
  c = good["counts"]
  assert c["diversity_times"] == 33 and c["mm_num_samples"] == 6 and c["mm_num_repeats"] == 4
  assert c["mm_num_times"] == 3
  assert any("diversity_times: clamped from 300 to 33" in w for w in good["warnings"])


def test_reward_and_physical_reported_separately(setup):
  test, _, good, _, calls = setup
  assert set(good["reward"]) == {"reward", "gt_reward"}
  assert not any("reward" in k for k in good["metrics"])
  assert good["reward"]["reward"][0] == pytest.approx(good["reward"]["gt_reward"][0], rel=1e-6)
  assert 0.5 < good["reward"]["reward"][0] < 1.5  # root height in metres
  assert all(s == (32, 196, 263) for s in calls)  # fixed batch, fixed length: no retrace downstream
  p = good["physical"]
  assert set(p) == {
    "foot_skating",
    "jitter",
    "floor_penetration",
    "gt_foot_skating",
    "gt_jitter",
    "gt_floor_penetration",
  }
  assert p["jitter"][0] == pytest.approx(p["gt_jitter"][0]) and p["jitter"][0] > 0


def test_physical_metrics_match_direct_computation(setup):
  from easytune_jax.data.features import recover_from_ric

  test, _, _, _, _ = setup
  s = samples.draw_test_samples(test, np.random.default_rng(0), max_length=196)
  got = samples.physical_metrics(s.x_norm, s.lengths, test.mean, test.std, batch_size=32)
  joints = recover_from_ric(s.x_norm * test.std + test.mean, 22)
  assert got["jitter"] == pytest.approx(float(np.mean(M.jitter(joints, s.lengths))), rel=1e-4)
  assert got["foot_skating"] == pytest.approx(float(np.mean(M.foot_skating_ratio(joints, s.lengths))), rel=1e-4)


def test_generator_calls_fixed_shapes_and_errors(setup):
  test, evl, _, _, _ = setup
  seen = []

  def gen(captions, pos_tokens, lengths, rng):
    seen.append((len(captions), lengths.dtype, lengths.max()))
    return np.zeros((len(captions), 196, 263), np.float32)

  E.evaluate(gen, evl, test, replications=1, quick=True, physical=False)
  assert all(n == 32 for n, _, _ in seen) and len(seen) == 2 and seen[0][1] == np.int32

  with pytest.raises(ValueError, match=r"generate_fn: expected x_norm \[32, L >= \d+, 263\]"):
    E.evaluate(lambda c, t, l, r: np.zeros((32, 8, 263)), evl, test, replications=1, quick=True)
  other = evl.with_dataset_stats(test.mean + 1.0, test.std)
  with pytest.raises(ValueError, match="dataset Mean differs"):
    E.evaluate(gen, other, test, replications=1, quick=True)


def test_write_results_json_and_markdown(setup, tmp_path):
  _, _, good, worse, _ = setup
  paths = report.write_results([good, worse], str(tmp_path))
  loaded = json.loads(open(paths["json"]).read())
  assert [r["method"] for r in loaded["results"]] == ["perfect", "bad"]
  assert loaded["results"][0]["metrics"]["FID"] == good["metrics"]["FID"]
  md = open(paths["markdown"]).read()
  assert "| Real |" in md and "| perfect |" in md and "| bad |" in md
  assert "Reward model score (not an evaluator metric)" in md
  assert "diversity_times: clamped" in md
  r1 = good["metrics"]["gt_R_precision_top_1"]
  assert f"{r1[0]:.3f} ± {r1[1]:.3f}" in md.split("| Real |")[1].splitlines()[0]
  single = report.write_results(good, str(tmp_path), name="one")
  assert json.loads(open(single["json"]).read())["method"] == "perfect"
