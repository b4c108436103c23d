"""Base generator modules: shapes, masks, padding invariance, losses vs float64 numpy, CFG, configs."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from easytune_jax.configs import base as presets
from easytune_jax.core import sampling, schedules
from easytune_jax.core.config import config_from_dict
from easytune_jax.data.features import recover_from_ric
from easytune_jax.models.denoiser import DenoiserConfig, LatentDenoiser, MotionDenoiser
from easytune_jax.models.text_encoder import TextEncoder, TextEncoderConfig, drop_condition
from easytune_jax.models.vae import MotionVAE, VAEConfig, vae_loss
from easytune_jax.train import base

VAE_CFG = VAEConfig(latent_size=2, latent_dim=8, width=16, encoder_layers=3, decoder_layers=1, num_heads=2, ff_dim=32)
DEN_CFG = DenoiserConfig(width=16, num_layers=3, num_heads=2, ff_dim=32)
TXT_CFG = TextEncoderConfig(vocab_size=11, width=16, num_layers=1, num_heads=2, ff_dim=32)


def _motion(key, b=3, length=12, d=263):
  lengths = np.array([12, 7, 4])[:b]
  mask = np.arange(length)[None] < lengths[:, None]
  x = jax.random.normal(key, (b, length, d)) * mask[..., None]
  return x, jnp.asarray(mask)


def _text(key, b=3, lt=6):
  tok = jax.random.randint(key, (b, lt), 4, 11)
  mask = np.arange(lt)[None] < np.array([6, 3, 2])[:b, None]
  return jnp.where(mask, tok, 0), jnp.asarray(mask)


def test_vae_shapes_zero_padding_and_padding_invariance():
  key = jax.random.PRNGKey(0)
  x, mask = _motion(key)
  vae = MotionVAE(VAE_CFG)
  params = jax.jit(vae.init)(key, x, mask)
  encode = jax.jit(lambda p, x, m: vae.apply(p, x, m, method=MotionVAE.encode))
  decode = jax.jit(lambda p, z, m: vae.apply(p, z, m, method=MotionVAE.decode))
  mu, logvar = encode(params, x, mask)
  assert mu.shape == logvar.shape == (3, 2, 8)
  recon = decode(params, mu, mask)
  assert recon.shape == x.shape
  assert np.all(np.asarray(recon)[~np.asarray(mask)] == 0.0)  # exactly zero, not just small
  # Garbage in padded frames and extra padding change neither the latent nor any valid output frame.
  garbage = jax.random.normal(jax.random.PRNGKey(1), x.shape) * 100.0
  x2 = jnp.where(mask[..., None], x, garbage)
  x3 = jnp.concatenate([x2, garbage[:, :5]], axis=1)
  mask3 = jnp.concatenate([mask, jnp.zeros((3, 5), bool)], axis=1)
  mu3, lv3 = encode(params, x3, mask3)
  np.testing.assert_allclose(mu3, mu, atol=1e-5)
  np.testing.assert_allclose(lv3, logvar, atol=1e-5)
  recon3 = decode(params, mu, mask3)
  np.testing.assert_allclose(
    np.asarray(recon3)[:, :12][np.asarray(mask)], np.asarray(recon)[np.asarray(mask)], atol=1e-5
  )
  with pytest.raises(ValueError, match="z expected shape"):
    vae.apply(params, mu[:, :1], mask, method=MotionVAE.decode)
  with pytest.raises(ValueError, match="motion: expected"):
    vae.apply(params, x[..., :10], mask, method=MotionVAE.encode)


def test_vae_loss_matches_float64_reference():
  rng = np.random.default_rng(0)
  b, length, d = 2, 6, 263
  mask = np.arange(length)[None] < np.array([6, 3])[:, None]
  target = rng.normal(size=(b, length, d)).astype(np.float32) * mask[..., None]
  recon = (target + rng.normal(size=target.shape) * 1.5).astype(np.float32) * mask[..., None]
  mu = rng.normal(size=(b, 1, 8)).astype(np.float32)
  logvar = rng.normal(size=(b, 1, 8)).astype(np.float32) * 0.3
  mean = rng.normal(size=d).astype(np.float32) * 0.1
  std = (0.5 + rng.uniform(size=d)).astype(np.float32)
  cfg = VAEConfig(kl_weight=1e-4, feature_weight=1.0, joint_weight=0.5)
  # One compiled program (eager, every op of the joint recovery would compile on its own).
  loss, m = jax.jit(
    lambda recon, target, mask, mu, logvar, mean, std: vae_loss(recon, target, mask, mu, logvar, cfg, mean, std)
  )(
    jnp.asarray(recon),
    jnp.asarray(target),
    jnp.asarray(mask),
    jnp.asarray(mu),
    jnp.asarray(logvar),
    jnp.asarray(mean),
    jnp.asarray(std),
  )

  def smooth_l1(a, b_, msk):
    e = np.abs(a.astype(np.float64) - b_)
    v = np.where(e < 1.0, 0.5 * e**2, e - 0.5)
    return v[msk].mean()

  f64 = lambda a: a.astype(np.float64)
  rec = smooth_l1(recon, f64(target), mask)
  kl = np.mean(0.5 * (np.exp(f64(logvar)) + f64(mu) ** 2 - 1.0 - f64(logvar)))
  j = lambda x: recover_from_ric(f64(x) * f64(std) + f64(mean), 22)
  jl = smooth_l1(j(recon), j(target), mask)
  np.testing.assert_allclose(float(m["loss_features"]), rec, rtol=1e-5)
  np.testing.assert_allclose(float(m["loss_kl"]), kl, rtol=1e-5)
  np.testing.assert_allclose(float(m["loss_joints"]), jl, rtol=1e-4)
  np.testing.assert_allclose(float(loss), rec + 1e-4 * kl + 0.5 * jl, rtol=1e-5)


def test_text_encoder_paths_and_null():
  key = jax.random.PRNGKey(0)
  tok, tmask = _text(key)
  enc = TextEncoder(TXT_CFG)
  p = jax.jit(enc.init)(key, tok, tmask)
  apply = jax.jit(enc.apply)  # one program for both calls below instead of every op compiled on its own
  cond = apply(p, tok, tmask)
  assert cond["text"].shape == (3, 6, 16) and cond["text_mask"].dtype == jnp.bool_
  assert np.all(np.asarray(cond["text"])[~np.asarray(tmask)] == 0.0)
  # Changing a padded token id does not change valid token features.
  cond2 = apply(p, jnp.where(tmask, tok, 7), tmask)
  np.testing.assert_allclose(cond2["text"], cond["text"], atol=1e-5)
  null = enc.apply(p, 3, 6, method=TextEncoder.null)
  assert jax.tree.map(jnp.shape, null) == jax.tree.map(jnp.shape, cond)
  np.testing.assert_array_equal(null["text_mask"], np.eye(6, dtype=bool)[[0, 0, 0]])
  np.testing.assert_array_equal(null["text"][:, 0], np.broadcast_to(p["params"]["null_text"], (3, 16)))
  with pytest.raises(ValueError, match="expected int token ids"):
    enc.apply(p, tok.astype(jnp.float32), tmask)
  # Precomputed path: [B, Lt, E] embeddings through a projection.
  pre = TextEncoder(TextEncoderConfig(kind="precomputed", embed_dim=5, width=16, num_layers=0, num_heads=2))
  emb = jax.random.normal(key, (3, 6, 5))
  pp = pre.init(key, emb, tmask)
  out = pre.apply(pp, emb, tmask)
  dense = pp["params"]["proj"]
  ref = np.asarray(emb, np.float64) @ np.asarray(dense["kernel"], np.float64) + np.asarray(dense["bias"])
  np.testing.assert_allclose(out["text"], ref * np.asarray(tmask)[..., None], rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="expected embeddings"):
    pre.apply(pp, emb[..., :4], tmask)
  with pytest.raises(ValueError, match="vocab_size"):
    TextEncoder(TextEncoderConfig()).init(key, tok, tmask)


def test_drop_condition_selects_per_example():
  cond = {"text": jnp.ones((64, 3, 2)), "text_mask": jnp.ones((64, 3), bool)}
  uncond = {"text": jnp.zeros((64, 3, 2)), "text_mask": jnp.zeros((64, 3), bool)}
  key = jax.random.PRNGKey(3)
  out = drop_condition(key, cond, uncond, 0.25)
  dropped = np.asarray(jax.random.bernoulli(key, 0.25, (64,)))
  assert 0 < dropped.sum() < 64
  np.testing.assert_array_equal(np.asarray(out["text"][:, 0, 0]) == 0.0, dropped)
  np.testing.assert_array_equal(~np.asarray(out["text_mask"][:, 0]), dropped)


def _text_condition(key, tok, tmask):
  """The tiny text encoder's condition dict, initialised and applied in one compiled program."""
  enc = TextEncoder(TXT_CFG)
  return jax.jit(lambda k: enc.apply(enc.init(k, tok, tmask), tok, tmask))(key)


