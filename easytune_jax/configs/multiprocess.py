"""Presets of launch/multiprocess.py: `ProcessesConfig` (core/processes.py). 'default' = 2 processes on the
platform's devices; 'cpu' = 2 processes of 2 CPU devices each (one 4-device mesh: what the tests run)."""

from __future__ import annotations

from easytune_jax.configs import lookup
from easytune_jax.core.processes import ProcessesConfig


def cpu() -> ProcessesConfig:
  return ProcessesConfig(num_processes=2, cpu_devices=2)


PRESETS = {"default": ProcessesConfig, "cpu": cpu}


def get_config(name: str = "default") -> ProcessesConfig:
  return lookup(PRESETS, name, "configs/multiprocess.py")
