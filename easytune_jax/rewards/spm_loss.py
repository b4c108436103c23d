"""The SPM's training losses (EasyTune, arXiv 2602.07967; TMR, arXiv 2305.00976), configured by
`rewards.spm_objective.RewardTrainConfig`:

* pretraining (`use_spl=False`): smooth-L1 reconstruction of the clean motion from the text latent and from the
  motion latent, KL terms (text||motion, motion||text, text||N(0,I), motion||N(0,I)) x 1e-5, latent
  smooth-L1 x 1e-5, InfoNCE with near-duplicate-caption filtering x 0.1;
* SPL fine-tuning (`use_spl=True`): the same loss + 0.01 x the SPL preference loss on the text x motion cosine
  matrix of the latents' means (or, with the official options, of a second pass's samples).

Noise-aware training (`noise_batch`): with probability 1 - noise_threshold a batch is noised (DDPM forward process
with the MLD schedule, on the normalised motion features) to per-sample t ~ U{0, ..., max_timestep - 1}; the
timestep goes to the encoders selected by the mode. Clean batches use t = 0. Reconstruction targets are the clean
motion (`recons_target='clean_valid'`) or the input (the official option; see `rewards/spm_objective.py`).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from easytune_jax.core.schedules import Schedule, add_noise
from easytune_jax.models.layers import kl_between, kl_to_standard_normal, reparameterize
from easytune_jax.models.spm import SPMConfig, route_timestep, spm_module, text_inputs
from easytune_jax.rewards import spl as spl_lib
from easytune_jax.rewards.spm_objective import RewardTrainConfig

_WHERE = __name__.replace(".", "/") + ".py"


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
