"""How JAX's threefry random bits are lowered on the CPU.

On the CPU, JAX lowers the Threefry-2x32 hash as a 5-iteration `while` loop (smaller programs, faster compiles);
on GPU/TPU as straight-line code. In a training step that draws many dropout masks (the official SPM reward keeps
dropout on: masks of [32, 4, 197, 197] per attention layer), each loop iteration is a separate pass over memory:
at the paper size the loop's kernels took ~1.4 s of an 11 s EasyTune update, and the straight-line lowering made
the update 20-22% faster on the 2-core CPU (12.79 -> 10.29 s, compile 56.5 -> 59.0 s;
docs/benchmark/profile/README.md). Both lowerings compute the same function on integers: the random bits, and so
every mask and result, are identical (tests/test_prng.py).

`easytune_jax` applies the straight-line lowering on import; `EASYTUNE_JAX_CPU_THREEFRY=rolled` keeps JAX's default.
"""

import os

try:  # JAX internals: if they move, JAX's default lowering stays (slower on the CPU, same results).
  from jax._src.interpreters import mlir as _mlir
  from jax._src.random import threefry2x32 as _threefry
except ImportError:  # pragma: no cover
  _mlir = _threefry = None

ENV = "EASYTUNE_JAX_CPU_THREEFRY"


def set_cpu_threefry_lowering(kind: str) -> bool:
  """kind 'unrolled' (straight-line, JAX's GPU/TPU lowering) or 'rolled' (JAX's CPU default) for programs traced
  from now on. Returns False when this JAX does not expose the lowering rules (nothing changed)."""
  if kind not in ("unrolled", "rolled"):
    raise ValueError(f"{__name__}: threefry lowering: expected 'unrolled' or 'rolled', found {kind!r}")
  rule_name = "_threefry2x32_lowering_rule" if kind == "unrolled" else "_threefry2x32_cpu_lowering_rule"
  rule = getattr(_threefry, rule_name, None)
  if rule is None or not hasattr(_threefry, "threefry2x32_p"):
    return False
  _mlir.register_lowering(_threefry.threefry2x32_p, rule, platform="cpu")
  return True


def apply_default() -> bool:
  """The package default: unrolled unless EASYTUNE_JAX_CPU_THREEFRY says 'rolled'."""
  return set_cpu_threefry_lowering(os.environ.get(ENV, "unrolled") or "unrolled")
