"""The fine-tuning harness on real (tiny) trained models: every method runs, resumes, logs, and the
fine-tuned generator reloads; EasyTune raises the held-out reward."""

import dataclasses
import json
import os
import pathlib

import jax
import numpy as np
import pytest

from easytune_jax import finetune
from easytune_jax.bundles import finetuned
from easytune_jax.bundles import reward as RB
from easytune_jax.bundles.task import load_task
from easytune_jax.core.checkpoint import CheckpointError
from easytune_jax.core.metric_writer import read_metrics
from easytune_jax.core.optim import OptimConfig
from easytune_jax.interop.torch_zip import save_torch
from easytune_jax.models.spm import SPMConfig
from easytune_jax.train import finetune_runner as fr
from tests.test_spm_official import synthetic_state


def _cfg(method, trajectories=3, **kw):
  k = None if method == "easytune" else 2
  ft = finetune.FinetuneConfig(
    method=method, num_steps=4, k=k, m=2, guidance_scale=2.0, optim=OptimConfig(learning_rate=1e-3), **kw
  )
  return finetuned.RunConfig(
    finetune=ft, trajectories=trajectories, batch_size=4, eval_every=2, heldout_size=8, checkpoint_every=2
  )


def test_easytune_run_logs_resumes_and_reloads(tiny_pipeline, tmp_path):
  p = tiny_pipeline
  work = tmp_path / "easytune"
  s1 = fr.run_finetune(_cfg("easytune", 2), str(work), p.generator, p.reward, p.data, progress=False)
  assert s1["trajectories"] == 2 and s1["updates"] == 8  # K = T = 4 updates per trajectory
  # A run recorded before the randomness options existed resumes (they default to its behaviour).
  info = json.loads((work / "finetune.json").read_text())
  del info["run"]["finetune"]["denoiser_dropout"], info["run"]["finetune"]["reward_noise"]
  (work / "finetune.json").write_text(json.dumps(info))
  s2 = fr.run_finetune(
    _cfg("easytune", 4), str(work), p.generator, p.reward, p.data, evaluator_workdir=p.evaluator, progress=False
  )
  assert s2["trajectories"] == 4 and s2["updates"] == 16  # resumed, not restarted
  rows = read_metrics(work)
  train_rows = [r for r in rows if "reward" in r]
  assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
  assert all(f"reward_per_step/{i:03d}" in train_rows[0] for i in range(4))
  evals = [r for r in rows if "heldout_reward" in r]
  assert [r["step"] for r in evals] == [2, 4]
  assert "eval/R_precision_top_1" in evals[-1] and np.isfinite(evals[-1]["eval/FID"])
  # The curve's clock leaves compilation out (reported apart, as JAX measured it) and continues on resume.
  assert 0 < s1["compile_seconds"] <= s2["compile_seconds"] < s2["seconds"] + s1["seconds"]
  assert 0 <= evals[0]["wall_seconds"] < evals[1]["wall_seconds"] and evals[1]["compile_seconds"] > 0
  assert evals[1]["wall_seconds"] + evals[1]["compile_seconds"] <= s1["seconds"] + s2["seconds"]
  info = json.loads((work / "finetune.json").read_text())
  assert info["generator_workdir"] == os.path.relpath(p.generator, work)  # a run moved with its base reloads
  assert info["generator_workdir_absolute"] == str(pathlib.Path(p.generator).absolute())
  # EasyTune raises the held-out reward of the base model on this tiny setup.
  assert s2["final_heldout_reward"] > s2["base_heldout_reward"]
  gen = finetuned.load_finetuned_generator(str(work))
  own = gen.sampler_defaults  # the sampler it was fine-tuned with: what generate / evaluate use by default
  assert (own.num_steps, own.guidance_scale) == (4, 2.0) and str(work) in own.source
  base = load_task(p.generator, p.reward).gen
  diff = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), gen.params, base.params))
  assert max(diff) > 0
  feats, joints = gen.generate(["a person walks forward."], [32], jax.random.key(0), num_steps=4)
  assert feats.shape[0] == 1 and np.all(np.isfinite(joints))
  with pytest.raises(CheckpointError, match="batch_size"):
    fr.run_finetune(
      finetuned.RunConfig(**{**_cfg("easytune", 4).__dict__, "batch_size": 2}),
      str(work),
      p.generator,
      p.reward,
      p.data,
      progress=False,
    )


