"""Shared test fixtures: the real reference data in tests/data/; the compilation cache."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# XLA compilations dominate the suite's time, and many tests (and the launchers they run in subprocesses) compile
# the same programs from fresh closures. JAX's persistent compilation cache keys a compiled program by its HLO,
# so every repeat after the first is a disk read, within one run and across runs. Set before jax is imported
# (the test modules import it after this file) and inherited by subprocesses through the environment. A
# JAX_COMPILATION_CACHE_DIR already set by the user wins; EASYTUNE_TEST_JAX_CACHE=0 turns the cache off.
if os.environ.get("EASYTUNE_TEST_JAX_CACHE", "") != "0":
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(ROOT / ".cache" / "jax_tests"))
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
# Cold, the suite is mostly XLA compiling small programs; the tests check numbers, not speed, so they compile with
# LLVM's optimisation level 0 (about a third less compile time, same results to the tests' tolerances) and, at
# that level, with XLA's LLVM IR fusion emitters instead of its MLIR ones (the default since jaxlib 0.5.3): the
# cold fast tier 194 -> 115 s and the whole suite 25:57 -> 13:32, the same 450 passes. Not a tip for users: at
# XLA's default level the paper-size EasyTune step compiled slower with it (73-84 s against 40-47 s) and ran no
# faster. XLA aborts on a flag it does not know, so a one-second subprocess asks this jaxlib first. Subprocesses
# and xdist workers inherit XLA_FLAGS; EASYTUNE_TEST_XLA_FAST_COMPILE=0, or an --xla_backend_optimization_level
# of the user's own, keeps XLA's defaults.
_FUSION_EMITTERS_OFF = "--xla_cpu_use_fusion_emitters=false"


def _xla_accepts(flag: str) -> bool:
  """Whether this jaxlib starts its CPU backend with `flag` in XLA_FLAGS (XLA aborts on unknown flags)."""
  env = {**os.environ, "XLA_FLAGS": flag, "JAX_PLATFORMS": "cpu"}
  probe = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], env=env, capture_output=True)
  return probe.returncode == 0


_XLA_FLAGS = os.environ.get("XLA_FLAGS", "")
if os.environ.get("EASYTUNE_TEST_XLA_FAST_COMPILE", "") != "0" and "xla_backend_optimization_level" not in _XLA_FLAGS:
  _XLA_FLAGS += " --xla_backend_optimization_level=0"
  if "xla_cpu_use_fusion_emitters" not in _XLA_FLAGS and _xla_accepts(_FUSION_EMITTERS_OFF):
    _XLA_FLAGS += f" {_FUSION_EMITTERS_OFF}"
  os.environ["XLA_FLAGS"] = _XLA_FLAGS.strip()
# Runs on several CPU devices (tests/multidevice, tests/test_multiprocess.py) meet in XLA's in-process collectives,
# which abort the process when some device threads have not arrived within 40 s: on 2 loaded cores (two xdist
# workers, each running multi-device subprocesses) a base-training run hit that once. The tests check results, not
# speed: they wait up to 10 minutes.
_COLLECTIVE_TIMEOUT = "--xla_cpu_collective_call_terminate_timeout_seconds=600"
if "collective_call_terminate_timeout" not in _XLA_FLAGS and _xla_accepts(_COLLECTIVE_TIMEOUT):
  _XLA_FLAGS += f" {_COLLECTIVE_TIMEOUT}"
  os.environ["XLA_FLAGS"] = _XLA_FLAGS.strip()
# The launchers opt in to the straight-line CPU lowering of threefry (cli.run -> core/prng.use_fast_cpu_threefry:
# faster steps, larger programs: +4% compile of the paper step; the same bits, tests/test_prng.py). The suite keeps
# JAX's compile-friendly loop: the test process never opts in (importing easytune_jax changes nothing), and the
# launchers the tests run as subprocesses inherit this 'rolled', unless told otherwise.
os.environ.setdefault("EASYTUNE_JAX_CPU_THREEFRY", "rolled")


@pytest.fixture(scope="session")
def reference_data() -> pathlib.Path:
  """tests/data/ (the real HumanML3D sample, its Mean/Std and the T2M evaluator statistics; see
  tests/data/README.md). Fails, never skips, when absent."""
  from tests import reference_data as ref

  if not (ref.ROOT / "humanml3d_sample").is_dir() or not (ref.ROOT / "evaluator_stats").is_dir():
    pytest.fail(f"real reference data not found at {ref.ROOT}: it belongs to the repository (tests/data/README.md)")
  return ref.ROOT


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
  """A tiny trained dataset + generator + reward + evaluator (see tests/pipeline.py), one per run: under
  pytest-xdist the workers' base temporary directories share a parent, where the pipeline is built once."""
  from tests import pipeline

  base = tmp_path_factory.getbasetemp()
  return pipeline.build((base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "tiny_pipeline")


# The fast tier (`pytest -m "not slow"`, for daily work) leaves out what trains models, runs subprocesses on 8
# fake devices or executes notebooks; CI runs everything. A test is slow when it uses the trained tiny pipeline,
# lives in one of these modules, or is marked `@pytest.mark.slow` itself.
SLOW_MODULES = {
  "test_base_train",
  "test_benchmark",
  "test_evaluation",
  "test_finetune_runner",
  "test_notebooks",
  "test_parallel",
  "test_parallel_methods",
  "test_parallel_random",
  "test_scan_layers",
  "test_spm_train",
  "test_train_evaluator",
}


def pytest_collection_modifyitems(config, items):
  del config
  for item in items:
    if "tiny_pipeline" in getattr(item, "fixturenames", ()) or item.module.__name__.split(".")[-1] in SLOW_MODULES:
      item.add_marker(pytest.mark.slow)
