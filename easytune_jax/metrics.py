"""Text-to-motion evaluation metrics (docs/humanml3d_format.md#evaluation-protocol) and physical-plausibility
extras.

Embedding metrics follow the MLD / MotionLCM / EasyTune reference code (``TM2TMetrics``, ``MMMetrics``):

* :func:`euclidean_distance_matrix` (docs/humanml3d_format.md#distances),
* :func:`r_precision` and Matching score / MM-Dist (docs/humanml3d_format.md#r-precision),
* :func:`fid` (docs/humanml3d_format.md#fid, float64 numpy),
* :func:`diversity` (docs/humanml3d_format.md#diversity), :func:`multimodality`
  (docs/humanml3d_format.md#multimodality),
* :func:`summarize_replications` and :func:`format_markdown_table` (docs/humanml3d_format.md#replications).

Every random draw (permutation, pair indices) is either passed in explicitly or drawn from an explicit numpy
``Generator`` / integer seed on the host, so results are reproducible and tests can compare against
references given the same indices. The jnp functions are jit-able when given index arrays.

Physical extras on joint positions ``[B, F, J, 3]`` (Y up, metres, floor at y = 0): :func:`foot_skating_ratio`,
:func:`jitter`, :func:`floor_penetration`, each masked by the per-sample length.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

R_PRECISION_GROUP = 32  # R_size
DIVERSITY_TIMES = 300  # diversity_times
MM_TIMES = 10  # mm_num_times
CI_Z = 1.96


def _rng(rng):
  """An explicit numpy Generator from a Generator or an int seed."""
  if isinstance(rng, np.random.Generator):
    return rng
  if rng is None:
    raise ValueError("pass explicit indices or rng (a numpy Generator or an int seed); refusing a hidden seed")
  return np.random.default_rng(rng)


# --------------------------------------------------------------------------------------------------
# Distances, R-precision, Matching score
# --------------------------------------------------------------------------------------------------


def euclidean_distance_matrix(a, b):
  """``D_ij = sqrt(max(|a_i|^2 + |b_j|^2 - 2 a_i.b_j, 0))``. a [N, E], b [M, E] -> [N, M]."""
  d2 = jnp.sum(a * a, -1)[:, None] + jnp.sum(b * b, -1)[None, :] - 2.0 * (a @ b.T)
  return jnp.sqrt(jnp.maximum(d2, 0.0))  # clamp: rounding can make the argument slightly negative


def r_precision(text_emb, motion_emb, perm, *, group_size: int = R_PRECISION_GROUP, top_k: int = 3):
  """R-precision top-1..k and Matching score (MM-Dist), rows = texts (docs/humanml3d_format.md#r-precision).

  One common permutation is applied to texts and motions; they are cut into ``N // group_size`` groups of
  ``group_size`` (the remainder is ignored); in each group every text ranks the group's motions by
  Euclidean distance.

  Args:
    text_emb, motion_emb: [N, E] paired embeddings.
    perm: int array [N] (a permutation of range(N)), or a numpy Generator / int seed to draw one.
    group_size: static, 32 by default.
  Returns:
    ``{'R_precision_top_1': .., ..., 'Matching_score': ..}`` scalars (jnp).
  """
  n = text_emb.shape[0]
  if motion_emb.shape[0] != n:
    raise ValueError(f"r_precision: text_emb has {n} rows, motion_emb {motion_emb.shape[0]}; expected equal")
  groups = n // group_size
  if groups < 1:
    raise ValueError(f"r_precision: expected at least group_size={group_size} samples, found {n}")
  if isinstance(perm, (np.random.Generator, int, np.integer)):
    perm = _rng(perm).permutation(n)
  used = groups * group_size
  t = jnp.take(text_emb, perm, axis=0)[:used].reshape(groups, group_size, -1)
  m = jnp.take(motion_emb, perm, axis=0)[:used].reshape(groups, group_size, -1)
  dist = jax.vmap(euclidean_distance_matrix)(t, m)  # [G, S, S]
  order = jnp.argsort(dist, axis=-1)[..., :top_k]  # [G, S, k]
  hit = order == jnp.arange(group_size)[None, :, None]
  hit_at_k = jnp.cumsum(hit, axis=-1) > 0  # top-k is cumulative
  out = {f"R_precision_top_{k + 1}": jnp.mean(hit_at_k[..., k].astype(dist.dtype)) for k in range(top_k)}
  out["Matching_score"] = jnp.mean(jnp.diagonal(dist, axis1=1, axis2=2))
  return out


# --------------------------------------------------------------------------------------------------
# FID
# --------------------------------------------------------------------------------------------------


def _check_finite(x, name):
  x = np.asarray(x, dtype=np.float64)
  if x.ndim != 2:
    raise ValueError(f"fid: {name} expected shape [N, E], found {x.shape}")
  if not np.all(np.isfinite(x)):
    bad = int(np.sum(~np.isfinite(x)))
    raise ValueError(f"fid: {name} contains {bad} non-finite values (NaN/inf); expected finite embeddings")
  return x


def _clip_eigs(w, n):
  # Eigenvalues within rounding noise of zero (|w| < n * eps * max|w|) are zero: their square roots would
  # otherwise add ~sqrt(noise) each and FID(X, X) would not vanish for rank-deficient covariances.
  tol = n * np.finfo(np.float64).eps * max(float(np.max(np.abs(w))), 1e-300)
  return np.where(w > tol, w, 0.0)


def _psd_sqrt(s):
  w, v = np.linalg.eigh(s)
  return (v * np.sqrt(_clip_eigs(w, s.shape[0]))) @ v.T


def trace_sqrt_product(sigma1, sigma2, eps: float = 1e-6) -> float:
  """``tr sqrtm(S1 S2) = sum_i sqrt(max(lambda_i, 0))``, lambda of the symmetric ``S1^1/2 S2 S1^1/2``.

  Float64 eigen-decompositions; works for rank-deficient covariances. If an eigen-solver fails to
  converge or produces non-finite values, retries with ``eps * I`` added to both (scipy-FID's fallback).
  """
  for reg in (0.0, eps):
    try:
      s1 = sigma1 + reg * np.eye(sigma1.shape[0])
      s2 = sigma2 + reg * np.eye(sigma2.shape[0])
      r = _psd_sqrt(s1)
      m = r @ s2 @ r
      lam = np.linalg.eigvalsh(0.5 * (m + m.T))
      val = float(np.sum(np.sqrt(_clip_eigs(lam, m.shape[0]))))
      if math.isfinite(val):
        return val
    except np.linalg.LinAlgError:
      pass
  raise FloatingPointError(f"fid: tr sqrtm(S1 S2) is not finite even with eps={eps} regularisation")


def fid_from_stats(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
  """Frechet distance between Gaussians ``N(mu1, sigma1)`` and ``N(mu2, sigma2)`` in float64."""
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
    raise ValueError(
      f"fid_from_stats: shapes mu1 {mu1.shape}, sigma1 {sigma1.shape}, mu2 {mu2.shape}, "
      f"sigma2 {sigma2.shape} do not match [E], [E, E]"
    )
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2, eps))


def fid(gen_emb, gt_emb, eps: float = 1e-6) -> float:
  """FID between generated and real embeddings [N, E] (docs/humanml3d_format.md#fid; ``np.cov``, ddof 1).

  Means are taken in the embeddings' dtype as in the reference (float32 stays float32), the rest in float64.
  """
  mu1 = np.mean(np.asarray(gen_emb), axis=0)
  mu2 = np.mean(np.asarray(gt_emb), axis=0)
  g = _check_finite(gen_emb, "gen_emb")
  r = _check_finite(gt_emb, "gt_emb")
  if g.shape[1] != r.shape[1] or min(g.shape[0], r.shape[0]) < 2:
    raise ValueError(f"fid: expected [N>=2, E] inputs with equal E, found gen_emb {g.shape}, gt_emb {r.shape}")
  return fid_from_stats(mu1, np.cov(g, rowvar=False), mu2, np.cov(r, rowvar=False), eps)


# --------------------------------------------------------------------------------------------------
# Diversity and MultiModality
# --------------------------------------------------------------------------------------------------


def diversity_indices(n: int, rng, times: int = DIVERSITY_TIMES):
  """Two independent draws of ``times`` indices without replacement (``np.random.choice``)."""
  if n < times:
    raise ValueError(f"diversity: expected at least times={times} samples, found {n}")
  g = _rng(rng)
  return g.choice(n, times, replace=False), g.choice(n, times, replace=False)


def diversity(emb, indices=None, *, rng=None, times: int = DIVERSITY_TIMES):
  """``mean_s |emb[i1_s] - emb[i2_s]|`` (docs/humanml3d_format.md#diversity). emb [N, E]; indices = (i1, i2)
  or drawn by rng."""
  if indices is None:
    indices = diversity_indices(emb.shape[0], rng, times)
  i1, i2 = indices
  return jnp.mean(jnp.linalg.norm(jnp.take(emb, i1, axis=0) - jnp.take(emb, i2, axis=0), axis=-1))


def multimodality(emb, indices=None, *, rng=None, times: int = MM_TIMES):
  """``mean over (texts x times) of |A[:, i1] - A[:, i2]|`` (docs/humanml3d_format.md#multimodality).

  Args:
    emb: [N_texts, R, E], R generations per text (30 standard).
    indices: (i1, i2), each ``times`` indices into R shared by all texts, or None to draw them from ``rng``.
  """
  r = emb.shape[1]
  if indices is None:
    if r < times:
      raise ValueError(f"multimodality: expected at least times={times} repeats, found {r}")
    g = _rng(rng)
    indices = (g.choice(r, times, replace=False), g.choice(r, times, replace=False))
  i1, i2 = indices
  return jnp.mean(jnp.linalg.norm(jnp.take(emb, i1, axis=1) - jnp.take(emb, i2, axis=1), axis=-1))


# --------------------------------------------------------------------------------------------------
# Replications and tables
# --------------------------------------------------------------------------------------------------


def summarize_replications(replications: Sequence[Mapping[str, float]]) -> dict[str, tuple[float, float]]:
  """``{name: (mean, 1.96 * std / sqrt(n))}`` with the population std (ddof 0), as MLD/T2M report."""
  if not replications:
    raise ValueError("summarize_replications: expected at least one replication, found none")
  names = list(replications[0])
  for i, rep in enumerate(replications):
    if set(rep) != set(names):
      raise ValueError(f"summarize_replications: replication {i} has metrics {sorted(rep)}, expected {sorted(names)}")
  n = len(replications)
  out = {}
  for name in names:
    v = np.asarray([float(r[name]) for r in replications], np.float64)
    out[name] = (float(v.mean()), float(CI_Z * v.std() / np.sqrt(n)))
  return out


DEFAULT_COLUMNS = (
  ("R_precision_top_1", "R@1 ↑"),
  ("R_precision_top_2", "R@2 ↑"),
  ("R_precision_top_3", "R@3 ↑"),
  ("FID", "FID ↓"),
  ("Matching_score", "MM-Dist ↓"),
  ("Diversity", "Diversity →"),
  ("MultiModality", "MModality ↑"),
)


def format_markdown_table(
  rows: Mapping[str, Mapping[str, tuple[float, float] | float]],
  columns: Sequence[tuple[str, str]] = DEFAULT_COLUMNS,
  precision: int = 3,
) -> str:
  """Markdown table, one row per method: ``mean ± ci`` cells (a bare float prints alone; absent -> '–')."""
  head = "| Method | " + " | ".join(title for _, title in columns) + " |"
  sep = "|---|" + "---|" * len(columns)
  lines = [head, sep]
  for method, metrics in rows.items():
    cells = []
    for key, _ in columns:
      v = metrics.get(key)
      if v is None:
        cells.append("–")
      elif isinstance(v, (tuple, list)):
        cells.append(f"{v[0]:.{precision}f} ± {v[1]:.{precision}f}")
      else:
        cells.append(f"{float(v):.{precision}f}")
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# Physical plausibility on joints [B, F, J, 3]
# --------------------------------------------------------------------------------------------------

FOOT_JOINTS = (10, 11)  # HumanML3D left_foot, right_foot (MotionLCM's skating metric)
SKATE_HEIGHT = 0.05  # m: a foot below this height (in two consecutive frames) is in contact
SKATE_VELOCITY = 0.5  # m/s: horizontal foot speed above which a contact foot skates
SKATE_WINDOW = 5  # frames of the centred moving average of the speed


def _frame_mask(lengths, frames, offset=0):
  """[B, frames] True where frame index + offset < length."""
  return (jnp.arange(frames)[None, :] + offset) < jnp.asarray(lengths)[:, None]


def foot_skating_ratio(
  joints,
  lengths,
  *,
  fps: float = 20.0,
  feet=FOOT_JOINTS,
  height_thresh: float = SKATE_HEIGHT,
  vel_thresh: float = SKATE_VELOCITY,
  window: int = SKATE_WINDOW,
):
  """Fraction of frame transitions in which a foot skates (MotionLCM / GMD ``calculate_skating_ratio``).

  For each foot and transition t -> t+1 (t < len - 1): contact = height < ``height_thresh`` at both t and
  t+1; speed = horizontal (x, z) displacement x fps; a contact foot skates when both its speed and the
  centred ``window``-frame moving average of the speed (zero beyond the valid frames, as
  ``uniform_filter1d(mode='constant')``) exceed ``vel_thresh``. A transition skates if either foot does.
  Ratio = skating transitions / (len - 1). Defaults 0.05 m, 0.5 m/s, 5 frames at 20 fps (HumanML3D metres).

  Args:
    joints: [B, F, J, 3], Y up. lengths: int [B] valid frames. Returns [B].
  """
  feet_pos = joints[:, :, jnp.asarray(feet), :]  # [B, F, 2, 3]
  valid = _frame_mask(lengths, joints.shape[1] - 1, offset=1)  # transition t valid iff t + 1 < len
  disp = feet_pos[:, 1:, :, :] - feet_pos[:, :-1, :, :]
  speed = jnp.sqrt(disp[..., 0] ** 2 + disp[..., 2] ** 2) * fps  # [B, F-1, 2]
  speed = jnp.where(valid[..., None], speed, 0.0)
  # centred moving average with zero padding (scipy origin=0: window covers t - w//2 .. t + (w-1)//2)
  kernel = jnp.ones((window,), speed.dtype) / window
  left, right = window // 2, (window - 1) // 2
  padded = jnp.pad(speed, ((0, 0), (left, right), (0, 0)))
  avg = jax.vmap(jax.vmap(lambda s: jnp.convolve(s, kernel, mode="valid"), in_axes=1, out_axes=1))(padded)
  h = feet_pos[..., 1]
  contact = (h[:, :-1] < height_thresh) & (h[:, 1:] < height_thresh)
  skating = contact & (speed > vel_thresh) & (avg > vel_thresh) & valid[..., None]
  n = jnp.maximum(jnp.asarray(lengths) - 1, 1)
  return jnp.sum(jnp.any(skating, axis=-1), axis=1) / n


def jitter(joints, lengths, *, fps: float = 20.0):
  """Mean joint jerk magnitude ``|x_{t+3} - 3x_{t+2} + 3x_{t+1} - x_t| * fps^3`` (m/s^3).

  Averaged over joints and the ``len - 3`` valid third differences. joints [B, F, J, 3] -> [B].
  """
  jerk = joints[:, 3:] - 3 * joints[:, 2:-1] + 3 * joints[:, 1:-2] - joints[:, :-3]
  mag = jnp.linalg.norm(jerk, axis=-1).mean(-1) * fps**3  # [B, F-3]
  valid = _frame_mask(lengths, joints.shape[1] - 3, offset=3)
  return jnp.sum(jnp.where(valid, mag, 0.0), 1) / jnp.maximum(jnp.sum(valid, 1), 1)


def floor_penetration(joints, lengths, *, up_axis: int = 1):
  """Mean depth below the floor y = 0 of the lowest joint, over valid frames: ``mean_t max(0, -min_j y)``.

  joints [B, F, J, 3] -> [B] (metres for HumanML3D).
  """
  depth = jnp.maximum(-jnp.min(joints[..., up_axis], axis=-1), 0.0)  # [B, F]
  valid = _frame_mask(lengths, joints.shape[1])
  return jnp.sum(jnp.where(valid, depth, 0.0), 1) / jnp.maximum(jnp.sum(valid, 1), 1)
