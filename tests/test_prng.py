"""The CPU threefry lowering switch (core/prng.py): same random bits, straight-line vs loop in the program; an
explicit opt-in (the launchers, through cli.run), never a side effect of importing the library."""

import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from easytune_jax.core import prng

ROOT = pathlib.Path(__file__).resolve().parents[1]

# What the subprocesses read: the CPU lowering entry JAX holds for threefry2x32_p, and whether it is the
# straight-line rule.
_PROBE = """
from jax._src.interpreters import mlir
from jax._src.random import threefry2x32 as _t

def cpu_entry():
  return mlir._platform_specific_lowerings["cpu"].get(_t.threefry2x32_p)

def generic_entry():
  return mlir._lowerings.get(_t.threefry2x32_p)

def unrolled():
  return cpu_entry().rule is _t._threefry2x32_lowering_rule
"""


def _draw(key):
  return jax.random.bits(key, (3, 50, 7)), jax.random.bernoulli(jax.random.fold_in(key, 1), 0.9, (4, 33))


@pytest.fixture
def restore_jax():
  """Puts back the exact CPU lowering entry this process had (the suite runs with JAX's own)."""
  from jax._src.interpreters import mlir
  from jax._src.random import threefry2x32 as t

  table = mlir._platform_specific_lowerings["cpu"]
  before = table.get(t.threefry2x32_p)
  yield
  table[t.threefry2x32_p] = before


def _run(code: str, env_update: dict) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if k != prng.ENV}
  env.update(env_update, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
  return subprocess.run(
    [sys.executable, "-c", _PROBE + textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=300
  )


def test_unrolled_and_rolled_lowerings_give_the_same_bits(restore_jax):
  key = jax.random.key(3)
  out, hlo = {}, {}
  for kind in ("rolled", "unrolled"):
    assert prng.set_cpu_threefry_lowering(kind)
    fn = jax.jit(lambda k: _draw(k))  # a fresh function: traced and lowered under `kind`
    hlo[kind] = fn.lower(key).as_text()
    out[kind] = jax.device_get(fn(key))
  assert "while" in hlo["rolled"] and "while" not in hlo["unrolled"]
  for a, b in zip(out["rolled"], out["unrolled"]):
    np.testing.assert_array_equal(a, b)
  # The bits are JAX's own threefry bits (the eager default path gives the same).
  np.testing.assert_array_equal(out["unrolled"][0], np.asarray(jax.random.bits(key, (3, 50, 7))))
  assert out["unrolled"][1].dtype == np.bool_ and 0.8 < out["unrolled"][1].mean() < 1.0


def test_bad_kind_and_env(monkeypatch, restore_jax):
  with pytest.raises(ValueError, match="expected 'unrolled' or 'rolled', found 'fast'"):
    prng.set_cpu_threefry_lowering("fast")
  monkeypatch.setenv(prng.ENV, "rolled")
  assert prng.use_fast_cpu_threefry()
  assert "while" in jax.jit(lambda k: jax.random.bits(k, (8,))).lower(jax.random.key(0)).as_text()
  monkeypatch.setenv(prng.ENV, "unrolled")
  assert prng.use_fast_cpu_threefry()
  assert "while" not in jax.jit(lambda k: jax.random.bits(k, (8,), jnp.uint32)).lower(jax.random.key(0)).as_text()
  monkeypatch.delenv(prng.ENV)
  assert prng.use_fast_cpu_threefry()  # unset: unrolled
  assert "while" not in jax.jit(lambda k: jax.random.bits(k, (9,), jnp.uint32)).lower(jax.random.key(0)).as_text()
  monkeypatch.setenv(prng.ENV, "fast")
  with pytest.raises(ValueError, match="EASYTUNE_JAX_CPU_THREEFRY='fast': expected 'unrolled' or 'rolled'"):
    prng.use_fast_cpu_threefry()


def test_a_jax_without_the_rules_warns_and_changes_nothing(monkeypatch, restore_jax):
  from jax._src.interpreters import mlir
  from jax._src.random import threefry2x32 as t

  before = mlir._platform_specific_lowerings["cpu"].get(t.threefry2x32_p)
  monkeypatch.setattr(prng, "_internals", lambda: None)  # as on a JAX whose private modules moved
  with pytest.warns(RuntimeWarning, match="threefry keeps JAX's default CPU lowering"):
    assert prng.use_fast_cpu_threefry() is False
  assert mlir._platform_specific_lowerings["cpu"].get(t.threefry2x32_p) is before


def test_importing_the_library_leaves_jax_as_it_was():
  """A fresh interpreter: the CPU and generic lowering entries of threefry2x32_p and every jax.config value are the
  same objects / values after importing easytune_jax and all its modules (finetune, train, bundles, models, ...)
  as before, with EASYTUNE_JAX_CPU_THREEFRY unset (the old import-time switch would have applied 'unrolled')."""
  proc = _run(
    """
    import importlib, pkgutil
    import jax
    before = (cpu_entry(), generic_entry(), dict(jax.config.values))
    assert before[0] is not None and not unrolled()
    import easytune_jax
    names = [m.name for m in pkgutil.walk_packages(easytune_jax.__path__, "easytune_jax.")]
    for main in ("finetune", "train", "bundles", "models", "pipelines", "bench", "cli"):
      assert f"easytune_jax.{main}" in names, main
    for name in names:
      importlib.import_module(name)
    assert cpu_entry() is before[0], "importing easytune_jax replaced JAX's CPU lowering of threefry2x32"
    assert generic_entry() is before[1]
    changed = {k for k in set(before[2]) | set(jax.config.values) if before[2].get(k) != jax.config.values.get(k)}
    assert not changed, changed
    print("untouched", len(names))
    """,
    {},
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "untouched" in proc.stdout


@pytest.mark.parametrize("env,expect", [({}, True), ({prng.ENV: "rolled"}, False)])
def test_launchers_opt_in_through_cli_run(env, expect):
  """Every launch/*.py ends with cli.run (tests/test_config.py), which switches to the straight-line lowering before
  the launcher's main, unless EASYTUNE_JAX_CPU_THREEFRY=rolled."""
  proc = _run(
    """
    from easytune_jax import cli

    def main(argv):
      print("unrolled in main:", unrolled())

    assert not unrolled()
    cli.run(main)
    """,
    env,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"unrolled in main: {expect}" in proc.stdout
