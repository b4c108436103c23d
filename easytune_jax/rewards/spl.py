"""Contrastive and preference losses of the step-aware reward model, and retrieval metrics.

* :func:`info_nce_with_filtering`: TMR's symmetric InfoNCE where negatives whose caption is nearly the same
  as the positive's are dropped (Petrovich et al., TMR, ICCV 2023, arXiv 2305.00976).
* :func:`mine_preference_pairs`, :func:`preference_loss`, :func:`spl_loss`: Self-refinement Preference
  Learning (EasyTune, arXiv 2602.07967): each text row of the similarity matrix retrieves its top-k
  motions; a row is *correct* when its ground truth is among them or any similarity exceeds `high_sim`;
  the pair (top-1 retrieved, ground truth) is pushed towards equal preference ([0.5, 0.5]) on correct rows
  and towards the ground truth ([0, 1]) on incorrect rows.
* :func:`retrieval_metrics`, :func:`batched_retrieval_metrics`: text->motion and motion->text R@k and
  median rank, on the full set or in consecutive batches of 32 (the T2M/TMR protocol).

Every loss takes embeddings or similarity matrices, never a model, so that a multi-device trainer can build
them from gathered (global-batch) embeddings: rows are queries (texts), columns candidates (motions), and
`targets` says which column is each row's ground truth (default: the diagonal).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

_WHERE = __name__.replace(".", "/") + ".py"

RECALL_KS = (1, 2, 3, 5, 10)


def l2_normalize(x: jax.Array, eps: float = 1e-8) -> jax.Array:
  """x / max(||x||, eps) over the last axis (torch.nn.functional.normalize semantics)."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
  return x / jnp.maximum(norm, eps)


def cosine_similarity_matrix(a: jax.Array, b: jax.Array) -> jax.Array:
  """a [N, E], b [M, E] -> cosine similarities [N, M]."""
  _check_rank(a, 2, "a")
  _check_rank(b, 2, "b")
  return l2_normalize(a) @ l2_normalize(b).T


def _check_rank(x, rank: int, name: str) -> None:
  if np.ndim(x) != rank:
    raise ValueError(f"{_WHERE}: '{name}': expected rank {rank}, found shape {np.shape(x)}")


# --------------------------------------------------------------------------------------------- InfoNCE
FILTER_CONVENTIONS = ("cosine", "tmr")
TEMPERATURE_CONVENTIONS = ("official", "single")


def filter_cutoff(threshold: float, convention: str = "cosine") -> float:
  """The caption cosine above which a negative is dropped: `threshold` ('cosine', ours) or `2 * threshold - 1`
  ('tmr': TMR's and the official SPM's `InfoNCE_with_filtering`, which maps the threshold from [0, 1] to the
  cosine range [-1, 1]; 0.9 -> 0.8)."""
  if convention not in FILTER_CONVENTIONS:
    raise ValueError(f"{_WHERE}: filter convention: expected one of {FILTER_CONVENTIONS}, found {convention!r}")
  return 2.0 * threshold - 1.0 if convention == "tmr" else threshold


def info_nce_with_filtering(
  text: jax.Array,
  motion: jax.Array,
  sent_emb: jax.Array | None = None,
  temperature: float = 0.1,
  threshold: float = 0.9,
  convention: str = "cosine",
) -> jax.Array:
  """Symmetric InfoNCE over cosine similarities, dropping near-duplicate-caption negatives (TMR).

  Args:
    text, motion: latents [B, E] (normalised here); row i of each is a positive pair.
    sent_emb: caption features [B, F] used only for filtering (normalised here), or None for plain
      InfoNCE. Negatives (i, j), i != j, with cos(sent_emb_i, sent_emb_j) > threshold are removed from
      both directions' softmax; positives are never removed.
    temperature: logits = cos / temperature (0.1 in EasyTune's SPM).
    threshold: caption self-similarity threshold (0.9), read by `convention` (see :func:`filter_cutoff`):
      'cosine' drops negatives whose cosine exceeds the threshold itself; 'tmr' (the official SPM) drops
      those whose cosine exceeds 2 * threshold - 1.
    convention: 'cosine' | 'tmr'.

  Returns:
    scalar loss: (CE(text->motion) + CE(motion->text)) / 2, each the mean over rows.
  """
  _check_rank(text, 2, "text")
  _check_rank(motion, 2, "motion")
  if text.shape != motion.shape:
    raise ValueError(
      f"{_WHERE}: info_nce_with_filtering: 'text' and 'motion' must have the "
      f"same shape [B, E], found {text.shape} and {motion.shape}"
    )
  logits = cosine_similarity_matrix(text, motion) / temperature
  b = logits.shape[0]
  if sent_emb is not None:
    if sent_emb.ndim != 2 or sent_emb.shape[0] != b:
      raise ValueError(f"{_WHERE}: 'sent_emb': expected shape [B={b}, F], found {sent_emb.shape}")
    selfsim = cosine_similarity_matrix(sent_emb, sent_emb)
    drop = (selfsim > filter_cutoff(threshold, convention)) & ~jnp.eye(b, dtype=bool)
    # -inf removes the entry from both softmaxes; the diagonal is never -inf so no row is empty.
    logits = jnp.where(jax.lax.stop_gradient(drop), -jnp.inf, logits)
  diag = jnp.diagonal(logits)
  t2m = jax.nn.logsumexp(logits, axis=1) - diag
  m2t = jax.nn.logsumexp(logits, axis=0) - diag
  return 0.5 * (jnp.mean(t2m) + jnp.mean(m2t))


