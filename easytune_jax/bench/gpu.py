"""One short accelerator run (issue 20 item 6): paper-size compiled memory over T and the T = 50 speed run.

`run_gpu_benchmark(config, out_dir)` (config: the 'paper' preset of easytune_jax/configs/gpu.py) builds the converted official MLD + official SPM task with random
weights (`bench.official_memory.build_task`; speed and memory do not depend on the weights' values), then

  memory  for each T in `memory_steps` and each of `memory_variants` (EasyTune, DRaFT-1, DRaFT-T): the compiled
          update's memory and plain sampling's (`bench.measure.memory_record` / `sampling_memory`: XLA
          memory_analysis, plus the allocator's peak on an accelerator);
  speed   at T = `speed_steps`, each of `speed_variants` (EasyTune sequential and grad_chunk batched, DRaFT-1,
          DRaFT-T, ReFL): `bench.speed.measure_speed` (compile excluded, timed calls, then updates for
          `seconds` of training wall time with held-out rewards of full samples along the way).

Records are appended to benchmark.json (and benchmark.md / plots rewritten by `bench.report.write_outputs`)
after EACH measurement, so a run cut short keeps what it measured. A measurement that would start after
`max_seconds` is skipped and named in `skipped`. With `GpuBenchConfig()` (the defaults, the 'smoke' preset) the
same code paths run on the tiny official configs with short budgets (a CPU test).

Budget on one GPU (the 'paper' preset): 9 memory compiles (3 sampling) + 5 speed variants x (compile + `seconds` of
training + held-out sampling), under `max_seconds` = 450 s in all.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time

import jax
import numpy as np
from absl import logging

from easytune_jax.bench import official_memory
from easytune_jax.bench.config import BenchmarkConfig
from easytune_jax.bench.measure import machine_info, memory_record, sampling_memory
from easytune_jax.bench.report import write_outputs
from easytune_jax.bench.speed import measure_speed
from easytune_jax.bench.summary import summarize
from easytune_jax.bench.variants import parse_variant
from easytune_jax.core import sampling

_WHERE = __name__.replace(".", "/") + ".py"


@dataclasses.dataclass(frozen=True)
class GpuBenchConfig:
  """What one accelerator run measures. `size`: 'paper' or 'tiny' (`official_memory.model_configs`);
  `max_length`: frames (None = 196 for 'paper', 8 for 'tiny'); `seconds`: training budget per speed variant;
  `max_seconds`: no measurement starts after this many seconds of the run; `heldout_size`: captions of the
  held-out reward (full samples at `speed_steps`).

  Defaults: the CPU smoke run (the 'smoke' preset of configs/gpu.py): the same code on the tiny official configs,
  EasyTune memory at T in (2, 4) and its batched (C = 2) speed run at T = 2 for 0.5 s. Each update still compiles
  (~30-40 s apiece on a 2-core CPU), so it is kept to three compiles (the baselines' memory and speed records go
  through the same functions, tested in tests/test_benchmark.py and tests/test_official_memory.py). The
  accelerator run is the 'paper' preset."""

  size: str = "tiny"
  memory_variants: tuple = ("easytune",)
  memory_steps: tuple = (2, 4)
  speed_variants: tuple = ("easytune+chunk2",)
  speed_steps: int = 2
  seconds: float = 0.5
  batch_size: int = 2
  max_length: int | None = None
  reward_text_length: int = 4
  guidance_scale: float = sampling.GUIDANCE_SCALE
  learning_rate: float = 1e-5
  speed_repeats: int = 1
  curve_points: int = 1
  heldout_size: int = 2
  max_seconds: float = 3600.0
  seed: int = 0

  def __post_init__(self):
    if self.max_length is None:
      object.__setattr__(self, "max_length", 196 if self.size == "paper" else 8)
    if not self.seconds > 0 or not self.max_seconds > 0:
      raise ValueError(
        f"{_WHERE}: GpuBenchConfig: expected seconds and max_seconds > 0, found {self.seconds}, {self.max_seconds}"
      )
    self.memory_config()  # validates size, lengths and variants

  def memory_config(self, batch_size: int | None = None, seed: int | None = None):
    return official_memory.OfficialMemoryConfig(
      size=self.size,
      variants=tuple(self.memory_variants),
      steps=tuple(self.memory_steps),
      batch_size=batch_size or self.batch_size,
      max_length=self.max_length,
      reward_text_length=self.reward_text_length,
      guidance_scale=self.guidance_scale,
      learning_rate=self.learning_rate,
      seed=self.seed if seed is None else seed,
    )

  def benchmark_config(self) -> BenchmarkConfig:
    return BenchmarkConfig(
      memory_variants=tuple(self.memory_variants),
      memory_steps=tuple(self.memory_steps),
      speed_variants=tuple(self.speed_variants),
      speed_steps=self.speed_steps,
      batch_size=self.batch_size,
      guidance_scale=self.guidance_scale,
      learning_rate=self.learning_rate,
      warmup_steps=0,
      speed_repeats=self.speed_repeats,
      budget_seconds=self.seconds,
      curve_points=self.curve_points,
      heldout_size=self.heldout_size,
      seed=self.seed,
      floor=False,
    )


class FixedInputs:
  """`inputs(it) -> (x_T, cond, uncond, rng)` of `bench.speed.measure_speed`: the captions of
  `official_memory.task_inputs` with fresh noise and keys per trajectory index (cached)."""

  def __init__(self, task, config: GpuBenchConfig):
    self.seed = config.seed
    self._x_T, self.cond, self.uncond, _ = official_memory.task_inputs(task, config.memory_config())
    self._task, self._key, self._cache = task, jax.random.key(config.seed + 1), {}

  def __call__(self, it: int):
    if it not in self._cache:
      k = jax.random.fold_in(self._key, it)
      self._cache[it] = (
        self._task.noise(jax.random.fold_in(k, 1), self._x_T.shape[0]),
        self.cond,
        self.uncond,
        jax.random.fold_in(k, 2),
      )
    return self._cache[it]


class HeldOut:
  """The held-out reward of `measure_speed`: mean reward of full guided samples of fixed noise and captions."""

  def __init__(self, task, config: GpuBenchConfig):
    mcfg = config.memory_config(batch_size=config.heldout_size, seed=config.seed + 7)
    self.x_T, self.cond, self.uncond, _ = official_memory.task_inputs(task, mcfg)
    self.captions = official_memory.captions(config.heldout_size)
    self.task, self.config = task, config

  def rewards(self, params) -> np.ndarray:
    terms = self.task.sample_rewards(
      params, self.cond, self.uncond, self.x_T, self.config.guidance_scale, self.config.speed_steps
    )
    return np.asarray(self.task.reward_fn.combine(terms))


def run_gpu_benchmark(config: GpuBenchConfig, out_dir: str | None = None, work_dir: str | None = None) -> dict:
  """Memory sweep, then speed runs; returns the result (the `bench.benchmark.run_benchmark` layout plus 'models',
  'gpu_config', 'skipped', 'phase_seconds') and writes it under `out_dir` after each measurement."""
  t_start = time.time()
  tmp = None
  if work_dir is None:
    tmp = tempfile.TemporaryDirectory(prefix="gpu_bench_")
    work_dir = tmp.name
  try:
    task, info = official_memory.build_task(work_dir, config.memory_config())
    bcfg = config.benchmark_config()
    result = {
      "machine": machine_info(),
      "config": bcfg.to_dict(),
      "gpu_config": json.loads(json.dumps(dataclasses.asdict(config))),
      "models": info["param_counts"],
      "inputs": {"latent_shape": list(task.gen.latent_shape), "max_length": config.max_length},
      "records": [],
      "base": {},
      "skipped": [],
      "phase_seconds": {"build": time.time() - t_start},
    }

    def save():
      result["summary"] = summarize(result)
      result["seconds"] = time.time() - t_start
      if out_dir:
        write_outputs(result, out_dir)

    def late(what: str) -> bool:
      if time.time() - t_start > config.max_seconds:
        result["skipped"].append(what)
        logging.warning("gpu benchmark: %s skipped (past max_seconds=%.0f)", what, config.max_seconds)
        return True
      return False

    x_T, cond, uncond, rng = official_memory.task_inputs(task, config.memory_config())
    t0 = time.time()
    for T in config.memory_steps:
      samp = None
      for spec in config.memory_variants:
        name = parse_variant(spec).name
        if late(f"memory {name} T={T}"):
          continue
        if samp is None:
          samp = sampling_memory(task, T, config.guidance_scale, x_T, cond, uncond)
        result["records"].append(memory_record(task, bcfg, spec, T, x_T, cond, uncond, rng, samp))
        save()
    result["phase_seconds"]["memory"] = time.time() - t0

    t0 = time.time()
    inputs, heldout = FixedInputs(task, config), HeldOut(task, config)
    base_reward = None
    for spec in config.speed_variants:
      v = parse_variant(spec)
      if late(f"speed {v.name} T={config.speed_steps}"):
        continue
      if base_reward is None:
        base_reward = float(np.mean(heldout.rewards(task.gen.params)))
        result["base"] = {"heldout_reward": base_reward, "heldout_size": config.heldout_size}
      sp = measure_speed(task, bcfg, v, [inputs], heldout, base_reward)
      sp.pop("params")
      result["records"].append(
        {
          "variant": v.name,
          "spec": spec,
          "method": v.method,
          "T": config.speed_steps,
          "K": sp["K"],
          "remat": v.remat,
          "speed": sp,
        }
      )
      logging.info(
        "gpu benchmark speed %s: %.4f s per trajectory, %.1f s compile",
        v.name,
        sp["seconds_per_trajectory"],
        sp["compile_seconds"],
      )
      save()
    result["phase_seconds"]["speed"] = time.time() - t0
    save()
    return result
  finally:
    if tmp is not None:
      tmp.cleanup()
