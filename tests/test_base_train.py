"""Base generator training: loss decreases, end-to-end tiny run with checkpoints, bit-identical resume,
generator reload, no retrace."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from easytune_jax.bundles import generator
from easytune_jax.configs import base as presets
from easytune_jax.core import sampling
from easytune_jax.core.checkpoint import CheckpointError
from easytune_jax.core.metric_writer import read_metrics
from easytune_jax.core.optim import create_train_state
from easytune_jax.data import batching
from easytune_jax.data.synthetic import write_synthetic_dataset
from easytune_jax.pipelines.tiny import TINY_BASE_OVERRIDES
from easytune_jax.train import base, base_data, base_steps

# Small model, few steps: compile time dominates on CPU, so every test shares these sizes (the jitted
# steps are cached on the model config) and runs a handful of steps.
TINY = [o for o in TINY_BASE_OVERRIDES if not o.startswith(("vae_steps=", "diffusion_steps="))]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("synth"))
  write_synthetic_dataset(root, num_motions=40, seed=0, min_len=40, max_len=72)
  return root


def _run(workdir, synth, overrides, model="mld", num_samples=0, **kw):
  cfg = base.apply_overrides(presets.get_config("tiny" if model == "mld" else f"tiny_{model}"), overrides)
  return base.train_and_sample(cfg, workdir, synth, num_samples, progress=False, **kw)


def _config(*extra):
  return base.apply_overrides(presets.get_config("tiny"), TINY + list(extra))


def _setup(synth, workdir, *extra):
  cfg = _config(*extra)
  train, val = base_data.load_data(cfg, synth)
  tok = base_data.build_tokenizer(cfg, train, str(workdir))
  return base_data.finalize_config(cfg, train, tok), train, val, tok


def test_training_steps_reduce_loss_on_fixed_batch(synth, tmp_path):
  # Same model config as the end-to-end test, so the compiled steps are shared (cached on the config).
  cfg, train, _, tok = _setup(synth, tmp_path)
  batch = base_data.batch_arrays(batching.batch_at(train, 0, 8, 0, tok, max_length=32))
  key = jax.random.PRNGKey(0)
  # VAE: 30 steps on one batch.
  state = create_train_state(base.init_vae_params(cfg, key), base.vae_tx(cfg))
  step = base_steps.make_vae_step(cfg, train.mean, train.std, key)
  rec0 = base_steps.reconstruction_error(cfg, state.params, [batch], train.mean, train.std)
  losses = []
  for _ in range(30):
    state, m = step(state, batch)
    losses.append(float(m["loss"]))
  rec1 = base_steps.reconstruction_error(cfg, state.params, [batch], train.mean, train.std)
  assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:3]), losses
  assert rec1["val/mpjpe_m"] < rec0["val/mpjpe_m"]
  # Diffusion in that VAE's latent space: the fixed-key loss drops.
  dstate = create_train_state(base.init_diffusion_params(cfg, key), base.diffusion_tx(cfg))
  dstep = base_steps.make_diffusion_step(cfg, state.params, 1.0, key)
  before = base_steps.validation_diffusion_loss(cfg, dstate.params, state.params, [batch], 1.0)["val/diffusion_loss"]
  for _ in range(30):
    dstate, m = dstep(dstate, batch)
    assert bool(m["finite"])
  after = base_steps.validation_diffusion_loss(cfg, dstate.params, state.params, [batch], 1.0)["val/diffusion_loss"]
  assert after < 0.8 * before, (before, after)


def test_end_to_end_checkpoints_resume_and_generator(synth, tmp_path):
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  steps = lambda n: [f"vae_steps={n}", f"diffusion_steps={n}"]
  # Run A: 4 + 4 steps straight, through the launcher (writes samples too).
  out_a = _run(a, synth, TINY + steps(4), num_samples=2, num_steps=3, gif=False)
  for stage in ("vae", "diffusion"):
    assert sorted(os.listdir(os.path.join(a, stage, "checkpoints"))) == ["2", "4"]
    logged = [r["step"] for r in read_metrics(os.path.join(a, stage)) if "loss" in r]
    assert logged == [1, 2, 3, 4]
  assert out_a["vae"]["val/mpjpe_m"] > 0 and np.isfinite(out_a["diffusion"]["val/diffusion_loss"])
  for f in ("features.npy", "joints.npy", "captions.txt"):
    assert os.path.exists(os.path.join(a, "samples", f))
  joints = np.load(os.path.join(a, "samples", "joints.npy"))
  assert joints.shape == (2, 32, 22, 3) and np.all(np.isfinite(joints))
  with open(os.path.join(a, "config.json")) as f:
    assert json.load(f)["text"]["vocab_size"] > 4
  # Run B: VAE 2 steps, then 4 (resumes from 2); diffusion 2 steps, then 4 (resumes from 2).
  _run(b, synth, TINY + ["vae_steps=2", "diffusion_steps=0"])
  _run(b, synth, TINY + ["vae_steps=4", "diffusion_steps=2"])
  _run(b, synth, TINY + steps(4))
  for stage in ("vae", "diffusion"):
    logged = [r["step"] for r in read_metrics(os.path.join(b, stage)) if "loss" in r]
    assert logged == [1, 2, 3, 4]  # no step was run twice
  ga, gb = generator.load_generator(a), generator.load_generator(b)
  jax.tree.map(np.testing.assert_array_equal, ga.params, gb.params)  # bit-identical resume
  jax.tree.map(np.testing.assert_array_equal, ga.frozen, gb.frozen)
  assert ga.latent_scale == gb.latent_scale and ga.latent_shape == (1, 16)
  # Restored generator == the one used for the samples; same shapes never retrace.
  texts, lengths = ["a person walks forward.", "a person jumps."], [32, 20]
  f1, j1 = ga.generate(texts, lengths, jax.random.PRNGKey(0), num_steps=3)
  f2, _ = ga.generate(texts, lengths, jax.random.PRNGKey(0), num_steps=3)
  np.testing.assert_array_equal(f1, f2)
  with open(os.path.join(a, "samples", "captions.txt")) as f:
    sample_texts = f.read().splitlines()
  f_again, j_again = ga.generate(
    sample_texts, np.load(os.path.join(a, "samples", "lengths.npy")), jax.random.PRNGKey(0), num_steps=3
  )
  np.testing.assert_array_equal(j_again, joints)  # the reloaded model reproduces the saved samples
  np.testing.assert_array_equal(f_again, np.load(os.path.join(a, "samples", "features.npy")))
  f3, _ = ga.generate(texts[::-1], lengths, jax.random.PRNGKey(1), num_steps=3, guidance_scale=2.0)
  assert ga.sampler(3)._cache_size() == 1  # one trace for every call above
  assert np.all(f1[1, 20:] == 0) and np.all(j1[1, 20:] == 0) and not np.allclose(f1, f3)
  # Fine-tuning accessors: decode(denoise-space x0) reproduces generate's normalised output.
  cond = ga.encode_text(texts)
  unc = ga.uncond(cond)
  assert jax.tree.map(jnp.shape, unc) == jax.tree.map(jnp.shape, cond)
  fn, _ = ga.generate(texts, lengths, jax.random.PRNGKey(0), num_steps=3, normalized=True)
  np.testing.assert_allclose(
    f1, np.where(ga.frame_mask(lengths)[..., None], ga.denormalize(fn), 0), rtol=1e-5, atol=1e-5
  )
  with pytest.raises(ValueError, match="lengths: expected 1..32"):
    ga.generate(texts, [40, 8], jax.random.PRNGKey(0), num_steps=3)
  # A changed model config refuses to resume.
  with pytest.raises(CheckpointError, match="vae.width"):
    _run(b, synth, TINY + steps(4) + ["vae.width=64"])
  # Denoiser-only settings: the diffusion stage refuses them, the VAE stage does not, so a new denoiser can
  # be trained on a finished VAE (copied into a new workdir: the VAE is reused unchanged, no VAE step runs).
  with pytest.raises(CheckpointError, match=r"diffusion/checkpoints.*denoiser.ff_dim"):
    _run(b, synth, TINY + steps(4) + ["denoiser.ff_dim=32"])
  c = tmp_path / "c"
  shutil.copytree(os.path.join(b, "vae"), c / "vae")
  shutil.copy(os.path.join(b, "tokenizer.json"), c / "tokenizer.json")
  _run(str(c), synth, TINY + ["vae_steps=4", "diffusion_steps=1", "denoiser.ff_dim=32"])
  assert [r["step"] for r in read_metrics(c / "vae") if "loss" in r] == [1, 2, 3, 4]  # b's log only
  jax.tree.map(np.testing.assert_array_equal, generator.load_generator(str(c)).frozen["vae"], gb.frozen["vae"])
  # ... and so does a diffusion run whose VAE was trained further since.
  with pytest.raises(CheckpointError, match="VAE at step 4, but the VAE is now at step 5"):
    _run(b, synth, TINY + ["vae_steps=5", "diffusion_steps=6"])


def test_mdm_tiny_run(synth, tmp_path):
  out = _run(str(tmp_path), synth, TINY + ["diffusion_steps=2"], model="mdm")
  assert "vae" not in out and not os.path.exists(tmp_path / "vae")  # MDM denoises the features: no VAE stage
  logged = [r for r in read_metrics(tmp_path / "diffusion") if "loss" in r]
  assert [r["step"] for r in logged] == [1, 2] and all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in logged)
  assert np.isfinite(out["diffusion"]["val/diffusion_loss"]) and out["diffusion"]["val/diffusion_loss"] > 0
  gen = generator.load_generator(str(tmp_path))
  assert gen.latent_shape == (32, 263)
  cond = gen.encode_text(["a person walks."], lengths=[12])
  assert cond["frame_mask"].shape == (1, 32) and int(cond["frame_mask"].sum()) == 12
  feats, joints = gen.generate(["a person walks."], [12], jax.random.PRNGKey(0), num_steps=2)
  assert feats.shape == (1, 32, 263) and np.all(feats[0, 12:] == 0) and np.all(np.isfinite(joints))


def test_flow_tiny_run(synth, tmp_path):
  """The flow row: VAE then a flow-matching latent denoiser; it samples with Euler steps of the flow process."""
  out = _run(str(tmp_path), synth, TINY + ["vae_steps=2", "diffusion_steps=2"], model="flow")
  assert out["vae"]["step"] == 2 and np.isfinite(out["diffusion"]["val/diffusion_loss"])
  gen = generator.load_generator(str(tmp_path))
  assert gen.process.kind == "flow" and gen.latent_shape == (gen.config.vae.latent_size, gen.config.vae.latent_dim)
  ts = sampling.make_timesteps(gen.process, sampling.SamplerConfig(num_steps=4))
  np.testing.assert_allclose(ts.t, [1.0, 0.75, 0.5, 0.25])
  feats, joints = gen.generate(["a person walks."], [12], jax.random.PRNGKey(0), num_steps=4)
  assert np.all(feats[0, 12:] == 0) and np.all(np.isfinite(joints))
