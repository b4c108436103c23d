"""The training loop every trainer runs: resume, preemption (SIGTERM/SIGINT), non-finite policy, logging."""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from absl import logging

from easytune_jax.core import parallel
from easytune_jax.core.checkpoint import Checkpointer
from easytune_jax.core.metric_writer import MetricWriter


# --------------------------------------------------------------------------------------------- loop
class PreemptionGuard:
  """Turns SIGTERM/SIGINT into a flag checked between steps, so the loop can checkpoint and exit."""

  def __init__(self):
    self.requested = False
    self._old = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._old[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: signals cannot be caught here
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    logging.warning("received signal %d: will checkpoint and stop after this step", signum)
    self.requested = True

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)
    return False


class NonFiniteError(RuntimeError):
  """A training step produced a non-finite loss or gradient and the policy is 'stop'."""


@dataclasses.dataclass
class LoopResult:
  state: Any
  last_step: int
  preempted: bool
  nonfinite_steps: list


def train_loop(
  *,
  state: Any,
  step_fn: Callable[[Any, Any], tuple[Any, Mapping[str, jax.Array]]],
  batch_fn: Callable[[int], Any],
  num_steps: int,
  checkpointer: Checkpointer | None,
  writer: MetricWriter | None,
  metadata: Mapping[str, Any] | None = None,
  log_every: int = 10,
  checkpoint_every: int = 100,
  eval_fn: Callable[[Any, int], Mapping[str, float]] | None = None,
  eval_every: int = 0,
  on_nonfinite: str = "skip",
  desc: str = "train",
  progress: bool = True,
  state_step: Callable[[Any], int] = lambda s: int(s.step),
) -> LoopResult:
  """Runs `step_fn(state, batch_fn(step))` from the state's step to `num_steps`, with resume.

  - Resume: if `checkpointer` holds a checkpoint it is restored into `state`'s structure first, and the loop
    continues from its step; `batch_fn(step)` must be a pure function of the step so the data order of a
    resumed run equals an uninterrupted one.
  - `step_fn` returns (state, metrics) where metrics may hold `finite` (bool []): False marks a step whose
    update was skipped (see `apply_gradients`); it is logged with its step; `on_nonfinite='stop'` then
    checkpoints the last finite state and raises NonFiniteError.
  - SIGTERM/SIGINT: the loop finishes the current step, checkpoints and returns with preempted=True (in a
    multi-process run every process stops at the first step after which any of them got the signal).
  """
  if on_nonfinite not in ("skip", "stop"):
    raise ValueError(f"on_nonfinite: expected 'skip' or 'stop', found {on_nonfinite!r}")
  if checkpointer is not None and checkpointer.latest_step() is not None:
    state = checkpointer.restore(state)
    logging.info("%s: resumed from %s at step %d", desc, checkpointer.directory, state_step(state))
  start = state_step(state)
  nonfinite, preempted = [], False

  def save(s):
    if checkpointer is not None:
      checkpointer.save(state_step(s), s, metadata)

  bar = None
  if progress and start < num_steps:
    from tqdm.auto import tqdm

    bar = tqdm(total=num_steps, initial=start, desc=desc, leave=False, dynamic_ncols=True)
  pending = []
  with PreemptionGuard() as guard:
    for step in range(start, num_steps):
      state, metrics = step_fn(state, batch_fn(step))
      pending.append((step, metrics))
      done = step + 1
      # A signal reaches the processes of a multi-process run one by one: they stop at the same step when any got it.
      stop = parallel.any_process(guard.requested)
      if done % log_every == 0 or done == num_steps or stop:
        for s, m in jax.device_get(pending):
          finite = bool(m.get("finite", True))
          if not finite:
            nonfinite.append(s)
            logging.warning("%s: non-finite loss/gradient at step %d: update skipped", desc, s)
          if writer is not None:
            writer.write(s + 1, {k: v for k, v in m.items() if np.ndim(v) == 0})
        pending = []
        if bar is not None:
          bar.update(done - bar.n)
        if nonfinite and on_nonfinite == "stop":
          save(state)
          raise NonFiniteError(
            f"{desc}: non-finite loss or gradient at step {nonfinite[0]} "
            f"(last finite checkpoint: step {state_step(state)})"
          )
      if eval_fn is not None and eval_every and (done % eval_every == 0 or done == num_steps):
        ev = eval_fn(state, done)
        if writer is not None and ev:
          writer.write(done, ev)
      if done % checkpoint_every == 0 or done == num_steps:
        save(state)
      if stop:
        save(state)
        preempted = True
        break
  if bar is not None:
    bar.close()
  return LoopResult(state=state, last_step=state_step(state), preempted=preempted, nonfinite_steps=nonfinite)
