"""What machine a figure was made on: the CPU's model name and instruction-set flags (timings depend on both;
every benchmark JSON and the quickstart summary record them)."""

from __future__ import annotations

import platform


def _cpuinfo_field(name: str) -> str | None:
  try:
    with open("/proc/cpuinfo") as f:
      return next((line.split(":", 1)[1].strip() for line in f if line.split(":", 1)[0].strip() == name), None)
  except OSError:
    return None


def cpu_model() -> str:
  """The CPU's model name (/proc/cpuinfo 'model name'; `platform.processor()` where there is none)."""
  return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
  """The vector / matrix instruction-set flags of the CPU that decide XLA's kernels (AVX, AVX-512 *, AMX *, FMA,
  NEON / SVE on ARM), sorted; empty where /proc/cpuinfo says nothing."""
  flags = (_cpuinfo_field("flags") or _cpuinfo_field("Features") or "").split()
  keep = ("avx", "amx", "fma", "f16c", "sse4", "neon", "asimd", "sve")
  return sorted({f for f in flags if f.startswith(keep)})
