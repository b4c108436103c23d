"""Evaluation metrics against independent float64 numpy references written from the reference code."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from scipy.ndimage import uniform_filter1d

from easytune_jax import metrics as mt


def test_euclidean_distance_matrix():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(7, 5)), rng.normal(size=(9, 5))
  ref = np.array([[np.sqrt(np.sum((x - y) ** 2)) for y in b] for x in a])
  with jax.enable_x64(True):
    got = np.asarray(mt.euclidean_distance_matrix(jnp.asarray(a), jnp.asarray(b)))
    same = np.asarray(mt.euclidean_distance_matrix(jnp.asarray(a * 1e4), jnp.asarray(a * 1e4)))
  err = np.abs(got - ref).max()
  print("distance max abs err", err)
  assert err < 1e-12
  assert np.all(np.isfinite(same)) and np.all(same >= 0)  # clamped: no NaN from negative rounding


def _ref_r_precision(text, motion, perm, size=32, top_k=3):
  """T2M/MLD: permute, groups of 32, argsort rows, cumulative top-k, trace of D."""
  text, motion = text[perm], motion[perm]
  groups = len(text) // size
  hits = np.zeros(top_k)
  trace = 0.0
  for g in range(groups):
    t, m = text[g * size : (g + 1) * size], motion[g * size : (g + 1) * size]
    d = np.sqrt(np.maximum((t**2).sum(1)[:, None] + (m**2).sum(1)[None] - 2 * t @ m.T, 0))
    arg = np.argsort(d, axis=1)
    bool_mat = arg == np.arange(size)[:, None]
    correct = np.zeros(size, bool)
    for k in range(top_k):
      correct = correct | bool_mat[:, k]
      hits[k] += correct.sum()
    trace += np.trace(d)
  n = groups * size
  return [h / n for h in hits], trace / n


def test_r_precision_and_matching_score():
  rng = np.random.default_rng(1)
  n = 32 * 3 + 13  # remainder ignored
  text = rng.normal(size=(n, 8))
  motion = text + rng.normal(scale=1.2, size=(n, 8))  # informative but imperfect matches
  perm = np.random.default_rng(5).permutation(n)
  ref_r, ref_ms = _ref_r_precision(text, motion, perm)
  with jax.enable_x64(True):
    f = jax.jit(functools.partial(mt.r_precision, group_size=32))
    out = f(jnp.asarray(text), jnp.asarray(motion), jnp.asarray(perm))
    errs = [abs(float(out[f"R_precision_top_{k + 1}"]) - ref_r[k]) for k in range(3)]
    errs.append(abs(float(out["Matching_score"]) - ref_ms))
    # the seed path draws the same permutation as default_rng(seed).permutation(n)
    out_seed = mt.r_precision(jnp.asarray(text), jnp.asarray(motion), 5)
  print("r-precision/matching max abs err", max(errs), "values", ref_r, ref_ms)
  assert max(errs) < 1e-6
  assert 0.05 < ref_r[0] < ref_r[1] < ref_r[2] < 1.0  # a non-degenerate case
  for k, v in out.items():
    assert abs(float(out_seed[k]) - float(v)) < 1e-12
  with pytest.raises(ValueError, match="at least group_size=32 samples, found 20"):
    mt.r_precision(jnp.asarray(text[:20]), jnp.asarray(motion[:20]), 0)
  with pytest.raises(ValueError, match="refusing a hidden seed"):
    mt.diversity(jnp.asarray(np.concatenate([text] * 3)))


def _ref_fid_scipy(x, y, eps=1e-6):
  """MLD/T2M calculate_frechet_distance with scipy.linalg.sqrtm."""
  mu1, mu2 = x.mean(0), y.mean(0)
  s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
  covmean = scipy.linalg.sqrtm(s1.dot(s2))
  if not np.isfinite(covmean).all():
    off = np.eye(s1.shape[0]) * eps
    covmean = scipy.linalg.sqrtm((s1 + off).dot(s2 + off))
  covmean = covmean.real
  diff = mu1 - mu2
  return diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


def test_fid_matches_scipy_and_edge_cases():
  rng = np.random.default_rng(2)
  a = rng.normal(size=(400, 16)) @ rng.normal(size=(16, 16))
  b = rng.normal(size=(400, 16)) @ rng.normal(size=(16, 16)) * 0.8 + 0.3
  got, ref = mt.fid(a, b), _ref_fid_scipy(a, b)
  rel = abs(got - ref) / abs(ref)
  print("fid", got, "scipy", ref, "rel err", rel)
  assert rel < 1e-6
  assert abs(mt.fid(a, a)) < 1e-9 * np.trace(np.cov(a, rowvar=False))
  # rank-deficient covariance (10 samples in 32 dims): finite, X vs X ~ 0, a mean shift gives |shift|^2
  x = rng.normal(size=(10, 32))
  shift = rng.normal(size=32)
  print("fid rank-deficient X vs X", mt.fid(x, x), "shift err", mt.fid(x, x + shift) - shift @ shift)
  assert abs(mt.fid(x, x)) < 1e-10
  assert abs(mt.fid(x, x + shift) - shift @ shift) < 1e-10
  # agreement with scipy on a low-rank but well-separated case too
  y = rng.normal(size=(10, 32))
  assert abs(mt.fid(x, y) - _ref_fid_scipy(x, y)) < 1e-5 * abs(_ref_fid_scipy(x, y))
  bad = b.copy()
  bad[3, 4] = np.nan
  with pytest.raises(ValueError, match=r"fid: gt_emb contains 1 non-finite values"):
    mt.fid(a, bad)
  with pytest.raises(ValueError, match=r"fid: gen_emb contains 1 non-finite"):
    mt.fid(np.where(bad == bad, bad, np.inf), a)


def test_diversity_and_multimodality():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(320, 6))
  i1, i2 = mt.diversity_indices(320, np.random.default_rng(9))
  assert len(set(i1.tolist())) == 300 and len(set(i2.tolist())) == 300  # without replacement
  ref = np.mean([np.sqrt(np.sum((x[a] - x[b]) ** 2)) for a, b in zip(i1, i2)])
  with jax.enable_x64(True):
    got = float(jax.jit(mt.diversity)(jnp.asarray(x), (jnp.asarray(i1), jnp.asarray(i2))))
    got_seed = float(mt.diversity(jnp.asarray(x), rng=9))
  print("diversity abs err", abs(got - ref))
  assert abs(got - ref) < 1e-6 and abs(got_seed - ref) < 1e-12
  with pytest.raises(ValueError, match="at least times=300 samples, found 100"):
    mt.diversity(jnp.asarray(x[:100]), rng=0)

  a = rng.normal(size=(7, 30, 6))
  g = np.random.default_rng(4)
  j1, j2 = g.choice(30, 10, replace=False), g.choice(30, 10, replace=False)
  ref_mm = np.mean([[np.linalg.norm(a[t, p] - a[t, q]) for p, q in zip(j1, j2)] for t in range(7)])
  with jax.enable_x64(True):
    got_mm = float(mt.multimodality(jnp.asarray(a), (jnp.asarray(j1), jnp.asarray(j2))))
    got_mm_seed = float(mt.multimodality(jnp.asarray(a), rng=4))
  print("multimodality abs err", abs(got_mm - ref_mm))
  assert abs(got_mm - ref_mm) < 1e-6 and abs(got_mm_seed - ref_mm) < 1e-12


def test_summarize_and_table():
  reps = [
    {"FID": 1.0, "R_precision_top_1": 0.5},
    {"FID": 2.0, "R_precision_top_1": 0.5},
    {"FID": 3.0, "R_precision_top_1": 0.5},
    {"FID": 4.0, "R_precision_top_1": 0.5},
  ]
  s = mt.summarize_replications(reps)
  assert s["FID"][0] == 2.5 and abs(s["FID"][1] - 1.96 * np.sqrt(1.25) / 2) < 1e-12  # ddof 0
  assert s["R_precision_top_1"] == (0.5, 0.0)
  table = mt.format_markdown_table({"Ours": s, "Real": {"FID": 0.002}})
  lines = table.strip().split("\n")
  assert lines[0].startswith("| Method | R@1 ↑ | R@2 ↑ | R@3 ↑ | FID ↓ | MM-Dist ↓")
  assert lines[2] == "| Ours | 0.500 ± 0.000 | – | – | 2.500 ± 1.096 | – | – | – |"
  assert lines[3] == "| Real | – | – | – | 0.002 | – | – | – |"
  with pytest.raises(ValueError, match="replication 1 has metrics"):
    mt.summarize_replications([{"FID": 1.0}, {"FID": 1.0, "Diversity": 2.0}])


# ------------------------------------------------------------------------------------------------
# Physical plausibility
# ------------------------------------------------------------------------------------------------


def _ref_skating(joints, thresh_height=0.05, fps=20.0, thresh_vel=0.5, avg_window=5):
  """MotionLCM / GMD calculate_skating_ratio for one motion [F, J, 3] (written in its own layout)."""
  m = np.transpose(joints, (1, 2, 0))[None]  # [1, J, 3, F]
  feet = m[:, [10, 11]]
  vel = np.linalg.norm(feet[:, :, [0, 2], 1:] - feet[:, :, [0, 2], :-1], axis=2) * fps
  vel_avg = uniform_filter1d(vel, axis=-1, size=avg_window, mode="constant", origin=0)
  h = feet[:, :, 1, :]
  contact = (h[:, :, :-1] < thresh_height) & (h[:, :, 1:] < thresh_height)
  skating = contact & (vel > thresh_vel) & (vel_avg > thresh_vel)
  skating = skating[:, 0] | skating[:, 1]
  return skating.sum(1)[0] / skating.shape[1]


def _motions():
  rng = np.random.default_rng(6)
  b, f, j = 3, 30, 22
  joints = rng.normal(scale=0.05, size=(b, f, j, 3)).cumsum(1)  # random walk
  joints[..., 1] = np.abs(joints[..., 1]) * 0.8 - 0.02  # feet often near / slightly below the floor
  joints[:, :, [10, 11], 0] += np.linspace(0, 2.0, f)[None, :, None]  # sliding feet
  lengths = np.array([30, 21, 9])
  joints[1, 21:] = 50.0  # garbage beyond the length must not count
  joints[2, 9:] = -50.0
  return joints, lengths


def test_foot_skating_ratio_matches_motionlcm():
  joints, lengths = _motions()
  ref = np.array([_ref_skating(joints[i, : lengths[i]]) for i in range(3)])
  with jax.enable_x64(True):
    got = np.asarray(jax.jit(mt.foot_skating_ratio)(jnp.asarray(joints), jnp.asarray(lengths)))
  print("skating", got, "ref", ref)
  assert np.abs(got - ref).max() < 1e-12
  assert ref.max() > 0.1 and ref.min() < ref.max()  # the case exercises skating


def test_jitter_and_floor_penetration():
  joints, lengths = _motions()
  ref_j, ref_p = [], []
  for i in range(3):
    x = joints[i, : lengths[i]]
    jerk = [
      np.mean([np.linalg.norm(x[t + 3, k] - 3 * x[t + 2, k] + 3 * x[t + 1, k] - x[t, k]) for k in range(22)])
      for t in range(len(x) - 3)
    ]
    ref_j.append(np.mean(jerk) * 20.0**3)
    ref_p.append(np.mean([max(0.0, -x[t, :, 1].min()) for t in range(len(x))]))
  with jax.enable_x64(True):
    got_j = np.asarray(mt.jitter(jnp.asarray(joints), jnp.asarray(lengths), fps=20.0))
    got_p = np.asarray(mt.floor_penetration(jnp.asarray(joints), jnp.asarray(lengths)))
  print("jitter err", np.abs(got_j - ref_j).max() / np.max(ref_j), "penetration err", np.abs(got_p - ref_p).max())
  assert np.allclose(got_j, ref_j, rtol=1e-10) and np.allclose(got_p, ref_p, atol=1e-12)
  assert min(ref_p) > 0  # the case exercises penetration
