"""SPM model: reward contract, timestep modes, gradients of the training loss, config validation."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from easytune_jax.configs import reward as reward_presets
from easytune_jax.core.schedules import make_schedule
from easytune_jax.models import spm
from easytune_jax.rewards import spm_loss as RL
from easytune_jax.rewards import spm_objective as RO

B, L, LT, D = 4, 12, 6, 263
CFG = spm.SPMConfig(vocab_size=30, word_dim=16, latent_dim=16, ff_dim=32, num_layers=1, num_heads=2, dropout=0.1)


def make_inputs(seed=0):
  rng = np.random.default_rng(seed)
  lengths = np.array([12, 9, 5, 7])
  mask = np.arange(L)[None] < lengths[:, None]
  motion = rng.normal(size=(B, L, D)).astype(np.float32) * mask[..., None]
  tok_len = np.array([6, 4, 5, 3])
  token_mask = np.arange(LT)[None] < tok_len[:, None]
  tokens = np.where(token_mask, rng.integers(4, 30, (B, LT)), 0).astype(np.int32)
  return jnp.asarray(motion), {
    "tokens": jnp.asarray(tokens),
    "token_mask": jnp.asarray(token_mask),
    "mask": jnp.asarray(mask),
  }


def test_reward_contract_and_gradient_wrt_motion():
  params = spm.init_spm(CFG, jax.random.key(0))
  x, cond = make_inputs()
  reward = spm.reward_fn(params, CFG)
  t250 = jnp.full((B,), 250, jnp.int32)

  @jax.jit
  def everything(x, cond):
    x2 = jnp.where(cond["mask"][..., None], x, 5.0)
    full = {k: v for k, v in cond.items() if k != "mask"}
    return (
      reward(x, cond, None),
      spm.encode_text(params, CFG, cond),
      spm.encode_motion(params, CFG, x, cond["mask"]),
      reward(x, cond, jnp.zeros((B,), jnp.int32)),
      jax.grad(lambda x: jnp.sum(reward(x, cond, t250)))(x),
      reward(x2, cond),
      spm.reward_apply(params, CFG, x, full),
    )

  r, t_mu, m_mu, r0, g, r2, r_full = everything(x, cond)
  assert r.shape == (B,) and r.dtype == jnp.float32
  assert np.all(np.abs(np.asarray(r)) <= 1.0 + 1e-6)
  # Equal to the cosine of the two latent means, computed separately.
  cos = np.sum(np.asarray(t_mu) * np.asarray(m_mu), -1) / (
    np.linalg.norm(np.asarray(t_mu), axis=-1) * np.linalg.norm(np.asarray(m_mu), axis=-1)
  )
  np.testing.assert_allclose(np.asarray(r), cos, rtol=1e-5, atol=1e-6)
  # Clean (None) means t = 0.
  np.testing.assert_allclose(np.asarray(r0), np.asarray(r), atol=1e-6)
  g = np.asarray(g)
  assert np.all(np.isfinite(g)) and np.abs(g).sum() > 0
  # Padded frames neither influence the reward nor receive gradient.
  assert np.abs(g[~np.asarray(cond["mask"])]).max() == 0.0
  np.testing.assert_allclose(np.asarray(r2), np.asarray(r), atol=1e-5)
  # A cond without a frame mask treats every frame as valid (so the padding now counts).
  assert r_full.shape == (B,) and np.abs(np.asarray(r_full) - np.asarray(r)).max() > 1e-6


@functools.cache
def _m1t1_params():
  return spm.init_spm(dataclasses.replace(CFG, mode="M1T1", patch_size=1), jax.random.key(1))


@pytest.mark.parametrize(
  "mode,motion_t,text_t", [("M0T0", False, False), ("M1T0", True, False), ("M0T1", False, True), ("M1T1", True, True)]
)
def test_timestep_modes_route_t_to_the_right_encoder(mode, motion_t, text_t):
  cfg = dataclasses.replace(CFG, mode=mode, patch_size=1)  # also covers TMR's one-token-per-frame path
  shapes = jax.eval_shape(lambda k: spm.init_spm(cfg, k), jax.random.key(1))
  names = set(shapes["params"])
  assert ("motion_time" in names) == motion_t and ("text_time" in names) == text_t
  # One compiled init for all four modes: each mode's tree is the M1T1 tree without the unused time embeddings.
  params = {"params": {k: v for k, v in _m1t1_params()["params"].items() if k in names}}
  assert jax.tree.map(lambda a: (a.shape, a.dtype), params) == jax.tree.map(lambda a: (a.shape, a.dtype), shapes)
  x, cond = make_inputs(1)
  t0, t1 = jnp.zeros((B,), jnp.int32), jnp.full((B,), 300, jnp.int32)

  @jax.jit
  def diffs(params, x, cond):
    dm = jnp.max(
      jnp.abs(spm.encode_motion(params, cfg, x, cond["mask"], t0) - spm.encode_motion(params, cfg, x, cond["mask"], t1))
    )
    dt = jnp.max(jnp.abs(spm.encode_text(params, cfg, cond, t0) - spm.encode_text(params, cfg, cond, t1)))
    return dm, dt

  dm, dt = (float(v) for v in diffs(params, x, cond))
  assert (dm > 1e-4) == motion_t and (dm == 0.0) == (not motion_t)
  assert (dt > 1e-4) == text_t and (dt == 0.0) == (not text_t)


def test_training_loss_gradients_reach_both_encoders_and_decoder():
  cfg = RO.RewardTrainConfig(model=CFG, noise_threshold=0.0, max_length=L)
  params = spm.init_spm(CFG, jax.random.key(2))
  x, cond = make_inputs(2)
  batch = dict(cond, motion=x)
  sched = make_schedule(cfg.diffusion)

  @jax.jit
  def grads_of(params, batch):
    # The total loss and the contrastive term alone (same graph, read from the metrics) differentiated in one
    # vmapped backward pass: row 0 of each gradient is the total's, row 1 the contrastive term's.
    def both(p):
      loss, metrics = RL.reward_loss(p, batch, jax.random.key(3, impl="rbg"), cfg, sched, True)
      return jnp.stack([loss, metrics["contrastive"]]), (loss, metrics)

    rows, (loss, metrics) = jax.jacrev(both, has_aux=True)(params)
    return loss, metrics, jax.tree.map(lambda r: r[0], rows), jax.tree.map(lambda r: r[1], rows)

  loss, metrics, grads, g = grads_of(params, batch)
  assert np.isfinite(float(loss))
  assert float(metrics["noised_frac"]) == 1.0  # noise_threshold 0: every batch is noised
  assert "spl" in metrics and np.isfinite(float(metrics["spl"]))
  for sub in ("word_embed", "text_encoder", "motion_encoder", "motion_time", "decoder", "decoder_out"):
    norm = sum(float(jnp.sum(jnp.abs(v))) for v in jax.tree.leaves(grads["params"][sub]))
    assert np.isfinite(norm) and norm > 0, sub
  g = g["params"]
  for sub in ("text_encoder", "motion_encoder"):
    assert sum(float(jnp.sum(jnp.abs(v))) for v in jax.tree.leaves(g[sub])) > 0, sub
  assert sum(float(jnp.sum(jnp.abs(v))) for v in jax.tree.leaves(g["decoder"])) == 0.0


def test_noise_batch_follows_threshold_and_schedule():
  x, cond = make_inputs(3)
  sched = make_schedule()
  clean, t = RL.noise_batch(jax.random.key(0), x, cond["mask"], sched, 1.0, 500)  # never noised
  assert np.all(np.asarray(t) == 0)
  np.testing.assert_array_equal(np.asarray(clean), np.asarray(x))
  noisy, t = RL.noise_batch(jax.random.key(0), x, cond["mask"], sched, 0.0, 500)  # always noised
  t = np.asarray(t)
  assert t.dtype == np.int32 and np.all((t >= 0) & (t < 500)) and len(set(t.tolist())) > 1
  assert np.all(np.asarray(noisy)[~np.asarray(cond["mask"])] == 0.0)


@pytest.mark.slow  # the embedding-input variant compiles a second SPM
def test_embedding_text_input_and_caption_features():
  cfg = dataclasses.replace(CFG, text_input="embeddings", vocab_size=0)
  params = spm.init_spm(cfg, jax.random.key(4), text_emb_dim=10)
  assert "word_embed" not in params["params"]
  x, cond = make_inputs(4)
  emb = jax.random.normal(jax.random.key(5), (B, LT, 10))
  cond = {"text_emb": emb, "text_emb_mask": cond["token_mask"], "mask": cond["mask"]}
  assert spm.reward_apply(params, cfg, x, cond).shape == (B,)
  feats = np.asarray(RL.caption_features(cfg, cond))
  m = np.asarray(cond["text_emb_mask"], np.float64)
  np.testing.assert_allclose(feats, (np.asarray(emb) * m[..., None]).sum(1) / m.sum(1, keepdims=True), rtol=1e-5)
  # Bag of words for tokens: specials (< 4) ignored, counts per word id.
  tok = {"tokens": jnp.array([[2, 5, 5, 9, 3, 0]]), "token_mask": jnp.array([[1, 1, 1, 1, 1, 0]], bool)}
  bow = np.asarray(RL.caption_features(CFG, tok))[0]
  assert bow[5] == 2 and bow[9] == 1 and bow.sum() == 3


def test_config_validation_and_paper_preset():
  p = dataclasses.replace(reward_presets.get_config("paper_tmr").model, vocab_size=100)
  assert (p.latent_dim, p.ff_dim, p.num_layers, p.num_heads) == (256, 1024, 9, 4)
  assert spm.SPMConfig.from_dict(p.to_dict()) == p
  with pytest.raises(ValueError, match=r"spm.py: SPMConfig.mode.*'M2T0'"):
    spm.SPMConfig(mode="M2T0")
  with pytest.raises(ValueError, match=r"SPMConfig.latent_dim: expected a multiple of num_heads=4, found 30"):
    spm.SPMConfig(latent_dim=30)
  with pytest.raises(ValueError, match=r"SPMConfig.vocab_size: expected >= 1 with text_input='tokens'"):
    spm.init_spm(spm.SPMConfig(), jax.random.key(0))
  params = spm.init_spm(CFG, jax.random.key(0))
  x, cond = make_inputs()
  with pytest.raises(ValueError, match=r"motion input: expected \[B, L, D=263\], found \(4, 12, 10\)"):
    spm.reward_apply(params, CFG, x[..., :10], cond)
  with pytest.raises(KeyError, match="missing \\['tokens', 'token_mask'\\]"):
    spm.reward_apply(params, CFG, x, {"mask": cond["mask"]})
