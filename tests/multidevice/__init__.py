"""Runs the scripts of this folder in a subprocess with 8 fake CPU devices."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_on_8_devices(script: str, *args: str, timeout: int = 1800) -> dict:
  """Runs tests/multidevice/<script> *args with 8 fake CPU devices; returns its RESULTS json line.

  The device count is added to the caller's XLA_FLAGS (so the suite's compile flags, tests/conftest.py, hold).
  """
  env = dict(
    os.environ,
    XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8".strip(),
    JAX_PLATFORMS="cpu",
    PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
  )
  out = subprocess.run(
    [sys.executable, os.path.join(ROOT, "tests", "multidevice", script), *args],
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  assert out.returncode == 0, out.stderr[-4000:]
  line = [l for l in out.stdout.splitlines() if l.startswith("RESULTS ")][-1]
  return json.loads(line[len("RESULTS ") :])
