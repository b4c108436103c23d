"""Presets of launch/benchmark.py: `BenchmarkConfig` (bench/config.py).

'tiny' = `BenchmarkConfig()`: CPU, T in (10, 50, 200) for memory, speed/alignment at T = 10, 20 s per method.
'paper': GPU at MLD sizes, T in (10, 50, 200) for memory, speed/alignment at T = NUM_STEPS (the paper's DRaFT-50
comparison), batch 32 (64 with CFG's doubled denoiser batch), 10 minutes per method.
Both keep grad_chunk = 1 (EasyTune's sequential path): on the 2-core CPU the batched path was slower at every C
measured (tiny, T = 50: 0.88 s per trajectory sequential, 1.18-2.17 s for C in 2..50; docs/benchmark/grad_chunk_tiny)
and its compiled temporaries grow by about one one-step gradient's per unit of C; on an accelerator measure
'+chunk<C>' variants first (`--config.grad_chunk` / '+chunk<C>').
"""

from __future__ import annotations

from easytune_jax.bench.config import BenchmarkConfig
from easytune_jax.configs import lookup
from easytune_jax.core import sampling


def paper() -> BenchmarkConfig:
  return BenchmarkConfig(
    speed_steps=sampling.NUM_STEPS,
    batch_size=32,
    guidance_scale=sampling.GUIDANCE_SCALE,
    learning_rate=1e-5,
    warmup_steps=0,
    speed_repeats=5,
    budget_seconds=600.0,
    curve_points=5,
    heldout_size=64,
    eval_batch_size=32,
  )


PRESETS = {"tiny": BenchmarkConfig, "paper": paper}


def get_config(name: str = "tiny") -> BenchmarkConfig:
  return lookup(PRESETS, name, "configs/benchmark.py")
