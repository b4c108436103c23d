"""The one config path of every launcher: presets, config files and --config.<field>=<value> overrides parsed
by type hints (core/config.py, cli.py, easytune_jax/configs/)."""

from __future__ import annotations

import dataclasses
import enum
import importlib
import json
import os
import pathlib
import re
import subprocess
import sys
from typing import Literal

import pytest
from absl import app

from easytune_jax import cli, finetune
from easytune_jax.core import config as C
from easytune_jax.core import sampling
from easytune_jax.core.optim import OptimConfig

ROOT = pathlib.Path(__file__).resolve().parents[1]


class Color(enum.Enum):
  RED = "red"
  BLUE = "blue"


@dataclasses.dataclass(frozen=True)
class Inner:
  rate: float = 0.5
  depth: int = 2
  flag: bool = False


@dataclasses.dataclass(frozen=True)
class Outer:
  name: str = "a"
  k: int | None = None
  label: str | None = "x"
  steps: tuple[int, ...] = (10, 50)
  pair: tuple[int, float] = (1, 2.0)
  variants: tuple = ("easytune", "draft")
  bare_ints: tuple = (10, 50, 200)
  mode: Literal["frozen", "online"] = "frozen"
  color: Color = Color.RED
  inner: Inner = Inner()
  optim: OptimConfig = OptimConfig()

  def __post_init__(self):
    if self.k is not None and self.k < 1:
      raise ValueError(f"Outer.k: expected >= 1 or None, found {self.k}")


def test_overrides_of_every_type():
  cfg = C.apply_overrides(
    Outer(),
    [
      "name=b",
      "k=3",
      "label=none",
      "steps=1,2,3",
      "pair=(4, 0.25)",
      "variants=refl",
      "bare_ints=7,8",
      "mode=online",
      "color=blue",
      "inner.rate=1e-3",
      "inner.depth=1e4",
      "inner.flag=yes",
      "optim.learning_rate=2e-5",
      "optim.warmup_steps=0",
    ],
  )
  assert cfg.name == "b" and cfg.k == 3 and cfg.label is None
  assert cfg.steps == (1, 2, 3) and cfg.pair == (4, 0.25) and isinstance(cfg.pair[1], float)
  assert cfg.variants == ("refl",) and cfg.bare_ints == (7, 8) and all(type(t) is int for t in cfg.bare_ints)
  assert cfg.mode == "online" and cfg.color is Color.BLUE
  assert cfg.inner == Inner(rate=1e-3, depth=10000, flag=True)
  assert cfg.optim.learning_rate == 2e-5 and cfg.optim.warmup_steps == 0 and cfg.optim.b1 == 0.9
  # None back to a value, empty tuple, bools both ways, a mapping of overrides
  back = C.apply_overrides(cfg, {"k": "none", "label": "y", "steps": "", "inner.flag": "false"})
  assert back.k is None and back.label == "y" and back.steps == () and back.inner.flag is False
  assert C.apply_overrides(Outer(), ["steps=()"]).steps == ()
  assert C.apply_overrides(Outer(), ["steps=[5]"]).steps == (5,)
  hash(back)  # still a hashable frozen config


@pytest.mark.parametrize(
  "override,patterns",
  [
    ("inner.rat=1", [r"^--config\.inner\.rat: Inner has no field 'rat'; valid fields: rate, depth, flag$"]),
    ("nme=1", [r"Outer has no field 'nme'", r"valid fields: name, k, label, steps, .*inner, optim"]),
    ("k=abc", [r"^--config\.k='abc': expected int \(Outer\.k: int \| None\)$"]),
    ("inner.depth=2.5", [r"--config\.inner\.depth='2\.5': expected int \(Inner\.depth: int\)"]),
    ("inner.flag=maybe", [r"--config\.inner\.flag='maybe': expected a bool", r"Inner\.flag: bool"]),
    ("steps=1,x", [r"--config\.steps\[1\]='x': expected int", r"Outer\.steps: tuple\[int, \.\.\.\]"]),
    ("pair=1,2,3", [r"--config\.pair='1,2,3': expected 2 comma-separated items"]),
    ("mode=fast", [r"--config\.mode='fast': expected one of \['frozen', 'online'\]"]),
    ("color=green", [r"--config\.color='green': expected one of \['RED', 'BLUE'\]"]),
    ("inner=3", [r"--config\.inner: is a config group \(Inner\); set one of its fields \['rate', 'depth', 'flag'\]"]),
    ("name.x=3", [r"--config\.name\.x: Outer\.name is not a nested config"]),
    ("k=0", [r"^Outer\.k: expected >= 1 or None, found 0$"]),  # the config's own check runs
    ("k", [r"override 'k': expected 'key=value'"]),
  ],
)
def test_bad_overrides_name_the_flag_field_and_type(override, patterns):
  with pytest.raises(ValueError) as info:
    C.apply_overrides(Outer(), [override], prefix="--config.")
  for pat in patterns:
    assert __import__("re").search(pat, str(info.value)), (pat, str(info.value))


