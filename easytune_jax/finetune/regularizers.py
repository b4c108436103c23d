"""The anti-hacking regularisers' pieces outside the executor: 'diffusion' (a denoising loss on each batch's own
data, `diffusion_loss`) and the inputs each regulariser needs ('kl': the frozen base params; its term is
`StepContext.kl` in finetune/executor.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax

from easytune_jax.core.sampling_process import SamplingProcess, denoising_loss
from easytune_jax.finetune.apply_fns import DROPOUT_STREAM, Denoiser


def diffusion_loss(
  denoise: Denoiser,
  process: SamplingProcess,
  params: Any,
  data_batch: Mapping[str, Any],
  rng: jax.Array,
  dropout: bool = False,
) -> jax.Array:
  """Standard denoising loss on data: mean over (masked) elements of (denoise(x_t, t) - target)^2.

  data_batch: {'x0': [B, ...] clean data (latents or motion), 'cond': pytree [B, ...],
  optional 'mask': bool/float [B, L] (positions beyond a sequence's length do not count)}.
  t from the process's training times, noise ~ N(0, I), the process's target (core/sampling_process.py). `dropout`: the denoiser
  runs with dropout on, key fold_in(rng, DROPOUT_STREAM) (t and noise are drawn as without it).
  """
  for key in ("x0", "cond"):
    if key not in data_batch:
      raise ValueError(f"finetune.diffusion_loss: data_batch needs key {key!r}, found {sorted(data_batch)}")
  k_t, k_n = jax.random.split(rng)
  kw = {"rng": jax.random.fold_in(rng, DROPOUT_STREAM)} if dropout else {}
  predict = lambda x_t, t: denoise(params, x_t, t, data_batch["cond"], **kw)  # noqa: E731
  return denoising_loss(process, predict, data_batch["x0"], k_t, k_n, data_batch.get("mask"))


def check_regularizer_inputs(config, data_batch, base_params):
  if config.regularizer == "diffusion" and data_batch is None:
    raise ValueError("finetune: regularizer='diffusion' needs a `data_batch` {'x0', 'cond'[, 'mask']}")
  if config.regularizer == "kl" and base_params is None:
    raise ValueError("finetune: regularizer='kl' needs `base_params` (the frozen base model's params)")
