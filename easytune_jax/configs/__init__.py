"""Presets of every launcher's config (`--config=<name>`; cli.define_config_flag): the one place their values live.

One module per launcher; each holds `PRESETS` (name -> function returning the config dataclass, its values
written out here or as a small diff from another preset of the same module) and `get_config(name)`. The
library's config classes hold only field definitions and defaults; a class default is the tiny CPU setting
(what the tests, the tiny pipeline and the quickstart run), so 'tiny' is the class's defaults wherever a launcher
has one; 'paper' / 'official' / 'small' / 'smoke' are written out here (WORKSPACE.md, "Configs"). DDIM steps and
guidance come from `core.sampling` (NUM_STEPS / GUIDANCE_SCALE for the paper, CPU_NUM_STEPS /
CPU_GUIDANCE_SCALE for the CPU), never from a literal here. Library code never imports this package (it is the
layer just under launch/; pyproject.toml's import contracts): code that needs a preset takes the config as an
argument.

A config file is any Python file with `get_config()` returning the launcher's config, e.g.

  from easytune_jax.configs import finetune
  def get_config():
    return dataclasses.replace(finetune.get_config("paper"), trajectories=200)

used as `python -m launch.finetune --config=path/to/file.py --config.seed=1 ...`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


def lookup(presets: Mapping[str, Callable[[], Any]], name: str, where: str) -> Any:
  """`presets[name]()`; an unknown name raises ValueError naming `where` and the presets there are."""
  if name not in presets:
    names = [repr(n) for n in presets]
    expected = " or ".join(names) if len(names) <= 2 else f"one of {', '.join(names)}"
    raise ValueError(f"{where}: config name: expected {expected}, found {name!r}")
  return presets[name]()
