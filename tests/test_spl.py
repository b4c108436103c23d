"""SPL mining / preference loss / InfoNCE-with-filtering / retrieval metrics against plain references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from easytune_jax.rewards import spl


# --------------------------------------------------------------------------------------------- references
def mine_reference(sim, k, high_sim, targets=None):
  """Plain-Python SPL mining: ranking by (-similarity, column), ties to the lower column.
  Comparisons in float32 (the dtype of the similarities), so 'strictly above high_sim' means the same."""
  sim = np.asarray(sim, np.float32)
  high_sim = np.float32(high_sim)
  b, m = sim.shape
  targets = list(range(b)) if targets is None else [int(x) for x in targets]
  k = min(k, m)
  retrieved, correct, topk = [], [], []
  for i in range(b):
    order = sorted(range(m), key=lambda j: (-sim[i, j], j))[:k]
    topk.append(order)
    retrieved.append(order[0])
    correct.append(targets[i] in order or any(sim[i, j] > high_sim for j in range(m)))
  return np.array(retrieved), np.array(correct), np.array(topk)


def info_nce_reference(text, motion, sent, temperature, threshold):
  text, motion = np.asarray(text, np.float64), np.asarray(motion, np.float64)
  norm = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  logits = norm(text) @ norm(motion).T / temperature
  b = logits.shape[0]
  if sent is not None:
    s = norm(np.asarray(sent, np.float64))
    selfsim = s @ s.T
    for i in range(b):
      for j in range(b):
        if i != j and selfsim[i, j] > threshold:
          logits[i, j] = -np.inf

  def ce(lg):
    total = 0.0
    for i in range(b):
      row = lg[i]
      mx = np.max(row)
      total += mx + math.log(np.sum(np.exp(row - mx))) - row[i]
    return total / b

  return 0.5 * (ce(logits) + ce(logits.T))


# --------------------------------------------------------------------------------------------- mining
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mining_matches_python_loop_with_ties_and_top1_rows(seed):
  rng = np.random.default_rng(seed)
  b, k, high = 24, 5, 0.8
  # Few distinct levels: many ties within rows.
  sim = np.round(rng.uniform(-0.5, 0.85, (b, b)), 1).astype(np.float32)
  top1_rows = rng.choice(np.setdiff1d(np.arange(b), [3, 5]), 6, replace=False)
  sim[top1_rows, top1_rows] = 0.95  # ground truth strictly top-1 (and > high_sim)
  sim[3, :] = 0.2  # a whole tied row: top-k = columns 0..k-1
  sim[5, :] = np.linspace(0.0, 0.7, b)  # gt (col 5) far down the ranking, no high similarity
  pairs = jax.jit(spl.mine_preference_pairs, static_argnums=(1, 2))(jnp.asarray(sim), k, high)
  ref_r, ref_c, ref_topk = mine_reference(sim, k, high)
  np.testing.assert_array_equal(np.asarray(pairs.retrieved), ref_r)
  np.testing.assert_array_equal(np.asarray(pairs.correct), ref_c)
  np.testing.assert_array_equal(np.asarray(pairs.topk), ref_topk)
  np.testing.assert_array_equal(np.asarray(pairs.target), np.arange(b))
  assert np.all(np.asarray(pairs.retrieved)[top1_rows] == top1_rows)
  assert not ref_c[5] and ref_c.any() and not ref_c.all()  # both kinds of rows are exercised
  np.testing.assert_array_equal(np.asarray(pairs.topk)[3], np.arange(k))


def test_mining_rectangular_with_targets_and_k_clamp():
  rng = np.random.default_rng(7)
  sim = rng.uniform(-1, 1, (6, 16)).astype(np.float32)
  targets = np.array([3, 9, 0, 15, 4, 4])
  pairs = spl.mine_preference_pairs(jnp.asarray(sim), k=4, high_sim=0.99, targets=jnp.asarray(targets))
  ref_r, ref_c, ref_topk = mine_reference(sim, 4, 0.99, targets)
  np.testing.assert_array_equal(np.asarray(pairs.retrieved), ref_r)
  np.testing.assert_array_equal(np.asarray(pairs.correct), ref_c)
  np.testing.assert_array_equal(np.asarray(pairs.topk), ref_topk)
  small = spl.mine_preference_pairs(jnp.asarray(sim[:3, :3]), k=10)  # k clamped to M = 3
  assert small.topk.shape == (3, 3) and bool(jnp.all(small.correct))


def test_mining_errors():
  with pytest.raises(ValueError, match=r"spl.py.*'sim'.*rank 2"):
    spl.mine_preference_pairs(jnp.zeros((4,)))
  with pytest.raises(ValueError, match=r"'targets'.*\(4,\)"):
    spl.mine_preference_pairs(jnp.zeros((4, 4)), targets=jnp.zeros((3,), jnp.int32))
  with pytest.raises(ValueError, match="M >= B"):
    spl.mine_preference_pairs(jnp.zeros((4, 2)))


# --------------------------------------------------------------------------------------------- preference
def test_preference_loss_matches_hand_computation():
  tau = 0.1
  sim = np.array(
    [
      [0.9, 0.7, 0.1],  # gt (0) is top-1 -> correct, pair (0, 0) -> loss 0
      [0.6, 0.5, 0.2],  # top-1 = 0, gt = 1 in top-2 -> correct, target [.5, .5]
      [0.4, 0.3, 0.1],
    ],  # top-1 = 0, gt = 2 not in top-2, max 0.4 <= 0.8 -> incorrect
    np.float32,
  )
  pairs = spl.mine_preference_pairs(jnp.asarray(sim), k=2, high_sim=0.8)
  np.testing.assert_array_equal(np.asarray(pairs.retrieved), [0, 0, 0])
  np.testing.assert_array_equal(np.asarray(pairs.correct), [True, True, False])
  # Row 1: p = softmax([6, 5]) ; KL([.5,.5] || p) = .5 log(.5/p0) + .5 log(.5/p1).
  p0 = math.exp(6) / (math.exp(6) + math.exp(5))
  row1 = 0.5 * math.log(0.5 / p0) + 0.5 * math.log(0.5 / (1 - p0))
  # Row 2: p = softmax([4, 1]); KL([0, 1] || p) = -log p1.
  row2 = -math.log(math.exp(1) / (math.exp(4) + math.exp(1)))
  expected = (0.0 + row1 + row2) / 3
  got = float(spl.preference_loss(jnp.asarray(sim), pairs, tau, "single"))
  assert got == pytest.approx(expected, rel=1e-5)
  # The gradient raises the ground truth of the incorrect row and lowers its retrieved column.
  g = np.asarray(jax.grad(lambda s: spl.preference_loss(s, pairs, tau, "single"))(jnp.asarray(sim)))
  assert g[2, 2] < 0 < g[2, 0]
  np.testing.assert_allclose(g[0], 0.0, atol=1e-7)


def test_spl_loss_from_latents_and_aux():
  rng = np.random.default_rng(3)
  text = jnp.asarray(rng.normal(size=(8, 5)), jnp.float32)
  motion = text + 0.01 * jnp.asarray(rng.normal(size=(8, 5)), jnp.float32)
  loss, aux = spl.spl_loss(text, motion, k=3, high_sim=0.99)
  assert float(aux["spl_top1_frac"]) == 1.0 and float(aux["spl_correct_frac"]) == 1.0
  assert float(loss) == pytest.approx(0.0, abs=1e-6)  # every pair is (gt, gt)
  loss2, aux2 = spl.spl_loss(text, -motion, k=1, high_sim=0.99)
  assert float(loss2) > 1.0 and float(aux2["spl_correct_frac"]) < 1.0


# --------------------------------------------------------------------------------------------- InfoNCE
def test_info_nce_with_filtering_matches_float64_reference():
  rng = np.random.default_rng(11)
  b, e = 10, 6
  text, motion = rng.normal(size=(b, e)), rng.normal(size=(b, e))
  sent = rng.normal(size=(b, 4))
  sent[4] = sent[1] * 2.0 + 1e-3  # near-duplicate captions 1 and 4 (and 7)
  sent[7] = sent[1] + 1e-3 * rng.normal(size=4)

  @jax.jit  # one program instead of every op compiled on its own
  def run(t, m, s):
    return (
      spl.info_nce_with_filtering(t, m, s, 0.1, 0.9),
      spl.info_nce_with_filtering(t, m, None, 0.1, 0.9),
      jax.grad(lambda t, m: spl.info_nce_with_filtering(t, m, s), argnums=(0, 1))(t, m),
    )

  with jax.enable_x64(True):
    got, plain, grads = run(jnp.asarray(text), jnp.asarray(motion), jnp.asarray(sent))
    assert got.dtype == jnp.float64
    got, plain = float(got), float(plain)
  ref = info_nce_reference(text, motion, sent, 0.1, 0.9)
  assert got == pytest.approx(ref, rel=1e-10)
  assert plain == pytest.approx(info_nce_reference(text, motion, None, 0.1, 0.9), rel=1e-10)
  assert abs(got - plain) > 1e-3  # the filter removed something
  assert all(np.all(np.isfinite(np.asarray(g))) and np.abs(np.asarray(g)).sum() > 0 for g in grads)


def test_info_nce_shape_error():
  with pytest.raises(ValueError, match=r"spl.py.*same shape"):
    spl.info_nce_with_filtering(jnp.zeros((4, 3)), jnp.zeros((5, 3)))


# --------------------------------------------------------------------------------------------- retrieval
def test_retrieval_metrics_match_loop_reference():
  rng = np.random.default_rng(5)
  n = 70
  sim = np.round(rng.normal(size=(n, n)), 1)
  sim[np.arange(n), np.arange(n)] += rng.uniform(0, 2, n)
  m = spl.retrieval_metrics(sim)
  t2m = [1 + sum(sim[i, j] > sim[i, i] for j in range(n)) for i in range(n)]
  m2t = [1 + sum(sim[j, i] > sim[i, i] for j in range(n)) for i in range(n)]
  for k in spl.RECALL_KS:
    assert m[f"t2m/R{k}"] == pytest.approx(100 * np.mean([r <= k for r in t2m]))
    assert m[f"m2t/R{k}"] == pytest.approx(100 * np.mean([r <= k for r in m2t]))
  assert m["t2m/MedR"] == np.median(t2m) and m["m2t/MedR"] == np.median(m2t)
  # Batched protocol: mean over consecutive groups of 32 (the remainder of 6 is dropped).
  text, motion = rng.normal(size=(n, 4)), rng.normal(size=(n, 4))
  bm = spl.batched_retrieval_metrics(text, motion, 32)
  norm = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  groups = [spl.retrieval_metrics(norm(text[i : i + 32]) @ norm(motion[i : i + 32]).T) for i in (0, 32)]
  assert bm["t2m/R1"] == pytest.approx((groups[0]["t2m/R1"] + groups[1]["t2m/R1"]) / 2)
  perfect = spl.retrieval_metrics(np.eye(5))
  assert perfect["t2m/R1"] == 100.0 and perfect["m2t/MedR"] == 1.0
  with pytest.raises(ValueError, match="square"):
    spl.retrieval_metrics(np.zeros((3, 4)))
  with pytest.raises(ValueError, match="at least batch_size=32"):
    spl.batched_retrieval_metrics(text[:10], motion[:10])