def test_split_config_overrides_forms():
  rest, over = cli.split_config_overrides(
    ["prog", "--workdir=w", "--config.a.b=1", "--config.c", "none", "--config.flag", "--x", "--config.last"]
  )
  assert rest == ["prog", "--workdir=w", "--x"]
  assert over == [("a.b", "1"), ("c", "none"), ("flag", "true"), ("last", "true")]
  with pytest.raises(app.UsageError, match="expected --config.<field>=<value>"):
    cli.split_config_overrides(["prog", "--config.=3"])
  # after '--' the arguments belong to another command (launch/multiprocess.py runs it): none is taken
  rest, over = cli.split_config_overrides(["prog", "--config.n=2", "--", "python", "--config.trajectories=6"])
  assert rest == ["prog", "--", "python", "--config.trajectories=6"] and over == [("n", "2")]


def test_preset_by_name_and_by_file(tmp_path):
  from easytune_jax.configs import finetune as presets

  cfg = cli.resolve_config(
    "paper", [("finetune.method", "draft"), ("finetune.k", "1"), ("trajectories", "7")], presets.PRESETS, "tiny"
  )
  assert (cfg.finetune.method, cfg.finetune.k, cfg.trajectories) == ("draft", 1, 7)
  assert cfg.finetune.num_steps == sampling.NUM_STEPS and cfg.finetune.guidance_scale == sampling.GUIDANCE_SCALE
  f = tmp_path / "my_run.py"
  f.write_text(
    "import dataclasses\nfrom easytune_jax.configs import finetune\n\n\ndef get_config():\n"
    "  return dataclasses.replace(finetune.get_config('tiny'), trajectories=3, seed=9)\n"
  )
  cfg = cli.resolve_config(str(f), [("finetune.sampler_variant", "online")], presets.PRESETS, "tiny")
  assert (cfg.trajectories, cfg.seed, cfg.finetune.sampler_variant) == (3, 9, "online")
  assert cfg.finetune.num_steps == sampling.CPU_NUM_STEPS
  wrong = tmp_path / "wrong.py"
  wrong.write_text("from easytune_jax.core.optim import OptimConfig\n\n\ndef get_config():\n  return OptimConfig()\n")
  with pytest.raises(app.UsageError, match=r"returned a OptimConfig, expected a RunConfig"):
    cli.resolve_config(str(wrong), [], presets.PRESETS, "tiny")
  with pytest.raises(FileNotFoundError, match="config file does not exist"):
    cli.resolve_config(str(tmp_path / "none.py"), [], presets.PRESETS, "tiny")
  with pytest.raises(app.UsageError, match=r"--config='huge': expected a preset \(tiny, paper, quickstart\)"):
    cli.resolve_config("huge", [], presets.PRESETS, "tiny")


def test_error_messages_name_the_config_flag():
  from easytune_jax.configs import finetune as presets

  cli.resolve_config("tiny", [], presets.PRESETS, "tiny")
  assert cli.flagify("FinetuneConfig.num_steps: expected >= 1") == (
    "--config.finetune.num_steps (FinetuneConfig.num_steps): expected >= 1"
  )
  assert cli.flagify("OptimConfig.learning_rate: expected > 0").startswith(
    "--config.finetune.optim.learning_rate (OptimConfig.learning_rate)"
  )
  assert cli.flagify("RunConfig.reward_text is empty").startswith("--config.reward_text (RunConfig.reward_text)")
  from easytune_jax.configs import base as base_presets

  cli.resolve_config("tiny", [], base_presets.PRESETS, "tiny")
  # OptimConfig sits at two paths of BaseConfig (vae_optim, diffusion_optim): left as it is
  assert cli.flagify("OptimConfig.learning_rate: expected > 0") == "OptimConfig.learning_rate: expected > 0"
  assert cli.flagify("VAEConfig.width: bad").startswith("--config.vae.width (VAEConfig.width)")


@pytest.mark.parametrize(
  "module",
  [
    "finetune",
    "base",
    "reward",
    "evaluator",
    "evaluate",
    "generate",
    "benchmark",
    "official_memory",
    "quickstart",
    "synthetic",
    "convert",
    "text_embeddings",
  ],
)
def test_every_preset_builds_and_roundtrips(module):
  presets = importlib.import_module(f"easytune_jax.configs.{module}")
  tables = [v for k, v in vars(presets).items() if k.endswith("PRESETS")]
  assert tables
  for table in tables:
    for name, make in table.items():
      cfg = make()
      assert dataclasses.is_dataclass(cfg)
      if table is getattr(presets, "PRESETS", None):
        assert presets.get_config(name) == cfg
      assert C.config_from_dict(type(cfg), json.loads(json.dumps(C.config_to_dict(cfg)))) == cfg, name


