"""Presets live in easytune_jax/configs/ (values there); config classes hold field definitions and defaults, and a
class default is the tiny CPU setting (WORKSPACE.md, "Configs")."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil

import pytest

import easytune_jax
from easytune_jax import configs
from easytune_jax.bundles import reward as reward_bundle
from easytune_jax.configs import reward as reward_presets
from easytune_jax.models.spm import SPMConfig

# launcher presets module -> the preset equal to its config class's defaults (the CPU setting; the only setting
# where a launcher has one)
DEFAULT_PRESET = {
  "base": "tiny",
  "benchmark": "tiny",
  "evaluate": "default",
  "evaluator": "tiny",
  "export_merged": "default",
  "finetune": "tiny",
  "generate": "default",
  "gpu": "smoke",
  "multiprocess": "default",
  "official_memory": "tiny",
  "profile": "tiny",
  "quickstart": "tiny",
  "reward": "tiny",
  "synthetic": "default",
}

# Classmethods of config classes that are not presets: readers of files, and the layouts of the official
# checkpoints (with their test sizes) that the converters below configs/ check files against.
NOT_PRESETS = {"from_dict", "from_hf"}
LAYOUTS = {
  ("SPMConfig", "official"),
  ("EvaluatorConfig", "official"),
  ("OfficialVAEConfig", "tiny"),
  ("OfficialDenoiserConfig", "tiny"),
}


@pytest.mark.parametrize("module", sorted(DEFAULT_PRESET))
def test_class_defaults_are_the_cpu_preset(module):
  mod = importlib.import_module(f"easytune_jax.configs.{module}")
  cfg = mod.get_config(DEFAULT_PRESET[module])
  assert cfg == type(cfg)(), module


def test_every_launcher_module_is_covered():
  names = {m.name for m in pkgutil.iter_modules(configs.__path__)}
  assert names - set(DEFAULT_PRESET) == {"convert", "text_embeddings"}  # one setting each / no default


def test_library_config_classes_hold_no_presets():
  found = []
  for info in pkgutil.walk_packages(easytune_jax.__path__, "easytune_jax."):
    if info.name.startswith("easytune_jax.configs"):
      continue
    mod = importlib.import_module(info.name)
    if info.name != "easytune_jax.cli":
      assert not callable(getattr(mod, "get_config", None)), f"{info.name}.get_config: presets go to configs/"
    for name, cls in vars(mod).items():
      if not (inspect.isclass(cls) and dataclasses.is_dataclass(cls) and cls.__module__ == info.name):
        continue
      for attr, value in vars(cls).items():
        if isinstance(value, classmethod) and attr not in NOT_PRESETS and (name, attr) not in LAYOUTS:
          found.append(f"{info.name}.{name}.{attr}")
  assert not found, f"preset classmethods in the library (move their values to easytune_jax/configs/): {found}"


def test_official_preset_is_what_a_converted_checkpoint_records():
  official = reward_presets.get_config("official")
  recorded = reward_bundle.RewardTrainConfig(model=SPMConfig.official(), **reward_bundle.OFFICIAL_TRAINING)
  assert official == recorded == reward_presets.get_config("paper")


def test_unknown_preset_names_the_module_and_the_presets():
  from easytune_jax.configs import base, text_embeddings

  with pytest.raises(ValueError, match=r"configs/base.py: config name: expected one of 'tiny', 'tiny_mdm', .*'huge'"):
    base.get_config("huge")
  with pytest.raises(ValueError, match=r"configs/text_embeddings.py: config name: expected one of 'sentence_t5'"):
    text_embeddings.get_config("t5")
