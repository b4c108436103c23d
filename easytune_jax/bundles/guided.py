"""A generator sampled with reward guidance (core/guidance.py): the bundle generation and evaluation take.

`GuidedGenerator(task, guidance)` wraps a `MotionTask` (a generator + its reward) and behaves as the task's
`Generator` everywhere (every attribute not defined here is the generator's), except that `generate` adds the
reward's gradient at the steps `guidance` chooses. With guidance off (`GuidanceConfig().scale == 0`) `generate` is
the generator's own `generate` (same call, same bits), so wrapping is always safe.

  gen = load_any_generator("runs/quickstart/finetune_easytune")
  guided = with_guidance(gen, GuidanceConfig(scale=1.0), reward_workdir="runs/quickstart/reward")
  feats, joints = guided.generate(["a person jumps"], [64], jax.random.key(0))

`launch/generate.py`, `launch/evaluate.py` and the quickstart's guidance stage build it with `with_guidance`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from easytune_jax import finetune
from easytune_jax.bundles.generator import Generator
from easytune_jax.bundles.task import MotionTask, task_for
from easytune_jax.core import guidance as G
from easytune_jax.core import sampling
from easytune_jax.rewards.registry import parse_spec


@dataclasses.dataclass(eq=False)
class GuidedGenerator:
  """`task.gen` sampled with reward guidance `guidance` by the reward of `task` (module docstring)."""

  task: MotionTask
  guidance: G.GuidanceConfig

  def __getattr__(self, name: str):
    if name in ("task", "guidance") or name.startswith("__"):
      raise AttributeError(name)
    return getattr(self.task.gen, name)

  @property
  def generator(self) -> Generator:
    return self.task.gen

  def guided_sampler(self, num_steps: int):
    """Jitted `(params, cond, uncond, x_T, w, rng, reward_rng, weights [T]) -> (normalised features [B, L, D],
    joints [B, L, J, 3])` of the task's cond pytrees, cached on the task per (num_steps, guidance rule); the scale
    travels in `weights` (a new scale does not recompile)."""
    key = (num_steps, dataclasses.replace(self.guidance, scale=1.0))
    cache = self.task.__dict__.setdefault("_guided_samplers", {})
    if key in cache:
      return cache[key]
    gen, task = self.task.gen, self.task
    scfg = dataclasses.replace(gen.config.sampler, num_steps=num_steps)
    timesteps = sampling.make_timesteps(gen.process, scfg)
    rule = self.guidance

    def run(params, cond, uncond, x_T, w, rng, reward_rng, weights):
      out = G.guided_sample(
        task.denoise,
        params,
        gen.process,
        timesteps,
        x_T,
        cond,
        uncond,
        w,
        eta=scfg.eta,
        rng=rng,
        score=lambda z, t, k: task.score(z, cond, t, k),
        guidance=rule,
        weights=weights,
        reward_rng=reward_rng if task.reward_needs_rng else None,
      )
      feats = task.decode(out.x0, cond)
      return feats, gen.to_joints(feats)

    cache[key] = jax.jit(run)
    return cache[key]

  def sample_inputs(self, texts: Sequence[str], lengths: Sequence[int], rng: jax.Array, num_steps: int | None = None):
    """The guided sampler's arguments after params for B captions: (cond, uncond, x_T, rng, reward_rng, weights);
    x_T and the sampler's noise key are those `Generator.generate` draws from `rng`."""
    num_steps, _ = self.task.gen.sampler_settings(num_steps, None)
    fm = self.task.gen.frame_mask(lengths)
    if fm.shape[0] != len(texts):
      raise ValueError(f"lengths: expected {len(texts)} values (one per text), found {fm.shape[0]}")
    x_T, k_eta = self.task.gen.initial_noise(rng, len(texts))
    reward_rng = jax.random.fold_in(rng, G.GUIDE_STREAM)
    cond, uncond = self.task.inputs(list(texts), np.asarray(lengths), rng=reward_rng)
    weights = jnp.asarray(self.guidance.weights(num_steps))
    return cond, uncond, x_T, k_eta, reward_rng, weights

  def generate(
    self,
    texts: Sequence[str],
    lengths: Sequence[int],
    rng: jax.Array,
    guidance_scale: float | None = None,
    num_steps: int | None = None,
    params: Any = None,
    normalized: bool = False,
  ) -> tuple[np.ndarray, np.ndarray]:
    """`Generator.generate` with reward guidance (same arguments, returns and noise): (features [B, L, D],
    joints [B, L, J, 3]) numpy float32, features de-normalised unless `normalized`."""
    gen = self.task.gen
    if not self.guidance.enabled:
      return gen.generate(texts, lengths, rng, guidance_scale, num_steps, params, normalized)
    num_steps, guidance_scale = gen.sampler_settings(num_steps, guidance_scale)
    cond, uncond, x_T, k_eta, reward_rng, weights = self.sample_inputs(texts, lengths, rng, num_steps)
    feats, joints = self.guided_sampler(num_steps)(
      gen.params if params is None else params,
      cond,
      uncond,
      x_T,
      jnp.float32(guidance_scale),
      k_eta,
      reward_rng,
      weights,
    )
    return gen.finish_samples(feats, joints, gen.frame_mask(lengths), normalized)


