"""The step profile (bench/profile.py): config checks, cost analysis and timing of a compiled function, the
table; one tiny end-to-end profile of two parts on the official tiny models (slow)."""

import jax.numpy as jnp
import pytest

from easytune_jax.bench import profile


def test_config():
  assert profile.ProfileConfig(size="paper").max_length == 196
  assert profile.ProfileConfig().max_length == 32
  with pytest.raises(ValueError, match="parts"):
    profile.ProfileConfig(parts=("nope",))
  with pytest.raises(ValueError, match="size"):
    profile.ProfileConfig(size="huge")


def test_measure_reports_flops_and_times():
  a = jnp.ones((64, 64))
  rec = profile.measure(lambda x: x @ x, (a,), repeats=2)
  assert rec["flops"] >= 2 * 64**3 * 0.9 and rec["bytes_accessed"] > 0
  assert 0 < rec["seconds_min"] <= rec["seconds_median"] and len(rec["seconds"]) == 2 and rec["compile_seconds"] > 0


def test_table():
  part = lambda f, s: {"flops": f, "bytes_accessed": 1e9, "seconds_min": s, "seconds_median": s, "compile_seconds": 1.0}
  res = {
    "config": {"size": "tiny", "batch_size": 2, "max_length": 8, "num_steps": 4},
    "parts": {
      "denoiser": part(1e9, 1.0),
      "decode": part(3e9, 1.0),
      "reward": part(0.0, 2.0),
      "optimizer": part(0.0, 0.0),
      "step": part(4e9, 4.0),
    },
  }
  t = profile.table(res)
  assert "| decode | 3 | 1 | 75.0% | 1.0000 | 1.0000 | 25.0% | 1.0 |" in t
  assert "| step | 4 | 1 | - |" in t and "4.00 GFLOP" in t


@pytest.mark.slow
def test_tiny_profile_end_to_end(tmp_path):
  cfg = profile.ProfileConfig(
    size="tiny", batch_size=2, max_length=8, num_steps=4, repeats=1, parts=("denoiser", "optimizer")
  )
  res = profile.run_profile(cfg, str(tmp_path))
  assert set(res["parts"]) == {"denoiser", "optimizer"}
  assert all(r["flops"] > 0 and r["seconds_min"] > 0 for r in res["parts"].values())
  assert (tmp_path / "profile_tiny.json").is_file() and "| denoiser |" in (tmp_path / "profile_tiny.md").read_text()