# --------------------------------------------------------------------------------------------- SPL
class PreferencePairs(NamedTuple):
  """Output of :func:`mine_preference_pairs` (all int32/bool, no gradient).

  retrieved: [B] top-1 retrieved column of each row; target: [B] ground-truth column;
  correct: [B] ground truth in the top-k or any similarity > high_sim; topk: [B, k] retrieved columns.
  """

  retrieved: jax.Array
  target: jax.Array
  correct: jax.Array
  topk: jax.Array


def mine_preference_pairs(
  sim: jax.Array, k: int = 10, high_sim: float = 0.8, targets: jax.Array | None = None
) -> PreferencePairs:
  """SPL mining: one ranking function vmapped over the rows of `sim`.

  Args:
    sim: similarities [B, M] (rows: texts, columns: motions); gradients are stopped here.
    k: retrieval depth (10); clamped to M when M < k.
    high_sim: a row whose largest similarity exceeds this is treated as correct (0.8).
    targets: int32 [B] ground-truth column of each row (default arange(B), i.e. the diagonal).

  Ties are ranked by column index (lower first), as `lax.top_k` does.
  """
  _check_rank(sim, 2, "sim")
  b, m = sim.shape
  if targets is None:
    if m < b:
      raise ValueError(
        f"{_WHERE}: mine_preference_pairs: 'sim' [B, M] with default targets needs M >= B, found shape {sim.shape}"
      )
    targets = jnp.arange(b, dtype=jnp.int32)
  targets = jnp.asarray(targets, jnp.int32)
  if targets.shape != (b,):
    raise ValueError(f"{_WHERE}: 'targets': expected shape ({b},), found {targets.shape}")
  k = min(int(k), m)
  if k < 1:
    raise ValueError(f"{_WHERE}: 'k': expected >= 1, found {k}")

  def rank_row(row, gt):
    values, idx = jax.lax.top_k(row, k)
    correct = jnp.any(idx == gt) | (values[0] > high_sim)
    return idx[0], correct, idx

  retrieved, correct, topk = jax.vmap(rank_row)(jax.lax.stop_gradient(sim), targets)
  return PreferencePairs(retrieved.astype(jnp.int32), targets, correct, topk.astype(jnp.int32))


def preference_loss(
  sim: jax.Array, pairs: PreferencePairs, temperature: float = 0.1, convention: str = "official"
) -> jax.Array:
  """KL(target || softmax(logits)) of the pair [sim(row, retrieved), sim(row, target)].

  target = [0.5, 0.5] on correct rows, [0, 1] on incorrect rows; the KL is summed over the pair and
  averaged over rows (0 log 0 = 0). sim [B, M] carries the gradient; pairs from
  :func:`mine_preference_pairs`. Returns a scalar.

  Temperature conventions:
    'official': logits = (sim / tau) / tau, i.e. an effective temperature tau**2 (0.01 for tau = 0.1), as
      EasyTune's `compute_finetune_loss` (train_spm.py) divides the similarity by tau and then the softmax
      input by tau again.
    'single': logits = sim / tau (our earlier convention; about 9x smaller losses and weaker gradients at
      tau = 0.1).

  The official code takes `softmax(...).log()`, which underflows to log(0) = -inf in float32 once the two
  logits differ by more than ~104 (|sim difference| > ~1.04 at tau**2 = 0.01) and then yields inf/nan; here
  the log-probabilities come from `log_softmax`, which is finite everywhere and equal to the official value
  wherever that one is finite.
  """
  _check_rank(sim, 2, "sim")
  if convention not in TEMPERATURE_CONVENTIONS:
    raise ValueError(
      f"{_WHERE}: preference_loss: 'convention': expected one of {TEMPERATURE_CONVENTIONS}, found {convention!r}"
    )
  rows = jnp.arange(sim.shape[0])
  z = jnp.stack([sim[rows, pairs.retrieved], sim[rows, pairs.target]], axis=-1) / temperature
  if convention == "official":
    z = z / temperature
  logp = jax.nn.log_softmax(z, axis=-1)
  q = jnp.where(pairs.correct[:, None], jnp.array([0.5, 0.5], z.dtype), jnp.array([0.0, 1.0], z.dtype))
  kl = jnp.sum(jax.scipy.special.xlogy(q, q) - q * logp, axis=-1)
  return jnp.mean(kl)


