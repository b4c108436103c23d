"""The tiny trained pipeline shared by the tests that need trained models (the fine-tuning runner, the
benchmark, the quickstart and the reliability tests): `easytune_jax.pipelines.tiny.build_tiny_pipeline` with its
defaults, built once per test run. Its model configs equal those of tests/test_base_train.py and
tests/test_spm_train.py so compiled steps are shared within a session.

Under pytest-xdist every worker asks for it: the first builds it under a directory shared by the run's
workers while holding a file lock, the others wait on the lock and then read the finished directories.
"""

import fcntl
import pathlib

from easytune_jax.pipelines.tiny import TinyPipeline, build_tiny_pipeline

_CACHE = {}


def build(root: pathlib.Path) -> TinyPipeline:
  """The pipeline under `root` (built by the first caller of the run; `root` is shared by xdist workers)."""
  if "p" not in _CACHE:
    root.mkdir(parents=True, exist_ok=True)
    done = root / "BUILT"
    with open(root / "build.lock", "w") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      if done.exists():
        _CACHE["p"] = TinyPipeline(*(str(root / name) for name in ("data", "base", "reward", "evaluator")))
      else:
        _CACHE["p"] = build_tiny_pipeline(str(root))
        done.touch()
  return _CACHE["p"]