@pytest.mark.parametrize("method", [m for m in finetune.METHODS if m != "easytune"])
def test_every_baseline_runs_through_the_same_harness(tiny_pipeline, tmp_path, method):
  """Each baseline: one optimizer update per trajectory, finite logged metrics, a checkpoint whose params
  moved away from the base model and reload as a generator that samples."""
  p = tiny_pipeline
  work = tmp_path / method
  cfg = _cfg(method, 2)
  if method == "drtune":
    # DRTune stops the gradient at every denoiser input, and the tiny generator predicts the clean sample, so
    # its loss step i_min gets a gradient only when i_min is one of the K training steps: with K = 2 of T = 4
    # both trajectories here drew i_min outside them (grad_norm 0, params unchanged). K = T trains every step.
    cfg = dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, k=4))
  s = fr.run_finetune(cfg, str(work), p.generator, p.reward, p.data, progress=False)
  assert s["trajectories"] == 2 and s["updates"] == 2 and s["nonfinite_steps"] == []
  assert np.isfinite(s["final_heldout_reward"])
  assert json.loads((work / "summary.json").read_text())["method"] == method
  train_rows = [r for r in read_metrics(work) if "loss" in r]
  assert [r["step"] for r in train_rows] == [1, 2]
  assert all(np.isfinite(v) for r in train_rows for v in r.values()), train_rows
  gen = finetuned.load_finetuned_generator(str(work))
  base = load_task(p.generator, p.reward).gen
  diff = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), gen.params, base.params))
  assert max(diff) > 0, f"{method}: the saved params equal the base model's"
  _, joints = gen.generate(["a person walks forward."], [32], jax.random.key(0), num_steps=4)
  assert np.all(np.isfinite(joints))


@pytest.mark.parametrize("regularizer", ["diffusion", "kl"])
def test_regularizers_get_their_inputs_from_the_harness(tiny_pipeline, tmp_path, regularizer):
  """'diffusion' gets the data batch's latents + condition, 'kl' the base params: the logged loss is
  -reward + reg_weight * regulariser, so loss + reward > 0 once the regulariser is non-zero."""
  p = tiny_pipeline
  s = fr.run_finetune(
    _cfg("easytune", 2, regularizer=regularizer, reg_weight=10.0),
    str(tmp_path / regularizer),
    p.generator,
    p.reward,
    p.data,
    progress=False,
  )
  assert s["updates"] == 8 and np.isfinite(s["final_heldout_reward"])
  rows = [r for r in read_metrics(tmp_path / regularizer) if "reward_per_step/000" in r]
  reg = [r[f"loss_per_step/{i:03d}"] + r[f"reward_per_step/{i:03d}"] for r in rows for i in range(4)]
  if regularizer == "kl":
    # The frozen sampler takes every gradient of a trajectory at the parameters it started from: KL to the base
    # is exactly 0 through the first trajectory (params == base) and positive in the second.
    assert reg[:4] == pytest.approx([0.0] * 4, abs=1e-5) and all(v > 0 for v in reg[4:])
  else:
    assert all(v > 0 for v in reg)


def test_trainable_mask_patterns(tiny_pipeline):
  task = load_task(tiny_pipeline.generator, tiny_pipeline.reward)
  assert finetuned.trainable_mask(task.gen.params, "all") is None
  with pytest.raises(ValueError, match="matches no parameter"):
    finetuned.trainable_mask(task.gen.params, "no_such_layer")
  mask = finetuned.trainable_mask(task.gen.params, "Dense_0")
  leaves = jax.tree.leaves(mask)
  assert any(leaves) and not all(leaves)


