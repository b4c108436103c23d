"""Word-level tokenizer and precomputed per-caption text embeddings.

Tokenizer: lower-case, split on non-letters, vocabulary built from training captions.
Special ids: pad = 0, unk = 1, and (when ``add_sos_eos``) sos = 2, eos = 3. Saved as JSON.

Embeddings file format (one ``.npz`` per dataset/encoder; written by :func:`save_text_embeddings`,
read by :class:`TextEmbeddings`), so T5 / CLIP embeddings computed elsewhere plug in unchanged:

* ``embeddings`` float32 [N, Lt, E]: per-token embeddings, zero beyond each caption's length;
* ``mask`` bool [N, Lt]: True on valid tokens;
* ``captions`` unicode str array [N]: the exact caption strings (the lookup key, unique).

Lookup is by the exact caption string (as read from ``texts/*.txt``). :func:`precompute_text_embeddings`
writes such a file with any frozen encoder (e.g. the official sentence-T5 / CLIP of ``easytune_jax.models``;
command: ``launch/precompute_text_embeddings.py``).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from easytune_jax.data.safe_io import NpzReader, read_json, write_json

_WORD_RE = re.compile(r"[a-z]+")

PAD, UNK, SOS, EOS = "<pad>", "<unk>", "<sos>", "<eos>"


def split_words(caption: str) -> list[str]:
  """Lower-case and split on non-letters: 'A man walks-forward, 2x!' -> ['a','man','walks','forward','x']."""
  return _WORD_RE.findall(caption.lower())


class Tokenizer:
  """Word-level tokenizer with fixed-length output.

  Attributes:
    vocab: list of tokens; index = id. Specials first: pad 0, unk 1 (+ sos 2, eos 3).
    max_length: Lt, the padded length of :meth:`encode_batch` (sos/eos included).
  """

  def __init__(self, vocab: Sequence[str], max_length: int = 32, add_sos_eos: bool = True):
    specials = [PAD, UNK] + ([SOS, EOS] if add_sos_eos else [])
    if list(vocab[: len(specials)]) != specials:
      raise ValueError(f"vocab: expected the first entries to be {specials}, found {list(vocab[: len(specials)])}")
    if len(set(vocab)) != len(vocab):
      raise ValueError("vocab: entries must be unique")
    if max_length < (3 if add_sos_eos else 1):
      raise ValueError(f"max_length: expected >= {3 if add_sos_eos else 1}, found {max_length}")
    self.vocab = list(vocab)
    self.max_length = int(max_length)
    self.add_sos_eos = bool(add_sos_eos)
    self._index = {w: i for i, w in enumerate(self.vocab)}

  pad_id = 0
  unk_id = 1

  @property
  def sos_id(self) -> int | None:
    return 2 if self.add_sos_eos else None

  @property
  def eos_id(self) -> int | None:
    return 3 if self.add_sos_eos else None

  @property
  def vocab_size(self) -> int:
    return len(self.vocab)

  @classmethod
  def build(
    cls, captions: Iterable[str], max_length: int = 32, add_sos_eos: bool = True, min_count: int = 1
  ) -> Tokenizer:
    """Vocabulary = words seen >= min_count times, sorted by (-count, word) for determinism."""
    counts = Counter(w for c in captions for w in split_words(c))
    words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
    specials = [PAD, UNK] + ([SOS, EOS] if add_sos_eos else [])
    return cls(specials + words, max_length=max_length, add_sos_eos=add_sos_eos)

  def encode(self, caption: str) -> list[int]:
    """Ids (unpadded, truncated so that sos + words + eos fit in max_length)."""
    ids = [self._index.get(w, self.unk_id) for w in split_words(caption)]
    if self.add_sos_eos:
      return [self.sos_id] + ids[: self.max_length - 2] + [self.eos_id]
    return ids[: self.max_length]

  def encode_batch(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """-> (tokens int32 [B, Lt] padded with pad=0, token_mask bool [B, Lt])."""
    tokens = np.zeros((len(captions), self.max_length), np.int32)
    mask = np.zeros((len(captions), self.max_length), bool)
    for i, c in enumerate(captions):
      ids = self.encode(c)
      tokens[i, : len(ids)] = ids
      mask[i, : len(ids)] = True
    return tokens, mask

  def decode(self, ids: Iterable[int]) -> str:
    """Words of the ids, skipping pad/sos/eos."""
    skip = {self.pad_id, self.sos_id, self.eos_id}
    return " ".join(self.vocab[i] for i in ids if i not in skip)

  def save(self, path: str) -> None:
    write_json(path, {"vocab": self.vocab, "max_length": self.max_length, "add_sos_eos": self.add_sos_eos}, indent=0)

  @classmethod
  def load(cls, path: str) -> Tokenizer:
    d = read_json(path, "tokenizer")
    if not isinstance(d, dict):
      raise ValueError(f"{path}: expected a Tokenizer JSON object, found {type(d).__name__}")
    for k in ("vocab", "max_length", "add_sos_eos"):
      if k not in d:
        raise ValueError(f"{path}: missing field '{k}' (expected a Tokenizer JSON)")
    return cls(d["vocab"], d["max_length"], d["add_sos_eos"])


def placeholder_tokenizer() -> Tokenizer:
  """A tokenizer of the special ids only, for batches whose word ids no model reads (a reward that reads
  precomputed text embeddings): batches always carry word ids."""
  return Tokenizer(["<pad>", "<unk>", "<sos>", "<eos>"], max_length=4)


def save_text_embeddings(path: str, captions: Sequence[str], embeddings: np.ndarray, mask: np.ndarray) -> None:
  """Writes the ``.npz`` format of the module docstring (validates shapes and uniqueness)."""
  embeddings = np.asarray(embeddings, np.float32)
  mask = np.asarray(mask, bool)
  n = len(captions)
  if embeddings.ndim != 3 or embeddings.shape[0] != n:
    raise ValueError(f"embeddings: expected shape [N={n}, Lt, E], found {embeddings.shape}")
  if mask.shape != embeddings.shape[:2]:
    raise ValueError(f"mask: expected shape {embeddings.shape[:2]}, found {mask.shape}")
  if len(set(captions)) != n:
    raise ValueError("captions: expected unique caption strings (they are the lookup key)")
  np.savez(path, embeddings=embeddings, mask=mask, captions=np.asarray(list(captions), dtype=np.str_))


class TextEmbeddings:
  """Reader of a precomputed-embeddings ``.npz``; :meth:`lookup` gathers rows by caption."""

  def __init__(self, path: str):
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path}: text-embeddings file not found")
    with NpzReader(path, "text embeddings") as z:
      for k in ("embeddings", "mask", "captions"):
        if k not in z.files:
          raise ValueError(f"{path}: missing array '{k}' (expected embeddings, mask, captions; found {z.files})")
      # NaN/inf are reported below with the caption of the first bad row.
      self.embeddings = z.get("embeddings", kinds="f", finite=False).astype(np.float32)
      self.mask = z.get("mask", kinds="bui").astype(bool)
      captions = [str(c) for c in z.get("captions", kinds="U", ndim=1)]
    if self.embeddings.ndim != 3:
      raise ValueError(f"{path}: field 'embeddings': expected rank 3 [N, Lt, E], found shape {self.embeddings.shape}")
    if self.mask.shape != self.embeddings.shape[:2] or len(captions) != self.embeddings.shape[0]:
      raise ValueError(
        f"{path}: inconsistent shapes: embeddings {self.embeddings.shape}, "
        f"mask {self.mask.shape}, captions ({len(captions)},)"
      )
    if not np.all(np.isfinite(self.embeddings)):
      bad = np.argwhere(~np.isfinite(self.embeddings))
      raise ValueError(
        f"{path}: field 'embeddings': expected finite values, found {len(bad)} NaN/inf "
        f"(first at row {int(bad[0, 0])}, caption {captions[int(bad[0, 0])]!r})"
      )
    if len(set(captions)) != len(captions):
      dup = next(c for i, c in enumerate(captions) if c in captions[:i])
      raise ValueError(
        f"{path}: field 'captions': expected unique strings (the lookup key), found "
        f"{len(captions) - len(set(captions))} duplicate(s), e.g. {dup!r}"
      )
    self.path = path
    self.captions = captions
    self._index = {c: i for i, c in enumerate(captions)}

  @property
  def dim(self) -> int:
    return self.embeddings.shape[-1]

  @property
  def max_length(self) -> int:
    return self.embeddings.shape[1]

  def lookup(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """-> (text_emb float32 [B, Lt, E], mask bool [B, Lt]); KeyError listing missing captions."""
    missing = [c for c in captions if c not in self._index]
    if missing:
      shown = "; ".join(repr(c) for c in missing[:5])
      raise KeyError(f"{self.path}: {len(missing)} caption(s) have no precomputed embedding, e.g. {shown}")
    idx = np.array([self._index[c] for c in captions], np.int64)
    return self.embeddings[idx], self.mask[idx]


# Outputs of each external text encoder (the first is its default): sentence-T5 'sentence' [N, 1, 768] (the
# official MLD's condition) or 'tokens' [N, L, 1024] (the SPM's input); CLIP 'features' [N, 1, 768] or 'hidden'
# [N, 77, 768].
ENCODER_OUTPUTS = {"sentence_t5": ("sentence", "tokens"), "clip": ("features", "hidden")}


@dataclasses.dataclass(frozen=True)
class TextEmbeddingConfig:
  """launch/precompute_text_embeddings.py: the encoder (a key of ENCODER_OUTPUTS), its output and the captions
  per encoder call."""

  encoder: str = "sentence_t5"
  output: str = "sentence"
  batch_size: int = 128

  def __post_init__(self):
    if self.encoder not in ENCODER_OUTPUTS:
      raise ValueError(f"TextEmbeddingConfig.encoder: expected one of {list(ENCODER_OUTPUTS)}, found {self.encoder!r}")
    if self.output not in ENCODER_OUTPUTS[self.encoder]:
      raise ValueError(
        f"TextEmbeddingConfig.output: expected one of {list(ENCODER_OUTPUTS[self.encoder])} for "
        f"encoder {self.encoder!r}, found {self.output!r}"
      )
    if self.batch_size < 1:
      raise ValueError(f"TextEmbeddingConfig.batch_size: expected >= 1, found {self.batch_size}")


def precompute_text_embeddings(
  path: str,
  captions: Iterable[str],
  encode: Callable[[list[str]], tuple[np.ndarray, np.ndarray]],
  batch_size: int = 256,
  progress: bool = False,
) -> int:
  """Encodes captions with a frozen text encoder and writes the ``.npz`` of :func:`save_text_embeddings`.

  Args:
    path: output ``.npz``.
    captions: caption strings; duplicates are encoded once (first occurrence order is kept).
    encode: ``encode(list of b captions) -> (embeddings [b, L, E], mask bool [b, L])``, e.g.
      ``partial(load_sentence_t5(folder).embeddings, output="sentence")`` (``easytune_jax.interop.sentence_t5``) or
      ``partial(load_clip_text(folder).embeddings, output="features")`` (``easytune_jax.interop.clip``).
      L may differ between calls: rows are zero-padded to the longest L.
    batch_size: captions per ``encode`` call.
    progress: show a tqdm bar.

  Returns:
    the number of captions written. Note the size: N x Lt x E float32 (token-level outputs of 40k captions at
    1024-d are gigabytes; sentence-level ones are [N, 1, E]).
  """
  unique = list(dict.fromkeys(str(c) for c in captions))
  if not unique:
    raise ValueError("precompute_text_embeddings: expected at least one caption")
  embs, masks = [], []
  starts = range(0, len(unique), batch_size)
  if progress:
    from tqdm import tqdm

    starts = tqdm(starts, desc="text embeddings", unit="batch")
  for s in starts:
    chunk = unique[s : s + batch_size]
    e, m = encode(chunk)
    e, m = np.asarray(e, np.float32), np.asarray(m, bool)
    if e.ndim != 3 or e.shape[0] != len(chunk) or m.shape != e.shape[:2]:
      raise ValueError(
        f"precompute_text_embeddings: encode returned embeddings {e.shape} and mask {m.shape} "
        f"for {len(chunk)} captions (expected [b, L, E] and [b, L])"
      )
    embs.append(e * m[..., None])
    masks.append(m)
  length = max(e.shape[1] for e in embs)
  pad = lambda a, v: np.pad(a, [(0, 0), (0, length - a.shape[1])] + [(0, 0)] * (a.ndim - 2), constant_values=v)
  save_text_embeddings(
    path, unique, np.concatenate([pad(e, 0.0) for e in embs]), np.concatenate([pad(m, False) for m in masks])
  )
  return len(unique)
