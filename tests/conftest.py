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
    pytest.fail(f"real reference data not found at {SHARED_DATA}: tests need ../shared/data beside the "
                "checkout (or EASYTUNE_SHARED_DATA pointing at it)")
  return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
  """A tiny trained dataset + generator + reward + evaluator (see tests/pipeline.py)."""
  from tests import pipeline
  return pipeline.build(tmp_path_factory.mktemp("pipeline"))
