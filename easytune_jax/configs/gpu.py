"""Presets of launch/gpu_benchmark.py: `GpuBenchConfig` (bench/gpu.py).

'paper' (the launcher's default: the official checkpoints' sizes, one accelerator run under 8 minutes: memory of
EasyTune / DRaFT-1 / DRaFT-T at T in (10, 50, 200), the T = NUM_STEPS speed run of five variants for 45 s each) or
'smoke' = `GpuBenchConfig()` (the same code on tiny models, CPU).
"""

from __future__ import annotations

from easytune_jax.bench.gpu import GpuBenchConfig
from easytune_jax.configs import lookup
from easytune_jax.core import sampling


def paper() -> GpuBenchConfig:
  return GpuBenchConfig(
    size="paper",
    memory_variants=("easytune", "draft-1", "draft-T"),
    memory_steps=(10, 50, 200),
    speed_variants=("easytune", "easytune+chunk10", "draft-1", "draft-T", "refl"),
    speed_steps=sampling.NUM_STEPS,
    seconds=45.0,
    batch_size=32,
    reward_text_length=32,
    guidance_scale=sampling.GUIDANCE_SCALE,
    learning_rate=1e-5,
    speed_repeats=3,
    curve_points=2,
    heldout_size=32,
    max_seconds=450.0,
  )


PRESETS = {"paper": paper, "smoke": GpuBenchConfig}


def get_config(name: str = "paper") -> GpuBenchConfig:
  return lookup(PRESETS, name, "configs/gpu.py")
