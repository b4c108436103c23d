"""The fine-tuning task bundle: a generator and a frozen reward behind the fine-tuning contracts.

`MotionTask` adapts a :class:`~easytune_jax.bundles.generator.Generator` and a reward model to the builders of
`easytune_jax.finetune`: `denoise(params, x_t, t, cond)`, `decode(z, cond)`, `reward(x, cond, t)` with
cond = {"gen": generator condition, "reward": reward text inputs, "mask": frame mask [B, L]}.

`load_task(generator_workdir, reward_workdir, reward, reward_text)` builds one from workdirs (what fine-tuning,
the benchmarks and the quickstart load); `HeldOut` scores full samples of given params on fixed held-out captions
and noise; `generate_fn_for(task, params, ft)` is the evaluation protocol's generate function of given params.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from easytune_jax import finetune
from easytune_jax.bundles.finetuned import RunConfig
from easytune_jax.bundles.generator import Generator, generator_fn, load_generator
from easytune_jax.bundles.reward import load_reward, load_reward_tokenizer
from easytune_jax.core import sampling
from easytune_jax.data import batching
from easytune_jax.data.features import joints_num_for_dim
from easytune_jax.data.humanml3d import MotionDataset
from easytune_jax.data.text import TextEmbeddings
from easytune_jax.interop.sentence_t5 import load_sentence_t5
from easytune_jax.models import generator as gm
from easytune_jax.models import spm
from easytune_jax.rewards.registry import RewardContext, WeightedReward, build_reward


@dataclasses.dataclass(eq=False)
class MotionTask:
  """A generator + a frozen reward, exposed through the fine-tuning contracts.

  Attributes:
    gen: the generator bundle.
    reward_fn: the reward on dataset-normalised motion, `reward_fn(x [B, L, D], {text inputs, mask}, t) -> [B]`
      (a `rewards.registry.WeightedReward`: one term or a weighted sum, each term readable for logs).
    reward_tokenizer: word tokenizer of the SPM's text inputs; None when no term reads text.
    reward_text: captions -> (text_emb float32 [B, Lt, E], text_emb_mask bool [B, Lt]) for rewards that read
      text embeddings (the official SPM: sentence-T5-large token embeddings); see `reward_text_encoder`.
    reward_needs_rng: the reward is stochastic (the official SPM scores sampled latents with dropout on): `inputs`
      then needs a key, carried to the reward as `cond['reward']['reward_rng']` (the same key data in every row,
      [B, 2] uint32, so that it is split over a mesh with the batch; the reward reads row 0). That is the
      'per_batch' reward noise (every scored step of a trajectory draws the same noise); with
      `FinetuneConfig.reward_noise='per_step'` the builders pass `rng=` per scored step, which replaces it
      (the official reward draws anew per call).
  """

  gen: Generator
  reward_fn: WeightedReward
  reward_tokenizer: Any = None
  reward_text: Callable[[list], tuple] | None = None
  reward_needs_rng: bool = False

  def denoise(self, params, x_t, t, cond, rng=None):
    """`rng`: the denoiser's dropout key (None: deterministic)."""
    return self.gen.denoise(params, x_t, t, cond["gen"], rng=rng)

  def decode(self, z, cond):
    return self.gen.decode(self.gen.frozen["vae"], z, cond["mask"])

  def reward(self, x, cond, t=None, rng=None):
    """`rng`: a key for this call's reward noise (per-step reward noise), replacing the per-batch key in
    `cond`; ignored by a deterministic reward."""
    return self.reward_fn(x, self._reward_cond(cond, rng), t)

  def score(self, z, cond, t=None, rng=None):
    """The reward of a model-space sample z [B, *latent_shape]: `reward(decode(z, cond), cond, t, rng)` [B] (what
    reward guidance differentiates, `core.guidance.guided_sample`'s `score`)."""
    return self.reward(self.decode(z, cond), cond, t, rng=rng)

  def reward_terms(self, x, cond, t=None, rng=None) -> dict:
    """{term name: unweighted reward [B]} of `reward_fn`'s terms."""
    return self.reward_fn.term_values(x, self._reward_cond(cond, rng), t)

  def _reward_cond(self, cond, rng=None):
    out = {**cond["reward"], "mask": cond["mask"]}
    if rng is not None and self.reward_needs_rng:
      out["reward_rng"] = rng
    elif out.get("reward_rng") is not None and jnp.ndim(out["reward_rng"]) == 2:
      out["reward_rng"] = out["reward_rng"][0]  # the per-batch key, carried per row (see `reward_needs_rng`)
    return out

  def inputs(self, captions: Sequence[str], lengths: Sequence[int], rng: jax.Array | None = None) -> tuple[dict, dict]:
    """(cond, uncond) for B captions with B frame counts (<= gen.max_length); `rng` keys a stochastic reward."""
    lengths = np.minimum(np.asarray(lengths), self.gen.max_length)
    gen_cond = self.gen.encode_text(list(captions), lengths)
    mask = jnp.asarray(self.gen.frame_mask(lengths))
    reward_cond = {}
    if self.reward_tokenizer is not None:
      tokens, token_mask = self.reward_tokenizer.encode_batch(list(captions))
      reward_cond = {"tokens": jnp.asarray(tokens), "token_mask": jnp.asarray(token_mask)}
    if self.reward_text is not None:
      emb, emb_mask = self.reward_text(list(captions))
      reward_cond = {"text_emb": jnp.asarray(emb), "text_emb_mask": jnp.asarray(emb_mask)}
    if self.reward_needs_rng:
      if rng is None:
        raise ValueError("MotionTask.inputs: the reward is stochastic (official SPM scoring): pass rng=")
      data = jax.random.key_data(rng)
      reward_cond["reward_rng"] = jnp.broadcast_to(data, (len(lengths),) + data.shape)
    cond = {"gen": gen_cond, "reward": reward_cond, "mask": mask}
    uncond = {"gen": self.gen.uncond(gen_cond), "reward": reward_cond, "mask": mask}
    return cond, uncond

  def data_batch(self, arrays: dict, cond: dict) -> dict:
    """The 'diffusion' regulariser's data batch {'x0', 'cond'[, 'mask']} from a data batch's arrays
    (`batching.batch_at` with the generator's tokenizer and max_length) and its `cond` from `inputs`:
    x0 is the motion in model space (`models.generator.to_model_space`: the VAE posterior mean * latent_scale for
    latent kinds, the features otherwise); 'mask' (valid frames) is added for kinds whose loss counts frames."""
    motion, mask = jnp.asarray(arrays["motion"]), jnp.asarray(arrays["mask"])
    if "_to_model_space" not in self.__dict__:
      own = getattr(self.gen, "encode_latents", None)  # bundles with their own VAE (official_generator.py)
      self._to_model_space = jax.jit(
        (lambda vae, x, m, scale: own(vae, x, m))
        if own
        else (lambda vae, x, m, scale: gm.to_model_space(self.gen.config, vae, {"motion": x, "mask": m}, None, scale))
      )
    out = {
      "x0": self._to_model_space(self.gen.frozen["vae"], motion, mask, self.gen.latent_scale),
      "cond": {"gen": cond["gen"]},
    }
    element_mask = gm.loss_mask(self.gen.config, {"mask": mask})
    return out if element_mask is None else {**out, "mask": element_mask}

  def noise(self, rng: jax.Array, batch_size: int) -> jax.Array:
    return jax.random.normal(rng, (batch_size,) + tuple(self.gen.latent_shape))

  def sample_rewards(
    self, params, cond, uncond, x_T, guidance_scale: float, num_steps: int, rng: jax.Array | None = None
  ) -> dict:
    """{term name: reward [B]} of fully sampled clean motion (the held-out score, unweighted per term), sampled with
    the generator's sampler (its eta); `rng` keys a stochastic sampler's noise (None: a fixed key, so the score of
    given params is reproducible). `reward_fn.combine` of it is the total."""
    fn = self._reward_sampler(num_steps)
    rng = jax.random.key(0) if rng is None else rng
    return fn(params, cond, uncond, x_T, jnp.float32(guidance_scale), rng)

  def _reward_sampler(self, num_steps: int):
    cache = self.__dict__.setdefault("_samplers", {})
    if num_steps not in cache:
      scfg = dataclasses.replace(self.gen.config.sampler, num_steps=num_steps)
      timesteps = sampling.make_timesteps(self.gen.process, scfg)

      def run(params, cond, uncond, x_T, w, rng):
        out = sampling.sample(
          self.denoise, params, self.gen.process, timesteps, x_T, cond, uncond, w, eta=scfg.eta, rng=rng
        )
        return self.reward_terms(self.decode(out.x0, cond), cond, None)

      cache[num_steps] = jax.jit(run)
    return cache[num_steps]


