"""The official reward-training objective (EasyTune train_spm.py + GradGuidance/spm.py) and our named alternatives.

Each semantic point of the official objective is checked on its own; the losses were also compared with the official
PyTorch code outside the project (see the branch report).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from easytune_jax.bundles import reward as RB
from easytune_jax.configs import reward as presets
from easytune_jax.core.schedules import make_schedule
from easytune_jax.data.humanml3d import load_dataset
from easytune_jax.data.synthetic import write_synthetic_dataset
from easytune_jax.data.text import TextEmbeddings, save_text_embeddings
from easytune_jax.interop.torch_zip import save_torch
from easytune_jax.models import spm
from easytune_jax.models.spm import SPMConfig
from easytune_jax.rewards import spl
from easytune_jax.rewards import spm_loss as RL
from easytune_jax.rewards import spm_objective as RO
from easytune_jax.train import reward as R
from tests.test_spm_official import synthetic_state

E = 10
MODEL = SPMConfig.official(dim_motion=6, latent_dim=8, ff_dim=16, num_layers=3, num_heads=2)
OFFICIAL = dataclasses.replace(presets.get_config("official"), model=MODEL, batch_size=4, max_length=6)
OURS = OFFICIAL.with_objective("ours")


def test_presets_and_named_options():
  paper = presets.get_config("paper")
  assert paper == presets.get_config("official")
  assert paper.model == SPMConfig.official() and paper.model.arch == "official"
  assert (paper.learning_rate, paper.spl_learning_rate, paper.spl_weight) == (1e-4, 1e-5, 1e-2)
  assert (paper.noise_threshold, paper.max_timestep, paper.temperature, paper.threshold_selfsim) == (0.5, 501, 0.1, 0.9)
  assert (paper.weight_decay, paper.grad_clip_norm, paper.batch_size) == (0.01, 0.0, 64)
  assert all(getattr(paper, k) == v for k, v in RO.OFFICIAL_OBJECTIVE.items())
  assert all(getattr(RO.RewardTrainConfig(), k) == v for k, v in RO.OUR_OBJECTIVE.items())
  assert all(getattr(OURS, k) == v for k, v in RO.OUR_OBJECTIVE.items()) and OURS.model == MODEL
  assert presets.get_config("paper_tmr").model.arch == "tmr"
  # Configs saved before the objective fields existed read back as ours (what they were trained with).
  old = RO.RewardTrainConfig().to_dict()
  for k in ("timestep_routing", "spl_latents", "spl_temperature_convention", "filter_convention", "recons_target"):
    old.pop(k)
  assert RO.RewardTrainConfig.from_dict(old) == RO.RewardTrainConfig()
  with pytest.raises(ValueError, match="timestep_routing"):
    dataclasses.replace(OFFICIAL, timestep_routing="always")
  with pytest.raises(ValueError, match="objective"):
    OFFICIAL.with_objective("paper")


@pytest.mark.slow
def test_noise_batch_official_timesteps():
  sched = make_schedule(OFFICIAL.diffusion)
  x = jnp.ones((4, 6, 6))
  mask = jnp.ones((4, 6), bool)
  key = jax.random.key(3)
  clean0, t0 = RL.noise_batch(key, x, mask, sched, 1.0, 501)  # never noised: ours t = 0
  clean1, t1 = RL.noise_batch(key, x, mask, sched, 1.0, 501, "sampled")  # official: t drawn all the same
  np.testing.assert_array_equal(np.asarray(clean0), np.asarray(x))
  np.testing.assert_array_equal(np.asarray(clean1), np.asarray(x))
  assert np.all(np.asarray(t0) == 0) and np.any(np.asarray(t1) > 0)
  noisy, t2 = RL.noise_batch(key, x, mask, sched, 0.0, 501, "sampled")  # always noised, same draws
  np.testing.assert_array_equal(np.asarray(t1), np.asarray(t2))
  assert not np.allclose(np.asarray(noisy), 1.0)
  # t ~ U{0, ..., 500}: max_timestep=501 reaches 500 and never 501.
  ts = jax.vmap(lambda k: RL.noise_batch(k, x[:1], mask[:1], sched, 0.0, 501, "sampled")[1])(
    jax.random.split(jax.random.key(0), 3000)
  )
  assert int(ts.min()) == 0 and int(ts.max()) == 500
  # Noise with probability 1 - NoiseThr (one coin per batch).
  coins = jax.vmap(lambda k: jnp.any(RL.noise_batch(k, x, mask, sched, 0.7, 501, "sampled")[0] != x))(
    jax.random.split(jax.random.key(1), 2000)
  )
  assert abs(float(jnp.mean(coins)) - 0.3) < 0.05


def _batch(seed=0, b=4, length=6, lt=5):
  rng = np.random.default_rng(seed)
  lengths = np.array([6, 3, 5, 2])[:b]
  mask = np.arange(length)[None] < lengths[:, None]
  motion = rng.normal(size=(b, length, 6)).astype(np.float32) * mask[..., None]
  tmask = np.arange(lt)[None] < np.array([2, 5, 4, 3])[:b, None]
  text = (rng.normal(size=(b, lt, E)) * tmask[..., None]).astype(np.float32)
  return {
    "motion": jnp.asarray(motion),
    "mask": jnp.asarray(mask),
    "text_emb": jnp.asarray(text),
    "text_emb_mask": jnp.asarray(tmask),
  }


class _Spy:
  """Wraps the model and records (method, timestep argument) of every apply."""

  def __init__(self, module, calls):
    self.module, self.calls = module, calls

  def apply(self, params, *args, method=None, rngs=None):
    self.calls.append((method, None if method == "decode" else args[2]))
    return self.module.apply(params, *args, method=method, rngs=rngs)


@pytest.fixture(scope="module")
def params():
  return spm.init_spm(MODEL, jax.random.key(0), text_emb_dim=E)


def _run(monkeypatch, params, config, use_spl):
  calls = []
  monkeypatch.setattr(RL, "spm_module", lambda c: _Spy(spm.spm_module(c), calls))
  loss, metrics = RL.reward_loss(
    params, _batch(), jax.random.key(5), config, make_schedule(config.diffusion), use_spl, deterministic=True
  )
  assert np.isfinite(float(loss))
  return calls, metrics


@pytest.mark.slow  # the `params` fixture builds a converted official SPM (~2 min loaded)
@pytest.mark.parametrize("mode", ["M1T0", "M0T1"])
def test_timestep_routing_per_stage(monkeypatch, params, mode):
  clean = dataclasses.replace(OFFICIAL, noise_threshold=1.0, model=dataclasses.replace(MODEL, mode=mode))
  # Official pretraining: no timestep anywhere, whatever the mode.
  calls, _ = _run(monkeypatch, params, clean, False)
  assert [(m, t is None) for m, t in calls] == [("encode_text", True), ("encode_motion", True), ("decode", True)]
  # Official SPL stage (clean batch): the SPM loss follows the mode with the SAMPLED t; the SPL pass gives the motion
  # encoder t always and the text encoder never.
  calls, _ = _run(monkeypatch, params, clean, True)
  sees_m, sees_t = mode[1] == "1", mode[3] == "1"
  assert [(m, t is not None) for m, t in calls] == [
    ("encode_text", sees_t),
    ("encode_motion", sees_m),
    ("decode", False),
    ("encode_text", False),
    ("encode_motion", True),
  ]
  assert np.any(np.asarray(calls[4][1]) > 0)  # a clean batch still carries its sampled t
  # Ours: t to the mode's encoders, t = 0 for clean batches, SPL on the means of the same pass (no second pass).
  calls, _ = _run(monkeypatch, params, dataclasses.replace(clean, **RO.OUR_OBJECTIVE), True)
  assert [m for m, _ in calls] == ["encode_text", "encode_motion", "decode"]
  if sees_m:
    assert np.all(np.asarray(calls[1][1]) == 0)


@pytest.mark.slow  # the `params` fixture (see above)
def test_spl_latents_sample_vs_mean(params):
  cfg = dataclasses.replace(OFFICIAL, noise_threshold=1.0)
  sched = make_schedule(cfg.diffusion)
  batch = _batch()
  key = jax.random.key(5)
  _, t = RL.noise_batch(jax.random.split(key, 6)[0], batch["motion"], batch["mask"], sched, 1.0, 501, "sampled")
  module = spm.spm_module(MODEL)
  mu_t, _ = module.apply(params, batch["text_emb"], batch["text_emb_mask"], None, method="encode_text")
  mu_m, _ = module.apply(params, batch["motion"], batch["mask"], t, method="encode_motion")
  on_means = float(spl.spl_loss(mu_t, mu_m, convention="official")[0])
  _, m_mean = RL.reward_loss(params, batch, key, dataclasses.replace(cfg, spl_latents="mean"), sched, True, True)
  _, m_sample = RL.reward_loss(params, batch, key, cfg, sched, True, True)
  assert float(m_mean["spl"]) == pytest.approx(on_means, rel=1e-5)
  assert float(m_sample["spl"]) != pytest.approx(on_means, rel=1e-3)
  # Temperature convention: single division gives a different (smaller) SPL term on the same latents.
  _, m_single = RL.reward_loss(
    params,
    batch,
    key,
    dataclasses.replace(cfg, spl_latents="mean", spl_temperature_convention="single"),
    sched,
    True,
    True,
  )
  assert float(m_single["spl"]) == pytest.approx(float(spl.spl_loss(mu_t, mu_m, convention="single")[0]), rel=1e-5)


@pytest.mark.slow
def test_reconstruction_targets():
  mask = jnp.asarray(np.arange(6)[None] < np.array([2, 4])[:, None])
  target = jnp.ones((2, 6, 3))
  pred = target * mask[..., None]
  # Ours: valid frames only -> 0. Official: every frame up to the longest clip (4), padding of the shorter clip
  # included: 2 frames x 3 features of 0.5 over 2 x 4 x 3 elements.
  assert float(RL.masked_smooth_l1(pred, target, mask)) == 0.0
  assert float(RL.batch_frames_smooth_l1(pred, target, mask)) == pytest.approx(0.125)
  # Official target = the (noised) input: with every batch noised, the two targets give different losses.
  sched = make_schedule(OFFICIAL.diffusion)
  p = spm.init_spm(MODEL, jax.random.key(0), text_emb_dim=E)
  noisy = dataclasses.replace(OFFICIAL, noise_threshold=0.0)
  _, a = RL.reward_loss(p, _batch(), jax.random.key(1), noisy, sched, False, True)
  _, b = RL.reward_loss(
    p, _batch(), jax.random.key(1), dataclasses.replace(noisy, recons_target="clean_valid"), sched, False, True
  )
  assert float(a["recons"]) != pytest.approx(float(b["recons"]), rel=1e-3)
  assert float(a["kl"]) == pytest.approx(float(b["kl"]), rel=1e-6)  # the encoders see the same inputs


@pytest.mark.slow
def test_spl_stage_from_a_converted_official_checkpoint(tmp_path):
  """An official checkpoint converts into a workdir that the trainer starts the SPL stage from (official objective),
  and the result loads as a reward."""
  root = tmp_path / "synth"
  write_synthetic_dataset(str(root), num_motions=12, seed=3, min_len=40, max_len=48)
  train = load_dataset(str(root), "train")
  captions = sorted({c for e in train.entries for c, _ in e.captions})
  rng = np.random.default_rng(0)
  emb_mask = np.arange(5)[None] < rng.integers(1, 6, len(captions))[:, None]
  save_text_embeddings(
    str(tmp_path / "t5.npz"),
    captions,
    (rng.normal(size=(len(captions), 5, E)) * emb_mask[..., None]).astype(np.float32),
    emb_mask,
  )
  emb = TextEmbeddings(str(tmp_path / "t5.npz"))
  model = dataclasses.replace(MODEL, dim_motion=train.info.dim)
  save_torch(tmp_path / "spm.pth", {"state_dict": synthetic_state(model, E)})
  converted = RB.convert_spm_checkpoint(tmp_path / "spm.pth", tmp_path / "converted", num_heads=2)
  cfg = dataclasses.replace(OFFICIAL, max_length=16, log_every=1, checkpoint_every=10, model=model)
  with pytest.raises(ValueError, match="text_embeddings"):
    R.train_reward(cfg, tmp_path / "none", train, spl=True, init_from=converted, steps=1, progress=False)
  run = R.train_reward(
    cfg, tmp_path / "spl", train, spl=True, init_from=converted, steps=1, text_embeddings=emb, progress=False
  )
  assert run["steps"] == 1 and run["config"].spl_latents == "sample"
  meta = RB.read_reward_metadata(tmp_path / "spl")
  assert meta["optim"]["learning_rate"] == 1e-5 and meta["optim"]["weight_decay"] == 0.01
  reward, _, rc = RB.load_reward(tmp_path / "spl")
  assert rc.model.arch == "official"
  b = _batch()
  x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 6, train.info.dim)), jnp.float32)
  r = reward(x, {"text_emb": b["text_emb"], "text_emb_mask": b["text_emb_mask"], "reward_rng": jax.random.key(0)})
  assert r.shape == (4,) and np.all(np.isfinite(np.asarray(r)))