def test_best_checkpoint_by_a_val_split_evaluator_metric(tiny_pipeline, tmp_path):
  """best/ starts as the base params and is replaced only when the val-split metric improves (MM-Dist:
  lower is better); its metadata names the metric, the value and the trajectory."""
  p = tiny_pipeline
  with pytest.raises(ValueError, match="RunConfig.best_metric: expected one of .*found 'loss'"):
    finetuned.RunConfig(best_metric="loss")
  cfg = finetuned.RunConfig(**{**_cfg("draft", 3).__dict__, "eval_every": 1, "best_metric": "Matching_score"})
  with pytest.raises(ValueError, match="best_metric='Matching_score' is an evaluator metric: pass evaluator_workdir"):
    fr.run_finetune(cfg, str(tmp_path / "noeval"), p.generator, p.reward, p.data, progress=False)
  work = tmp_path / "best"
  s = fr.run_finetune(cfg, str(work), p.generator, p.reward, p.data, evaluator_workdir=p.evaluator, progress=False)
  best = s["best"]
  logged = {r["step"]: r["val/Matching_score"] for r in read_metrics(work) if "val/Matching_score" in r}
  assert sorted(logged) == [1, 2, 3] and best["metric"] == "Matching_score"
  assert best["value"] <= min(logged.values()) + 1e-9
  base = load_task(p.generator, p.reward).gen.params
  best_params = finetuned.load_finetuned_generator(str(work), which="best").params
  same_as_base = all(bool(np.array_equal(a, b)) for a, b in zip(jax.tree.leaves(best_params), jax.tree.leaves(base)))
  if best["trajectory"] == 0:  # nothing beat the base: best/ holds the base params
    assert same_as_base and best["value"] < min(logged.values())
  else:
    assert not same_as_base and best["value"] == pytest.approx(logged[best["trajectory"]])


def test_composite_reward_logs_every_term_and_needs_no_reward_model_for_physical_terms(tiny_pipeline, tmp_path):
  p = tiny_pipeline
  cfg = dataclasses.replace(_cfg("easytune", 2), reward="spm:1.0,skating:0.5")
  fr.run_finetune(cfg, str(tmp_path / "mix"), p.generator, p.reward, p.data, progress=False)
  ev = [r for r in read_metrics(tmp_path / "mix") if "heldout_reward" in r][-1]
  want = ev["heldout_reward_terms/spm"] + 0.5 * ev["heldout_reward_terms/skating"]
  assert ev["heldout_reward"] == pytest.approx(want, rel=1e-5, abs=1e-6)
  assert ev["heldout_reward_terms/skating"] <= 0
  # A physical-only reward runs without a reward model (no text inputs at all).
  s = fr.run_finetune(
    dataclasses.replace(_cfg("draft", 1), reward="jitter:0.001"),
    str(tmp_path / "phys"),
    p.generator,
    None,
    p.data,
    progress=False,
  )
  assert np.isfinite(s["final_heldout_reward"]) and s["final_heldout_reward"] < 0
  with pytest.raises(ValueError, match="not registered"):
    fr.run_finetune(
      dataclasses.replace(_cfg("draft", 1), reward="skateing"),
      str(tmp_path / "bad"),
      p.generator,
      None,
      p.data,
      progress=False,
    )


def test_official_spm_reward_through_the_harness(tiny_pipeline, tmp_path):
  """A converted official-architecture SPM (stochastic: sampled latents, dropout on) scores through the harness
  with sentence-T5 token embeddings encoded on the fly; the reward needs a key, which the harness supplies."""
  p = tiny_pipeline
  st5 = pathlib.Path(__file__).parent / "fixtures" / "text_encoders" / "st5_safetensors"
  config = SPMConfig.official(dim_motion=263, latent_dim=8, ff_dim=16, num_layers=3, num_heads=2)
  sd = synthetic_state(config, e=32, seed=4)  # the fixture's T5 width is 32
  save_torch(tmp_path / "spm.pth", {"state_dict": sd})
  reward_dir = RB.convert_spm_checkpoint(tmp_path / "spm.pth", tmp_path / "spm", num_heads=2)
  with pytest.raises(ValueError, match="RunConfig.reward_text"):
    load_task(p.generator, str(reward_dir))
  task = load_task(p.generator, str(reward_dir), reward_text=str(st5))
  assert task.reward_needs_rng
  with pytest.raises(ValueError, match="pass rng"):
    task.inputs(["a person walks."], [32])
  s = fr.run_finetune(
    dataclasses.replace(_cfg("easytune", 1), reward_text=str(st5)),
    str(tmp_path / "ft"),
    p.generator,
    str(reward_dir),
    p.data,
    progress=False,
  )
  assert s["updates"] == 4 and np.isfinite(s["final_heldout_reward"])
