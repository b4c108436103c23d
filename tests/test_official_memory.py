"""The official-model memory benchmark (bench/official_memory.py): paper sizes of the random official
checkpoints (shapes only) and one tiny compile through the whole path (write, convert, load_task, compile)."""

import json

import numpy as np
import pytest

from easytune_jax.bench import official_memory as om
from easytune_jax.interop import mld_convert, spm_convert


def test_paper_sizes_are_the_official_parameter_counts():
  vae, den, spm, e = om.model_configs("paper")
  shapes = mld_convert.expected_state_shapes(vae, den)
  count = lambda prefix: sum(int(np.prod(s)) for k, s in shapes.items() if k.startswith(prefix))
  assert (count("vae."), count("denoiser.")) == (18_032_135, 8_221_184)
  spm_shapes = spm_convert.official_state_shapes(spm, e)
  # the shared final LayerNorm is stored under both encoders: counted once
  assert sum(int(np.prod(s)) for k, s in spm_shapes.items() if not k.startswith("text_encoder.norm.")) == 26_515_975


@pytest.mark.slow  # writes, converts and compiles the official models (~5x the module's other test)
def test_tiny_official_memory_compiles_through_the_finetuning_path(tmp_path):
  cfg = om.OfficialMemoryConfig(
    size="tiny", variants=("easytune",), steps=(2,), batch_size=2, max_length=8, reward_text_length=4
  )
  out = tmp_path / "out"
  result = om.run_official_memory(cfg, str(out), previous=None, work_dir=str(tmp_path / "work"))
  assert result["reward_needs_rng"]
  (rec,) = result["records"]
  assert (rec["variant"], rec["T"], rec["K"]) == ("EasyTune", 2, 2)
  mem, samp = rec["memory"], rec["sampling_memory"]
  assert mem["total"] == mem["temp"] + mem["argument"] + mem["output"] - mem["alias"] and mem["temp"] > 0
  assert rec["additional_memory"]["total"] == mem["total"] - samp["total"]
  # the converted checkpoints hold every official tensor (the shared SPM norm counted once)
  vae, den, spm, e = om.model_configs("tiny")
  assert result["param_counts"]["official_mld_denoiser"] == sum(
    int(np.prod(s)) for k, s in mld_convert.expected_state_shapes(vae, den).items() if k.startswith("denoiser.")
  )
  saved = json.loads((out / "benchmark.json").read_text())
  assert saved["records"][0]["memory"] == mem
  assert "| EasyTune | 2 | 2 |" in (out / "README.md").read_text()