def test_every_launcher_takes_the_config_flag():
  """No launcher keeps a flag of its own for a field of its config (the config is the one place)."""
  for path in sorted((ROOT / "launch").glob("*.py")):
    if path.name == "__init__.py":
      continue
    text = path.read_text()
    assert "cli.define_config_flag(" in text and "cli.get_config()" in text, path.name
    for flag in ("num_steps", "guidance_scale", "batch_size", "seed", "learning_rate", "lr", "set", "method"):
      assert f'DEFINE_integer("{flag}"' not in text and f'DEFINE_float("{flag}"' not in text, (path.name, flag)
      assert f'DEFINE_multi_string("{flag}"' not in text and f'DEFINE_enum("{flag}"' not in text, (path.name, flag)


def test_sampler_defaults_come_from_core_sampling():
  from easytune_jax.configs import evaluate, generate
  from easytune_jax.configs import finetune as ft_presets

  tiny, paper = ft_presets.get_config("tiny").finetune, ft_presets.get_config("paper").finetune
  assert (tiny.num_steps, tiny.guidance_scale) == (sampling.CPU_NUM_STEPS, sampling.CPU_GUIDANCE_SCALE)
  assert (paper.num_steps, paper.guidance_scale) == (sampling.NUM_STEPS, sampling.GUIDANCE_SCALE) == (50, 7.5)
  assert paper.optim == OptimConfig(learning_rate=1e-5, warmup_steps=1000) and paper.method in finetune.METHODS
  for mod in (evaluate, generate):
    d, p, t = mod.get_config(), mod.get_config("paper"), mod.get_config("tiny")
    assert (d.num_steps, d.guidance_scale) == (None, None)  # the default: each generator's own sampler
    assert (p.num_steps, p.guidance_scale) == (sampling.NUM_STEPS, sampling.GUIDANCE_SCALE)
    assert (t.num_steps, t.guidance_scale) == (sampling.CPU_NUM_STEPS, sampling.CPU_GUIDANCE_SCALE)
  # what a trained base workdir records: the CPU sampler for 'tiny', MLD's for 'small' / 'paper'
  from easytune_jax.configs import base as base_presets

  for name, want in (("tiny", (10, 2.5)), ("tiny_mdm", (10, 2.5)), ("small", (50, 7.5)), ("paper", (50, 7.5))):
    s = base_presets.get_config(name).sampler
    assert (s.num_steps, s.guidance_scale) == want, name


# Flags every launcher shares are defined by cli.define_flags only (core/parallel.define_flags through it).
COMMON = ("verbose", "progress", "on_missing", "drop_nonfinite", "mesh", "coordinator_address", "distributed")


def test_common_flags_are_defined_in_one_place():
  """Each launcher calls cli.define_flags (the only definition of the shared flags), asks for --progress when it
  shows progress and for --mesh when it builds a mesh, and passes FLAGS.progress to every progress bar."""
  for path in sorted((ROOT / "launch").glob("*.py")):
    if path.name == "__init__.py":
      continue
    text = path.read_text()
    calls = re.findall(r"cli\.define_flags\(([^)]*)\)", text)
    assert len(calls) == 1, (path.name, calls)
    assert re.search(rf"DEFINE_\w+\(\s*\"({'|'.join(COMMON)})\"", text) is None, path.name
    assert "parallel.define_flags(" not in text, path.name
    args = dict(a.strip().split("=") for a in calls[0].split(","))
    assert set(args) >= {"dataset", "progress"}, (path.name, args)
    assert (args["progress"] == "True") == ("FLAGS.progress" in text), path.name
    assert (args.get("mesh") == "True") == ("parallel.setup_from_flags()" in text), path.name
    rest = text.replace(f"cli.define_flags({calls[0]})", "")
    assert re.search(r"progress=(True|False)", rest) is None, f"{path.name}: progress=FLAGS.progress, not a constant"
  text = (ROOT / "easytune_jax" / "cli.py").read_text()
  assert 'DEFINE_bool("progress"' in text and "parallel.define_flags()" in text


def test_make_synthetic_launcher_end_to_end(tmp_path):
  """The cheapest launcher through the whole path: preset + overrides of int, float and bool fields."""
  env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
  out = tmp_path / "synth"
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.make_synthetic",
      f"--out_dir={out}",
      "--config=default",
      "--config.num_motions=6",
      "--config.seed",
      "3",
      "--config.max_len=60",
      "--config.mirror",
      "--config.subclip_fraction=0",
    ],
    cwd=str(ROOT),
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  meta = json.loads((out / "metadata.json").read_text())
  motions = meta["motions"]
  assert len(motions) == 12 and sum(i.startswith("M") for i in motions) == 6  # 6 + their mirrored copies
  assert meta["seed"] == 3 and max(m["length"] for m in motions.values()) <= 60
  assert not any("subclip_captions" in m for m in motions.values())  # subclip_fraction=0 (default 0.1)
  bad = subprocess.run(
    [sys.executable, "-m", "launch.make_synthetic", f"--out_dir={tmp_path / 'bad'}", "--config.num_motion=6"],
    cwd=str(ROOT),
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert bad.returncode == 1 and not (tmp_path / "bad").exists()
  assert (
    bad.stderr.strip()
    .splitlines()[-1]
    .startswith(
      "error: --config.num_motion: SyntheticConfig has no field 'num_motion'; valid fields: num_motions, seed"
    )
  )
