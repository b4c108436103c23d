"""One pass of the protocol's test loader and the generator on it (steps 1-2 of `eval/evaluation.py`'s protocol):
`draw_test_samples` (a random caption and unit-length crop per entry, normalised and zero-padded),
`run_generator` (a `generate_fn` on fixed-size batches, outputs checked and masked) and the physical extras of
generated or real motion (`physical_metrics`: foot skating, jitter, floor penetration).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence

import jax
import numpy as np

from easytune_jax import metrics as M
from easytune_jax.bundles.evaluator import pos_only_tokenizer
from easytune_jax.data import batching
from easytune_jax.data.features import recover_from_ric
from easytune_jax.data.humanml3d import MotionDataset

GenerateFn = Callable[..., np.ndarray]
PHYSICAL_METRICS = ("foot_skating", "jitter", "floor_penetration")


@dataclasses.dataclass
class TestSamples:
  """One pass of the test loader: x_norm float32 [N, L, D], lengths int32 [N], captions, pos_tokens, names."""

  x_norm: np.ndarray
  lengths: np.ndarray
  captions: list
  pos_tokens: list
  names: list


def draw_test_samples(
  dataset: MotionDataset,
  rng: np.random.Generator,
  *,
  indices: Sequence[int] | None = None,
  max_length: int = 196,
  unit_length: int = 4,
) -> TestSamples:
  """Random caption + unit-length crop per entry (all entries in dataset order, or ``indices``), normalised
  with the dataset Mean/Std and zero-padded to ``max_length`` (crops longer than it get a random window)."""
  idx = np.arange(len(dataset)) if indices is None else np.asarray(indices)
  arrays, host = batching.make_batch(
    dataset, idx, rng, pos_only_tokenizer(), max_length=max_length, unit_length=unit_length
  )
  return TestSamples(arrays["motion"], arrays["length"], host["caption"], host["pos_tokens"], host["name"])


def _accepts_reference(fn: Callable) -> bool:
  try:
    return "reference" in inspect.signature(fn).parameters
  except (TypeError, ValueError):
    return False


def run_generator(
  generate_fn: GenerateFn, samples: TestSamples, rng: jax.Array, batch_size: int, max_length: int, dim: int
) -> np.ndarray:
  """Calls ``generate_fn(captions, pos_tokens, lengths, rng)`` on fixed ``batch_size`` rows and returns the
  generated dataset-normalised features [N, max_length, D] with frames >= length zeroed.

  The last batch is padded by repeating its last row (outputs dropped). If ``generate_fn`` has a keyword
  ``reference``, it also receives the real crops [B, max_length, D] (oracle / real-motion "generators").
  """
  n = len(samples.captions)
  out = np.zeros((n, max_length, dim), np.float32)
  with_ref = _accepts_reference(generate_fn)
  for k, s in enumerate(range(0, n, batch_size)):
    e = min(s + batch_size, n)
    take = np.concatenate([np.arange(s, e), np.full(batch_size - (e - s), e - 1)])
    caps = [samples.captions[i] for i in take]
    toks = [samples.pos_tokens[i] for i in take]
    lens = samples.lengths[take].astype(np.int32)
    kw = {"reference": samples.x_norm[take]} if with_ref else {}
    x = np.asarray(generate_fn(caps, toks, lens, jax.random.fold_in(rng, k), **kw), np.float32)
    if x.ndim != 3 or x.shape[0] != batch_size or x.shape[2] != dim or x.shape[1] < int(lens.max()):
      raise ValueError(
        f"generate_fn: expected x_norm [{batch_size}, L >= {int(lens.max())}, {dim}] "
        f"(dataset-normalised features), found {x.shape}"
      )
    if not np.all(np.isfinite(x[: e - s])):
      raise FloatingPointError(f"generate_fn: non-finite values in generated batch {k}")
    x = x[: e - s, :max_length]
    mask = np.arange(x.shape[1])[None, :] < lens[: e - s, None]
    out[s:e, : x.shape[1]] = np.where(mask[..., None], x, 0.0)
  return out


@jax.jit
def _physical(x_norm, lengths, mean, std):
  joints = recover_from_ric(x_norm * std + mean, 22)
  return {
    "foot_skating": M.foot_skating_ratio(joints, lengths),
    "jitter": M.jitter(joints, lengths),
    "floor_penetration": M.floor_penetration(joints, lengths),
  }


def physical_metrics(
  x_norm: np.ndarray, lengths: np.ndarray, mean: np.ndarray, std: np.ndarray, batch_size: int = 32
) -> dict:
  """Mean over samples of foot skating ratio, jitter (m/s^3) and floor penetration (m); HumanML3D (22 joints)
  only. Fixed [batch_size] chunks so nothing retraces."""
  n = x_norm.shape[0]
  sums = {k: 0.0 for k in PHYSICAL_METRICS}
  for s in range(0, n, batch_size):
    e = min(s + batch_size, n)
    xb = np.zeros((batch_size,) + x_norm.shape[1:], np.float32)
    xb[: e - s] = x_norm[s:e]
    lb = np.full((batch_size,), lengths[s], np.int32)
    lb[: e - s] = lengths[s:e]
    vals = jax.device_get(_physical(xb, lb, mean, std))
    for k in sums:
      sums[k] += float(np.sum(np.asarray(vals[k])[: e - s]))
  return {k: v / n for k, v in sums.items()}
