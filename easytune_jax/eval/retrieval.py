"""Text <-> motion retrieval of a reward model (SPM) on a dataset: latent means of every entry, clean and with the
motion noised at chosen timesteps, ranked by cosine (`rewards.spl.retrieval_metrics`). What the reward trainer
writes to `retrieval.json` and the notebooks and tests read.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from easytune_jax.core.schedules import DiffusionConfig, add_noise, make_schedule
from easytune_jax.data.batching import iterate_batches
from easytune_jax.data.humanml3d import MotionDataset
from easytune_jax.data.text import TextEmbeddings, Tokenizer, placeholder_tokenizer
from easytune_jax.models.spm import SPMConfig, encode_motion, encode_text
from easytune_jax.rewards import spl as spl_lib
from easytune_jax.rewards.spm_objective import RewardTrainConfig


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
  tokenizer: Tokenizer | None,
  timesteps: Sequence[int] = (0,),
  batch_size: int = 32,
  seed: int = 1234,
  text_embeddings: TextEmbeddings | None = None,
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
    tokenizer or placeholder_tokenizer(),
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
  tokenizer: Tokenizer | None,
  timesteps: Sequence[int] = (0, 100, 300),
  batch_size: int = 32,
  seed: int = 1234,
  text_embeddings: TextEmbeddings | None = None,
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
