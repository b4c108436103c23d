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
             spent, with the held-out reward (`bundles.task.HeldOut`) at the start, at a few points in
             between (evaluation time excluded from the clock) and at the end -> reward gain per second over
             the budget, the peak gain per second along the curve, and the seconds to reach a common
             target gain (`time_to_gain`; a method that saturates early is not penalised by the budget).
  alignment  With an evaluator: the quick evaluation (`evaluation.evaluate(..., quick=True)`) of the base
             model and of each method's final params: R-precision, MM-Dist (Matching_score), FID,
             diversity, and the relative MM-Dist improvement over the base model.

Outputs (`bench.report.write_outputs`): benchmark.json (machine description + one record per variant x T),
benchmark.md (tables) and PNG plots (memory vs T, held-out reward vs training wall time).

This module composes the parts (`run_benchmark`): `bench/variants.py` (the variant grammar), `bench/config.py`
(`BenchmarkConfig`, presets), `bench/measure.py` (machine, inputs, compiled memory, floor), `bench/speed.py`
(timing and budgeted runs), `bench/summary.py` (headline figures), `bench/report.py` (JSON, markdown, plots).
"""

from __future__ import annotations

import time

import jax
import numpy as np
from absl import logging

from easytune_jax import finetune
from easytune_jax.bench.config import BenchmarkConfig, finetune_config
from easytune_jax.bench.measure import Inputs, floor_record, machine_info, measure_floor, measure_memory
from easytune_jax.bench.speed import mean_seconds_per_trajectory, measure_speed
from easytune_jax.bench.summary import find_record, summarize
from easytune_jax.bench.variants import Variant, parse_variant
from easytune_jax.bundles.evaluator import load_trained_evaluator
from easytune_jax.bundles.finetuned import RunConfig
from easytune_jax.bundles.task import HeldOut, generate_fn_for, load_task
from easytune_jax.data.humanml3d import load_dataset
from easytune_jax.eval import evaluation


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


def selection_fns(task, ft: finetune.FinetuneConfig, evaluator, val_dataset, test_dataset, cfg: BenchmarkConfig):
  """(select, test_eval) of the equal-time comparison: select(params) -> (score, val quick-evaluation), the score
  cfg.select_metric signed so that higher is better (R@1, -MM-Dist); test_eval(params) -> the test quick-evaluation."""
  sign = -1.0 if cfg.select_metric == "MM_Dist" else 1.0

  def select(params):
    m = quick_eval(task, params, ft, evaluator, val_dataset, cfg)
    return sign * m[cfg.select_metric], m

  return select, lambda params: quick_eval(task, params, ft, evaluator, test_dataset, cfg)


# --------------------------------------------------------------------------------------------- driver
def run_benchmark(
  cfg: BenchmarkConfig,
  generator_workdir: str,
  reward_workdir: str,
  data_dir: str,
  evaluator_workdir: str | None = None,
  memory: bool = True,
  speed: bool = True,
) -> dict:
  """Runs the memory sweep and the speed / alignment runs; returns the JSON-able result
  {'machine', 'config', 'inputs', 'records', 'base', 'summary', 'seconds'}."""
  t_start = time.time()
  task = load_task(generator_workdir, reward_workdir)
  train = load_dataset(data_dir, "train")
  inputs = Inputs(task, train, cfg.batch_size, cfg.seed)
  records = measure_memory(task, cfg, inputs) if memory else []
  streams = [inputs] + [Inputs(task, train, cfg.batch_size, cfg.seed + r) for r in range(1, cfg.speed_seeds)]
  base_info: dict = {}
  if speed:
    val = load_dataset(data_dir, "val")
    run_cfg = RunConfig(
      finetune=finetune.FinetuneConfig(num_steps=cfg.speed_steps, guidance_scale=cfg.guidance_scale),
      heldout_size=cfg.heldout_size,
      seed=cfg.seed,
    )
    heldout = HeldOut(task, val, run_cfg)
    base_reward = float(np.mean(heldout.rewards(task.gen.params)))
    base_info = {"heldout_reward": base_reward, "heldout_size": len(heldout.captions)}
    evaluator = test = None
    if evaluator_workdir:
      evaluator = load_trained_evaluator(evaluator_workdir).with_dataset_stats(task.gen.mean, task.gen.std)
      test = load_dataset(data_dir, "test")
      base_ft = finetune_config(cfg, Variant("easytune"), cfg.speed_steps)
      base_info["eval"] = quick_eval(task, task.gen.params, base_ft, evaluator, test, cfg)
    elif cfg.select_metric is not None:
      raise ValueError(f"BenchmarkConfig.select_metric={cfg.select_metric!r} needs an evaluator_workdir")
    floor = None
    for spec in cfg.speed_variants:
      v = parse_variant(spec)
      if not v.applies(cfg.speed_steps):
        continue
      logging.info("benchmark speed %s T=%d", v.name, cfg.speed_steps)
      ft_v = finetune_config(cfg, v, cfg.speed_steps)
      select = test_eval = None
      if cfg.select_metric is not None:
        select, test_eval = selection_fns(task, ft_v, evaluator, val, test, cfg)
      sp = measure_speed(task, cfg, v, streams, heldout, base_reward, select, test_eval)
      params = sp.pop("params")
      if cfg.floor:
        if floor is None:
          floor = measure_floor(task, cfg, cfg.speed_steps, inputs)
          base_info["floor"] = floor
        sp["floor"] = floor_record(floor, finetune_config(cfg, v, cfg.speed_steps), sp["mean_seconds_per_trajectory"])
      rec = find_record(records, v.name, cfg.speed_steps)
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


def refresh(result: dict) -> dict:
  """A stored result (benchmark.json) with what is derived from its measurements recomputed by this code: every
  speed record's mean seconds per trajectory (from its runs) and floor record (from the stored primitives), and
  the summary. Nothing is re-measured; `launch/benchmark.py --from_json` re-renders a run with it."""
  cfg = BenchmarkConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in result["config"].items()})
  floor = result.get("base", {}).get("floor")
  for r in result["records"]:
    sp = r.get("speed")
    if sp is None:
      continue
    sp["mean_seconds_per_trajectory"] = mean_seconds_per_trajectory(sp["runs"])
    if floor is not None:
      ft = finetune_config(cfg, parse_variant(r["spec"]), sp["T"])
      sp["floor"] = floor_record(floor, ft, sp["mean_seconds_per_trajectory"])
  result["summary"] = summarize(result)
  return result
