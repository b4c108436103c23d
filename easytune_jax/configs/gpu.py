"""Presets of launch/gpu_benchmark.py: `GpuBenchConfig` (bench/gpu.py); 'paper' (the default: the official
checkpoints' sizes, one accelerator run under 8 minutes) or 'smoke' (the same code on tiny models, CPU)."""

from __future__ import annotations

from easytune_jax.bench.gpu import GpuBenchConfig, smoke_config

PRESETS = {"paper": GpuBenchConfig, "smoke": smoke_config}


def get_config(name: str = "paper") -> GpuBenchConfig:
  return PRESETS[name]()
