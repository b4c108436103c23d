"""The accelerator benchmark script (launch/gpu_benchmark.py, bench/gpu.py) end to end with --config=smoke on the CPU:
the same code paths on tiny official models; the JSON it writes has sane values."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from easytune_jax.bench import gpu
from easytune_jax.configs import gpu as presets

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_configs():
  c = presets.get_config("paper")
  assert (c.max_length, c.memory_steps, c.speed_steps) == (196, (10, 50, 200), 50)
  assert set(c.speed_variants) == {"easytune", "easytune+chunk10", "draft-1", "draft-T", "refl"}
  assert presets.get_config("smoke") == gpu.GpuBenchConfig() and gpu.GpuBenchConfig().max_length == 8
  with pytest.raises(ValueError, match="seconds"):
    gpu.GpuBenchConfig(seconds=0)


@pytest.mark.slow
def test_smoke_run_writes_sane_json(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [sys.executable, "launch/gpu_benchmark.py", "--config=smoke", f"--out_dir={tmp_path}"],
    cwd=str(ROOT),
    env=env,
    capture_output=True,
    text=True,
    timeout=1500,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  res = json.loads((tmp_path / "benchmark.json").read_text())
  assert res["skipped"] == [] and res["gpu_config"]["size"] == "tiny"
  mem = {(r["variant"], r["T"]): r for r in res["records"] if "memory" in r}
  assert set(mem) == {("EasyTune", 2), ("EasyTune", 4)}
  assert all(r["memory"]["total"] > 0 and r["compile_seconds"] > 0 for r in mem.values())
  e2, e4 = mem[("EasyTune", 2)]["memory"]["total"], mem[("EasyTune", 4)]["memory"]["total"]
  assert abs(e4 / e2 - 1) < 0.05  # EasyTune's memory is flat in T
  sp = {r["variant"]: r["speed"] for r in res["records"] if "speed" in r}
  assert set(sp) == {"EasyTune+chunk2"}
  s = sp["EasyTune+chunk2"]
  assert s["T"] == 2 and s["seconds_per_trajectory"] > 0 and s["train_seconds"] > 0 and s["trajectories"] >= 1
  assert s["updates_per_trajectory"] == 2
  assert "Compiled update memory" in (tmp_path / "benchmark.md").read_text()