def spl_loss(
  text: jax.Array,
  motion: jax.Array,
  k: int = 10,
  high_sim: float = 0.8,
  temperature: float = 0.1,
  targets: jax.Array | None = None,
  convention: str = "official",
) -> tuple[jax.Array, Mapping[str, jax.Array]]:
  """SPL loss from latents: text [B, E], motion [M, E] -> (scalar loss, aux).

  convention: the temperature convention of :func:`preference_loss` ('official' divides by tau twice).
  aux: `spl_correct_frac` (fraction of correct rows), `spl_top1_frac` (rows whose top-1 is the ground truth).
  """
  sim = cosine_similarity_matrix(text, motion)
  pairs = mine_preference_pairs(sim, k=k, high_sim=high_sim, targets=targets)
  loss = preference_loss(sim, pairs, temperature, convention)
  aux = {
    "spl_correct_frac": jnp.mean(pairs.correct.astype(jnp.float32)),
    "spl_top1_frac": jnp.mean((pairs.retrieved == pairs.target).astype(jnp.float32)),
  }
  return loss, aux


# --------------------------------------------------------------------------------------------- retrieval
def retrieval_ranks(sim) -> tuple[np.ndarray, np.ndarray]:
  """1-based ranks of the diagonal (ground truth) in each row (text->motion) and column (motion->text).

  sim [N, N] (rows texts, columns motions). Ties count in the query's favour (rank = 1 + number of strictly
  larger similarities), as TMR's first-occurrence convention does.
  """
  sim = np.asarray(sim, np.float64)
  if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
    raise ValueError(f"{_WHERE}: retrieval: 'sim': expected a square [N, N] matrix, found {sim.shape}")
  diag = np.diagonal(sim)
  t2m = 1 + np.sum(sim > diag[:, None], axis=1)
  m2t = 1 + np.sum(sim > diag[None, :], axis=0)
  return t2m, m2t


def retrieval_metrics(sim, ks=RECALL_KS) -> dict[str, float]:
  """Recall@k (in %) and median rank, both directions, on the full [N, N] similarity matrix.

  Keys: 't2m/R<k>' (R@k: 't2m/R1', 't2m/R10'), 't2m/MedR', 'm2t/R<k>', 'm2t/MedR' (valid TensorBoard tags as
  written: no '@').
  """
  out = {}
  for name, ranks in zip(("t2m", "m2t"), retrieval_ranks(sim)):
    for k in ks:
      out[f"{name}/R{k}"] = float(100.0 * np.mean(ranks <= k))
    out[f"{name}/MedR"] = float(np.median(ranks))
  return out


def batched_retrieval_metrics(text, motion, batch_size: int = 32, ks=RECALL_KS) -> dict[str, float]:
  """The official protocol: consecutive groups of `batch_size` pairs (the remainder dropped), metrics of each
  group's [b, b] cosine matrix averaged over groups. text, motion: latents [N, E] in matching order."""
  text, motion = np.asarray(text, np.float64), np.asarray(motion, np.float64)
  if text.shape != motion.shape or text.ndim != 2:
    raise ValueError(
      f"{_WHERE}: batched_retrieval_metrics: expected 'text' and 'motion' of the same "
      f"shape [N, E], found {text.shape} and {motion.shape}"
    )
  n = text.shape[0] // batch_size
  if n == 0:
    raise ValueError(
      f"{_WHERE}: batched_retrieval_metrics: need at least batch_size={batch_size} pairs, found {text.shape[0]}"
    )
  norm = lambda x: x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-8)
  text, motion = norm(text), norm(motion)
  groups = [
    retrieval_metrics(text[i * batch_size : (i + 1) * batch_size] @ motion[i * batch_size : (i + 1) * batch_size].T, ks)
    for i in range(n)
  ]
  return {k: float(np.mean([g[k] for g in groups])) for k in groups[0]}