def reward_text_encoder(source: str, pad_to: int = 32) -> Callable[[list], tuple[np.ndarray, np.ndarray]]:
  """Captions -> (token embeddings [B, Lt, E], mask [B, Lt]) for an embedding-input reward.

  `source` is a precomputed `.npz` (`data.text.TextEmbeddings`, exact-caption lookup) or a sentence-transformers
  `sentence-t5-large` folder encoded on the fly (`interop.sentence_t5`, token outputs: what the official SPM reads).
  Lt is padded up to a multiple of `pad_to` so the jitted fine-tuning update sees few distinct shapes.
  """
  if source.endswith(".npz"):
    encode = TextEmbeddings(source).lookup
  elif os.path.isdir(source):
    st5 = load_sentence_t5(source)
    encode = lambda captions: st5.embeddings(captions, output="tokens")  # noqa: E731
  else:
    raise FileNotFoundError(f"reward text encoder {source!r}: expected a text-embeddings .npz or a sentence-t5 folder")

  def reward_text(captions):
    emb, mask = encode(captions)
    n = -(-emb.shape[1] // pad_to) * pad_to
    pad = ((0, 0), (0, n - emb.shape[1]))
    return np.pad(emb, pad + ((0, 0),)), np.pad(mask, pad)

  return reward_text


def load_task(
  generator_workdir: str, reward_workdir: str | None, reward: str = "spm", reward_text: str = ""
) -> MotionTask:
  """The generator of `generator_workdir` with the reward `reward` (a `rewards.registry` spec such as
  'spm' or 'spm:1.0,skating:0.2'); the 'spm' term is the trained reward model of `reward_workdir`. A reward
  that reads text embeddings (the official SPM) gets them from `reward_text` (`bundles.task.reward_text_encoder`:
  a `.npz` of precomputed embeddings or a sentence-t5 folder)."""
  return task_for(
    load_generator(generator_workdir), reward_workdir, reward, reward_text, f"the generator {generator_workdir}"
  )


def task_for(
  gen: Generator, reward_workdir: str | None, reward: str = "spm", reward_text: str = "", where: str = "the generator"
) -> MotionTask:
  """`load_task` for a generator already loaded (a fine-tuned one, a converted official MLD); `where` names it in
  errors."""
  spm_fn, tokenizer, stochastic = None, None, False
  if reward_workdir:
    spm_fn, _, rcfg = load_reward(reward_workdir)
    if rcfg.model.dim_motion != gen.mean.shape[0]:
      raise ValueError(
        f"reward model {reward_workdir}: dim_motion={rcfg.model.dim_motion}, but {where} "
        f"produces {gen.mean.shape[0]}-dim features"
      )
    tokenizer = load_reward_tokenizer(reward_workdir)
    stochastic = spm.is_stochastic(rcfg.model)
    if rcfg.model.text_input == "embeddings" and not reward_text:
      raise ValueError(
        f"reward model {reward_workdir} reads text embeddings: set RunConfig.reward_text (a "
        "sentence-t5 folder or a precomputed .npz)"
      )
  context = RewardContext(mean=gen.mean, std=gen.std, joints_num=joints_num_for_dim(gen.mean.shape[0]), spm=spm_fn)
  text = reward_text_encoder(reward_text) if reward_text else None
  return MotionTask(gen, build_reward(reward, context), tokenizer, text, stochastic)


class HeldOut:
  """Fixed held-out captions, lengths and noise; scores full samples of given params with the reward."""

  def __init__(self, task: MotionTask, dataset: MotionDataset, cfg: RunConfig):
    n = min(cfg.heldout_size, len(dataset))
    arrays, host = batching.batch_at(dataset, 0, n, cfg.seed + 1, task.gen.tokenizer, max_length=task.gen.max_length)
    self.captions = list(host["caption"])
    self.lengths = np.asarray(arrays["length"])
    self.cond, self.uncond = task.inputs(self.captions, self.lengths, rng=jax.random.key(cfg.seed + 11))
    self.x_T = task.noise(jax.random.key(cfg.seed + 7), n)
    self.task, self.cfg = task, cfg
    self.num_steps = cfg.heldout_num_steps or cfg.finetune.num_steps

  def reward_terms(self, params) -> dict[str, np.ndarray]:
    """{term: reward [N]} of the task's reward terms on the held-out samples of `params`."""
    terms = self.task.sample_rewards(
      params, self.cond, self.uncond, self.x_T, self.cfg.finetune.guidance_scale, self.num_steps
    )
    return {k: np.asarray(v) for k, v in terms.items()}

  def rewards(self, params) -> np.ndarray:
    """Total (weighted) reward [N] of the held-out samples of `params`."""
    return np.asarray(self.task.reward_fn.combine(self.reward_terms(params)))


def generate_fn_for(task: MotionTask, params, ft: finetune.FinetuneConfig):
  """The evaluation protocol's generate function of `task`'s generator with `params`, sampled with `ft`'s DDIM
  steps and guidance scale (`bundles.generator.generator_fn`)."""
  return generator_fn(task.gen, ft.guidance_scale, ft.num_steps, params)
