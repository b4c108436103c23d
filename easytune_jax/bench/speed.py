"""The benchmark's speed and reward-gain runs: seconds per update after warm-up, then budgeted runs from the base
params (training wall time or trajectories, compile and held-out evaluations excluded from the clock) with the
held-out reward along the way -> gain per second, peak gain per second and the time to a target gain
(`time_to_gain`)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from easytune_jax import finetune
from easytune_jax.bench.config import BenchmarkConfig, finetune_config
from easytune_jax.bench.measure import Inputs, block_until_ready, device_peak_bytes, make_tx, peak_rss_bytes
from easytune_jax.bench.variants import Variant
from easytune_jax.core.optim import create_train_state


def measure_speed(
  task, cfg: BenchmarkConfig, variant: Variant, inputs: Sequence[Inputs], heldout, base_reward: float
) -> dict:
  """Timing after warm-up, then one budgeted run from the base params per entry of `inputs` (one training
  stream per seed; see the module docstring). Gains are averaged over the runs (with their standard
  deviation); `runs` keeps each run, `curve` is the first run's; `params` are the first run's final params."""
  T = cfg.speed_steps
  ft = finetune_config(cfg, variant, T)
  tx = make_tx(ft)
  # The update donates its state (deleted by each call): every timing and run starts from a fresh copy of
  # state0, made outside the clock.
  update = finetune.make_update_fn(ft, task.denoise, task.reward, task.gen.process, tx, decode=task.decode)
  state0 = create_train_state(task.gen.params, tx)
  fresh = lambda: block_until_ready(jax.tree.map(jnp.copy, state0))
  x_T, cond, uncond, rng = inputs[0](0)
  t0 = time.perf_counter()
  # Compile + first runs, excluded from every clock. Two chained calls: the state an update returns can
  # differ from the freshly created one in weak types, so the second call may compile once more.
  block_until_ready(update(update(fresh(), x_T, cond, uncond, rng)[0], x_T, cond, uncond, rng))
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(cfg.speed_repeats):
    state = fresh()
    t0 = time.perf_counter()
    block_until_ready(update(state, x_T, cond, uncond, rng))
    times.append(time.perf_counter() - t0)
  per_traj = statistics.median(times)
  runs, params = [], None
  for r, inp in enumerate(inputs):
    run, state = budgeted_run(cfg, update, fresh(), inp, heldout, base_reward)
    runs.append({"seed": inp.seed, **run})
    params = state.params if r == 0 else params
    del state
  out = {
    "T": T,
    "K": ft.num_grad_steps,
    "grad_chunk": ft.chunk_size,
    "compile_seconds": compile_s,
    "seconds_per_trajectory": per_traj,
    "seconds_per_update": per_traj / ft.updates_per_trajectory,
    "updates_per_trajectory": ft.updates_per_trajectory,
    "timing_runs": times,
    "base_reward": base_reward,
  }
  for k in (
    "trajectories",
    "updates",
    "train_seconds",
    "final_reward",
    "reward_gain",
    "reward_gain_per_second",
    "peak_gain_per_second",
    "skipped_updates",
  ):
    out[k] = float(np.mean([run[k] for run in runs])) if len(runs) > 1 else runs[0][k]
  for k in ("reward_gain", "reward_gain_per_second", "peak_gain_per_second"):
    out[k + "_std"] = float(np.std([run[k] for run in runs], ddof=1)) if len(runs) > 1 else None
  out.update(
    curve=runs[0]["curve"],
    runs=runs,
    params=params,
    peak_rss_bytes=peak_rss_bytes(),
    device_peak_bytes=device_peak_bytes(),
  )
  return out


def budgeted_run(cfg: BenchmarkConfig, update, state0, inputs: Inputs, heldout, base_reward: float):
  """Updates from state0 until the budget is spent; the clock counts update calls only, held-out
  evaluations happen with the clock stopped. Returns (run dict, final state)."""
  state, train_s, it = state0, 0.0, 0
  curve_t, curve_r = [0.0], [base_reward]
  n_points = max(cfg.curve_points, 0)
  next_eval = _next_checkpoint(cfg, 1, n_points)
  while True:
    batch = inputs(it)
    t0 = time.perf_counter()
    state, metrics = update(state, *batch)
    block_until_ready((state, metrics))
    train_s += time.perf_counter() - t0
    it += 1
    done = (cfg.budget_seconds is not None and train_s >= cfg.budget_seconds) or (
      cfg.budget_trajectories is not None and it >= cfg.budget_trajectories
    )
    if done:
      break
    if next_eval is not None and _progress(cfg, train_s, it) >= next_eval[0]:
      curve_t.append(train_s)
      curve_r.append(float(np.mean(heldout.rewards(state.params))))
      next_eval = _next_checkpoint(cfg, next_eval[1] + 1, n_points)
  final = float(np.mean(heldout.rewards(state.params)))
  curve_t.append(train_s)
  curve_r.append(final)
  gain = final - base_reward
  peak = max((r - base_reward) / t for t, r in zip(curve_t, curve_r) if t > 0)
  return {
    "trajectories": it,
    "updates": int(state.step),
    "train_seconds": train_s,
    "final_reward": final,
    "reward_gain": gain,
    "reward_gain_per_second": gain / train_s,
    "peak_gain_per_second": peak,
    "curve": {"seconds": curve_t, "reward": curve_r},
    "skipped_updates": int(state.skipped),
  }, state


def time_to_gain(seconds: Sequence[float], rewards: Sequence[float], target: float) -> float | None:
  """Training seconds at which the held-out reward curve first reaches rewards[0] + target, linearly
  interpolated between the two evaluations that bracket it; None if it never does. seconds, rewards: [P]
  (seconds[0] = 0, rewards[0] = the base reward)."""
  level = rewards[0] + target
  for j in range(1, len(rewards)):
    if rewards[j] >= level:
      r0, r1, t0, t1 = rewards[j - 1], rewards[j], seconds[j - 1], seconds[j]
      return float(t0 + (level - r0) / (r1 - r0) * (t1 - t0)) if r1 > r0 else float(t1)
  return None


def _progress(cfg: BenchmarkConfig, train_s: float, it: int) -> float:
  """Fraction of the budget spent (the larger of the time and trajectory fractions)."""
  fr = []
  if cfg.budget_seconds is not None:
    fr.append(train_s / cfg.budget_seconds)
  if cfg.budget_trajectories is not None:
    fr.append(it / cfg.budget_trajectories)
  return max(fr)


def _next_checkpoint(cfg, j: int, n: int):
  """(fraction, index) of the j-th of n evenly spaced intermediate evaluations, None past the last."""
  if j > n:
    return None
  return (j / (n + 1), j)
