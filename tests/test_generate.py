"""Text -> motion files (bundles/export.py, launch/generate.py) on the tiny trained generator and on a converted
official MLD checkpoint (random weights, sentence-T5 fixture encoding the captions)."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from easytune_jax.bundles import export
from easytune_jax.bundles import generator as G
from easytune_jax.bundles import official_generator as og
from easytune_jax.bundles.generator import load_generator
from easytune_jax.core import sampling
from easytune_jax.data import skeleton as sk
from easytune_jax.interop.sentence_t5 import load_sentence_t5
from easytune_jax.interop.torch_zip import save_torch
from tests import test_bvh
from tests import test_mld_official as tmo

ROOT = pathlib.Path(__file__).resolve().parents[1]


def check_bvh(path, joints, reported_error):
  """The BVH parsed by the test's own reader reproduces `joints` to the writer's reported error (+ text rounding)."""
  parsed = test_bvh.parse_bvh(pathlib.Path(path).read_text())
  order = [parsed["names"].index(n) for n in sk.HML_JOINT_NAMES]
  back = test_bvh.fk_bvh(parsed)[:, order] / 100.0
  err = float(np.max(np.abs(back - joints)))
  assert err <= reported_error + 1e-6
  return err


def test_generate_to_files_tiny(tiny_pipeline, tmp_path):
  gen = load_generator(tiny_pipeline.generator)
  texts = ["a person walks forward and waves", "a person jumps", "someone turns around"]
  cfg = export.GenerateConfig(num_steps=2, batch_size=2, seed=3, mp4=True)
  man = export.generate_to_files(gen, texts, tmp_path, cfg, lengths=[32, 20, 9], progress=False)
  assert [m["text"] for m in man["motions"]] == texts and len(man["timing"]["sample_s"]) == 2
  assert json.loads((tmp_path / "generated.json").read_text()) == man
  first = man["motions"][0]
  assert first["files"] == [
    "000_a_person_walks_forward_and_waves_features.npy",
    "000_a_person_walks_forward_and_waves_joints.npy",
    "000_a_person_walks_forward_and_waves.gif",
    "000_a_person_walks_forward_and_waves.bvh",
  ]
  assert any("ffmpeg" in n for n in man["notes"]) or "000_a_person_walks_forward_and_waves.mp4" in os.listdir(tmp_path)
  # batch 1 (the third caption, padded to 2 rows) equals a direct call with fold_in(key, 1), at the generator's own
  # guidance scale (the config sets none)
  w = gen.sampler_defaults.guidance_scale
  assert man["sampler"]["guidance_scale"] == w
  key = jax.random.fold_in(jax.random.PRNGKey(3), 1)
  feats, joints = gen.generate(texts[2:] * 2, [9, 9], key, guidance_scale=w, num_steps=2)
  f = np.load(tmp_path / "002_someone_turns_around_features.npy")
  j = np.load(tmp_path / "002_someone_turns_around_joints.npy")
  assert f.shape == (9, 263) and j.shape == (9, 22, 3)
  np.testing.assert_allclose(f, feats[0, :9], atol=1e-5)
  np.testing.assert_allclose(j, joints[0, :9], atol=1e-5)
  for m in man["motions"]:
    stem = tmp_path / m["files"][0].replace("_features.npy", "")
    check_bvh(f"{stem}.bvh", np.load(f"{stem}_joints.npy").astype(np.float64), m["bvh_max_error_m"])
  with pytest.raises(ValueError, match="max_length"):
    export.generate_to_files(gen, texts[:1], tmp_path / "x", cfg, lengths=33, progress=False)


def test_generator_sampler_is_the_default_and_the_animation_has_the_asked_size(tiny_pipeline, tmp_path, caplog):
  """The tiny trained generator records its CPU sampler; generate_to_files samples with it unless the config sets
  a value, writes what it used (and where it came from) to generated.json, and draws GIFs of animation_size px."""
  from PIL import Image

  gen = load_generator(tiny_pipeline.generator)
  own = gen.sampler_defaults
  assert (own.num_steps, own.guidance_scale) == (sampling.CPU_NUM_STEPS, sampling.CPU_GUIDANCE_SCALE)
  assert tiny_pipeline.generator in own.source and "BaseConfig.sampler" in own.source
  choice = G.resolve_sampler(gen)
  assert (choice.num_steps, choice.guidance_scale) == (own.num_steps, own.guidance_scale)
  assert choice.num_steps_from == choice.guidance_scale_from == own.source
  # a workdir that records no sampler (older ones): the documented default, with a warning
  with caplog.at_level("WARNING", logger="absl"):
    old = G.resolve_sampler(dataclasses.replace(gen, sampler_defaults=None), guidance_scale=1.5)
  assert (old.num_steps, old.guidance_scale) == (sampling.NUM_STEPS, 1.5)
  assert old.num_steps_from == G.DEFAULT_SOURCE and old.guidance_scale_from == G.OVERRIDE_SOURCE
  assert "records no sampler settings" in caplog.text
  assert G.recorded_sampler({"eta": 0.0}, 3, 1.0, "x") is None  # a saved config without the values

  # num_steps set (the compiled sampler of test_generate_to_files_tiny), guidance the generator's own
  cfg = export.GenerateConfig(num_steps=2, batch_size=2, length=8, bvh=False, animation_size=200)
  man = export.generate_to_files(gen, ["a person jumps"], tmp_path, cfg, progress=False)
  assert man["config"]["guidance_scale"] is None and man["config"]["num_steps"] == 2
  assert man["sampler"] == {
    "num_steps": 2,
    "guidance_scale": sampling.CPU_GUIDANCE_SCALE,
    "num_steps_from": G.OVERRIDE_SOURCE,
    "guidance_scale_from": own.source,
  }
  assert json.loads((tmp_path / "generated.json").read_text())["sampler"] == man["sampler"]
  with Image.open(tmp_path / "000_a_person_jumps.gif") as im:
    assert im.size == (200, 200)
  assert export.GenerateConfig().animation_size >= 320  # the report's panels are 320 px
  with pytest.raises(ValueError, match=r"^GenerateConfig\.animation_size: expected 64\.\.4096 pixels, found 10$"):
    export.GenerateConfig(animation_size=10)


def test_captions_are_checked():
  with pytest.raises(ValueError, match=r"^texts\[1\]: expected a caption, found an empty caption$"):
    export.check_captions(["a person jumps", ""])
  with pytest.raises(ValueError, match=r"^texts\[0\]: expected a caption, found a blank caption ' \\t'$"):
    export.check_captions([" \t"])
  assert export.check_captions(("a", " b ")) == ["a", " b "]


@pytest.mark.slow  # a launcher subprocess compiling the generator
def test_launch_generate_official_sentence_t5(tmp_path):
  """launch/generate.py on a converted official checkpoint whose captions go through sentence-T5."""
  st5 = load_sentence_t5(tmo.ST5_DIR)
  dcfg = tmo.dataclass_replace(tmo.DCFG, text_dim=st5.config.sentence_dim)
  ckpt = tmp_path / "mld.ckpt"
  save_torch(ckpt, {"state_dict": tmo.random_state(tmo.VCFG, dcfg, seed=5)})
  rng = np.random.default_rng(6)
  og.write_official_generator(
    ckpt,
    tmp_path / "mld",
    rng.standard_normal(263).astype(np.float32),
    rng.uniform(0.5, 1.5, 263).astype(np.float32),
    sentence_t5=tmo.ST5_DIR,
    num_heads=2,
    max_length=24,
  )
  (tmp_path / "prompts.txt").write_text("a person jumps\n\n  someone sits down  \n")
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
  out = tmp_path / "out"
  proc = subprocess.run(
    [
      sys.executable,
      str(ROOT / "launch" / "generate.py"),
      f"--generator_workdir={tmp_path / 'mld'}",
      "--text=a person walks forward and waves",
      f"--text_file={tmp_path / 'prompts.txt'}",
      "--config.num_steps=2",
      "--config.length=20",
      "--config.batch_size=4",
      "--config.seed=1",
      f"--out_dir={out}",
      "--config.gif=false",
      "--noprogress",
    ],
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  man = json.loads((out / "generated.json").read_text())
  assert [m["text"] for m in man["motions"]] == [
    "a person walks forward and waves",
    "a person jumps",
    "someone sits down",
  ]
  assert man["generator"] == "OfficialMLDGenerator"
  # num_steps from the command line, guidance scale the official MLD's own (the paper's 7.5)
  assert (man["sampler"]["num_steps"], man["sampler"]["guidance_scale"]) == (2, 7.5)
  assert man["sampler"]["num_steps_from"] == "set in the config"
  assert "official MLD" in man["sampler"]["guidance_scale_from"]
  assert "sampler: 2 DDIM steps (set in the config), guidance scale 7.5" in proc.stderr
  j = np.load(out / "001_a_person_jumps_joints.npy")
  assert j.shape == (20, 22, 3) and np.all(np.isfinite(j))
  assert sorted(p.suffix for p in out.glob("001_*")) == [".bvh", ".npy", ".npy"]
  check_bvh(out / "001_a_person_jumps.bvh", j.astype(np.float64), man["motions"][1]["bvh_max_error_m"])
