"""The benchmark's measurements on one task: the machine and its process peaks, the fixed training inputs shared
by every method (`Inputs`), XLA's compiled memory of an update and of plain sampling (`memory_record`,
`measure_memory`), and the floor of a trajectory update (its primitives timed inside a compiled loop, `measure_floor`,
`floor_record`). The speed / reward-gain runs are in `bench/speed.py`."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from easytune_jax import finetune
from easytune_jax.bench.config import BenchmarkConfig, finetune_config
from easytune_jax.bench.variants import Variant, parse_variant
from easytune_jax.core import sampling
from easytune_jax.core.machine import cpu_flags, cpu_model
from easytune_jax.core.optim import apply_gradients, create_train_state, make_optimizer
from easytune_jax.data import batching


# --------------------------------------------------------------------------------------------- machine
def machine_info() -> dict:
  """The device, the CPU's model and instruction-set flags (`core.machine`), versions: what a timing depends on."""
  dev = jax.devices()[0]
  return {
    "cpu_model": cpu_model(),
    "cpu_flags": cpu_flags(),
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


def _min_seconds(fn, args, repeats: int) -> float:
  """The fastest wall seconds of `fn(*args)` (blocked) over `repeats` calls after one warm-up (compile) call."""
  block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return min(times)


def _looped(fn, n: int):
  """`fn(*args)` run `n` times in one jitted `lax.scan`, as inside an update: each iteration's first argument
  moves by 1e-30 x the sum of the previous output's leaves, so iterations are chained (nothing is hoisted out of
  the loop) and every output is used (nothing is dead). A float first argument is a pytree of float arrays; an
  argument that is a train state is carried as the new state (`fn` returns one)."""

  def run(*args):
    def body(carry, _):
      out = fn(*carry)
      if isinstance(out, tuple) and hasattr(out[0], "params"):  # (state, info): the state is the next input
        return (out[0], *carry[1:]), None
      s = sum(jnp.sum(leaf).astype(jnp.float32) for leaf in jax.tree.leaves(out))
      first = jax.tree.map(lambda a: a + (1e-30 * s).astype(a.dtype), carry[0])
      return (first, *carry[1:]), None

    return jax.lax.scan(body, args, None, length=n)[0]

  return jax.jit(run)


def _seconds_per_iteration(fn, args, repeats: int, n: int) -> float:
  """What one call of `fn` costs inside a compiled loop: (fastest time of 2n chained iterations - fastest of n) / n
  (`_looped`), so one call's dispatch and the loop's entry cancel and the fused, warm steady state of an update
  is what is measured. Clipped at 0 (timer noise on a primitive too small to see)."""
  one, two = _min_seconds(_looped(fn, n), args, repeats), _min_seconds(_looped(fn, 2 * n), args, repeats)
  return max(two - one, 0.0) / n


PRIMITIVES = ("nograd_step", "grad_step", "reward_grad", "reward_eval", "optimizer_update")


def measure_floor(task, cfg: BenchmarkConfig, T: int, inputs: Inputs) -> dict:
  """The primitives a trajectory update is made of, at step T // 2 on the first training batch, each timed inside
  a compiled loop as an update runs it (`_seconds_per_iteration`: chained iterations, fastest of `speed_repeats`,
  the loop's entry and one call's dispatch cancelled):

  nograd_step: the guided denoiser forward and the process's step, no gradient; grad_step: the guided denoiser
  forward and its backward to the params (a lower bound of a differentiated step: the chain methods also need the
  gradient to x); reward_grad: decode + reward forward and backward to the sample; reward_eval: decode + reward
  forward; optimizer_update: one `apply_gradients` (clip + AdamW, finiteness check); dispatch: one jitted call of
  a trivial function (a whole update pays it once). Timed alone, one jitted call each, the same primitives cost
  up to 1.8x more than inside an update (each call starts cold and pays its own launch), and such a "floor" sat
  above the measured updates. Also, for reference: sampling_seconds (a whole guided sampling
  of T steps + decode + reward, no gradient) and the compiled memory of the sampling and of one one-step gradient.
  `floor_record` composes a method's floor from these and its `expected_work`.
  """
  x_T, cond, uncond, _ = inputs(0)
  ft = finetune_config(cfg, Variant("easytune"), T)
  process, w, params = task.gen.process, cfg.guidance_scale, task.gen.params
  ts = sampling.make_timesteps(process, ft.sampler_config())
  i = T // 2
  t, prev_t = ts.t[i], ts.prev_t[i]

  def guided(p, x):
    return sampling.guided_denoise(task.denoise, p, x, process.model_time(t), cond, uncond, w)

  def reward_of(x):
    return jnp.mean(task.reward(task.decode(x, cond), cond, None))

  prims = {
    "nograd_step": (lambda x, p: process.step(guided(p, x), x, t, prev_t)[0], (x_T, params)),
    "grad_step": (lambda x, p: jax.vjp(lambda q: guided(q, x), p)[1](jnp.ones_like(x)), (x_T, params)),
    "reward_grad": (jax.value_and_grad(reward_of), (x_T,)),
    "reward_eval": (reward_of, (x_T,)),
  }
  tx = make_tx(ft)
  grads = jax.tree.map(lambda a: jnp.full_like(a, 1e-3), params)
  prims["optimizer_update"] = (
    lambda st, g: apply_gradients(st, g, tx, jnp.float32(0.0)),
    (create_train_state(params, tx), grads),
  )
  dispatch = _min_seconds(jax.jit(lambda x: x + 1.0), (jnp.zeros((8,)),), max(cfg.speed_repeats, 5))
  out = {"T": T, "dispatch_seconds": dispatch, "loop_iterations": cfg.floor_iterations}
  for name, (fn, args) in prims.items():
    out[f"{name}_seconds"] = _seconds_per_iteration(fn, args, cfg.speed_repeats, cfg.floor_iterations)
  run = jax.jit(_sampling_fn(task, T, w))
  step_loss = finetune.make_step_loss(task.denoise, task.reward, process, ts, w, decode=task.decode)
  vg = lambda p, x, c, u: jax.value_and_grad(step_loss, has_aux=True)(p, x, i, c, u)
  out["sampling_seconds"] = _median_seconds(run, (params, x_T, cond, uncond), cfg.speed_repeats)
  out["sampling_memory"] = finetune.compiled_memory(run, params, x_T, cond, uncond)
  out["one_step_grad_memory"] = finetune.compiled_memory(vg, params, x_T, cond, uncond)
  return out


def expected_work(ft: finetune.FinetuneConfig, draws: int = 4096) -> dict[str, float]:
  """What one trajectory update of `ft`'s method does, in expectation over its random choices, counted in the
  primitives of `measure_floor`: {nograd_step, grad_step, reward_grad, reward_eval, optimizer_update}.

  Read from the method's row of `METHODS` (a new row needs nothing here): a per-step row runs T - K steps without
  gradient, then K steps each with one denoiser gradient, one reward gradient and one update (+ K no-gradient
  steps for a batched frozen chunk > 1). A trajectory row is counted from `draws` of its `choose` (fixed key): the
  prefix before `start` runs without gradient; in the span, steps after a step-scored row's loss step are skipped,
  steps off a masked row's grad_mask run without gradient, the others with; one reward gradient when any step carried
  gradient (else one reward evaluation), one update."""
  policy, T = ft.policy, ft.num_steps
  if policy.per_step_updates:
    K = policy.span(ft)
    extra = K if ft.chunk_size > 1 else 0
    return {
      "nograd_step": float(T - K + extra),
      "grad_step": float(K),
      "reward_grad": float(K),
      "reward_eval": 0.0,
      "optimizer_update": float(K),
    }
  L = policy.span(ft)
  keys = jax.random.split(jax.random.key(0), draws)
  c = jax.vmap(lambda k: jax.tree.map(jnp.asarray, policy.choose(k, ft)))(keys)
  start = np.broadcast_to(np.asarray(c.start), (draws,))
  idx = start[:, None] + np.arange(L)[None]
  active = idx <= np.asarray(c.loss_index)[:, None] if policy.scores == "step" else np.ones_like(idx, bool)
  if policy.masked:
    mask = np.broadcast_to(np.asarray(c.grad_mask), (draws, T))
    with_grad = np.take_along_axis(mask, np.clip(idx, 0, T - 1), axis=1)
  else:
    with_grad = np.ones_like(idx, bool)
  grad = np.sum(active & with_grad, axis=1)
  nograd = start + np.sum(active & ~with_grad, axis=1)
  return {
    "nograd_step": float(np.mean(nograd)),
    "grad_step": float(np.mean(grad)),
    "reward_grad": float(np.mean(grad > 0)),
    "reward_eval": float(np.mean(grad == 0)),
    "optimizer_update": 1.0,
  }


def floor_record(floor: dict, ft: finetune.FinetuneConfig, seconds_per_trajectory: float) -> dict:
  """The floor of one method at `floor['T']`: one dispatch plus its `expected_work` times the primitives of
  `measure_floor` (floor_seconds without the optimizer updates, floor_with_optimizer_seconds with them), and the
  measured trajectory time over each (>= 1 when the floor bounds; 1.0 = the method does nothing but its
  primitives). `seconds_per_trajectory` is to be an expectation like the work: the mean over the budgeted runs'
  trajectories (`speed.measure_speed`'s mean_seconds_per_trajectory), not the timing calls, which repeat one draw
  of a random method's choices (one MotionRFT k: 0.82x or 1.13x its floor at T = 50, 1.20x in the mean)."""
  work = expected_work(ft)
  base = floor["dispatch_seconds"] + sum(work[p] * floor[f"{p}_seconds"] for p in PRIMITIVES[:-1])
  with_opt = base + work["optimizer_update"] * floor["optimizer_update_seconds"]
  return {
    "work": work,
    "grad_steps": work["grad_step"],
    "floor_seconds": base,
    "floor_with_optimizer_seconds": with_opt,
    "over_floor": seconds_per_trajectory / base,
    "over_floor_with_optimizer": seconds_per_trajectory / with_opt,
  }