def test_latent_denoiser_shapes_and_text_padding_invariance():
  key = jax.random.PRNGKey(0)
  tok, tmask = _text(key)
  cond = _text_condition(key, tok, tmask)
  den = LatentDenoiser(DEN_CFG)
  x = jax.random.normal(key, (3, 2, 8))
  t = jnp.array([0, 500, 999], jnp.int32)
  p = jax.jit(den.init)(key, x, t, cond)
  apply = jax.jit(den.apply)  # one program for the three calls below instead of every op compiled on its own
  out = apply(p, x, t, cond)
  assert out.shape == x.shape
  noisy = {**cond, "text": jnp.where(tmask[..., None], cond["text"], 50.0)}
  np.testing.assert_allclose(apply(p, x, t, noisy), out, atol=1e-5)
  # The timestep matters.
  assert not np.allclose(apply(p, x, jnp.array([999, 0, 500], jnp.int32), cond), out)
  with pytest.raises(ValueError, match="missing key 'text_mask'"):
    den.apply(p, x, t, {"text": cond["text"]})


def test_motion_denoiser_masks_padded_frames():
  key = jax.random.PRNGKey(0)
  tok, tmask = _text(key)
  x, fmask = _motion(key, d=263)
  cond = {**_text_condition(key, tok, tmask), "frame_mask": fmask}
  den = MotionDenoiser(DenoiserConfig(width=16, num_layers=1, num_heads=2, ff_dim=32))
  t = jnp.array([3, 400, 900], jnp.int32)
  p = jax.jit(den.init)(key, x, t, cond)
  apply = jax.jit(den.apply)
  out = np.asarray(apply(p, x, t, cond))
  assert out.shape == x.shape and np.all(out[~np.asarray(fmask)] == 0.0)
  x2 = jnp.where(fmask[..., None], x, 30.0)
  out2 = np.asarray(apply(p, x2, t, cond))
  np.testing.assert_allclose(out2, out, atol=1e-5)
  with pytest.raises(ValueError, match="frame_mask"):
    den.apply(p, x, t, {k: v for k, v in cond.items() if k != "frame_mask"})


