"""Presets of launch/quickstart.py: `QuickstartConfig` (pipelines/quickstart.py; the CPU run). 'tiny' is the default
run; 'realign' adds the stage 'guidance': base and EasyTune sampled again with ReAlign's reward guidance
(configs/generate.py `realign_guidance`, lambda = 100: on the quickstart's val split, 100 gave the best FID of
10 / 30 / 100 / 300 / 1000 with a higher R@1; docs/guidance/README.md)."""

from __future__ import annotations

import dataclasses

from easytune_jax.configs import lookup
from easytune_jax.configs.generate import realign_guidance
from easytune_jax.pipelines.quickstart import QuickstartConfig


def realign() -> QuickstartConfig:
  return dataclasses.replace(QuickstartConfig(), guidance=realign_guidance(), guided_rows=("base", "easytune"))


PRESETS = {"tiny": QuickstartConfig, "realign": realign}


def get_config(name: str = "tiny") -> QuickstartConfig:
  return lookup(PRESETS, name, "configs/quickstart.py")
