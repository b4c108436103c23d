"""The benchmark's measurements on one task: the machine and its process peaks, the fixed training inputs shared
by every method (`Inputs`), XLA's compiled memory of an update and of plain sampling (`memory_record`,
`measure_memory`), and the floor of a trajectory update (sampling + one-step gradients, `measure_floor`,
`floor_record`). The speed / reward-gain runs are in `bench/speed.py`."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time

import jax
import jax.numpy as jnp
from absl import logging

from easytune_jax import finetune
from easytune_jax.bench.config import BenchmarkConfig, finetune_config
from easytune_jax.bench.variants import Variant, parse_variant
from easytune_jax.core import sampling
from easytune_jax.core.optim import apply_gradients, create_train_state, make_optimizer
from easytune_jax.data import batching


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


def device_peak_bytes() -> int | None:
  """The allocator's peak bytes in use on device 0 (GPU/TPU), None where the backend reports none (CPU)."""
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # noqa: BLE001 -- backends without the API raise various errors
    return None
  if not stats or "peak_bytes_in_use" not in stats:
    return None
  return int(stats["peak_bytes_in_use"])


def block_until_ready(tree):
  """`tree` with every array's computation finished (the clocks' stop point)."""
  return jax.tree.map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, tree)


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


def make_tx(ft: finetune.FinetuneConfig):
  """The optimizer of `ft` (every parameter trains)."""
  return make_optimizer(ft.optim)


# --------------------------------------------------------------------------------------------- memory
def _sampling_fn(task, T: int, guidance_scale: float):
  """`run(params, x_T, cond, uncond) -> reward [B]`: guided DDIM sampling of T steps + decode + reward."""
  timesteps = sampling.make_timesteps(
    task.gen.process, sampling.SamplerConfig(num_steps=T, guidance_scale=guidance_scale)
  )

  def run(params, x_T, cond, uncond):
    out = sampling.sample(task.denoise, params, task.gen.process, timesteps, x_T, cond, uncond, guidance_scale)
    return task.reward(task.decode(out.x0, cond), cond, None)

  return run


def sampling_memory(task, T: int, guidance_scale: float, x_T, cond, uncond) -> dict:
  """compiled_memory of plain guided DDIM sampling of T steps + decode + reward (the reference of
  'additional memory')."""
  return finetune.compiled_memory(_sampling_fn(task, T, guidance_scale), task.gen.params, x_T, cond, uncond)


def train_state(task, ft: finetune.FinetuneConfig, tx):
  """The update's state at the start: the task's base params, or the adapter of `ft.lora` on them."""
  if ft.lora.enabled:
    return create_train_state(finetune.lora.init_adapter(task.gen.params, ft.lora, jax.random.key(0)), tx)
  return create_train_state(task.gen.params, tx)


def update_memory(task, ft: finetune.FinetuneConfig, x_T, cond, uncond, rng) -> dict:
  """compiled_memory of the (unrun) update of `ft` on the task's base params (an adapter update also takes the
  frozen base as an argument), with the state donated as `make_update_fn` does (the new state is written over
  the old one: 'alias' bytes)."""
  tx = make_tx(ft)
  update = finetune.make_update_fn(ft, task.denoise, task.reward, task.gen.process, tx, decode=task.decode, jit=False)
  state = train_state(task, ft, tx)
  base = (None, task.gen.params) if ft.lora.enabled else ()
  return finetune.compiled_memory(update, state, x_T, cond, uncond, rng, *base, donate_argnums=(0,))


def state_bytes(task, ft: finetune.FinetuneConfig) -> dict:
  """Bytes of the update's state at the start: trainable params (the base's or the adapter's) and optimizer
  state (AdamW moments; none for frozen parameters)."""
  state = jax.eval_shape(lambda: train_state(task, ft, make_tx(ft)))
  return {
    "trainable_params": finetune.lora.tree_bytes(state.params),
    "opt_state": finetune.lora.tree_bytes(state.opt_state),
  }


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
    "state_bytes": state_bytes(task, ft),
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


def _median_seconds(fn, args, repeats: int) -> float:
  """Median wall seconds of `fn(*args)` (blocked) over `repeats` calls after one warm-up (compile) call."""
  block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    block_until_ready(fn(*args))
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
  timesteps = sampling.make_timesteps(task.gen.process, ft.sampler_config())
  step_loss = finetune.make_step_loss(
    task.denoise, task.reward, task.gen.process, timesteps, cfg.guidance_scale, decode=task.decode
  )
  vg = lambda p, x, c, u: jax.value_and_grad(step_loss, has_aux=True)(p, x, T // 2, c, u)
  tx = make_tx(ft)
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
