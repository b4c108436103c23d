"""How JAX's threefry random bits are lowered on the CPU: an explicit opt-in, never applied on import.

On the CPU, JAX lowers the Threefry-2x32 hash as a 5-iteration `while` loop (smaller programs, faster compiles);
on GPU/TPU as straight-line code. In a training step that draws many dropout masks (the official SPM reward keeps
dropout on: masks of [32, 4, 197, 197] per attention layer), each loop iteration is a separate pass over memory:
at the paper size the loop's kernels took ~1.4 s of an 11 s EasyTune update, and the straight-line lowering made
the update 20-22% faster on the 2-core CPU (12.79 -> 10.29 s, compile 56.5 -> 59.0 s;
docs/benchmark/profile/README.md). Both lowerings compute the same function on integers: the random bits, and so
every mask and result, are identical (tests/test_prng.py).

Importing `easytune_jax` leaves JAX as it is (tests/test_prng.py checks it in a fresh interpreter). The switch
re-registers the CPU lowering rule of JAX's private `threefry2x32_p` for every program traced afterwards, so it is
the application's choice, made once at start-up:

    from easytune_jax.core import prng
    prng.use_fast_cpu_threefry()        # straight-line on the CPU (EASYTUNE_JAX_CPU_THREEFRY=rolled: JAX's loop)

The launchers opt in through `cli.run` (every `launch/*.py`: training, fine-tuning, the quickstart, the benchmark
and profile entry points), so their compile and run times are the recorded ones; `EASYTUNE_JAX_CPU_THREEFRY=rolled`
keeps JAX's loop there too (the test suite sets it: smaller programs compile faster). A JAX whose internals do not
have the rules (renamed or moved) keeps its default lowering, with a warning: the same bits, slower steps.
"""

from __future__ import annotations

import os
import warnings

ENV = "EASYTUNE_JAX_CPU_THREEFRY"
KINDS = ("unrolled", "rolled")


def _internals():
  """(jax's mlir module, its threefry2x32 module) or None when this JAX does not expose them."""
  try:
    from jax._src.interpreters import mlir
    from jax._src.random import threefry2x32
  except ImportError:
    return None
  needed = ("threefry2x32_p", "_threefry2x32_lowering_rule", "_threefry2x32_cpu_lowering_rule")
  if not hasattr(mlir, "register_lowering") or not all(hasattr(threefry2x32, n) for n in needed):
    return None
  return mlir, threefry2x32


def set_cpu_threefry_lowering(kind: str) -> bool:
  """Lowers threefry on the CPU as `kind` for programs traced from now on.

  Args:
    kind: 'unrolled' (straight-line, JAX's GPU/TPU lowering) or 'rolled' (JAX's CPU default, a `while` loop).

  Returns:
    True when set; False, with a RuntimeWarning, when this JAX does not expose the lowering rules (nothing changed:
    JAX's own lowering stays, the same bits).
  """
  if kind not in KINDS:
    raise ValueError(f"{__name__}: threefry lowering: expected 'unrolled' or 'rolled', found {kind!r}")
  found = _internals()
  if found is None:
    import jax

    warnings.warn(
      f"{__name__}: this JAX ({jax.__version__}) has no jax._src.random.threefry2x32 lowering rules to switch; "
      f"threefry keeps JAX's default CPU lowering (the same random bits; steps drawing many dropout masks are slower)",
      RuntimeWarning,
      stacklevel=2,
    )
    return False
  mlir, threefry = found
  rule = threefry._threefry2x32_lowering_rule if kind == "unrolled" else threefry._threefry2x32_cpu_lowering_rule
  mlir.register_lowering(threefry.threefry2x32_p, rule, platform="cpu")
  return True


def use_fast_cpu_threefry() -> bool:
  """Opt-in: threefry straight-line on the CPU (same bits, faster steps with many dropout masks), unless the
  environment variable EASYTUNE_JAX_CPU_THREEFRY says 'rolled' (JAX's loop). Returns set_cpu_threefry_lowering's
  answer (False, with a warning, on a JAX without the rules)."""
  kind = os.environ.get(ENV, "").strip() or "unrolled"
  if kind not in KINDS:
    raise ValueError(f"{ENV}={kind!r}: expected 'unrolled' or 'rolled' (or unset: 'unrolled')")
  return set_cpu_threefry_lowering(kind)
