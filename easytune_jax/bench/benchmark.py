"""Memory, speed and alignment benchmark of EasyTune against DRaFT-K / ReFL / AlignProp / DRTune on a real
trained task (generator + reward, `bundles.task.MotionTask`). The library behind
`launch/benchmark.py`.

Three measurements, all from the same base model, reward model, seeds and batches:

  memory     For each variant (method, K, remat) and each T: XLA's compiled memory of the jitted update
             (`finetune.compiled_memory`: temp / argument / output bytes, lowered and compiled only, never
             run, so T=200 is cheap) and of plain sampling (guided DDIM of T steps + decode + reward on the
             same inputs). "Additional memory" = update minus sampling (the paper's definition). The process
             peak RSS and, on GPU, the allocator's peak bytes are recorded after each compile (both are
             process-wide running peaks: they only grow).
  speed      Seconds per update call (= per trajectory) and per optimizer update after warm-up (median of
             `speed_repeats` runs, block_until_ready); then from the base params, updates in a loop until a
             budget of training wall time (compile excluded: warmed up beforehand) or of trajectories is
             spent, with the held-out reward (`finetune_runner.HeldOut`) at the start, at a few points in
             between (evaluation time excluded from the clock) and at the end -> reward gain per second over
             the budget, the peak gain per second along the curve, and the seconds to reach a common
             target gain (`time_to_gain`; a method that saturates early is not penalised by the budget).
  alignment  With an evaluator: the quick evaluation (`evaluation.evaluate(..., quick=True)`) of the base
             model and of each method's final params: R-precision, MM-Dist (Matching_score), FID,
             diversity, and the relative MM-Dist improvement over the base model.

Outputs (`write_outputs`): benchmark.json (machine description + one record per variant x T), benchmark.md
(tables) and PNG plots (memory vs T, held-out reward vs training wall time).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import platform
import resource
import statistics
import time
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from easytune_jax import finetune
from easytune_jax.core import sampling
from easytune_jax.core.optim import OptimConfig, apply_gradients, create_train_state, make_optimizer
from easytune_jax import viz
from easytune_jax.bundles.evaluator import load_trained_evaluator
from easytune_jax.data import batching
from easytune_jax.data.humanml3d import load_dataset
from easytune_jax.eval import evaluation
from easytune_jax.train import finetune_runner
from easytune_jax.train.finetune_runner import generate_fn_for

_WHERE = "easytune_jax/benchmark.py"


# --------------------------------------------------------------------------------------------- variants
@dataclasses.dataclass(frozen=True)
class Variant:
  """One benchmarked method setting. `method`: a row of `finetune.METHODS`; `k`: its k (an int, 'T' = all T
  steps, None = the row's default); `learning_rate`: this variant's own rate (None = the config's), for
  per-method tuning; `online`: a per-step method with the 'online' sampler (trajectory and gradients at the
  latest params; default 'frozen'); `grad_chunk`: frozen per-step gradients batched C at a time
  (`FinetuneConfig.grad_chunk`; None = the benchmark config's `grad_chunk`)."""

  method: str
  k: Optional[Union[int, str]] = None
  remat: bool = False
  learning_rate: Optional[float] = None
  online: bool = False
  grad_chunk: Optional[int] = None

  @property
  def policy(self) -> finetune.StepPolicy:
    return finetune.METHODS[self.method]

  @property
  def name(self) -> str:
    return (
      self.policy.label
      + ("" if self.k is None else f"-{self.k}")
      + ("+remat" if self.remat else "")
      + ("+online" if self.online else "")
      + (f"+chunk{self.grad_chunk}" if self.grad_chunk else "")
      + (f"@{self.learning_rate:g}" if self.learning_rate else "")
    )

  @property
  def family(self) -> str:
    """The name without the learning rate (variants of one family differ only in their rate)."""
    return dataclasses.replace(self, learning_rate=None).name

  def resolve_k(self, T: int) -> Optional[int]:
    """K passed to FinetuneConfig at T steps (None where the row's default applies)."""
    return T if self.k == "T" else self.k

  def applies(self, T: int) -> bool:
    return not (isinstance(self.k, int) and self.k > T)


def parse_variant(spec: str) -> Variant:
  """'<method>' (a row of `finetune.METHODS` with its default k) or '<method>-<K>' / '<method>-T' (rows that
  read k: EasyTune trains the last K steps, DRaFT backpropagates K deep, DRTune trains K steps), e.g.
  'easytune', 'easytune-10', 'draft-1', 'draft-T', 'refl', 'alignprop', 'drtune'; optionally suffixed
  '+remat' (trajectory rows) or '+online' (per-step rows) or '+chunk<C>' (frozen per-step rows: C
  per-step gradients per vmapped call), then optionally '@<learning rate>' (e.g. 'draft-1@1e-4',
  'easytune+online@2e-5', 'easytune+chunk10@1e-4')."""
  s, _, lr_text = spec.strip().partition("@")
  lr = None
  if lr_text:
    try:
      lr = float(lr_text)
    except ValueError:
      lr = -1.0
    if not lr > 0:
      raise ValueError(f"{_WHERE}: variant {spec!r}: expected '@<learning rate>' with a rate > 0, found {lr_text!r}")
  chunk = None
  head, plus, tail = s.rpartition("+")
  if plus and tail.startswith("chunk"):
    if not tail[5:].isdigit() or int(tail[5:]) < 1:
      raise ValueError(f"{_WHERE}: variant {spec!r}: expected '+chunk<C>' with C >= 1, found {tail!r}")
    chunk, s = int(tail[5:]), head
  remat, online = s.endswith("+remat"), s.endswith("+online")
  s = s.rsplit("+", 1)[0] if remat or online else s
  k = None
  name, dash, tail = s.partition("-")
  if dash and name in finetune.METHODS:
    if "k" not in finetune.METHODS[name].uses:
      raise ValueError(
        f"{_WHERE}: variant {spec!r}: {name!r} takes no k (its hyper-parameters: {finetune.METHODS[name].uses})"
      )
    if tail != "T" and (not tail.isdigit() or int(tail) < 1):
      raise ValueError(f"{_WHERE}: variant {spec!r}: expected '{name}-<K>' with K >= 1 or '{name}-T', found K={tail!r}")
    k, s = (tail if tail == "T" else int(tail)), name
  if s not in finetune.METHODS:
    raise ValueError(
      f"{_WHERE}: variant {spec!r}: expected a method in {tuple(finetune.METHODS)} (with k as "
      f"'<method>-<K>' / '<method>-T'), optionally '+remat'; found {s!r}"
    )
  per_step = finetune.METHODS[s].per_step_updates
  if remat and per_step:
    raise ValueError(f"{_WHERE}: variant {spec!r}: {s!r} stores no trajectory, '+remat' does not apply")
  if online and not per_step:
    raise ValueError(f"{_WHERE}: variant {spec!r}: '+online' is a per-step method's sampler variant, not for {s!r}")
  if chunk is not None and (not per_step or online):
    raise ValueError(
      f"{_WHERE}: variant {spec!r}: '+chunk<C>' batches frozen per-step gradients, "
      f"not for {s + ('+online' if online else '')!r}"
    )
  return Variant(s, k, remat, lr, online, chunk)


ALL_MEMORY_VARIANTS = (
  "easytune",
  "draft-1",
  "draft-1+remat",
  "draft-10",
  "draft-10+remat",
  "draft-T",
  "draft-T+remat",
  "refl",
  "alignprop",
  "alignprop+remat",
  "drtune",
  "drtune+remat",
)
ALL_SPEED_VARIANTS = ("easytune", "draft-1", "draft-10", "draft-T", "refl", "alignprop", "drtune")


# --------------------------------------------------------------------------------------------- config
@dataclasses.dataclass(frozen=True)
class BenchmarkConfig:
  """What to measure. Defaults: the tiny CPU config (a few minutes on 2 cores).

  memory_steps: the T values of the memory sweep; speed_steps: the T of the speed / alignment runs.
  budget_seconds / budget_trajectories: the fixed training budget per method (whichever ends first;
  None = unbounded, at least one must be set). curve_points: held-out evaluations between start and end.
  target_gain: the held-out reward gain whose reaching time is compared across methods (`time_to_gain`);
  None = half the largest final gain among the speed variants (so every good method reaches it).
  speed_seeds: independent budgeted runs per method (training batches and noise of seeds seed, seed + 1,
  ...; the held-out set is fixed): gains are reported as mean and standard deviation over them.
  grad_chunk: C of frozen EasyTune variants without their own '+chunk<C>' (1 = the sequential path).
  floor: also time sampling alone and one one-step gradient at the speed T (`measure_floor`).
  """

  memory_variants: tuple = ALL_MEMORY_VARIANTS
  memory_steps: tuple = (10, 50, 200)
  speed_variants: tuple = ALL_SPEED_VARIANTS
  speed_steps: int = 10
  batch_size: int = 8
  guidance_scale: float = sampling.CPU_GUIDANCE_SCALE
  learning_rate: float = 2e-4
  warmup_steps: int = 0
  speed_repeats: int = 3
  budget_seconds: Optional[float] = 20.0
  budget_trajectories: Optional[int] = None
  curve_points: int = 3
  target_gain: Optional[float] = None
  speed_seeds: int = 1
  heldout_size: int = 16
  eval_batch_size: int = 16
  seed: int = 0
  grad_chunk: int = 1
  floor: bool = True

  def __post_init__(self):
    for v in tuple(self.memory_variants) + tuple(self.speed_variants):
      parse_variant(v)
    if not self.memory_steps or min(self.memory_steps) < 1:
      raise ValueError(f"{_WHERE}: BenchmarkConfig.memory_steps: expected T values >= 1, found {self.memory_steps}")
    counts = {
      k: getattr(self, k)
      for k in ("speed_steps", "batch_size", "speed_repeats", "speed_seeds", "heldout_size", "grad_chunk")
    }
    if min(counts.values()) < 1:
      raise ValueError(f"{_WHERE}: BenchmarkConfig: expected {', '.join(counts)} >= 1, found {counts}")
    if self.target_gain is not None and not self.target_gain > 0:
      raise ValueError(f"{_WHERE}: BenchmarkConfig.target_gain: expected > 0 or None, found {self.target_gain}")
    if self.budget_seconds is None and self.budget_trajectories is None:
      raise ValueError(f"{_WHERE}: BenchmarkConfig: set budget_seconds or budget_trajectories (found neither)")
    if self.budget_seconds is not None and self.budget_seconds <= 0:
      raise ValueError(f"{_WHERE}: BenchmarkConfig.budget_seconds: expected > 0, found {self.budget_seconds}")
    if self.budget_trajectories is not None and self.budget_trajectories < 1:
      raise ValueError(
        f"{_WHERE}: BenchmarkConfig.budget_trajectories: expected >= 1, found {self.budget_trajectories}"
      )

  def to_dict(self) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(self)))


def get_config(name: str = "tiny") -> BenchmarkConfig:
  """'tiny': CPU, T in (10, 50, 200) for memory, speed/alignment at T=10, 20 s per method.
  'paper': GPU at MLD sizes, T in (10, 50, 200) for memory, speed/alignment at T=50 (the paper's
  DRaFT-50 comparison), batch 32 (64 with CFG's doubled denoiser batch), 10 minutes per method.
  Both keep grad_chunk = 1 (EasyTune's sequential path): on the 2-core CPU the batched path was slower at
  every C measured (tiny, T = 50: 0.88 s per trajectory sequential, 1.18-2.17 s for C in 2..50;
  docs/benchmark/grad_chunk_tiny) and its compiled temporaries grow by about one one-step gradient's per unit
  of C; on an accelerator measure '+chunk<C>' variants first (`--config.grad_chunk` / '+chunk<C>')."""
  if name == "tiny":
    return BenchmarkConfig()
  if name == "paper":
    return BenchmarkConfig(
      speed_steps=sampling.NUM_STEPS,
      batch_size=32,
      guidance_scale=sampling.GUIDANCE_SCALE,
      learning_rate=1e-5,
      warmup_steps=0,
      speed_repeats=5,
      budget_seconds=600.0,
      curve_points=5,
      heldout_size=64,
      eval_batch_size=32,
    )
  raise ValueError(f"{_WHERE}: benchmark config name: expected 'tiny' or 'paper', found {name!r}")


def finetune_config(cfg: BenchmarkConfig, variant: Variant, T: int) -> finetune.FinetuneConfig:
  chunk = 1
  if variant.policy.per_step_updates and not variant.online:
    chunk = variant.grad_chunk or cfg.grad_chunk
  return finetune.FinetuneConfig(
    method=variant.method,
    num_steps=T,
    k=variant.resolve_k(T),
    remat=variant.remat,
    sampler_variant="online" if variant.online else "frozen",
    grad_chunk=chunk,
    guidance_scale=cfg.guidance_scale,
    optim=OptimConfig(learning_rate=variant.learning_rate or cfg.learning_rate, warmup_steps=cfg.warmup_steps),
  )


# --------------------------------------------------------------------------------------------- machine
def machine_info() -> dict:
  dev = jax.devices()[0]
  return {
    "jax_version": jax.__version__,
    "backend": jax.default_backend(),
    "device_kind": dev.device_kind,
    "device_count": jax.device_count(),
    "cpu_count": os.cpu_count(),
    "platform": platform.platform(),
    "python": platform.python_version(),
  }


def peak_rss_bytes() -> int:
  """Peak resident set size of this process so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
  r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return int(r if platform.system() == "Darwin" else r * 1024)


def device_peak_bytes() -> Optional[int]:
  """The allocator's peak bytes in use on device 0 (GPU/TPU), None where the backend reports none (CPU)."""
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # noqa: BLE001 -- backends without the API raise various errors
    return None
  if not stats or "peak_bytes_in_use" not in stats:
    return None
  return int(stats["peak_bytes_in_use"])


# --------------------------------------------------------------------------------------------- inputs
class Inputs:
  """Fixed training batches (cond, uncond, x_T, rng per trajectory index), shared by every method; built
  lazily and cached so that data preparation never enters a method's clock."""

  def __init__(self, task, train_dataset, batch_size: int, seed: int):
    self.task, self.train, self.batch_size, self.seed = task, train_dataset, batch_size, seed
    self.key = jax.random.key(seed)
    self._cache: dict = {}

  def __call__(self, it: int):
    if it not in self._cache:
      arrays, host = batching.batch_at(
        self.train, it, self.batch_size, self.seed, self.task.gen.tokenizer, max_length=self.task.gen.max_length
      )
      rng = jax.random.fold_in(self.key, it)
      cond, uncond = self.task.inputs(host["caption"], arrays["length"], rng=jax.random.fold_in(rng, 3))
      x_T = self.task.noise(jax.random.fold_in(rng, 1), self.batch_size)
      self._cache[it] = (x_T, cond, uncond, jax.random.fold_in(rng, 2))
    return self._cache[it]


def _tx(ft: finetune.FinetuneConfig):
  return make_optimizer(ft.optim)


# --------------------------------------------------------------------------------------------- memory
def _sampling_fn(task, T: int, guidance_scale: float):
  """`run(params, x_T, cond, uncond) -> reward [B]`: guided DDIM sampling of T steps + decode + reward."""
  timesteps = sampling.make_timesteps(
    task.gen.schedule, sampling.SamplerConfig(num_steps=T, guidance_scale=guidance_scale)
  )

  def run(params, x_T, cond, uncond):
    out = sampling.sample(task.denoise, params, task.gen.schedule, timesteps, x_T, cond, uncond, guidance_scale)
    return task.reward(task.decode(out.x0, cond), cond, None)

  return run


def sampling_memory(task, T: int, guidance_scale: float, x_T, cond, uncond) -> dict:
  """compiled_memory of plain guided DDIM sampling of T steps + decode + reward (the reference of
  'additional memory')."""
  return finetune.compiled_memory(_sampling_fn(task, T, guidance_scale), task.gen.params, x_T, cond, uncond)


def update_memory(task, ft: finetune.FinetuneConfig, x_T, cond, uncond, rng) -> dict:
  """compiled_memory of the (unrun) update of `ft` on the task's base params, with the state donated as
  `make_update_fn` does (the new state is written over the old one: 'alias' bytes)."""
  tx = _tx(ft)
  update = finetune.make_update_fn(ft, task.denoise, task.reward, task.gen.schedule, tx, decode=task.decode, jit=False)
  state = create_train_state(task.gen.params, tx)
  return finetune.compiled_memory(update, state, x_T, cond, uncond, rng, donate_argnums=(0,))


def memory_record(task, cfg: BenchmarkConfig, spec: str, T: int, x_T, cond, uncond, rng, samp: dict) -> dict:
  """The record of one (variant `spec`, T): the compiled update memory, `samp` (the `sampling_memory` at T),
  the additional memory (update - sampling), the compile seconds and the process peaks."""
  v = parse_variant(spec)
  t0 = time.time()
  ft = finetune_config(cfg, v, T)
  mem = update_memory(task, ft, x_T, cond, uncond, rng)
  record = {
    "variant": v.name,
    "spec": spec,
    "method": v.method,
    "T": T,
    "K": ft.num_grad_steps,
    "remat": v.remat,
    "grad_chunk": ft.chunk_size,
    "memory": mem,
    "sampling_memory": samp,
    "additional_memory": {"temp": mem["temp"] - samp["temp"], "total": mem["total"] - samp["total"]},
    "compile_seconds": time.time() - t0,
    "peak_rss_bytes": peak_rss_bytes(),
    "device_peak_bytes": device_peak_bytes(),
  }
  logging.info(
    "benchmark memory %s T=%d: temp %.2f MiB (sampling %.2f MiB)", v.name, T, mem["temp"] / 2**20, samp["temp"] / 2**20
  )
  return record


def measure_memory(task, cfg: BenchmarkConfig, inputs: Inputs) -> list[dict]:
  """One record per applicable (variant, T): memory, sampling memory, additional memory, peaks."""
  x_T, cond, uncond, rng = inputs(0)
  records = []
  for T in sorted(set(cfg.memory_steps)):
    samp = sampling_memory(task, T, cfg.guidance_scale, x_T, cond, uncond)
    for spec in cfg.memory_variants:
      if parse_variant(spec).applies(T):
        records.append(memory_record(task, cfg, spec, T, x_T, cond, uncond, rng, samp))
  return records


# --------------------------------------------------------------------------------------------- speed
def _block(tree):
  return jax.tree.map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, tree)