def test_cfg_with_unit_guidance_equals_conditional_model():
  key = jax.random.PRNGKey(0)
  tok, tmask = _text(key)
  enc = TextEncoder(TXT_CFG)

  @jax.jit
  def conditions(key):
    tp = enc.init(key, tok, tmask)
    return enc.apply(tp, tok, tmask), enc.apply(tp, 3, 6, method=TextEncoder.null)

  cond, uncond = conditions(key)
  den = LatentDenoiser(DEN_CFG)
  x_T = jax.random.normal(key, (3, 2, 8))
  p = jax.jit(den.init)(key, x_T, jnp.zeros((3,), jnp.int32), cond)
  sched = schedules.make_schedule(schedules.DiffusionConfig())
  ts = sampling.make_timesteps(sched, sampling.SamplerConfig(num_steps=4))
  apply = lambda prm, x, t, c: den.apply(prm, x, t, c)

  @jax.jit
  def samples(p):
    run = functools.partial(sampling.sample, apply, p, sched, ts, x_T, cond)
    return run(uncond, 1.0).x0, run(None).x0, run(uncond, 7.5).x0

  guided, plain, w75 = samples(p)
  np.testing.assert_allclose(guided, plain, atol=1e-5)
  # ... and w != 1 differs, so the comparison above is not vacuous.
  assert not np.allclose(w75, plain, atol=1e-3)


def test_config_overrides_and_roundtrip():
  cfg = base.apply_overrides(
    presets.get_config("tiny"),
    ["vae.width=32", "diffusion.prediction_type=v_prediction", "ema_decay=0.99", "vae.skip=false", "model=mdm"],
  )
  assert cfg.vae.width == 32 and cfg.diffusion.prediction_type == "v_prediction"
  assert cfg.ema_decay == 0.99 and cfg.vae.skip is False and cfg.model == "mdm"
  assert config_from_dict(base.BaseConfig, base.config_to_dict(cfg)) == cfg
  with pytest.raises(ValueError, match="has no field 'widht'"):
    base.apply_overrides(cfg, ["vae.widht=3"])
  with pytest.raises(ValueError, match="expected int"):
    base.apply_overrides(cfg, ["vae.width=wide"])
  with pytest.raises(ValueError, match="prediction_type"):
    base.apply_overrides(cfg, ["diffusion.prediction_type=x0"])
  with pytest.raises(ValueError, match="skip=True needs an odd number"):
    base.apply_overrides(cfg, ["vae.skip=true", "vae.encoder_layers=2"])
  paper = presets.get_config("paper")
  assert (paper.vae.latent_size, paper.vae.latent_dim, paper.vae.encoder_layers) == (1, 256, 9)
  assert (paper.denoiser.num_layers, paper.denoiser.num_heads, paper.denoiser.ff_dim) == (9, 4, 1024)
  assert paper.denoiser.skip and paper.denoiser.dropout == 0.1 and paper.cond_drop_prob == 0.1
  assert paper.vae.logvar_offset == 0.0 and paper.vae.kl_weight == 1e-4
  assert dataclasses.asdict(paper.diffusion) == dataclasses.asdict(schedules.DiffusionConfig())  # MLD: epsilon
  # MDM predicts the clean motion (its paper); so does the tiny CPU config (epsilon stayed at chance there).
  assert presets.get_config("paper_mdm").diffusion.prediction_type == "sample"
  assert presets.get_config("tiny").diffusion.prediction_type == "sample"
