"""The boundary between the fine-tuning builders and the user's apply functions (contracts in WORKSPACE.md):

  denoise(params, x_t [B, ...], t int32 [B], cond) -> model output [B, ...]   (eps / sample / v)
  reward(x [B, ...], cond, t: None | int32 [B]) -> [B]  (higher is better, differentiable in x)
  decode(z [B, ...], cond) -> x (optional; e.g. a frozen VAE decoder latent -> motion features)

Here: their types, the per-step keys they receive as a keyword `rng` (`dropout_key` with
`FinetuneConfig.denoiser_dropout`, `reward_key` with reward_noise='per_step'; a trajectory's keys are one
`TrajectoryKeys`), and the compute dtype they run in (`with_compute_dtype`, `cast_floating`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Denoiser = Callable[[Any, jax.Array, jax.Array, Any], jax.Array]
Reward = Callable[[jax.Array, Any, jax.Array | None], jax.Array]
Decoder = Callable[[jax.Array, Any], jax.Array]

COMPUTE_DTYPES = ("float32", "bfloat16")


# Key streams folded into a trajectory's key (`fold_in(rng, stream)`), then per step (`fold_in(., i)`). Distinct
# large constants, so that they never meet the small fold_in indices callers use on the same key (x_T, cond).
DROPOUT_STREAM = 0x64726F70  # "drop"
REWARD_STREAM = 0x72657764  # "rewd"


def dropout_key(rng: jax.Array, step) -> jax.Array:
  """The denoiser's dropout key of step `step` (0..T-1) of the trajectory with key `rng`:
  fold_in(fold_in(rng, DROPOUT_STREAM), step). Every call of the denoiser at that step (the no-gradient
  sampler, the gradient step, the KL base output) uses it, so they see the same masks."""
  return jax.random.fold_in(jax.random.fold_in(rng, DROPOUT_STREAM), step)


def reward_key(rng: jax.Array, step) -> jax.Array:
  """The reward's key when it scores step `step`'s output ('per_step' reward noise; a final sample x_0
  is step T-1's output): fold_in(fold_in(rng, REWARD_STREAM), step)."""
  return jax.random.fold_in(jax.random.fold_in(rng, REWARD_STREAM), step)


class TrajectoryKeys(NamedTuple):
  """A trajectory's keys: noise (DDIM eta > 0), dropout (denoiser dropout), reward (per-step reward noise);
  each None when that part is deterministic / off. Per-step keys are folded in by the step index."""

  noise: jax.Array | None = None
  dropout: jax.Array | None = None
  reward: jax.Array | None = None


def cast_floating(tree: Any, dtype: Any) -> Any:
  """`tree` with every floating-point array leaf cast to `dtype` (integer, bool and key leaves, and
  non-array leaves, unchanged)."""

  def cast(x):
    if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating):
      return jnp.asarray(x).astype(dtype)
    return x

  return jax.tree.map(cast, tree)


def with_compute_dtype(
  denoise: Denoiser, reward: Reward, decode: Decoder | None, compute_dtype: str = "float32"
) -> tuple[Denoiser, Reward, Decoder | None]:
  """The three apply functions run in `compute_dtype` ('float32': returned unchanged).

  'bfloat16': the denoiser's params and every floating input (x [B, ...], cond pytrees) are cast to
  bfloat16 at the call, its output back to the dtype of x (float32), so the gradient reaching the float32
  master params is float32 (the cast's transpose); the decoder's and the reward's floating inputs are
  cast likewise and their outputs returned as float32. Integer timesteps and masks are untouched.
  """
  if compute_dtype not in COMPUTE_DTYPES:
    raise ValueError(f"with_compute_dtype: expected one of {COMPUTE_DTYPES}, found {compute_dtype!r}")
  if compute_dtype == "float32":
    return denoise, reward, decode
  dt = jnp.dtype(compute_dtype)

  def denoise_c(params, x_t, t, cond, **kw):  # kw: the optional dropout `rng`
    return denoise(cast_floating(params, dt), x_t.astype(dt), t, cast_floating(cond, dt), **kw).astype(x_t.dtype)

  def reward_c(x, cond, t, **kw):  # kw: the optional per-step reward `rng`
    return reward(x.astype(dt), cast_floating(cond, dt), t, **kw).astype(jnp.float32)

  decode_c = None
  if decode is not None:

    def decode_c(z, cond):
      return decode(z.astype(dt), cast_floating(cond, dt)).astype(jnp.float32)

  return denoise_c, reward_c, decode_c
