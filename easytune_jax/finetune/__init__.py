"""Reward fine-tuning methods (EasyTune and the DRaFT-K / ReFL / AlignProp / DRTune baselines), model-agnostic.

The builders take apply functions `denoise(params, x_t, t, cond)` and `reward(x, cond, t)`, never concrete
networks; `make_update_fn(config, ...)` gives the same `update(state, x_T, cond, uncond, rng, ...)` for every
method. The implementation lives in `methods.py`; this package exports its public API.
"""

from easytune_jax.finetune.methods import (COMPUTE_DTYPES, METHODS, REGULARIZERS, REWARD_INPUTS, REWARD_TIMESTEPS, SAMPLER_VARIANTS,
                                           FinetuneConfig, StepAux, TrajectoryAux, alignprop_mask, compiled_memory,
                                           diffusion_loss, drtune_choices, make_alignprop_loss, make_draft_loss,
                                           make_drtune_loss, make_easytune_update, make_refl_loss, make_step_loss,
                                           make_trajectory_loss, make_trajectory_update, make_update_fn, cast_floating,
                                           with_compute_dtype)

__all__ = ["COMPUTE_DTYPES", "METHODS", "REGULARIZERS", "REWARD_INPUTS", "REWARD_TIMESTEPS", "SAMPLER_VARIANTS", "FinetuneConfig",
           "StepAux", "TrajectoryAux", "alignprop_mask", "compiled_memory", "diffusion_loss", "drtune_choices",
           "make_alignprop_loss", "make_draft_loss", "make_drtune_loss", "make_easytune_update", "make_refl_loss",
           "make_step_loss", "make_trajectory_loss", "make_trajectory_update", "make_update_fn", "cast_floating",
           "with_compute_dtype"]