def measure_speed(
  task, cfg: BenchmarkConfig, variant: Variant, inputs: Sequence[Inputs], heldout, base_reward: float
) -> dict:
  """Timing after warm-up, then one budgeted run from the base params per entry of `inputs` (one training
  stream per seed; see the module docstring). Gains are averaged over the runs (with their standard
  deviation); `runs` keeps each run, `curve` is the first run's; `params` are the first run's final params."""
  T = cfg.speed_steps
  ft = finetune_config(cfg, variant, T)
  tx = _tx(ft)
  # The update donates its state (deleted by each call): every timing and run starts from a fresh copy of
  # state0, made outside the clock.
  update = finetune.make_update_fn(ft, task.denoise, task.reward, task.gen.schedule, tx, decode=task.decode)
  state0 = create_train_state(task.gen.params, tx)
  fresh = lambda: _block(jax.tree.map(jnp.copy, state0))
  x_T, cond, uncond, rng = inputs[0](0)
  t0 = time.perf_counter()
  # Compile + first runs, excluded from every clock. Two chained calls: the state an update returns can
  # differ from the freshly created one in weak types, so the second call may compile once more.
  _block(update(update(fresh(), x_T, cond, uncond, rng)[0], x_T, cond, uncond, rng))
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(cfg.speed_repeats):
    state = fresh()
    t0 = time.perf_counter()
    _block(update(state, x_T, cond, uncond, rng))
    times.append(time.perf_counter() - t0)
  per_traj = statistics.median(times)
  runs, params = [], None
  for r, inp in enumerate(inputs):
    run, state = _budgeted_run(cfg, update, fresh(), inp, heldout, base_reward)
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