def with_guidance(
  gen: Generator,
  guidance: G.GuidanceConfig,
  reward_workdir: str | None = None,
  reward: str = "spm",
  reward_text: str = "",
  where: str = "the generator",
) -> Generator | GuidedGenerator:
  """`gen` itself when `guidance` is off, else `gen` guided by the reward `reward` (a `rewards.registry` spec; its
  'spm' term is the reward model of `reward_workdir`, `reward_text` as `bundles.task.load_task`)."""
  if not guidance.enabled:
    return gen
  if not reward_workdir and "spm" in [name for name, _ in parse_spec(reward)]:
    raise ValueError(
      f"reward guidance (GuidanceConfig.scale={guidance.scale:g}) with the reward {reward!r}: its 'spm' term needs "
      "a reward model folder (--reward_workdir), or choose a reward without 'spm' (e.g. 'skating')"
    )
  return GuidedGenerator(task_for(gen, reward_workdir, reward, reward_text, where), guidance)


def sampler_memory(
  gen: Generator | GuidedGenerator,
  batch_size: int,
  num_steps: int,
  length: int | None = None,
  captions: Sequence[str] | None = None,
) -> dict:
  """XLA's compiled memory of one sampler call on `batch_size` captions (`finetune.compiled_memory`: bytes of
  'temp', 'argument', 'output', 'alias', 'total'): the plain sampler of a `Generator`, the guided one of a
  `GuidedGenerator` with guidance on. Compiled only, nothing runs. `captions` (default: one repeated) must be
  known to a generator that looks captions up in precomputed embeddings."""
  length = gen.max_length if length is None else length
  texts = list(captions) if captions is not None else ["a person walks forward"] * batch_size
  lengths = [length] * len(texts)
  batch_size = len(texts)
  rng = jax.random.key(0)
  if isinstance(gen, GuidedGenerator) and gen.guidance.enabled:
    cond, uncond, x_T, k_eta, reward_rng, weights = gen.sample_inputs(texts, lengths, rng, num_steps)
    args = (gen.task.gen.params, cond, uncond, x_T, jnp.float32(1.0), k_eta, reward_rng, weights)
    return finetune.compiled_memory(gen.guided_sampler(num_steps), *args)
  inputs, mask = gen.text_inputs(texts)
  x_T, k_eta = gen.initial_noise(rng, batch_size)
  fm = jnp.asarray(gen.frame_mask(lengths))
  args = (gen.params, gen.frozen, jnp.asarray(inputs), jnp.asarray(mask), fm, x_T, jnp.float32(1.0), k_eta)
  return finetune.compiled_memory(gen.sampler(num_steps), *args)
