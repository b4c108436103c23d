"""Reward fine-tuning methods (EasyTune and the DRaFT-K / ReFL / AlignProp / DRTune baselines), model-agnostic.

The methods are rows of one table (`METHODS`: name -> `StepPolicy`) run by one executor. The builders take
apply functions `denoise(params, x_t, t, cond)` and `reward(x, cond, t)`, never concrete networks;
`make_update_fn(config, ...)` gives the same `update(state, x_T, cond, uncond, rng, ...)` for every method.
The implementation lives in `methods.py`; this package exports its public API.
"""

from easytune_jax.finetune.methods import (
  COMPUTE_DTYPES,
  DROPOUT_STREAM,
  METHODS,
  REGULARIZERS,
  REWARD_INPUTS,
  REWARD_NOISE,
  REWARD_STREAM,
  REWARD_TIMESTEPS,
  SAMPLER_VARIANTS,
  Choice,
  FinetuneConfig,
  StepAux,
  StepPolicy,
  TrajectoryAux,
  alignprop_mask,
  cast_floating,
  compiled_memory,
  diffusion_loss,
  dropout_key,
  drtune_choices,
  make_per_step_update,
  make_step_loss,
  make_trajectory_loss,
  make_trajectory_update,
  make_update_fn,
  reward_key,
  with_compute_dtype,
)

__all__ = [
  "COMPUTE_DTYPES",
  "DROPOUT_STREAM",
  "METHODS",
  "REGULARIZERS",
  "REWARD_INPUTS",
  "REWARD_NOISE",
  "REWARD_STREAM",
  "REWARD_TIMESTEPS",
  "SAMPLER_VARIANTS",
  "Choice",
  "FinetuneConfig",
  "StepAux",
  "StepPolicy",
  "TrajectoryAux",
  "alignprop_mask",
  "cast_floating",
  "compiled_memory",
  "diffusion_loss",
  "dropout_key",
  "drtune_choices",
  "make_per_step_update",
  "make_step_loss",
  "make_trajectory_loss",
  "make_trajectory_update",
  "make_update_fn",
  "reward_key",
  "with_compute_dtype",
]
