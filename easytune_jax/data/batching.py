"""Deterministic, fixed-shape batches from a :class:`MotionDataset` (the reference loaders' ``__getitem__``,
docs/humanml3d_format.md#dataset-construction).

Each item: a caption chosen uniformly at random, the unit-length crop (coin from
{single, single, double}; ``L' = u*floor(L/u)`` or ``u*(floor(L/u) - 1)``; start uniform in
``0..L-L'`` inclusive), then Z-normalisation with the dataset Mean/Std and zero-padding (in
normalised space) to a FIXED ``max_length`` (default 196) so jitted steps never retrace. When
``max_length`` is below the cropped length (tiny CPU configs) a further random window of
``u*floor(max_length/u)`` frames is taken.

Every batch function returns ``(arrays, host)``:

* ``arrays`` (numpy, goes into ``jit``): ``motion`` float32 [B, L, D], ``mask`` bool [B, L],
  ``length`` int32 [B], ``tokens`` int32 [B, Lt], ``token_mask`` bool [B, Lt]; with a
  :class:`TextEmbeddings` also ``text_emb`` float32 [B, Lt', E] and ``text_emb_mask`` bool [B, Lt'].
* ``host`` (Python lists, never into ``jit``): ``caption`` [B] str, ``pos_tokens`` [B] lists of
  'word/POS', ``name`` [B] entry names.

Determinism: the batch of global step ``s`` is a pure function of ``(seed, s)`` (and the
dataset): epoch ``e = s // steps_per_epoch`` uses the permutation drawn from
``default_rng([seed, 0, e])`` and the per-item draws come from ``default_rng([seed, 1, s])``.
A resumed run therefore sees identical data.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from easytune_jax.data.humanml3d import MotionDataset
from easytune_jax.data.text import TextEmbeddings, Tokenizer

Batch = tuple  # (arrays: dict[str, np.ndarray], host: dict[str, list])


def unit_length_crop(length: int, rng: np.random.Generator, unit_length: int = 4) -> tuple[int, int]:
  """(start, cropped_length) of the unit-length crop of a clip of ``length`` frames."""
  if unit_length < 10:
    coin = rng.choice(["single", "single", "double"])
  else:
    coin = "single"
  n = length // unit_length
  new_len = unit_length * (n - 1) if coin == "double" else unit_length * n
  start = int(rng.integers(0, length - new_len + 1))  # inclusive of length - new_len
  return start, new_len


def steps_per_epoch(dataset: MotionDataset, batch_size: int, drop_last: bool = True) -> int:
  n = len(dataset)
  if drop_last and n < batch_size:
    raise ValueError(f"dataset: expected at least batch_size={batch_size} entries, found {n}")
  return n // batch_size if drop_last else -(-n // batch_size)


def make_batch(
  dataset: MotionDataset,
  indices,
  rng: np.random.Generator,
  tokenizer: Tokenizer,
  *,
  max_length: int = 196,
  unit_length: int = 4,
  text_embeddings: TextEmbeddings | None = None,
  rows: slice | None = None,
) -> Batch:
  """Builds one batch of the given entry indices with the given RNG (see module docstring).

  `rows`: build only these rows of the batch (a process's share of a global batch in a multi-process run,
  `core.parallel.host_local_slice`). The random draws of every row are still made, in order, so the rows built
  equal the same rows of the whole batch.
  """
  d = dataset.info.dim
  keep = range(len(indices))[rows] if rows is not None else range(len(indices))
  b = len(keep)
  motion = np.zeros((b, max_length, d), np.float32)
  mask = np.zeros((b, max_length), bool)
  length = np.zeros((b,), np.int32)
  captions, pos_tokens, names = [], [], []
  i = 0
  for row, idx in enumerate(indices):
    e = dataset.entries[int(idx)]
    caption, tokens = e.captions[int(rng.integers(len(e.captions)))]
    start, n = unit_length_crop(e.length, rng, unit_length)
    if n > max_length:
      cap = unit_length * (max_length // unit_length)
      start += int(rng.integers(0, n - cap + 1))
      n = cap
    if row not in keep:
      continue
    clip = e.motion[start : start + n]
    motion[i, :n] = (clip - dataset.mean) / dataset.std
    mask[i, :n] = True
    length[i] = n
    captions.append(caption)
    pos_tokens.append(list(tokens))
    names.append(e.name)
    i += 1
  tok, tok_mask = tokenizer.encode_batch(captions)
  arrays = {"motion": motion, "mask": mask, "length": length, "tokens": tok, "token_mask": tok_mask}
  if text_embeddings is not None:
    arrays["text_emb"], arrays["text_emb_mask"] = text_embeddings.lookup(captions)
  return arrays, {"caption": captions, "pos_tokens": pos_tokens, "name": names}


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
  return np.random.default_rng([seed, 0, epoch]).permutation(n)


def batch_at(dataset: MotionDataset, step: int, batch_size: int, seed: int, tokenizer: Tokenizer, **kwargs) -> Batch:
  """The training batch of global ``step`` (drop_last epochs): a pure function of (seed, step)."""
  spe = steps_per_epoch(dataset, batch_size, drop_last=True)
  epoch, k = divmod(int(step), spe)
  perm = epoch_permutation(len(dataset), seed, epoch)
  return make_batch(
    dataset,
    perm[k * batch_size : (k + 1) * batch_size],
    np.random.default_rng([seed, 1, int(step)]),
    tokenizer,
    **kwargs,
  )


def iterate_batches(
  dataset: MotionDataset, batch_size: int, seed: int, epoch: int, tokenizer: Tokenizer, drop_last: bool = True, **kwargs
) -> Iterator[Batch]:
  """The batches of one epoch. With drop_last, batch k equals ``batch_at(epoch*spe + k)``.

  Without drop_last the final batch is smaller (B' < batch_size rows; a different shape, meant
  for evaluation loops) and its item draws are keyed by the step it would have had.
  """
  spe_full = steps_per_epoch(dataset, batch_size, drop_last=True) if len(dataset) >= batch_size else 0
  nb = steps_per_epoch(dataset, batch_size, drop_last=drop_last)
  perm = epoch_permutation(len(dataset), seed, epoch)
  for k in range(nb):
    step = epoch * max(spe_full, 1) + k
    yield make_batch(
      dataset, perm[k * batch_size : (k + 1) * batch_size], np.random.default_rng([seed, 1, step]), tokenizer, **kwargs
    )
