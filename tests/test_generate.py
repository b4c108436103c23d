"""Text -> motion files (bundles/export.py, launch/generate.py) on the tiny trained generator and on a converted
official MLD checkpoint (random weights, sentence-T5 fixture encoding the captions)."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from easytune_jax.bundles import export
from easytune_jax.bundles import official_generator as og
from easytune_jax.bundles.generator import load_generator
from easytune_jax.data import skeleton as sk
from easytune_jax.models.t5_encoder import load_sentence_t5
from tests import test_bvh
from tests import test_mld_official as tmo
from easytune_jax.core.torch_zip import save_torch

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
  # batch 1 (the third caption, padded to 2 rows) equals a direct call with fold_in(key, 1)
  feats, joints = gen.generate(texts[2:] * 2, [9, 9], jax.random.fold_in(jax.random.PRNGKey(3), 1), num_steps=2)
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
      "--config=tiny",
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
  j = np.load(out / "001_a_person_jumps_joints.npy")
  assert j.shape == (20, 22, 3) and np.all(np.isfinite(j))
  assert sorted(p.suffix for p in out.glob("001_*")) == [".bvh", ".npy", ".npy"]
  check_bvh(out / "001_a_person_jumps.bvh", j.astype(np.float64), man["motions"][1]["bvh_max_error_m"])
