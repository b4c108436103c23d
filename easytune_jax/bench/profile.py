"""Where an EasyTune update spends its work: XLA cost analysis and wall time of its parts (issue 20 item 1).

`run_profile(ProfileConfig(size="paper"|"tiny"))` builds the converted official MLD + official SPM task of
`bench.official_memory` (random weights in the official layouts; the compute does not depend on their values)
and compiles, separately, each part of one EasyTune per-step update at step index T // 2:

  denoiser   the guided denoiser call (both CFG branches in one batched call) forward + its VJP to the
             trainable params (cotangent of ones);
  decode     the frozen VAE decoder forward + its VJP to the latent;
  reward     the reward (official SPM: text and motion encoders, sampled latents, dropout on) forward + its
             gradient to the motion;
  optimizer  one `core.optim.apply_gradients` (clip + AdamW + finiteness check) of a params-sized gradient;
  step       the whole update: `value_and_grad` of `finetune.make_step_loss` + `apply_gradients` (what one of
             EasyTune's K updates per trajectory costs);
  sampling_step  one guided DDIM step without gradient (what the trajectory continues with).

For each: XLA's `cost_analysis` of the compiled program (flops, transcendentals, bytes accessed), the compile
seconds and the measured wall seconds (min and median of `repeats` blocked calls after one warm-up call).
Parts are compiled on their own, so XLA may fuse them differently inside the whole step: their sum is a
guide to the step, not its exact decomposition.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import statistics
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
from absl import logging

from easytune_jax import finetune
from easytune_jax.bench import official_memory
from easytune_jax.bench.measure import block_until_ready, machine_info
from easytune_jax.core import sampling
from easytune_jax.core.optim import OptimConfig, apply_gradients, create_train_state, make_optimizer

_WHERE = __name__.replace(".", "/") + ".py"
PARTS = ("denoiser", "decode", "reward", "optimizer", "step", "sampling_step")


@dataclasses.dataclass(frozen=True)
class ProfileConfig:
  """`size`: 'paper' or 'tiny' (`official_memory.model_configs`); `max_length`: frames (None = 196 for
  'paper', 32 for 'tiny', whose learned position tables have 40 rows); `num_steps`: T of the DDIM schedule
  (the profiled step is T // 2); `repeats`: timed calls per part after one warm-up; `parts`: which to
  measure."""

  size: str = "tiny"
  batch_size: int = 32
  max_length: int | None = None
  num_steps: int = 50
  guidance_scale: float = sampling.GUIDANCE_SCALE
  reward_text_length: int = 32
  repeats: int = 3
  parts: tuple = PARTS
  seed: int = 0
  denoiser_dropout: bool = False  # the paper setting's training-mode denoiser (FinetuneConfig.denoiser_dropout)

  def __post_init__(self):
    if self.size not in official_memory.SIZES:
      raise ValueError(f"{_WHERE}: ProfileConfig.size: expected one of {official_memory.SIZES}, found {self.size!r}")
    bad = [p for p in self.parts if p not in PARTS]
    if bad:
      raise ValueError(f"{_WHERE}: ProfileConfig.parts: expected names in {PARTS}, found {bad}")
    if self.max_length is None:
      object.__setattr__(self, "max_length", 196 if self.size == "paper" else 32)
    counts = {k: getattr(self, k) for k in ("batch_size", "max_length", "num_steps", "repeats")}
    if min(counts.values()) < 1:
      raise ValueError(f"{_WHERE}: ProfileConfig: expected {', '.join(counts)} >= 1, found {counts}")

  def memory_config(self) -> official_memory.OfficialMemoryConfig:
    return official_memory.OfficialMemoryConfig(
      size=self.size,
      batch_size=self.batch_size,
      max_length=self.max_length,
      guidance_scale=self.guidance_scale,
      reward_text_length=self.reward_text_length,
      seed=self.seed,
    )


def cost(compiled) -> dict:
  """{flops, transcendentals, bytes_accessed} of a compiled XLA executable (None where not reported)."""
  ca = compiled.cost_analysis()
  if isinstance(ca, (list, tuple)):  # older jax: one dict per computation
    ca = ca[0] if ca else {}
  ca = ca or {}
  get = lambda k: float(ca[k]) if k in ca else None
  out = {"flops": get("flops"), "transcendentals": get("transcendentals"), "bytes_accessed": get("bytes accessed")}
  mem = compiled.memory_analysis()
  if mem is not None:  # XLA's compiled memory analysis: temporaries and arguments of the program
    out["temp_bytes"] = int(mem.temp_size_in_bytes)
    out["argument_bytes"] = int(mem.argument_size_in_bytes)
  return out


def measure(fn: Callable, args: tuple, repeats: int) -> dict:
  """Compiles `jax.jit(fn)` on `args` (cost analysis, compile seconds), then times it: one warm-up call and
  `repeats` blocked calls -> min / median seconds."""
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - t0
  block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  return {
    **cost(compiled),
    "compile_seconds": compile_s,
    "seconds_min": min(times),
    "seconds_median": statistics.median(times),
    "seconds": times,
  }


def part_functions(
  task, num_steps: int, guidance_scale: float, x_T, cond, uncond, denoiser_dropout: bool = False
) -> dict:
  """{part name: (fn, args)} of one EasyTune per-step update of `task` at step index num_steps // 2
  (`denoiser_dropout`: the whole step with the denoiser in training mode, keyed as fine-tuning keys it)."""
  ft = finetune.FinetuneConfig(
    method="easytune",
    num_steps=num_steps,
    guidance_scale=guidance_scale,
    optim=OptimConfig(learning_rate=1e-5, warmup_steps=1000),  # the official fine-tuning's AdamW ('paper')
  )
  tx = make_optimizer(ft.optim)
  timesteps = sampling.make_timesteps(task.gen.process, ft.sampler_config())
  i = num_steps // 2
  t = timesteps.t[i]
  params = task.gen.params
  step_loss = finetune.make_step_loss(
    task.denoise, task.reward, task.gen.process, timesteps, guidance_scale, decode=task.decode
  )
  guided = lambda p, x: sampling.guided_denoise(task.denoise, p, x, t, cond, uncond, guidance_scale)

  def denoiser(p, x):
    out, vjp = jax.vjp(lambda q: guided(q, x), p)
    return out, vjp(jnp.ones_like(out))[0]

  z = jax.eval_shape(lambda: guided(params, x_T))
  z = jnp.full(z.shape, 0.1, z.dtype)

  def decode(zz):
    x, vjp = jax.vjp(lambda a: task.decode(a, cond), zz)
    return x, vjp(jnp.ones_like(x))[0]

  x = jax.eval_shape(task.decode, z, cond)
  x = jnp.full(x.shape, 0.1, x.dtype)
  reward = lambda xx: jax.value_and_grad(lambda a: jnp.mean(task.reward(a, cond, None)))(xx)
  state = create_train_state(params, tx)
  grads = jax.tree.map(lambda a: jnp.full_like(a, 1e-3), params)
  optimizer = lambda st, g: apply_gradients(st, g, tx, jnp.float32(0.0))

  def step(st, xt):
    dropout_rng = jax.random.key(1) if denoiser_dropout else None
    (loss, aux), g = jax.value_and_grad(step_loss, has_aux=True)(
      st.params, xt, i, cond, uncond, dropout_rng=dropout_rng
    )
    return apply_gradients(st, g, tx, loss)[0], aux.x_prev

  sampling_step = lambda p, xt: sampling.denoise_step(
    task.denoise, p, task.gen.process, xt, t, timesteps.prev_t[i], cond, uncond, guidance_scale
  )
  return {
    "denoiser": (denoiser, (params, x_T)),
    "decode": (decode, (z,)),
    "reward": (reward, (x,)),
    "optimizer": (optimizer, (state, grads)),
    "step": (step, (state, x_T)),
    "sampling_step": (sampling_step, (params, x_T)),
  }


def run_profile(config: ProfileConfig, out_dir: str | None = None, work_dir: str | None = None) -> dict:
  """Builds the task of `config.size` and measures each part; writes profile_<size>.json under `out_dir`
  after each part when given. Returns {'machine', 'config', 'models', 'parts': {name: record}}."""
  tmp = None
  if work_dir is None:
    tmp = tempfile.TemporaryDirectory(prefix="profile_")
    work_dir = tmp.name
  try:
    mcfg = config.memory_config()
    task, info = official_memory.build_task(work_dir, mcfg)
    x_T, cond, uncond, _ = official_memory.task_inputs(task, mcfg)
    fns = part_functions(task, config.num_steps, config.guidance_scale, x_T, cond, uncond, config.denoiser_dropout)
    result = {
      "machine": machine_info(),
      "config": json.loads(json.dumps(dataclasses.asdict(config))),
      "models": info["param_counts"],
      "parts": {},
    }
    for name in config.parts:
      fn, args = fns[name]
      rec = measure(fn, args, config.repeats)
      result["parts"][name] = rec
      logging.info(
        "profile %s %s: %.3g GFLOP, %.3g GB accessed, compile %.1f s, min %.4f s, median %.4f s",
        config.size,
        name,
        (rec["flops"] or 0) / 1e9,
        (rec["bytes_accessed"] or 0) / 1e9,
        rec["compile_seconds"],
        rec["seconds_min"],
        rec["seconds_median"],
      )
      if out_dir:
        write_outputs(result, out_dir)
    return result
  finally:
    if tmp is not None:
      tmp.cleanup()


_SUMMED = ("denoiser", "decode", "reward", "optimizer")


def table(result: dict) -> str:
  """A markdown table of one profile: per part GFLOP, GB accessed, shares of the four parts' sums, compile
  and wall seconds."""
  parts = result["parts"]
  tot_f = sum(parts[p]["flops"] or 0 for p in _SUMMED if p in parts) or 1.0
  tot_s = sum(parts[p]["seconds_median"] for p in _SUMMED if p in parts) or 1.0
  c = result["config"]
  lines = [
    f"### {c['size']} (batch {c['batch_size']}, {c['max_length']} frames, T = {c['num_steps']}, "
    f"step index {c['num_steps'] // 2})",
    "",
    "| part | GFLOP | GB accessed | share of flops | wall s (min) | wall s (median) | share of wall | compile s |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for name, r in parts.items():
    summed = name in _SUMMED
    share_f = f"{(r['flops'] or 0) / tot_f:.1%}" if summed else "-"
    share_s = f"{r['seconds_median'] / tot_s:.1%}" if summed else "-"
    lines.append(
      f"| {name} | {(r['flops'] or 0) / 1e9:.4g} | {(r['bytes_accessed'] or 0) / 1e9:.4g} | {share_f} | "
      f"{r['seconds_min']:.4f} | {r['seconds_median']:.4f} | {share_s} | {r['compile_seconds']:.1f} |"
    )
  if all(p in parts for p in _SUMMED):
    lines += [
      "",
      f"Sum of denoiser + decode + reward + optimizer: {tot_f / 1e9:.2f} GFLOP, {tot_s:.4f} s "
      "(median); shares are of these sums.",
    ]
  return "\n".join(lines)


def write_outputs(result: dict, out_dir: str) -> dict:
  """profile_<size>.json and profile_<size>.md under `out_dir`; returns their paths."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  size = result["config"]["size"]
  paths = {"json": out / f"profile_{size}.json", "md": out / f"profile_{size}.md"}
  paths["json"].write_text(json.dumps(result, indent=2))
  m = result["machine"]
  paths["md"].write_text(
    f"# EasyTune per-step update profile ({m['backend']}, {m['cpu_count']} CPUs, jax "
    f"{m['jax_version']})\n\n" + table(result) + "\n"
  )
  return {k: str(v) for k, v in paths.items()}
