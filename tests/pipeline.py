"""The tiny trained pipeline shared by the tests that need trained models (the fine-tuning runner, the
benchmark, the quickstart and the reliability tests): `easytune_jax.pipelines.tiny.build_tiny_pipeline` with its
defaults, built once per session. Its model configs equal those of tests/test_base_train.py and
tests/test_spm_train.py so compiled steps are shared within a session.
"""

import pathlib

from easytune_jax.pipelines.tiny import TinyPipeline, build_tiny_pipeline

_CACHE = {}


def build(root: pathlib.Path) -> TinyPipeline:
  if "p" not in _CACHE:
    _CACHE["p"] = build_tiny_pipeline(str(root))
  return _CACHE["p"]
