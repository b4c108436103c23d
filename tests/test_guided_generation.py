"""Reward-guided sampling of trained generators (bundles/guided.py) and from the launchers, on every generator kind
of the tiny pipeline: off is the generator's own sampler bit for bit; a toy reward rises; launch/generate.py and
launch/evaluate.py guide mld, mdm and flow generators."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from easytune_jax.bundles import export
from easytune_jax.bundles.generator import load_generator
from easytune_jax.bundles.guided import GuidedGenerator, sampler_memory, with_guidance
from easytune_jax.bundles.task import load_task
from easytune_jax.configs import base as base_presets
from easytune_jax.core.guidance import GuidanceConfig
from easytune_jax.eval import evaluation
from easytune_jax.pipelines.tiny import TINY_BASE_OVERRIDES
from easytune_jax.train import base

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEXTS = ["a person walks forward", "a person jumps", "someone turns around"]


def toy_reward(x, cond, t):
  """Registry `module:function` reward: pull the first four features of the valid frames towards 1."""
  del t
  m = cond["mask"][..., None].astype(x.dtype)
  return -jnp.sum(jnp.square(x[..., :4] - 1.0) * m, axis=(1, 2)) / jnp.maximum(jnp.sum(m, axis=(1, 2)), 1.0)


TOY = "tests.test_guided_generation:toy_reward"


def test_off_is_the_generator_itself(tiny_pipeline):
  gen = load_generator(tiny_pipeline.generator)
  assert with_guidance(gen, GuidanceConfig()) is gen
  guided = GuidedGenerator(load_task(tiny_pipeline.generator, tiny_pipeline.reward), GuidanceConfig())
  key = jax.random.key(3)
  a = guided.generate(TEXTS, [32, 20, 9], key, num_steps=3)
  b = gen.generate(TEXTS, [32, 20, 9], key, num_steps=3)
  for u, v in zip(a, b):
    np.testing.assert_array_equal(u, v)
  assert guided.max_length == gen.max_length and guided.sampler_defaults == gen.sampler_defaults
  with pytest.raises(ValueError, match="its 'spm' term needs a reward model folder \\(--reward_workdir\\)"):
    with_guidance(gen, GuidanceConfig(scale=1.0))


def test_guidance_raises_the_guiding_reward_and_reports_its_memory(tiny_pipeline):
  gen = load_generator(tiny_pipeline.generator)
  lengths = [32, 20, 9]
  key = jax.random.key(5)
  rule = GuidanceConfig(scale=1.0, reduction="sum", reward_timestep="none")
  guided = with_guidance(gen, rule, reward=TOY)
  plain_task = guided.task

  def toy_score(feats):
    cond, _ = plain_task.inputs(TEXTS, lengths)
    return np.asarray(toy_reward(jnp.asarray(feats), cond, None))

  plain = toy_score(gen.generate(TEXTS, lengths, key, num_steps=3, normalized=True)[0])
  scores = [plain]
  for scale in (0.5, 2.0):
    g = GuidedGenerator(plain_task, dataclasses.replace(rule, scale=scale))
    feats, joints = g.generate(TEXTS, lengths, key, num_steps=3, normalized=True)
    assert np.all(feats[0, 32:] == 0) and np.all(feats[2, 9:] == 0) and np.all(np.isfinite(joints))
    scores.append(toy_score(feats))
  assert np.all(np.diff(np.stack(scores), axis=0) > 0), scores
  # one compiled program per rule, cached on the task: a new scale is a new `weights` argument
  (sampler,) = plain_task.__dict__["_guided_samplers"].values()
  assert sampler._cache_size() == 1
  mem_plain, mem_guided = sampler_memory(gen, 4, 3), sampler_memory(guided, 4, 3)
  assert mem_plain["total"] > 0 and mem_guided["total"] > mem_plain["total"]


@pytest.fixture(scope="module")
def kinds(tiny_pipeline, tmp_path_factory):
  """{kind: generator workdir}: the tiny pipeline's mld and an mdm and a flow generator trained a few steps on its
  data."""
  root = tmp_path_factory.mktemp("kinds")
  out = {"mld": tiny_pipeline.generator}
  overrides = [o for o in TINY_BASE_OVERRIDES if not o.startswith(("vae_steps=", "diffusion_steps="))]
  for kind in ("mdm", "flow"):
    cfg = base.apply_overrides(
      base_presets.get_config(f"tiny_{kind}"), overrides + ["vae_steps=2", "diffusion_steps=2"]
    )
    base.train_and_sample(cfg, str(root / kind), tiny_pipeline.data, 0, progress=False)
    out[kind] = str(root / kind)
  return out


def _launch(script, *args):
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run(
    [sys.executable, str(ROOT / "launch" / script), *args], env=env, capture_output=True, text=True, timeout=900
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc


def test_guidance_from_the_launchers_on_every_generator_kind(tiny_pipeline, kinds, tmp_path):
  names = sorted(kinds)
  guide = ["--config.guidance.scale=0.5", "--config.guidance.reduction=sum", f"--reward_workdir={tiny_pipeline.reward}"]
  _launch(
    "evaluate.py",
    f"--generator_workdir={','.join(kinds[n] for n in names)}",
    f"--names={','.join(names)}",
    f"--evaluator_workdir={tiny_pipeline.evaluator}",
    f"--data_dir={tiny_pipeline.data}",
    f"--out_dir={tmp_path / 'eval'}",
    "--config.quick=true",
    "--config.replications=1",
    "--config.num_steps=2",
    "--config.batch_size=8",
    "--noprogress",
    *guide,
  )
  results = json.loads((tmp_path / "eval" / "eval.json").read_text())["results"]
  assert [r["method"] for r in results] == names
  for r in results:
    g = r["settings"]["guidance"]
    assert (g["scale"], g["reduction"], g["reward"]) == (0.5, "sum", "spm:1")
    assert np.isfinite(r["metrics"]["R_precision_top_1"][0]) and np.isfinite(r["metrics"]["FID"][0])
  assert "reward guidance: scale 0.5" in (tmp_path / "eval" / "eval.md").read_text()
  for kind in ("mdm",):  # launch/generate.py samples through the same GuidedGenerator: one kind (the feature-space one)
    out = tmp_path / f"gen_{kind}"
    proc = _launch(
      "generate.py",
      f"--generator_workdir={kinds[kind]}",
      "--text=a person jumps",
      "--config.num_steps=2",
      "--config.gif=false",
      "--config.bvh=false",
      f"--out_dir={out}",
      "--noprogress",
      *guide,
    )
    man = json.loads((out / "generated.json").read_text())
    assert man["generator"] == "GuidedGenerator" and man["guidance"].startswith("reward guidance: scale 0.5")
    assert man["config"]["guidance"]["scale"] == 0.5 and "reward guidance: scale 0.5" in proc.stderr
    assert np.all(np.isfinite(np.load(out / "000_a_person_jumps_joints.npy")))


def test_library_entry_points_take_the_guidance_config(tiny_pipeline, tmp_path):
  """generate_to_files and evaluate_generator wrap the generator from their configs (and refuse a missing reward)."""
  gen = load_generator(tiny_pipeline.generator)
  cfg = export.GenerateConfig(num_steps=2, gif=False, bvh=False, guidance=GuidanceConfig(scale=0.5), reward=TOY)
  man = export.generate_to_files(gen, TEXTS[:2], tmp_path / "gen", cfg, progress=False)
  assert man["generator"] == "GuidedGenerator"
  with pytest.raises(ValueError, match="needs a reward model folder"):
    export.generate_to_files(gen, TEXTS[:1], tmp_path / "gen2", export.GenerateConfig(guidance=GuidanceConfig(scale=1)))
  with pytest.raises(ValueError, match="needs a reward model folder"):
    evaluation.evaluate_generator(gen, None, None, evaluation.EvaluateConfig(guidance=GuidanceConfig(scale=1)))


def test_quickstart_guidance_stage(tmp_path, monkeypatch, tiny_pipeline):
  """The optional stage 'guidance': guided rows evaluated beside the plain ones, timed and their memory compiled,
  written to <workdir>/guidance/ and report.md; off (the default) it does not run; a rerun skips it."""
  from easytune_jax.pipelines import quickstart
  from tests.test_quickstart_rerun import CFG, _reuse

  for stage, src in (
    ("stage_data", tiny_pipeline.data),
    ("stage_base", tiny_pipeline.generator),
    ("stage_reward", tiny_pipeline.reward),
    ("stage_evaluator", tiny_pipeline.evaluator),
  ):
    monkeypatch.setattr(quickstart, stage, _reuse(src))
  root = tmp_path / "qs"
  plain = quickstart.run_quickstart(CFG, str(root))
  assert "guidance" not in plain and not (root / "guidance").exists()
  cfg = dataclasses.replace(CFG, guidance=GuidanceConfig(scale=100.0))
  first = quickstart.run_quickstart(cfg, str(root))
  assert first["skipped"] == ["data", "base", "reward", "evaluator", "finetune", "evaluate", "media"]
  record = json.loads((root / "guidance" / "guidance.json").read_text())
  assert [r["method"] for r in record["rows"]] == ["base", "base+guidance", "easytune", "easytune+guidance"]
  recorded = {r["method"]: r for r in json.loads((root / "eval" / "eval.json").read_text())["results"]}
  for row in record["rows"]:
    t = row["timing"]
    assert t["seconds_per_batch"] > 0 and len(t["all_s"]) == 10 and t["memory"]["total"] > 0
    if row["method"] in recorded:  # the plain rows are the stage 'evaluate''s own results
      assert row["metrics"] == recorded[row["method"]]["metrics"]
  by = {r["method"]: r for r in record["rows"]}
  assert by["base+guidance"]["timing"]["memory"]["total"] > by["base"]["timing"]["memory"]["total"]
  assert by["base+guidance"]["reward"]["reward"][0] > by["base"]["reward"]["reward"][0]  # the guiding reward rose
  report = pathlib.Path(first["report"]).read_text()
  assert "## Reward-guided sampling (`guidance/guidance.md`)" in report and "| base+guidance |" in report
  for name in ("guidance.json", "guidance.md", "eval.json", "eval.md"):
    assert str(tmp_path) not in (root / "guidance" / name).read_text(), name
  again = quickstart.run_quickstart(cfg, str(root))
  assert "guidance" in again["skipped"]
