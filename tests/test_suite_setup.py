"""The suite's own compile settings (tests/conftest.py): the XLA flags it adds are asked of the jaxlib first,
because XLA aborts the process on a flag it does not know."""

import os

import jaxlib

from tests.conftest import _FUSION_EMITTERS_OFF, _xla_accepts


def test_flag_probe_refuses_unknown_flags_and_accepts_the_suites_own():
  assert not _xla_accepts("--xla_cpu_no_such_flag_in_any_jaxlib=true")
  flags = os.environ.get("XLA_FLAGS", "")
  assert _xla_accepts(flags)  # what the tests run under, as a whole
  if os.environ.get("EASYTUNE_TEST_XLA_FAST_COMPILE", "") != "0":
    assert "--xla_backend_optimization_level" in flags
    version = tuple(int(p) for p in jaxlib.__version__.split(".")[:3] if p.isdigit())
    if version >= (0, 5, 3) and "--xla_backend_optimization_level=0" in flags:  # the flag's first jaxlib
      assert _FUSION_EMITTERS_OFF in flags
