"""Shared test fixtures: paths to the real reference data beside the checkout."""

import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("EASYTUNE_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  """../shared/data (real HumanML3D sample and statistics). Fails, never skips, when absent."""
  if not (SHARED_DATA / "humanml3d_sample").is_dir():
    pytest.fail(
      f"real reference data not found at {SHARED_DATA}: tests need ../shared/data beside the "
      "checkout (or EASYTUNE_SHARED_DATA pointing at it)"
    )
  return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
  """A tiny trained dataset + generator + reward + evaluator (see tests/pipeline.py)."""
  from tests import pipeline

  return pipeline.build(tmp_path_factory.mktemp("pipeline"))


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
  "test_scan_layers",
  "test_spm_train",
  "test_train_evaluator",
}


def pytest_collection_modifyitems(config, items):
  del config
  for item in items:
    if "tiny_pipeline" in getattr(item, "fixturenames", ()) or item.module.__name__.split(".")[-1] in SLOW_MODULES:
      item.add_marker(pytest.mark.slow)
