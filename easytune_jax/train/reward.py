"""Training and evaluation of the step-aware reward model (SPM): TMR pretraining and SPL fine-tuning.

Stages (EasyTune, arXiv 2602.07967; TMR, arXiv 2305.00976):

* pretraining (`spl=False`): smooth-L1 reconstruction of the clean motion from the text latent and from the
  motion latent, KL terms (text||motion, motion||text, text||N(0,I), motion||N(0,I)) x 1e-5, latent
  smooth-L1 x 1e-5, InfoNCE with near-duplicate-caption filtering x 0.1; lr 1e-4.
* SPL fine-tuning (`spl=True`, usually `init_from` a pretrained workdir): the same loss + 0.01 x the SPL
  preference loss on the text x motion cosine matrix of the latents' means; lr 1e-5.

Noise-aware training: with probability 1 - noise_threshold a batch is noised (DDPM forward process with the
MLD schedule, on the normalised motion features) to per-sample t ~ U{0, ..., max_timestep - 1}; the timestep
goes to the encoders selected by the mode. Clean batches use t = 0. Reconstruction targets are the clean motion.

The official objective (EasyTune's `train_spm.py` + `GradGuidance/spm.py`; :meth:`RewardTrainConfig.official`,
`RewardTrainConfig.paper()`, or `config.with_objective('official')` at any size) differs in named options, each
kept selectable (OFFICIAL_OBJECTIVE / OUR_OBJECTIVE):

* `timestep_routing='official'`: pretraining gives no timestep to either encoder; in the SPL stage the SPM loss
  gives the sampled t to the encoders the mode selects and the SPL term's second pass gives it to the motion
  encoder always and never to the text encoder; t is sampled for every batch, clean ones too ('mode': t to the
  mode's encoders in both stages, t = 0 for clean batches);
* `spl_latents='sample'`: SPL ranks reparameterised samples of a second forward pass ('mean': the latent
  means of the SPM-loss pass);
* `spl_temperature_convention='official'`: the SPL logits are divided by tau twice ('single': once);
* `filter_convention='tmr'`: the near-duplicate caption filter drops cosines above 2 * threshold - 1
  ('cosine': above threshold);
* `recons_target='input'`: reconstruction target = the (possibly noised) input motion, smooth-L1 averaged over
  every frame up to the batch's longest clip, padding included, as the official code pads each batch to its
  longest clip ('clean_valid': the clean motion on valid frames only);
* t ~ U{0, ..., 500} (max_timestep=501), AdamW weight decay 0.01 (torch's default) and no gradient clipping.

Workdir layout: `checkpoints/` (orbax, with JSON metadata: configs, tokenizer vocabulary, stage),
`metrics.jsonl|csv` + TensorBoard events, `retrieval.json` (when an evaluation set is given).
The reward takes dataset-normalised features, so Mean/Std are not stored.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import pathlib
import shutil
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from easytune_jax.core import parallel
from easytune_jax.data.safe_io import write_json
from easytune_jax.rewards import spl as spl_lib
from easytune_jax.data.batching import batch_at, iterate_batches
from easytune_jax.data.humanml3d import MotionDataset
from easytune_jax.data.text import TextEmbeddings, Tokenizer
from easytune_jax.models import spm_convert
from easytune_jax.models.layers import kl_between, kl_to_standard_normal, reparameterize
from easytune_jax.models.spm import (
  SPMConfig,
  encode_motion,
  encode_text,
  init_spm,
  reward_fn,
  route_timestep,
  spm_module,
  text_inputs,
)
from easytune_jax.core.schedules import DiffusionConfig, Schedule, add_noise, make_schedule
from easytune_jax.core.checkpoint import Checkpointer
from easytune_jax.core.config import check_config_matches, config_from_dict
from easytune_jax.core.metric_writer import MetricWriter
from easytune_jax.core.optim import OptimConfig, TrainState, apply_gradients, create_train_state, make_optimizer
from easytune_jax.train.loop import train_loop

_WHERE = "easytune_jax/train/reward.py"
META_KIND = "easytune_jax.spm_reward"

# The objective's named options (see the module docstring). Dataclass defaults = OUR_OBJECTIVE, so configs saved
# before these fields existed read back with the behaviour they were trained with.
OUR_OBJECTIVE = dict(
  timestep_routing="mode",
  spl_latents="mean",
  spl_temperature_convention="single",
  filter_convention="cosine",
  recons_target="clean_valid",
  max_timestep=500,
  weight_decay=0.0,
  grad_clip_norm=1.0,
)
OFFICIAL_OBJECTIVE = dict(
  timestep_routing="official",
  spl_latents="sample",
  spl_temperature_convention="official",
  filter_convention="tmr",
  recons_target="input",
  max_timestep=501,
  weight_decay=0.01,
  grad_clip_norm=0.0,
)
_CHOICES = {
  "timestep_routing": ("mode", "official"),
  "spl_latents": ("mean", "sample"),
  "spl_temperature_convention": spl_lib.TEMPERATURE_CONVENTIONS,
  "filter_convention": spl_lib.FILTER_CONVENTIONS,
  "recons_target": ("clean_valid", "input"),
}


@dataclasses.dataclass(frozen=True)
class RewardTrainConfig:
  """Reward-model training. Defaults: tiny CPU run; :meth:`paper` gives EasyTune's settings.

  Attributes:
    model: the SPM architecture (`vocab_size` is filled in from the tokenizer).
    batch_size, max_length: batch shape [B, max_length, D] (crops longer clips).
    text_max_length: tokenizer length Lt (sos/eos included).
    num_steps: optimizer steps of a stage (overridable per call).
    learning_rate / spl_learning_rate: AdamW rates of pretraining / SPL fine-tuning (paper: 1e-4 / 1e-5; the
      tiny CPU run uses 1e-3 / 1e-4 to learn within a few hundred steps, keeping the 10x ratio).
    noise_threshold: probability that a batch stays clean (0.5: half the batches are noised).
    max_timestep: noised batches draw t ~ U{0, ..., max_timestep - 1}.
    temperature, threshold_selfsim: InfoNCE temperature and near-duplicate caption threshold.
    spl_k, spl_high_sim, spl_temperature, spl_weight: SPL top-k, high-similarity rule, tau, loss weight.
    w_*: pretraining loss weights (reconstruction, KL, latent matching, contrastive).
    timestep_routing, spl_latents, spl_temperature_convention, filter_convention, recons_target: the
      objective's named options, ours by default, official in :meth:`official` (module docstring).
  """

  model: SPMConfig = SPMConfig()
  diffusion: DiffusionConfig = DiffusionConfig()
  batch_size: int = 32
  max_length: int = 196
  text_max_length: int = 24
  num_steps: int = 400
  learning_rate: float = 1e-3
  spl_learning_rate: float = 1e-4
  weight_decay: float = 0.0
  grad_clip_norm: float = 1.0
  noise_threshold: float = 0.5
  max_timestep: int = 500
  temperature: float = 0.1
  threshold_selfsim: float = 0.9
  spl_k: int = 10
  spl_high_sim: float = 0.8
  spl_temperature: float = 0.1
  spl_weight: float = 0.01
  w_recons: float = 1.0
  w_kl: float = 1e-5
  w_latent: float = 1e-5
  w_contrastive: float = 0.1
  seed: int = 0
  log_every: int = 50
  checkpoint_every: int = 500
  timestep_routing: str = "mode"
  spl_latents: str = "mean"
  spl_temperature_convention: str = "single"
  filter_convention: str = "cosine"
  recons_target: str = "clean_valid"

  def __post_init__(self):
    for name, allowed in _CHOICES.items():
      if getattr(self, name) not in allowed:
        raise ValueError(
          f"{_WHERE}: RewardTrainConfig.{name}: expected one of {tuple(allowed)}, found {getattr(self, name)!r}"
        )
    if not 0.0 <= self.noise_threshold <= 1.0:
      raise ValueError(f"{_WHERE}: RewardTrainConfig.noise_threshold: expected in [0, 1], found {self.noise_threshold}")
    if not 1 <= self.max_timestep <= self.diffusion.num_train_timesteps:
      raise ValueError(
        f"{_WHERE}: RewardTrainConfig.max_timestep: expected in [1, "
        f"{self.diffusion.num_train_timesteps}], found {self.max_timestep}"
      )
    if self.batch_size < 2:
      raise ValueError(f"{_WHERE}: RewardTrainConfig.batch_size: expected >= 2 (contrastive), found {self.batch_size}")

  @classmethod
  def official(cls, **overrides) -> "RewardTrainConfig":
    """The official EasyTune SPM training: its architecture (`SPMConfig.official()`, sentence-T5 token embeddings
    as text input) and objective (OFFICIAL_OBJECTIVE), batch 64 (configs/spm_h3d.yaml), lr 1e-4 pretraining /
    1e-5 SPL, NoiseThr 0.5 (the README's), InfoNCE tau 0.1 / threshold 0.9, SPL tau 0.1, weight 0.01."""
    base = dict(
      model=SPMConfig.official(),
      batch_size=64,
      max_length=196,
      text_max_length=32,
      num_steps=100_000,
      learning_rate=1e-4,
      spl_learning_rate=1e-5,
      noise_threshold=0.5,
      log_every=100,
      checkpoint_every=2000,
      **OFFICIAL_OBJECTIVE,
    )
    base.update(overrides)
    return cls(**base)

  @classmethod
  def paper(cls, **overrides) -> "RewardTrainConfig":
    """The paper configuration = :meth:`official`."""
    return cls.official(**overrides)

  @classmethod
  def paper_tmr(cls, **overrides) -> "RewardTrainConfig":
    """Paper sizes with our TMR-style SPM and our objective (the previous `paper()`)."""
    base = dict(
      model=SPMConfig.paper(),
      max_length=196,
      text_max_length=32,
      num_steps=100_000,
      learning_rate=1e-4,
      spl_learning_rate=1e-5,
      log_every=100,
      checkpoint_every=2000,
    )
    base.update(overrides)
    return cls(**base)

  def with_objective(self, objective: str) -> "RewardTrainConfig":
    """This config with every objective option set to 'official' (OFFICIAL_OBJECTIVE) or 'ours' (OUR_OBJECTIVE);
    sizes, rates and the model are kept."""
    table = {"official": OFFICIAL_OBJECTIVE, "ours": OUR_OBJECTIVE}
    if objective not in table:
      raise ValueError(f"{_WHERE}: with_objective: expected one of {sorted(table)}, found {objective!r}")
    return dataclasses.replace(self, **table[objective])

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "RewardTrainConfig":
    return config_from_dict(cls, d, "RewardTrainConfig")


# --------------------------------------------------------------------------------------------- losses
def smooth_l1(x: jax.Array, y: jax.Array) -> jax.Array:
  """Elementwise smooth-L1 (Huber with beta 1, PyTorch's SmoothL1Loss before reduction)."""
  d = jnp.abs(x - y)
  return jnp.where(d < 1.0, 0.5 * d * d, d - 0.5)


def masked_smooth_l1(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean smooth-L1 over valid frames: pred/target [B, L, D], mask [B, L]."""
  m = mask.astype(pred.dtype)[..., None]
  return jnp.sum(smooth_l1(pred, target) * m) / jnp.maximum(jnp.sum(m) * pred.shape[-1], 1.0)


def caption_features(config: SPMConfig, batch: Mapping[str, jax.Array]) -> jax.Array:
  """Caption features for near-duplicate filtering, [B, F]: bag-of-words counts over word ids (ids below
  `num_special_tokens` ignored) for token input; the masked mean of `text_emb` for embedding input."""
  if config.text_input == "tokens":
    tokens, tmask = batch["tokens"], batch["token_mask"]
    valid = tmask.astype(bool) & (tokens >= config.num_special_tokens)
    return jnp.sum(jax.nn.one_hot(tokens, config.vocab_size) * valid[..., None], axis=1)
  emb, m = batch["text_emb"], batch["text_emb_mask"].astype(jnp.float32)
  return jnp.sum(emb * m[..., None], 1) / jnp.maximum(jnp.sum(m, 1, keepdims=True), 1.0)


def noise_batch(
  rng: jax.Array,
  motion: jax.Array,
  mask: jax.Array,
  schedule: Schedule,
  noise_threshold: float,
  max_timestep: int,
  clean_timestep: str = "zero",
) -> tuple[jax.Array, jax.Array]:
  """Noise-aware augmentation: with probability 1 - noise_threshold the whole batch is noised to per-sample
  t ~ U{0, ..., max_timestep - 1}; otherwise x is clean and t is 0 (`clean_timestep='zero'`, ours) or the
  sampled t all the same (`'sampled'`, the official code, which draws t for every batch and passes it on).
  -> (x * mask [B, L, D], t int32 [B]). The random draws do not depend on `clean_timestep`."""
  k_coin, k_t, k_eps = jax.random.split(rng, 3)
  noised = jax.random.uniform(k_coin) >= noise_threshold
  b = motion.shape[0]
  t = jax.random.randint(k_t, (b,), 0, max_timestep, jnp.int32)
  if clean_timestep == "zero":
    t = jnp.where(noised, t, 0).astype(jnp.int32)
  elif clean_timestep != "sampled":
    raise ValueError(f"{_WHERE}: noise_batch: clean_timestep: expected 'zero' or 'sampled', found {clean_timestep!r}")
  x_t = add_noise(schedule, motion, jax.random.normal(k_eps, motion.shape, motion.dtype), t)
  x = jnp.where(noised, x_t, motion)
  return x * mask[..., None].astype(x.dtype), t


def batch_frames_smooth_l1(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean smooth-L1 over ALL frames up to the batch's longest clip (padded frames of shorter clips included),
  the official reduction (its collate pads each batch to its longest clip): pred/target [B, L, D], mask [B, L]."""
  longest = jnp.max(jnp.sum(mask.astype(jnp.int32), axis=1))
  frames = (jnp.arange(pred.shape[1]) < longest).astype(pred.dtype)[None, :, None]
  count = jnp.maximum(longest, 1).astype(pred.dtype) * pred.shape[0] * pred.shape[2]
  return jnp.sum(smooth_l1(pred, target) * frames) / count


def reward_loss(
  params,
  batch: Mapping[str, jax.Array],
  rng: jax.Array,
  config: RewardTrainConfig,
  schedule: Schedule,
  use_spl: bool,
  deterministic: bool = False,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Total SPM loss of one batch -> (scalar, metrics). See the module docstring for the terms and options."""
  mc = config.model
  model = spm_module(mc)
  motion, mask = batch["motion"], batch["mask"].astype(bool)
  k_noise, k_drop_t, k_drop_m, k_drop_d, k_zt, k_zm = jax.random.split(rng, 6)
  official_t = config.timestep_routing == "official"
  input_target = config.recons_target == "input"
  # The official reconstruction target keeps the noise on padded frames too; the encoders ignore padded frames,
  # so feeding them the unmasked x changes nothing else.
  x, t = noise_batch(
    k_noise,
    motion,
    jnp.ones_like(mask) if input_target else mask,
    schedule,
    config.noise_threshold,
    config.max_timestep,
    "sampled" if official_t else "zero",
  )
  text, tmask = text_inputs(mc, batch)
  if official_t and not use_spl:
    t_text = t_motion = None  # official pretraining: no timestep token anywhere
  else:
    t_text, t_motion = route_timestep(mc, t, "text"), route_timestep(mc, t, "motion")
  t_mu, t_lv = model.apply(params, text, tmask, t_text, deterministic, method="encode_text", rngs={"dropout": k_drop_t})
  m_mu, m_lv = model.apply(params, x, mask, t_motion, deterministic, method="encode_motion", rngs={"dropout": k_drop_m})
  t_z = reparameterize(k_zt, t_mu, t_lv)
  m_z = reparameterize(k_zm, m_mu, m_lv)
  # Both latents are decoded in one call (shared decoder): [2B, latent] -> [2B, L, D].
  recon = model.apply(
    params,
    jnp.concatenate([t_z, m_z]),
    jnp.concatenate([mask, mask]),
    deterministic,
    method="decode",
    rngs={"dropout": k_drop_d},
  )
  b = motion.shape[0]
  if input_target:
    recons = batch_frames_smooth_l1(recon[:b], x, mask) + batch_frames_smooth_l1(recon[b:], x, mask)
  else:
    recons = masked_smooth_l1(recon[:b], motion, mask) + masked_smooth_l1(recon[b:], motion, mask)
  kl = (
    kl_between(t_mu, t_lv, m_mu, m_lv)
    + kl_between(m_mu, m_lv, t_mu, t_lv)
    + kl_to_standard_normal(t_mu, t_lv)
    + kl_to_standard_normal(m_mu, m_lv)
  )
  latent = jnp.mean(smooth_l1(t_z, m_z))
  contrastive = spl_lib.info_nce_with_filtering(
    t_z, m_z, caption_features(mc, batch), config.temperature, config.threshold_selfsim, config.filter_convention
  )
  total = config.w_recons * recons + config.w_kl * kl + config.w_latent * latent + config.w_contrastive * contrastive
  # With official routing clean batches carry a sampled t too, so "noised" is read off the data instead.
  noised = jnp.any(x != motion, axis=(1, 2)) if official_t else t > 0
  metrics = {
    "recons": recons,
    "kl": kl,
    "latent": latent,
    "contrastive": contrastive,
    "noised_frac": jnp.mean(noised.astype(jnp.float32)),
  }
  if use_spl:
    if config.spl_latents == "mean" and not official_t:
      # Ours: rank the latent means of the pass above (the deterministic reward reads mu).
      spl_text, spl_motion = t_mu, m_mu
    else:
      spl_text, spl_motion = _spl_pass(
        params, model, mc, config, text, tmask, x, mask, t, official_t, jax.random.fold_in(rng, 7), deterministic
      )
    loss_spl, aux = spl_lib.spl_loss(
      spl_text,
      spl_motion,
      k=config.spl_k,
      high_sim=config.spl_high_sim,
      temperature=config.spl_temperature,
      convention=config.spl_temperature_convention,
    )
    total = total + config.spl_weight * loss_spl
    metrics.update(spl=loss_spl, **aux)
  metrics["loss"] = total
  return total, metrics


def _spl_pass(
  params,
  model,
  mc: SPMConfig,
  config: RewardTrainConfig,
  text,
  tmask,
  x,
  mask,
  t,
  official_t: bool,
  rng: jax.Array,
  deterministic: bool,
) -> tuple[jax.Array, jax.Array]:
  """The SPL term's own forward pass (official `compute_finetune_loss`): fresh dropout and, with
  spl_latents='sample', fresh reparameterised samples; official routing: text without timestep, motion with
  the sampled t whatever the mode. -> (text latents [B, C], motion latents [B, C])."""
  k_dt, k_dm, k_zt, k_zm = jax.random.split(rng, 4)
  if official_t:
    t_text, t_motion = None, t
  else:
    t_text, t_motion = route_timestep(mc, t, "text"), route_timestep(mc, t, "motion")
  t_mu, t_lv = model.apply(params, text, tmask, t_text, deterministic, method="encode_text", rngs={"dropout": k_dt})
  m_mu, m_lv = model.apply(params, x, mask, t_motion, deterministic, method="encode_motion", rngs={"dropout": k_dm})
  if config.spl_latents == "sample":
    return reparameterize(k_zt, t_mu, t_lv), reparameterize(k_zm, m_mu, m_lv)
  return t_mu, m_mu


@functools.lru_cache(maxsize=8)
def _jitted_step(config: RewardTrainConfig, optim: OptimConfig, use_spl: bool, mesh=None) -> Callable:
  # Cached by the (hashable, frozen) configs so that resumed or repeated runs in one process reuse the
  # compiled step instead of compiling it again.
  schedule = make_schedule(config.diffusion)
  tx = make_optimizer(optim)

  def step(state: TrainState, batch, rng):
    step_rng = jax.random.fold_in(rng, state.step)
    (loss, metrics), grads = jax.value_and_grad(reward_loss, has_aux=True)(
      state.params, batch, step_rng, config, schedule, use_spl
    )
    state, finite = apply_gradients(state, grads, tx, loss)
    metrics = dict(metrics, finite=finite, grad_norm=optax.tree.norm(grads))
    return state, metrics

  if mesh is not None:
    # Batch split over the mesh, state FSDP-sharded; the InfoNCE/SPL similarity matrices inside reward_loss
    # still span the GLOBAL batch (XLA gathers the embeddings), as on one device.
    return parallel.jit_sharded(step, mesh, batch_argnums=(1,), donate_state=True)
  return jax.jit(step, donate_argnums=0)


def make_train_step(
  config: RewardTrainConfig, optim: OptimConfig, use_spl: bool, rng: jax.Array, mesh=None
) -> Callable:
  """jit-compiled `(state, batch) -> (state, metrics)` with the optimizer of `optim`; per-step randomness is
  fold_in(rng, state.step), so a resumed run draws the same numbers. `mesh` (a `parallel.make_mesh`):
  data-parallel / FSDP step with the same result as one device on the same global batch."""
  step = _jitted_step(config, optim, use_spl, mesh)
  return lambda state, batch: step(state, batch, rng)


# --------------------------------------------------------------------------------------------- train
def _optim(config: RewardTrainConfig, learning_rate: float) -> OptimConfig:
  return OptimConfig(
    learning_rate=learning_rate, weight_decay=config.weight_decay, grad_clip_norm=config.grad_clip_norm
  )


def stage_optim(config: RewardTrainConfig, spl: bool) -> OptimConfig:
  """The optimizer of a stage: AdamW at learning_rate (pretraining) or spl_learning_rate (SPL)."""
  return _optim(config, config.spl_learning_rate if spl else config.learning_rate)


def _tokenizer_meta(tok: Optional[Tokenizer]) -> Optional[dict]:
  if tok is None:
    return None
  return {"vocab": tok.vocab, "max_length": tok.max_length, "add_sos_eos": tok.add_sos_eos}


def _tokenizer_from_meta(d: Optional[Mapping[str, Any]]) -> Optional[Tokenizer]:
  return None if d is None else Tokenizer(d["vocab"], d["max_length"], d["add_sos_eos"])


def read_reward_metadata(workdir: str | os.PathLike) -> dict:
  """Metadata of the latest checkpoint in `<workdir>/checkpoints`; clear error when it is not an SPM."""
  ckpt = Checkpointer(pathlib.Path(workdir) / "checkpoints")
  try:
    meta = ckpt.metadata()
  finally:
    ckpt.close()
  if meta.get("kind") != META_KIND:
    raise ValueError(f"{workdir}: checkpoint metadata field 'kind': expected {META_KIND!r}, found {meta.get('kind')!r}")
  return meta


def _state_template(config: RewardTrainConfig, optim: OptimConfig, text_emb_dim: int = 32):
  shapes = jax.eval_shape(lambda: init_spm(config.model, jax.random.key(0), text_emb_dim=text_emb_dim))
  params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  tx = make_optimizer(optim)
  return create_train_state(params, tx), tx


def _restore(workdir, meta) -> TrainState:
  config = RewardTrainConfig.from_dict(meta["train"])
  template, _ = _state_template(config, OptimConfig(**meta["optim"]), meta.get("text_emb_dim") or 32)
  ckpt = Checkpointer(pathlib.Path(workdir) / "checkpoints")
  try:
    return ckpt.restore(template)
  finally:
    ckpt.close()


def train_reward(
  config: RewardTrainConfig,
  workdir: str | os.PathLike,
  dataset: MotionDataset,
  *,
  mode: Optional[str] = None,
  noise_threshold: Optional[float] = None,
  spl: bool = False,
  init_from: Optional[str | os.PathLike] = None,
  steps: Optional[int] = None,
  tokenizer: Optional[Tokenizer] = None,
  text_embeddings: Optional[TextEmbeddings] = None,
  eval_dataset: Optional[MotionDataset] = None,
  eval_timesteps: Sequence[int] = (0, 100, 300),
  learning_rate: Optional[float] = None,
  progress: bool = True,
  mesh=None,
) -> dict:
  """Trains (or resumes) one SPM stage in `workdir` and returns a summary dict.

  Args:
    config: training config (model sizes in `config.model`).
    workdir: output folder; an existing checkpoint there is resumed.
    dataset: training split (normalised with its own Mean/Std).
    mode, noise_threshold: override `config.model.mode` / `config.noise_threshold`.
    spl: add the SPL loss (x config.spl_weight) and use `config.spl_learning_rate`.
    init_from: workdir of a trained SPM whose parameters (and tokenizer) start this stage.
    steps: number of optimizer steps of this stage (default config.num_steps).
    tokenizer: word tokenizer (default: the init checkpoint's, else built from `dataset`'s captions).
    text_embeddings: precomputed text embeddings (switches the model to text_input='embeddings').
    eval_dataset: when given, retrieval metrics at `eval_timesteps` are written to `retrieval.json`.
    learning_rate: overrides the stage's default rate.
    mesh: `parallel.make_mesh(...)` for data-parallel / FSDP steps; config.batch_size is the GLOBAL batch
      (must divide the device count) and the InfoNCE/SPL negatives span it, as on one device.

  Returns:
    {'params', 'config', 'workdir', 'steps', 'train_seconds', 'retrieval' (or None), 'preempted'}.
  """
  workdir = pathlib.Path(workdir)
  init_meta = read_reward_metadata(init_from) if init_from is not None else None
  if init_meta is not None:
    base = RewardTrainConfig.from_dict(init_meta["train"])
    config = dataclasses.replace(config, model=base.model, text_max_length=base.text_max_length)
    if tokenizer is None:
      tokenizer = _tokenizer_from_meta(init_meta["tokenizer"])
  model_over = {}
  if mode is not None:
    model_over["mode"] = mode
  if text_embeddings is not None:
    model_over["text_input"] = "embeddings"
  elif config.model.text_input == "tokens":
    if tokenizer is None:
      tokenizer = Tokenizer.build(
        (c for e in dataset.entries for c, _ in e.captions), max_length=config.text_max_length
      )
    model_over["vocab_size"] = tokenizer.vocab_size
  model_over["dim_motion"] = dataset.info.dim
  config = dataclasses.replace(config, model=dataclasses.replace(config.model, **model_over))
  if noise_threshold is not None:
    config = dataclasses.replace(config, noise_threshold=noise_threshold)
  if init_meta is not None:
    check_config_matches(init_meta["train"]["model"], config.model.to_dict(), f"{init_from} (init_from)")
  if config.model.text_input == "embeddings" and text_embeddings is None:
    raise ValueError(
      f"{_WHERE}: train_reward: the model reads precomputed text embeddings (text_input="
      f"'embeddings'{', the official SPM' if config.model.arch == 'official' else ''}): pass "
      f"text_embeddings= (a TextEmbeddings .npz, e.g. sentence-T5-large token embeddings)"
    )
  num_steps = config.num_steps if steps is None else int(steps)
  lr = learning_rate or (config.spl_learning_rate if spl else config.learning_rate)
  optim = _optim(config, lr)
  text_emb_dim = text_embeddings.dim if text_embeddings is not None else 32

  # RBG keys (XLA's RngBitGenerator): the dropout masks and noise of a step compile about twice as fast on
  # CPU as threefry's and are equally deterministic, so a resumed run still draws the same numbers.
  rng = jax.random.key(config.seed, impl="rbg")
  k_init, k_train = jax.random.split(rng)
  state, tx = _state_template(config, optim, text_emb_dim)
  if init_meta is not None:
    params = _restore(init_from, init_meta).params
  else:
    params = init_spm(config.model, k_init, text_emb_dim=text_emb_dim)
  state = create_train_state(params, tx)
  # A different fold for the SPL stage so it does not replay the pretraining noise sequence.
  step_fn = make_train_step(config, optim, spl, jax.random.fold_in(k_train, int(spl)), mesh)

  metadata = {
    "kind": META_KIND,
    "train": config.to_dict(),
    "optim": dataclasses.asdict(optim),
    "stage": "spl" if spl else "pretrain",
    "init_from": None if init_from is None else str(init_from),
    "tokenizer": _tokenizer_meta(tokenizer),
    "text_emb_dim": text_emb_dim if text_embeddings else None,
    "text_embeddings_path": None if text_embeddings is None else text_embeddings.path,
    "dataset": {"root": dataset.root, "split": dataset.split, "dim": dataset.info.dim},
    "inputs": "reward(x, cond, t): x = dataset-normalised motion features [B, L, D]; "
    "Mean/Std are not stored (normalise with the dataset's own).",
  }
  ckpt = Checkpointer(workdir / "checkpoints")
  if ckpt.latest_step() is not None:
    saved = ckpt.metadata()
    check_config_matches(
      saved["train"],
      config.to_dict(),
      str(workdir / "checkpoints"),
      ignore=("log_every", "checkpoint_every", "num_steps"),
    )
  writer = MetricWriter(workdir)
  emb_kwargs = {"text_embeddings": text_embeddings} if text_embeddings is not None else {}

  def batch_fn(step):
    arrays, _ = batch_at(
      dataset,
      step,
      config.batch_size,
      config.seed,
      tokenizer or _dummy_tokenizer(),
      max_length=config.max_length,
      rows=None if mesh is None else parallel.host_local_slice(config.batch_size),
      **emb_kwargs,
    )
    return arrays

  t0 = time.time()
  result = train_loop(
    state=state,
    step_fn=step_fn,
    batch_fn=batch_fn,
    num_steps=num_steps,
    checkpointer=ckpt,
    writer=writer,
    metadata=metadata,
    log_every=config.log_every,
    checkpoint_every=config.checkpoint_every,
    desc=f"spm-{metadata['stage']}",
    progress=progress,
  )
  train_seconds = time.time() - t0
  ckpt.close()
  retrieval = None
  if eval_dataset is not None and not result.preempted:
    retrieval = evaluate_retrieval(
      result.state.params, config, eval_dataset, tokenizer, timesteps=eval_timesteps, text_embeddings=text_embeddings
    )
    write_json(workdir / "retrieval.json", retrieval, sort_keys=True)
    writer.write(
      result.last_step,
      {
        f"retrieval/{k}/{m}": v
        for k, d in retrieval.items()
        for m, v in d.items()
        if m.endswith(("/R1", "/R3", "/MedR"))
      },
    )
  writer.close()
  return {
    "params": result.state.params,
    "config": config,
    "workdir": str(workdir),
    "steps": result.last_step,
    "train_seconds": train_seconds,
    "retrieval": retrieval,
    "preempted": result.preempted,
    "tokenizer": tokenizer,
  }


def _dummy_tokenizer() -> Tokenizer:
  # Batches always carry word ids; with precomputed embeddings they are unused by the model.
  return Tokenizer(["<pad>", "<unk>", "<sos>", "<eos>"], max_length=4)


# --------------------------------------------------------------------------------------------- evaluate
@functools.lru_cache(maxsize=8)
def _jitted_encoder(mc: SPMConfig, diffusion: DiffusionConfig) -> Callable:
  schedule = make_schedule(diffusion)

  @jax.jit
  def enc(params, batch, t, key):
    mask = batch["mask"].astype(bool)
    x = batch["motion"]
    tt = jnp.full((x.shape[0],), t, jnp.int32)
    x = jnp.where(t > 0, add_noise(schedule, x, jax.random.normal(key, x.shape, x.dtype), tt), x)
    x = x * mask[..., None]
    return encode_text(params, mc, batch, tt), encode_motion(params, mc, x, mask, tt)

  return enc


def encode_dataset(
  params,
  config: RewardTrainConfig,
  dataset: MotionDataset,
  tokenizer: Optional[Tokenizer],
  timesteps: Sequence[int] = (0,),
  batch_size: int = 32,
  seed: int = 1234,
  text_embeddings: Optional[TextEmbeddings] = None,
  noise_seed: int = 0,
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
  """Latent means of every entry (one random caption, one crop, fixed shuffled order) at each timestep.

  Motion at t > 0 is the DDPM-noised normalised motion (fixed noise per entry); texts get t only in T1 modes.
  Returns {t: (text_mu [N, latent], motion_mu [N, latent])}.
  """
  enc = _jitted_encoder(config.model, config.diffusion)
  kwargs = {"text_embeddings": text_embeddings} if text_embeddings is not None else {}
  out = {int(t): ([], []) for t in timesteps}
  batches = iterate_batches(
    dataset,
    batch_size,
    seed,
    0,
    tokenizer or _dummy_tokenizer(),
    drop_last=False,
    max_length=config.max_length,
    **kwargs,
  )
  for i, (arrays, _) in enumerate(batches):
    n = arrays["motion"].shape[0]
    if n < batch_size:  # pad the last batch so the jitted encoder is not retraced
      arrays = {k: np.concatenate([v, np.repeat(v[-1:], batch_size - n, 0)]) for k, v in arrays.items()}
    for t in timesteps:
      key = jax.random.fold_in(jax.random.key(noise_seed), i)
      tm, mm = jax.device_get(enc(params, arrays, jnp.int32(t), key))
      out[int(t)][0].append(tm[:n])
      out[int(t)][1].append(mm[:n])
  return {t: (np.concatenate(a), np.concatenate(b)) for t, (a, b) in out.items()}


def evaluate_retrieval(
  params,
  config: RewardTrainConfig,
  dataset: MotionDataset,
  tokenizer: Optional[Tokenizer],
  timesteps: Sequence[int] = (0, 100, 300),
  batch_size: int = 32,
  seed: int = 1234,
  text_embeddings: Optional[TextEmbeddings] = None,
) -> dict[str, dict[str, float]]:
  """Text<->motion retrieval of the SPM on `dataset`, clean (t=0) and with motion noised at each t.

  Returns {'t<t>/full': metrics, 't<t>/batch<batch_size>': metrics (only when N >= batch_size)} with the keys of
  :func:`easytune_jax.spl.retrieval_metrics` (R<k> = R@k in %, MedR); e.g. 't0/full' -> 't2m/R1', logged as the
  metric 'retrieval/t0/full/t2m/R1' (no character TensorBoard renames).
  """
  lat = encode_dataset(params, config, dataset, tokenizer, timesteps, batch_size, seed, text_embeddings)
  out = {}
  for t, (text, motion) in lat.items():
    out[f"t{t}/full"] = spl_lib.retrieval_metrics(spl_lib.cosine_similarity_matrix(text, motion))
    if text.shape[0] >= batch_size:
      out[f"t{t}/batch{batch_size}"] = spl_lib.batched_retrieval_metrics(text, motion, batch_size)
    else:
      logging.warning("evaluate_retrieval: %d pairs < batch_size=%d: batch protocol skipped", text.shape[0], batch_size)
  return out


# --------------------------------------------------------------------------------------------- load
def load_reward(workdir: str | os.PathLike) -> tuple[Callable[..., jax.Array], Any, RewardTrainConfig]:
  """(reward(x, cond, t=None) -> [B], params, training config) of the latest checkpoint in `workdir`.

  cond needs the text inputs (`tokens`/`token_mask` encoded with `load_reward_tokenizer(workdir)`, or
  `text_emb`/`text_emb_mask`) and optionally the frame `mask`; x is dataset-normalised motion.
  """
  meta = read_reward_metadata(workdir)
  params = _restore(workdir, meta).params
  config = RewardTrainConfig.from_dict(meta["train"])
  return reward_fn(params, config.model), params, config


def load_reward_tokenizer(workdir: str | os.PathLike) -> Optional[Tokenizer]:
  """The word tokenizer stored with an SPM checkpoint (None for embedding-input models)."""
  return _tokenizer_from_meta(read_reward_metadata(workdir)["tokenizer"])


# --------------------------------------------------------------------------------------------- official
@dataclasses.dataclass(frozen=True)
class SPMConversion:
  """launch/convert_official_spm.py's setting the checkpoint does not hold: attention heads (4 in the official
  configs; every size is read from the checkpoint's shapes)."""

  num_heads: int = 4


def convert_spm_checkpoint(
  ckpt_path: str | os.PathLike, out_workdir: str | os.PathLike, config: Optional[SPMConfig] = None, **overrides
) -> pathlib.Path:
  """Converts an official SPM checkpoint into a reward workdir that `load_reward` loads.

  The workdir holds `checkpoints/` (step 0: the params and a fresh optimizer state of the official SPL stage,
  so it can also be `init_from` of further training) with metadata: kind 'easytune_jax.spm_reward', the
  training config `RewardTrainConfig.official(model=config)`, stage 'converted', the text embedding width and
  the source file with its sha256. Written into a temporary sibling folder and renamed when complete: on any
  error nothing is left at `out_workdir`. `out_workdir` must not exist yet.

  Returns the workdir path. The reward reads precomputed sentence-T5-large token embeddings
  (`cond['text_emb']`, `cond['text_emb_mask']`, see `data.text.TextEmbeddings`).
  """
  out = pathlib.Path(out_workdir).absolute()
  if out.exists():
    raise FileExistsError(f"{out}: already exists; convert_spm_checkpoint writes a new workdir")
  params, config, e = spm_convert.load_official_spm(ckpt_path, config, **overrides)
  train_config = RewardTrainConfig.official(model=config)
  optim = dataclasses.asdict(stage_optim(train_config, spl=True))
  tx = make_optimizer(OptimConfig(**optim))
  params = jax.tree.map(np.asarray, params)
  state = create_train_state(params, tx)
  digest = hashlib.sha256(pathlib.Path(ckpt_path).read_bytes()).hexdigest()
  metadata = {
    "kind": META_KIND,
    "train": train_config.to_dict(),
    "optim": optim,
    "stage": "converted",
    "init_from": None,
    "tokenizer": None,
    "text_emb_dim": e,
    "text_embeddings_path": None,
    "dataset": {"root": None, "split": None, "dim": config.dim_motion},
    "source": {"official_checkpoint": str(pathlib.Path(ckpt_path).absolute()), "sha256": digest},
    "inputs": "reward(x, cond, t): x = dataset-normalised motion features [B, L, D]; cond['text_emb'] "
    "[B, Lt, E] sentence-T5-large token embeddings and cond['text_emb_mask']; Mean/Std are not "
    "stored (normalise with the dataset's own).",
  }
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.parent / f".{out.name}.converting-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  try:
    ckpt = Checkpointer(tmp / "checkpoints")
    try:
      ckpt.save(0, state, metadata)
    finally:
      ckpt.close()
    os.rename(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out
