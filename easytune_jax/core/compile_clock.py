"""Seconds JAX spends compiling, as JAX itself reports them (`jax.monitoring` duration events).

Wall-clock curves of training (held-out reward against fine-tuning seconds) should show the seconds spent
on the work, not the first call's tracing and XLA compilation, which on a CPU can be most of a short run.
:class:`CompileClock` sums, while it is open, every duration event JAX records for tracing a function to a
jaxpr, lowering it to MLIR, compiling it with XLA and reading it back from the persistent compilation cache,
so a caller can subtract exactly that from its own wall clock. Events nest (tracing a function traces the
jitted functions it calls, each reporting its own duration), so the clock counts the union of the events'
time spans, not the sum of their durations.

  with CompileClock() as compile_clock:
    ...                                   # any JAX work
  work_seconds = elapsed - compile_clock.seconds
"""

from __future__ import annotations

import threading
import time

import jax

# The duration events of jax._src.dispatch / compiler (stable names, emitted by every jax >= 0.4.30).
COMPILE_EVENTS = (
  "/jax/core/compile/jaxpr_trace_duration",
  "/jax/core/compile/jaxpr_to_mlir_module_duration",
  "/jax/core/compile/backend_compile_duration",
  "/jax/compilation_cache/cache_retrieval_time_sec",
)


class CompileClock:
  """Context manager: `.seconds` is the wall time JAX spent compiling since `__enter__` (any thread)."""

  def __init__(self, events: tuple[str, ...] = COMPILE_EVENTS):
    self._events = frozenset(events)
    self._lock = threading.Lock()
    self._spans: list[tuple[float, float]] = []  # disjoint, sorted (start, end) of the merged events

  def _listen(self, event: str, duration: float, **kwargs) -> None:
    del kwargs
    if event not in self._events:
      return
    end = time.perf_counter()
    with self._lock:
      self._spans.append((end - float(duration), end))
      self._spans.sort()
      merged = [self._spans[0]]
      for start, stop in self._spans[1:]:
        if start <= merged[-1][1]:
          merged[-1] = (merged[-1][0], max(merged[-1][1], stop))
        else:
          merged.append((start, stop))
      self._spans = merged

  @property
  def seconds(self) -> float:
    with self._lock:
      return sum(stop - start for start, stop in self._spans)

  def __enter__(self) -> CompileClock:
    jax.monitoring.register_event_duration_secs_listener(self._listen)
    return self

  def __exit__(self, *exc) -> None:
    jax.monitoring.unregister_event_duration_listener(self._listen)
