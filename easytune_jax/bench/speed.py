"""The benchmark's speed and reward-gain runs: seconds per update after warm-up, then budgeted runs from the base
params (training wall time or trajectories, compile and held-out evaluations excluded from the clock) with the
held-out reward along the way -> gain per second, peak gain per second and the time to a target gain
(`time_to_gain`); with a val-split `select` function, the checkpoint each equal-time budget would keep
(`Selection`), evaluated once on the test split."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from easytune_jax import finetune
from easytune_jax.bench.config import BenchmarkConfig, finetune_config
from easytune_jax.bench.measure import Inputs, block_until_ready, device_peak_bytes, make_tx, peak_rss_bytes
from easytune_jax.bench.variants import Variant
from easytune_jax.core.optim import create_train_state


def measure_speed(
  task,
  cfg: BenchmarkConfig,
  variant: Variant,
  inputs: Sequence[Inputs],
  heldout,
  base_reward: float,
  select: Callable | None = None,
  test_eval: Callable | None = None,
) -> dict:
  """Timing after warm-up, then one budgeted run from the base params per entry of `inputs` (one training
  stream per seed; see the module docstring). seconds_per_trajectory: the median of `speed_repeats` timing calls
  on the first batch (one draw of a random method's choices); mean_seconds_per_trajectory: train seconds over
  trajectories of the budgeted runs (mean over runs: an expectation over the draws). Gains are averaged over the runs (with their standard
  deviation); `runs` keeps each run, `curve` is the first run's; `params` are the first run's final params.

  select(params) -> (score, val metrics) and test_eval(params) -> test metrics (both or neither): the equal-time
  comparison (`Selection`); `selected` then holds, per budget of `cfg.budgets`, the chosen checkpoints' test
  metrics and held-out rewards (mean, std over the runs) and each run's choice."""
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
    sel = Selection(select, cfg.budgets, state0.params, base_reward) if select is not None else None
    run, state = budgeted_run(cfg, update, fresh(), inp, heldout, base_reward, sel)
    if sel is not None:
      run["selected"] = [{**c, "test": test_eval(p)} for c, p in sel.chosen]
    runs.append({"seed": inp.seed, **run})
    params = state.params if r == 0 else params
    del state
  out = {
    "T": T,
    "K": ft.num_grad_steps,
    "grad_chunk": ft.chunk_size,
    "compile_seconds": compile_s,
    "seconds_per_trajectory": per_traj,
    "mean_seconds_per_trajectory": mean_seconds_per_trajectory(runs),
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
  if select is not None:
    out["selected"] = _selected_summary(runs, cfg.budgets)
  out.update(
    curve=runs[0]["curve"],
    runs=runs,
    params=params,
    peak_rss_bytes=peak_rss_bytes(),
    device_peak_bytes=device_peak_bytes(),
  )
  return out


class Selection:
  """The checkpoint an equal-time budget keeps: the best val score (`select(params) -> (score, metrics)`, higher is
  better) among the evaluations made within the budget, the base params (time 0) included. `offer` scores a
  checkpoint (a copy is kept while it is the best); `close(t)` fixes every budget <= t (the run's clock) to the
  best so far. `chosen`: [(record, params)] per budget, ascending; record = {budget, seconds, val_score, val,
  heldout_reward, base: whether the base params were kept}."""

  def __init__(self, select: Callable, budgets: Sequence[float], params0, reward0: float):
    self.select, self.open, self.best, self.chosen = select, list(budgets), None, []
    self.offer(params0, 0.0, reward0)

  def offer(self, params, seconds: float, heldout_reward: float) -> dict:
    """Scores `params` on val, keeps them if best so far; returns the val metrics."""
    score, metrics = self.select(params)
    if self.best is None or score > self.best[0]["val_score"]:
      record = {"seconds": seconds, "val_score": float(score), "val": metrics, "heldout_reward": heldout_reward}
      self.best = (record, jax.tree.map(jnp.copy, params))
    return metrics

  def close(self, seconds: float) -> None:
    while self.open and self.open[0] <= seconds:
      record, params = self.best
      self.chosen.append(({"budget": self.open.pop(0), **record, "base": record["seconds"] == 0.0}, params))


def budgeted_run(
  cfg: BenchmarkConfig, update, state0, inputs: Inputs, heldout, base_reward: float, selection: Selection | None = None
):
  """Updates from state0 until the budget is spent; the clock counts update calls only, held-out
  evaluations happen with the clock stopped. With a `selection`, every evaluation is offered to it (its val
  metrics go on the curve as `val`, the base's first) and one more is made at the first update at or past each of
  its budgets. Returns (run dict, final state)."""
  state, train_s, it = state0, 0.0, 0
  curve_t, curve_r = [0.0], [base_reward]
  curve_v = [selection.best[0]["val"]] if selection is not None else None
  n_points = max(cfg.curve_points, 0)
  next_eval = _next_checkpoint(cfg, 1, n_points)

  def evaluate():
    curve_t.append(train_s)
    curve_r.append(float(np.mean(heldout.rewards(state.params))))
    if selection is not None:
      curve_v.append(selection.offer(state.params, train_s, curve_r[-1]))
      selection.close(train_s)

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
    on_curve = next_eval is not None and _progress(cfg, train_s, it) >= next_eval[0]
    if on_curve or (selection is not None and selection.open and train_s >= selection.open[0]):
      evaluate()
    if on_curve:
      next_eval = _next_checkpoint(cfg, next_eval[1] + 1, n_points)
  evaluate()
  if selection is not None:
    selection.close(float("inf"))
  final = curve_r[-1]
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
    "curve": {"seconds": curve_t, "reward": curve_r, **({"val": curve_v} if curve_v is not None else {})},
    "skipped_updates": int(state.skipped),
  }, state


def _selected_summary(runs: list[dict], budgets: Sequence[float]) -> list[dict]:
  """Per budget: the chosen checkpoints' mean (and std over runs) of the test metrics, held-out reward, val score
  and time, and how many runs kept the base params."""
  out = []
  for j, budget in enumerate(budgets):
    picks = [run["selected"][j] for run in runs]
    rec = {"budget": budget, "runs": len(picks), "base_kept": sum(p["base"] for p in picks)}
    for key in ("seconds", "val_score", "heldout_reward"):
      rec[key] = float(np.mean([p[key] for p in picks]))
    rec["heldout_reward_std"] = float(np.std([p["heldout_reward"] for p in picks], ddof=1)) if len(picks) > 1 else None
    rec["test"] = {}
    for m in picks[0]["test"]:
      vals = [p["test"][m] for p in picks]
      rec["test"][m] = float(np.mean(vals))
      rec["test"][m + "_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
    out.append(rec)
  return out


def mean_seconds_per_trajectory(runs: Sequence[dict]) -> float:
  """Train seconds over trajectories of each budgeted run, averaged over the runs: the expected cost of one
  trajectory over many draws of a random method's choices (what its floor is compared with)."""
  return float(np.mean([run["train_seconds"] / run["trajectories"] for run in runs]))


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
