"""CompileClock counts the wall time JAX reports for tracing, lowering and compiling, once per span."""

import time

import jax
import jax.numpy as jnp

from easytune_jax.core.compile_clock import CompileClock


def _chain(x):
  inner = jax.jit(lambda y: jnp.tanh(y @ y.T) @ y)  # nested jit: its trace and lowering nest in the outer's
  for _ in range(20):
    x = inner(jnp.sin(x) + 1.0)
  return x


def test_counts_compilation_once_and_not_cached_calls():
  x = jnp.ones((32, 32))
  f = jax.jit(_chain)
  with CompileClock() as clock:
    t0 = time.perf_counter()
    f(x).block_until_ready()
    first = time.perf_counter() - t0
    compiled = clock.seconds
    for _ in range(3):
      f(x).block_until_ready()  # cached: no compile event
  assert 0 < compiled <= first, (compiled, first)  # the union of nested spans never exceeds the wall time
  assert clock.seconds == compiled
  with CompileClock() as other:
    pass
  assert other.seconds == 0.0
  jax.jit(lambda y: y * 3)(x).block_until_ready()  # after exit: not listening
  assert clock.seconds == compiled
