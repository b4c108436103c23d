"""Presets of launch/benchmark.py: `BenchmarkConfig` (bench/config.py)."""

from __future__ import annotations

import functools

from easytune_jax.bench.config import BenchmarkConfig
from easytune_jax.bench.config import get_config as _get

PRESETS = {name: functools.partial(_get, name) for name in ("tiny", "paper")}


def get_config(name: str = "tiny") -> BenchmarkConfig:
  return PRESETS[name]()
