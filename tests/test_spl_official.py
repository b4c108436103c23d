"""SPL and InfoNCE in the official EasyTune conventions against an independent float64 numpy re-statement.

The official `compute_finetune_loss` (train_spm.py): cosine matrix of L2-normalised latents; per text row the top-10
motions; correct = ground truth among them or any cosine > 0.8; logits = [sim(top-1), sim(gt)] / tau; probs =
softmax(logits / tau); loss = mean over rows of KL(target || probs) via kl_div(probs.log(), target), target [.5, .5]
on correct rows and [0, 1] otherwise.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from easytune_jax.rewards import spl
from tests.test_spl import info_nce_reference


def official_reference(text, motion, tau=0.1, k=10, high=0.8, dtype=np.float64):
  """(loss, d loss / d text, d loss / d motion) of the official formula, numpy, softmax-then-log as the official."""
  text, motion = np.asarray(text, dtype), np.asarray(motion, dtype)
  tn, mn = np.linalg.norm(text, axis=1, keepdims=True), np.linalg.norm(motion, axis=1, keepdims=True)
  th, mh = text / tn, motion / mn
  sim = th @ mh.T
  b = sim.shape[0]
  g_sim = np.zeros_like(sim)
  total = 0.0
  for i in range(b):
    order = sorted(range(b), key=lambda j: (-sim[i, j], j))[:k]
    correct = i in order or np.any(sim[i] > high)
    r = order[0]
    z = np.array([sim[i, r], sim[i, i]], dtype) / tau / tau
    p = np.exp(z - z.max())
    p = p / p.sum()
    q = np.array([0.5, 0.5] if correct else [0.0, 1.0], dtype)
    with np.errstate(divide="ignore", invalid="ignore"):
      total += np.sum(np.where(q > 0, q * (np.log(np.where(q > 0, q, 1)) - np.log(p)), 0.0))
    dz = (p - q) / b / tau / tau
    g_sim[i, r] += dz[0]
    g_sim[i, i] += dz[1]
  d_th, d_mh = g_sim @ mh, g_sim.T @ th
  d_text = (d_th - th * np.sum(d_th * th, 1, keepdims=True)) / tn
  d_motion = (d_mh - mh * np.sum(d_mh * mh, 1, keepdims=True)) / mn
  return total / b, d_text, d_motion


def latents(kind, b=24, e=8, seed=0):
  rng = np.random.default_rng(seed)
  if kind == "random":
    return rng.normal(size=(b, e)), rng.normal(size=(b, e))
  if kind == "clustered":
    centers = rng.normal(size=(4, e))
    idx = rng.integers(0, 4, b)
    return centers[idx] + 0.3 * rng.normal(size=(b, e)), centers[idx] + 0.3 * rng.normal(size=(b, e))
  text, motion = rng.normal(size=(b, e)), rng.normal(size=(b, e))
  motion[: b // 2] = text[: b // 2] + 0.2 * rng.normal(size=(b // 2, e))
  return text, motion


# One compiled program per precision for the three latent kinds (same shapes).
_OFFICIAL_VALUE_AND_GRAD = jax.jit(
  jax.value_and_grad(
    lambda a, b: spl.spl_loss(a, b, k=10, high_sim=0.8, temperature=0.1, convention="official")[0], argnums=(0, 1)
  )
)


@pytest.mark.parametrize("kind", ["random", "clustered", "half_aligned"])
def test_official_convention_matches_float64_reference(kind):
  text, motion = latents(kind)
  ref_loss, ref_gt, ref_gm = official_reference(text, motion)
  with jax.enable_x64(True):
    loss, (gt, gm) = _OFFICIAL_VALUE_AND_GRAD(jnp.asarray(text), jnp.asarray(motion))
    assert gt.dtype == jnp.float64
    assert float(loss) == pytest.approx(ref_loss, rel=1e-10, abs=1e-12)
    np.testing.assert_allclose(np.asarray(gt), ref_gt, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(np.asarray(gm), ref_gm, rtol=1e-8, atol=1e-12)
  # float32 (the official code's precision): same loss and gradients to float32 precision.
  loss32, (gt32, gm32) = _OFFICIAL_VALUE_AND_GRAD(jnp.asarray(text, jnp.float32), jnp.asarray(motion, jnp.float32))
  assert float(loss32) == pytest.approx(ref_loss, rel=2e-5, abs=1e-5)
  scale = max(np.abs(ref_gt).max(), np.abs(ref_gm).max())
  np.testing.assert_allclose(np.asarray(gt32), ref_gt, atol=2e-4 * scale)
  np.testing.assert_allclose(np.asarray(gm32), ref_gm, atol=2e-4 * scale)


def test_temperature_conventions_differ_by_squaring_tau():
  text, motion = (jnp.asarray(x, jnp.float32) for x in latents("random", seed=3))
  official = float(spl.spl_loss(text, motion, temperature=0.1)[0])  # default: official
  single = float(spl.spl_loss(text, motion, temperature=0.1, convention="single")[0])
  # Dividing twice by tau is dividing once by tau**2.
  assert official == pytest.approx(
    float(spl.spl_loss(text, motion, temperature=0.01, convention="single")[0]), rel=1e-6
  )
  assert official > 5 * single > 0  # the issue's ~9x on random latents
  ref, _, _ = official_reference(np.asarray(text), np.asarray(motion), tau=0.1)
  assert official == pytest.approx(ref, rel=1e-5)
  with pytest.raises(ValueError, match="convention"):
    spl.spl_loss(text, motion, convention="double")


def test_stays_finite_where_the_official_float32_log_underflows():
  # Rows 1..11: ground truth top-1 (correct, zero loss). Row 0: ground truth at -0.95 below ten columns at 0.79..0.70,
  # no cosine above 0.8 -> incorrect; logits [79, -95] at tau**2 = 0.01: softmax(float32) gives p(gt) = 0 and the
  # official log(p) = -inf, while log_softmax gives the exact -174.
  sim = np.full((12, 12), -0.5, np.float32)
  np.fill_diagonal(sim, 0.5)
  sim[0, 0] = -0.95
  sim[0, 1:11] = np.linspace(0.79, 0.70, 10)
  pairs = spl.mine_preference_pairs(jnp.asarray(sim), k=10, high_sim=0.8)
  assert not bool(pairs.correct[0]) and bool(np.all(np.asarray(pairs.correct)[1:]))
  z = np.array([sim[0, 1], sim[0, 0]], np.float32) / np.float32(0.1) / np.float32(0.1)
  e = np.exp(z - z.max())
  with np.errstate(divide="ignore"):
    assert np.isneginf(np.log(e / e.sum())[1])  # what the official float32 code takes
  loss, g = jax.value_and_grad(lambda s: spl.preference_loss(s, pairs, 0.1))(jnp.asarray(sim))
  assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(g)))
  assert float(loss) == pytest.approx(float(z[0] - z[1]) / 12, rel=1e-5)  # -log p(gt) = 174, other rows 0


def test_filter_convention_tmr_maps_threshold_to_two_t_minus_one():
  rng = np.random.default_rng(5)
  b = 10
  text, motion = rng.normal(size=(b, 6)), rng.normal(size=(b, 6))
  sent = rng.normal(size=(b, 4))
  u = sent[0] / np.linalg.norm(sent[0])
  v = rng.normal(size=4)
  v = v - (v @ u) * u
  sent[1] = 0.85 * u + np.sqrt(1 - 0.85**2) * v / np.linalg.norm(v)  # cosine 0.85 with row 0
  s = sent / np.linalg.norm(sent, axis=1, keepdims=True)
  assert 0.8 < s[0] @ s[1] < 0.9
  with jax.enable_x64(True):
    args = (jnp.asarray(text), jnp.asarray(motion), jnp.asarray(sent), 0.1, 0.9)
    tmr = float(spl.info_nce_with_filtering(*args, convention="tmr"))
    cos = float(spl.info_nce_with_filtering(*args, convention="cosine"))
  assert tmr == pytest.approx(info_nce_reference(text, motion, sent, 0.1, 0.8), rel=1e-10)
  assert cos == pytest.approx(info_nce_reference(text, motion, sent, 0.1, 0.9), rel=1e-10)
  assert tmr != pytest.approx(cos, rel=1e-6)  # the pair (0, 1) is dropped only by the TMR convention
  assert spl.filter_cutoff(0.9, "tmr") == pytest.approx(0.8)
  with pytest.raises(ValueError, match="filter convention"):
    spl.filter_cutoff(0.9, "raw")