def _median_seconds(fn, args, repeats: int) -> float:
  """Median wall seconds of `fn(*args)` (blocked) over `repeats` calls after one warm-up (compile) call."""
  _block(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    _block(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def measure_floor(task, cfg: BenchmarkConfig, T: int, inputs: Inputs) -> dict:
  """The pieces of a trajectory update's floor at T steps, on the first training batch:

  sampling_seconds: guided DDIM sampling of T steps + decode + reward, no gradient (jitted, median of
  `speed_repeats`); one_step_grad_seconds: one `value_and_grad` of EasyTune's one-step loss at step T // 2
  (guided denoiser forward + backward, x0 estimate, decode, reward); optimizer_update_seconds: one
  `apply_gradients` (clip + AdamW, finiteness check) of a params-sized gradient. Memory: the
  compiled totals of the sampling and of the one-step gradient (bytes). Per method, `floor_record` turns
  them into sampling + K one-step gradients.
  """
  x_T, cond, uncond, _ = inputs(0)
  ft = finetune_config(cfg, Variant("easytune"), T)
  run = jax.jit(_sampling_fn(task, T, cfg.guidance_scale))
  timesteps = sampling.make_timesteps(task.gen.schedule, ft.sampler_config())
  step_loss = finetune.make_step_loss(
    task.denoise, task.reward, task.gen.schedule, timesteps, cfg.guidance_scale, decode=task.decode
  )
  vg = lambda p, x, c, u: jax.value_and_grad(step_loss, has_aux=True)(p, x, T // 2, c, u)
  tx = _tx(ft)
  state = create_train_state(task.gen.params, tx)
  grads = jax.tree.map(lambda a: jnp.full_like(a, 1e-3), task.gen.params)
  apply = jax.jit(lambda st, g: apply_gradients(st, g, tx, jnp.float32(0.0)))
  params = task.gen.params
  return {
    "T": T,
    "sampling_seconds": _median_seconds(run, (params, x_T, cond, uncond), cfg.speed_repeats),
    "one_step_grad_seconds": _median_seconds(jax.jit(vg), (params, x_T, cond, uncond), cfg.speed_repeats),
    "optimizer_update_seconds": _median_seconds(apply, (state, grads), cfg.speed_repeats),
    "sampling_memory": finetune.compiled_memory(run, params, x_T, cond, uncond),
    "one_step_grad_memory": finetune.compiled_memory(vg, params, x_T, cond, uncond),
  }


def grad_steps(ft: finetune.FinetuneConfig) -> float:
  """Differentiated denoiser steps per trajectory (the row's `grad_steps`, default K): K (EasyTune,
  DRaFT-K, DRTune), 1 (ReFL), p * T expected (AlignProp)."""
  g = ft.policy.grad_steps
  return float(ft.num_grad_steps if g is None else g(ft))


def floor_record(floor: dict, ft: finetune.FinetuneConfig, seconds_per_trajectory: float) -> dict:
  """The floor of one method at `floor['T']`: sampling + (differentiated steps) x one-step gradient, with and
  without its optimizer updates, and the measured trajectory time over it (1.0 = at the floor). For the
  trajectory baselines (one backward through several steps, one decode + reward) it is an upper-side estimate
  of their floor; for EasyTune it is exactly the work of the batched path."""
  k = grad_steps(ft)
  base = floor["sampling_seconds"] + k * floor["one_step_grad_seconds"]
  with_opt = base + ft.updates_per_trajectory * floor["optimizer_update_seconds"]
  return {
    "grad_steps": k,
    "floor_seconds": base,
    "floor_with_optimizer_seconds": with_opt,
    "over_floor": seconds_per_trajectory / base,
    "over_floor_with_optimizer": seconds_per_trajectory / with_opt,
    **{k2: floor[k2] for k2 in ("sampling_seconds", "one_step_grad_seconds", "optimizer_update_seconds")},
  }


def _budgeted_run(cfg: BenchmarkConfig, update, state0, inputs: Inputs, heldout, base_reward: float):
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
    _block((state, metrics))
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


def time_to_gain(seconds: Sequence[float], rewards: Sequence[float], target: float) -> Optional[float]:
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


# --------------------------------------------------------------------------------------------- alignment
def quick_eval(task, params, ft: finetune.FinetuneConfig, evaluator, test_dataset, cfg: BenchmarkConfig) -> dict:
  """Quick evaluation of the generator with `params`: {R_precision_top_1/3, MM_Dist, FID, Diversity}."""
  res = evaluation.evaluate(
    generate_fn_for(task, params, ft),
    evaluator,
    test_dataset,
    quick=True,
    batch_size=cfg.eval_batch_size,
    max_length=min(task.gen.max_length, evaluator.max_length),
    seed=cfg.seed,
  )
  m = res["metrics"]
  return {
    "R_precision_top_1": m["R_precision_top_1"][0],
    "R_precision_top_3": m["R_precision_top_3"][0],
    "MM_Dist": m["Matching_score"][0],
    "FID": m["FID"][0],
    "Diversity": m["Diversity"][0],
  }


# --------------------------------------------------------------------------------------------- driver
def run_benchmark(
  cfg: BenchmarkConfig,
  generator_workdir: str,
  reward_workdir: str,
  data_dir: str,
  evaluator_workdir: Optional[str] = None,
  memory: bool = True,
  speed: bool = True,
) -> dict:
  """Runs the memory sweep and the speed / alignment runs; returns the JSON-able result
  {'machine', 'config', 'inputs', 'records', 'base', 'summary', 'seconds'}."""
  t_start = time.time()
  task = finetune_runner.load_task(generator_workdir, reward_workdir)
  train = load_dataset(data_dir, "train")
  inputs = Inputs(task, train, cfg.batch_size, cfg.seed)
  records = measure_memory(task, cfg, inputs) if memory else []
  streams = [inputs] + [Inputs(task, train, cfg.batch_size, cfg.seed + r) for r in range(1, cfg.speed_seeds)]
  base_info: dict = {}
  if speed:
    val = load_dataset(data_dir, "val")
    run_cfg = finetune_runner.RunConfig(
      finetune=finetune.FinetuneConfig(num_steps=cfg.speed_steps, guidance_scale=cfg.guidance_scale),
      heldout_size=cfg.heldout_size,
      seed=cfg.seed,
    )
    heldout = finetune_runner.HeldOut(task, val, run_cfg)
    base_reward = float(np.mean(heldout.rewards(task.gen.params)))
    base_info = {"heldout_reward": base_reward, "heldout_size": len(heldout.captions)}
    evaluator = test = None
    if evaluator_workdir:
      evaluator = load_trained_evaluator(evaluator_workdir).with_dataset_stats(task.gen.mean, task.gen.std)
      test = load_dataset(data_dir, "test")
      base_ft = finetune_config(cfg, Variant("easytune"), cfg.speed_steps)
      base_info["eval"] = quick_eval(task, task.gen.params, base_ft, evaluator, test, cfg)
    floor = None
    for spec in cfg.speed_variants:
      v = parse_variant(spec)
      if not v.applies(cfg.speed_steps):
        continue
      logging.info("benchmark speed %s T=%d", v.name, cfg.speed_steps)
      sp = measure_speed(task, cfg, v, streams, heldout, base_reward)
      params = sp.pop("params")
      if cfg.floor:
        if floor is None:
          floor = measure_floor(task, cfg, cfg.speed_steps, inputs)
          base_info["floor"] = floor
        sp["floor"] = floor_record(floor, finetune_config(cfg, v, cfg.speed_steps), sp["seconds_per_trajectory"])
      rec = _find(records, v.name, cfg.speed_steps)
      if rec is None:
        rec = {
          "variant": v.name,
          "spec": spec,
          "method": v.method,
          "T": cfg.speed_steps,
          "K": sp["K"],
          "remat": v.remat,
        }
        records.append(rec)
      rec["speed"] = sp
      if evaluator is not None:
        ev = quick_eval(task, params, finetune_config(cfg, v, cfg.speed_steps), evaluator, test, cfg)
        base_mm = base_info["eval"]["MM_Dist"]
        ev["MM_Dist_relative_improvement"] = (base_mm - ev["MM_Dist"]) / base_mm
        rec["alignment"] = ev
      del params
  result = {
    "machine": machine_info(),
    "config": cfg.to_dict(),
    "inputs": {
      "generator_workdir": str(generator_workdir),
      "reward_workdir": str(reward_workdir),
      "data_dir": str(data_dir),
      "evaluator_workdir": evaluator_workdir,
      "latent_shape": list(task.gen.latent_shape),
      "max_length": task.gen.max_length,
      "param_bytes": int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(task.gen.params))),
    },
    "records": records,
    "base": base_info,
  }
  result["summary"] = summarize(result)
  result["seconds"] = time.time() - t_start
  return result


def _find(records, name, T):
  for r in records:
    if r["variant"] == name and r["T"] == T:
      return r
  return None


def summarize(result: dict) -> dict:
  """Headline figures next to the paper's (EasyTune's additional memory 31.16% of DRaFT-50's... see
  docs): additional memory of EasyTune as a fraction of DRaFT-T (no remat) at each T, EasyTune's memory
  at the largest vs the smallest T, and the gain-per-second ratio EasyTune / DRaFT-T."""
  recs = result["records"]
  out: dict = {"easytune_over_draft_T_additional": {}, "easytune_over_draft_T_total": {}}
  Ts = sorted({r["T"] for r in recs if "memory" in r})
  for T in Ts:
    e, d = _find(recs, "EasyTune", T), _find(recs, "DRaFT-T", T)
    if e and d and "memory" in e and "memory" in d:
      out["easytune_over_draft_T_additional"][str(T)] = _ratio(
        e["additional_memory"]["total"], d["additional_memory"]["total"]
      )
      out["easytune_over_draft_T_total"][str(T)] = _ratio(e["memory"]["total"], d["memory"]["total"])
  es = [_find(recs, "EasyTune", T) for T in Ts]
  es = [r for r in es if r and "memory" in r]
  if len(es) >= 2:
    out["easytune_memory_largest_over_smallest_T"] = {
      "T": [es[0]["T"], es[-1]["T"]],
      "temp": _ratio(es[-1]["memory"]["temp"], es[0]["memory"]["temp"]),
      "total": _ratio(es[-1]["memory"]["total"], es[0]["memory"]["total"]),
    }
  sp = {r["variant"]: r["speed"] for r in recs if "speed" in r}
  # Per method family, the variant (learning rate) with the largest gain per second: a tuned comparison.
  best: dict = {}
  for r in recs:
    if "speed" in r:
      fam = parse_variant(r["spec"]).family
      rate = sp[r["variant"]]["reward_gain_per_second"]
      if fam not in best or rate > sp[best[fam]]["reward_gain_per_second"]:
        best[fam] = r["variant"]
  out["best_variant_per_method"] = best
  # EasyTune = its best variant over both samplers; every comparison below is against that one.
  ez = [v for f, v in best.items() if f.startswith("EasyTune")]
  e = max(ez, key=lambda v: sp[v]["reward_gain_per_second"]) if ez else None
  d = best.get("DRaFT-T")
  if e:
    out["easytune_variant"] = e
  if e and d:
    out["gain_per_second_easytune_over_draft_T"] = _ratio(
      sp[e]["reward_gain_per_second"], sp[d]["reward_gain_per_second"]
    )
    out["seconds_per_trajectory_draft_T_over_easytune"] = _ratio(
      sp[d]["seconds_per_trajectory"], sp[e]["seconds_per_trajectory"]
    )
  others = [sp[v]["reward_gain_per_second"] for f, v in best.items() if not f.startswith("EasyTune")]
  if e and others:
    out["gain_per_second_easytune_over_best_baseline"] = _ratio(sp[e]["reward_gain_per_second"], max(others))
  if e:
    out["speed_T"] = sp[e]["T"]
  if sp:
    # Rates over a fixed budget understate a method that saturates early; also compare the time to reach
    # the same gain and each method's best rate along its held-out curve.
    target = result["config"].get("target_gain")
    if target is None:
      target = 0.5 * max(s["reward_gain"] for s in sp.values())
    if target > 0:
      per_run = {
        v: [time_to_gain(run["curve"]["seconds"], run["curve"]["reward"], target) for run in s.get("runs", [s])]
        for v, s in sp.items()
      }
      # Mean over the runs; None unless every run reaches the target.
      ttg = {v: (float(np.mean(ts)) if None not in ts else None) for v, ts in per_run.items()}
      out["target_gain"] = target
      out["seconds_to_target_gain"] = ttg
      out["seconds_to_target_gain_per_run"] = per_run
      if e and ttg.get(e):
        out["time_to_target_over_easytune"] = {v: _ratio(t, ttg[e]) for v, t in ttg.items() if v != e}
    out["peak_gain_per_second"] = {v: s.get("peak_gain_per_second") for v, s in sp.items()}
  out["paper"] = {"easytune_memory_over_draft_50": 0.3116, "speedup_over_draft_50": 7.3}
  return out


def _ratio(a, b) -> Optional[float]:
  return float(a) / float(b) if b not in (0, None) and a is not None else None


# --------------------------------------------------------------------------------------------- outputs
_MiB = 2.0**20


def _fmt(x, digits=3):
  if x is None:
    return "-"
  if isinstance(x, float) and not math.isfinite(x):
    return str(x)
  return f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def _pm(speed: dict, key: str, spec: str) -> str:
  """'mean ± std' of a speed field (just the value for a single run)."""
  std = speed.get(key + "_std")
  v = speed.get(key)
  if v is None:
    return "-"
  return f"{v:{spec}}" + (f" ± {std:{spec.lstrip('+')}}" if std is not None else "")


def markdown(result: dict) -> str:
  recs = result["records"]
  m = result["machine"]
  lines = [f"# Benchmark ({m['backend']}: {m['device_kind']}, {m['cpu_count']} CPUs, jax {m['jax_version']})", ""]
  mem = [r for r in recs if "memory" in r]
  if mem:
    lines += [
      "## Compiled update memory (MiB; XLA memory_analysis, not run)",
      "",
      "| variant | T | K | temp | total | sampling total | additional (total) | additional (temp) |",
      "|---|---|---|---|---|---|---|---|",
    ]
    for r in mem:
      lines.append(
        f"| {r['variant']} | {r['T']} | {r['K']} | {r['memory']['temp'] / _MiB:.3f} | "
        f"{r['memory']['total'] / _MiB:.3f} | {r['sampling_memory']['total'] / _MiB:.3f} | "
        f"{r['additional_memory']['total'] / _MiB:.3f} | {r['additional_memory']['temp'] / _MiB:.3f} |"
      )
    lines.append("")
  sp = [r for r in recs if "speed" in r]
  if sp:
    base = result.get("base", {})
    lines += [
      f"## Speed and reward at T={sp[0]['speed']['T']} (base held-out reward {_fmt(base.get('heldout_reward'), 4)})",
      "",
      "| variant | s/trajectory | s/update | trajectories | train s | final reward | gain | gain/s | "
      "peak gain/s | s to target |",
      "|---|---|---|---|---|---|---|---|---|---|",
    ]
    ttg = result["summary"].get("seconds_to_target_gain", {})
    for r in sp:
      s = r["speed"]
      lines.append(
        f"| {r['variant']} | {s['seconds_per_trajectory']:.4f} | {s['seconds_per_update']:.4f} | "
        f"{s['trajectories']:.0f} | {s['train_seconds']:.1f} | {s['final_reward']:.4f} | "
        f"{_pm(s, 'reward_gain', '+.4f')} | {_pm(s, 'reward_gain_per_second', '+.5f')} | "
        f"{_pm(s, 'peak_gain_per_second', '.4f')} | {_fmt(ttg.get(r['variant']))} |"
      )
    fl = [r for r in sp if "floor" in r["speed"]]
    if fl:
      f0 = fl[0]["speed"]["floor"]
      lines += [
        "",
        f"Floor at T={sp[0]['speed']['T']}: sampling alone {f0['sampling_seconds']:.4f} s, one one-step "
        f"gradient {f0['one_step_grad_seconds']:.4f} s, one optimizer update "
        f"{f0['optimizer_update_seconds']:.4f} s; floor = sampling + (differentiated steps) x one-step "
        "gradient (+ the method's optimizer updates).",
        "",
        "| variant | C | differentiated steps | s/trajectory | floor s | / floor | floor+opt s | / floor+opt |",
        "|---|---|---|---|---|---|---|---|",
      ]
      for r in fl:
        f, s_ = r["speed"]["floor"], r["speed"]
        lines.append(
          f"| {r['variant']} | {s_.get('grad_chunk', 1)} | {f['grad_steps']:g} | "
          f"{s_['seconds_per_trajectory']:.4f} | {f['floor_seconds']:.4f} | {f['over_floor']:.2f} | "
          f"{f['floor_with_optimizer_seconds']:.4f} | {f['over_floor_with_optimizer']:.2f} |"
        )
      bf = result.get("base", {}).get("floor")
      if bf:
        lines += [
          "",
          f"Compiled memory: sampling {bf['sampling_memory']['total'] / _MiB:.3f} MiB, one one-step "
          f"gradient {bf['one_step_grad_memory']['total'] / _MiB:.3f} MiB (totals).",
        ]
    n_runs = len(sp[0]["speed"].get("runs", [None]))
    lines += [
      "",
      "gain/s: final gain / train s over the whole budget; peak gain/s: the best gain / train s at "
      "a held-out evaluation; s to target: train s until the held-out gain first reaches "
      f"{_fmt(result['summary'].get('target_gain'))} (interpolated between evaluations; - = never)."
      + (
        f" Mean ± standard deviation over {n_runs} runs (seeds) per method; trajectories, train s "
        "and final reward are means."
        if n_runs > 1
        else ""
      ),
      "",
    ]
  al = [r for r in recs if "alignment" in r]
  if al:
    b = result["base"]["eval"]
    lines += [
      "## Alignment (quick evaluation, same budget per method)",
      "",
      "| variant | R@1 | R@3 | MM-Dist | FID | Diversity | MM-Dist rel. improvement |",
      "|---|---|---|---|---|---|---|",
      f"| base | {b['R_precision_top_1']:.3f} | {b['R_precision_top_3']:.3f} | {b['MM_Dist']:.3f} | "
      f"{b['FID']:.3f} | {b['Diversity']:.3f} | - |",
    ]
    for r in al:
      a = r["alignment"]
      lines.append(
        f"| {r['variant']} | {a['R_precision_top_1']:.3f} | {a['R_precision_top_3']:.3f} | "
        f"{a['MM_Dist']:.3f} | {a['FID']:.3f} | {a['Diversity']:.3f} | "
        f"{a['MM_Dist_relative_improvement']:+.2%} |"
      )
    lines.append("")
  s = result["summary"]
  lines += [
    "## Headline figures",
    "",
    "- EasyTune additional memory / DRaFT-T (no remat): "
    + ", ".join(f"T={T}: {_fmt(v)}" for T, v in s.get("easytune_over_draft_T_additional", {}).items())
    + " (paper: 31.16% total memory vs DRaFT-50)",
    f"- EasyTune memory, largest / smallest T: {s.get('easytune_memory_largest_over_smallest_T')}",
    f"- reward gain per second, EasyTune / DRaFT-T: {_fmt(s.get('gain_per_second_easytune_over_draft_T'))}"
    " (paper: 7.3x faster than DRaFT-50); EasyTune / best other method: "
    f"{_fmt(s.get('gain_per_second_easytune_over_best_baseline'))} (each method at its best learning "
    f"rate among those run: {', '.join(s.get('best_variant_per_method', {}).values())})",
    f"- time to the target gain, method / EasyTune ({s.get('easytune_variant', '-')}): "
    + ", ".join(f"{v}: {_fmt(x)}" for v, x in s.get("time_to_target_over_easytune", {}).items()),
    "",
  ]
  return "\n".join(lines)


def write_outputs(result: dict, out_dir: str) -> dict:
  """benchmark.json, benchmark.md, memory_vs_T.png, reward_vs_time.png under out_dir; returns their paths."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  paths = {"json": out / "benchmark.json", "md": out / "benchmark.md"}
  paths["json"].write_text(json.dumps(result, indent=2))
  paths["md"].write_text(markdown(result))
  recs = result["records"]
  mem_curves: dict = {}
  for r in recs:
    if "memory" in r:
      ts, vs = mem_curves.setdefault(r["variant"], ([], []))
      ts.append(r["T"])
      vs.append(r["memory"]["total"] / _MiB)
  if mem_curves:
    paths["memory_png"] = pathlib.Path(
      viz.plot_curves(
        {k: v for k, v in mem_curves.items() if len(v[0]) >= 1},
        out / "memory_vs_T.png",
        title="compiled update memory",
        xlabel="DDIM steps T",
        ylabel="MiB",
        figsize=(6.5, 4.5),
      )
    )
  rw = {r["variant"]: (r["speed"]["curve"]["seconds"], r["speed"]["curve"]["reward"]) for r in recs if "speed" in r}
  if rw:
    paths["reward_png"] = pathlib.Path(
      viz.plot_curves(
        rw,
        out / "reward_vs_time.png",
        title="held-out reward vs training wall time",
        xlabel="seconds",
        ylabel="held-out reward",
        figsize=(6.5, 4.5),
      )
    )
  return {k: str(v) for k, v in paths.items()}
