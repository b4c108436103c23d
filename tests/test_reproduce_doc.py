"""docs/reproduce_humanml3d.md tells the truth about the command line: one invocation style
(``python -m launch.<name>``), launchers that exist, flags they define and ``--config.<field>`` overrides their
configs accept. Each launcher is imported in a subprocess (absl flags are process-global) that parses every
command of the page written for it, without running anything."""

import json
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reproduce_humanml3d.md"

# Parses each argv like cli.run does (config overrides split off, absl flags, config resolved with its overrides)
# and prints the first error, or "ok".
_PARSER = """
import importlib, json, sys
from easytune_jax import cli
importlib.import_module("launch." + sys.argv[1])
for argv in json.loads(sys.argv[2]):
  try:
    rest, overrides = cli.split_config_overrides(argv)
    cli.FLAGS.unparse_flags()
    cli.FLAGS([sys.argv[1]] + rest)
    if "config" in cli.FLAGS:
      cli.resolve_config(cli.FLAGS.config, overrides, cli._CONFIG["presets"], cli._CONFIG["default"])
    elif overrides:
      raise ValueError("this launcher has no --config")
  except Exception as e:
    print(json.dumps([argv, f"{type(e).__name__}: {e}"]))
    sys.exit(1)
print("ok")
"""


def _commands():
  """[(launcher, argv)] of every `python -m launch.<name>` line of the page's bash blocks (continuations joined;
  shell arithmetic stands for a number)."""
  text = DOC.read_text()
  out = []
  for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
    for line in block.replace("\\\n", " ").splitlines():
      line = re.sub(r"\$\(\((?:[^()]|\([^()]*\))*\)\)", "100", line.strip())
      if line.startswith("python -m launch."):
        words = shlex.split(line)
        out.append((words[2].split(".", 1)[1], words[3:]))
  return out


def test_one_invocation_style_and_no_placeholders():
  text = DOC.read_text()
  assert "python launch/" not in text and "PYTHONPATH" not in text
  assert not re.search(r"=<[A-Za-z_]+>", text), "an open placeholder in a flag value"
  launchers = {name for name, _ in _commands()}
  assert {"convert_official_mld", "generate", "evaluate", "finetune", "train_reward"} <= launchers
  for name in launchers:
    assert (ROOT / "launch" / f"{name}.py").is_file(), name


@pytest.mark.slow  # one subprocess per launcher (~15 s)
def test_every_flag_and_config_field_of_the_page_parses():
  by_launcher = {}
  for name, argv in _commands():
    by_launcher.setdefault(name, []).append(argv)
  for name, argvs in sorted(by_launcher.items()):
    proc = subprocess.run(
      [sys.executable, "-c", _PARSER, name, json.dumps(argvs)], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), (name, proc.stdout[-2000:], proc.stderr[-2000:])
