"""The T2M evaluator's text input on the host: POS categories, the words it treats apart, and `WordVectorizer`,
which turns stored ``word/POS`` token lists into word ids or GloVe vectors plus POS one-hots
(docs/humanml3d_format.md#evaluator-text-input); `build_word_vocab` for the learned-word-vector path. The
networks that read these inputs are in models/evaluator.py."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

POS_ENUMERATOR = {
  "VERB": 0,
  "NOUN": 1,
  "DET": 2,
  "ADP": 3,
  "NUM": 4,
  "AUX": 5,
  "PRON": 6,
  "ADJ": 7,
  "ADV": 8,
  "Loc_VIP": 9,
  "Body_VIP": 10,
  "Obj_VIP": 11,
  "Act_VIP": 12,
  "Desc_VIP": 13,
  "OTHER": 14,
}
# Checked in this order (T2M utils/word_vectorizer.py), first match wins.
VIP_LISTS = (
  (
    "Loc_VIP",
    (
      "left",
      "right",
      "clockwise",
      "counterclockwise",
      "anticlockwise",
      "forward",
      "back",
      "backward",
      "up",
      "down",
      "straight",
      "curve",
    ),
  ),
  (
    "Body_VIP",
    ("arm", "chin", "foot", "feet", "face", "hand", "mouth", "leg", "waist", "eye", "knee", "shoulder", "thigh"),
  ),
  ("Obj_VIP", ("stair", "dumbbell", "chair", "window", "floor", "car", "ball", "handrail", "baseball", "basketball")),
  (
    "Act_VIP",
    (
      "walk",
      "run",
      "swing",
      "pick",
      "bring",
      "kick",
      "put",
      "squat",
      "throw",
      "hop",
      "dance",
      "jump",
      "turn",
      "stumble",
      "stop",
      "sit",
      "lift",
      "lower",
      "raise",
      "wash",
      "stand",
      "kneel",
      "stroll",
      "rub",
      "bend",
      "balance",
      "flap",
      "jog",
      "shuffle",
      "lean",
      "rotate",
      "spin",
      "spread",
      "climb",
    ),
  ),
  (
    "Desc_VIP",
    (
      "slowly",
      "carefully",
      "fast",
      "careful",
      "slow",
      "quickly",
      "happy",
      "angry",
      "sad",
      "happily",
      "angrily",
      "sadly",
    ),
  ),
)


# --------------------------------------------------------------------------------------------------
# Host-side word vectorizer (docs/humanml3d_format.md#evaluator-text-input)
# --------------------------------------------------------------------------------------------------


class WordVectorizer:
  """Turns stored ``word/POS`` token lists into evaluator text inputs (docs/humanml3d_format.md#evaluator-text-input).

  Args:
    word_to_idx: vocabulary, must contain ``sos``, ``eos`` and ``unk``.
    vectors: optional ``[V, dim_word]`` GloVe matrix (row = index in ``word_to_idx``). With vectors,
      :meth:`__call__` returns word vectors (GloVe path); :meth:`encode` always returns ids.
  """

  def __init__(self, word_to_idx: Mapping[str, int], vectors: np.ndarray | None = None):
    for special in ("sos", "eos", "unk"):
      if special not in word_to_idx:
        raise ValueError(
          f"WordVectorizer vocabulary: expected the special word {special!r}, "
          f"found a vocabulary of {len(word_to_idx)} words without it"
        )
    self.word_to_idx = dict(word_to_idx)
    if vectors is not None:
      vectors = np.asarray(vectors, dtype=np.float32)
      n = max(self.word_to_idx.values()) + 1
      if vectors.ndim != 2 or vectors.shape[0] < n:
        raise ValueError(f"WordVectorizer vectors: expected shape (>= {n}, dim_word), found {vectors.shape}")
    self.vectors = vectors
    self._vip = {}
    for cls_name, words in VIP_LISTS:
      for w in words:
        self._vip.setdefault(w, POS_ENUMERATOR[cls_name])

  @property
  def vocab_size(self) -> int:
    return max(self.word_to_idx.values()) + 1

  def _pos(self, word: str, pos: str) -> int:
    if word in self._vip:
      return self._vip[word]
    return POS_ENUMERATOR.get(pos, POS_ENUMERATOR["OTHER"])

  def encode_one(self, tokens: Sequence[str], max_text_len: int = 20):
    """One caption's ``word/POS`` tokens -> (ids [max_text_len+2], pos_ohot [.., 15], sent_len)."""
    tokens = list(tokens)
    if len(tokens) < max_text_len:
      seq = ["sos/OTHER"] + tokens + ["eos/OTHER"]
      sent_len = len(seq)
      seq = seq + ["unk/OTHER"] * (max_text_len + 2 - sent_len)
    else:
      seq = ["sos/OTHER"] + tokens[:max_text_len] + ["eos/OTHER"]
      sent_len = len(seq)
    ids = np.zeros(len(seq), np.int32)
    pos = np.zeros((len(seq), len(POS_ENUMERATOR)), np.float32)
    for i, item in enumerate(seq):
      word, sep, tag = item.partition("/")
      if not sep:
        raise ValueError(f"WordVectorizer token {i} of {tokens!r}: expected 'word/POS', found {item!r}")
      if word in self.word_to_idx:
        ids[i] = self.word_to_idx[word]
        pos[i, self._pos(word, tag)] = 1.0
      else:  # out of vocabulary: the unk vector with POS OTHER
        ids[i] = self.word_to_idx["unk"]
        pos[i, POS_ENUMERATOR["OTHER"]] = 1.0
    return ids, pos, sent_len

  def encode(self, token_lists: Sequence[Sequence[str]], max_text_len: int = 20):
    """Batch of token lists -> (ids int32 [B, T], pos_ohot float32 [B, T, 15], sent_len int32 [B])."""
    out = [self.encode_one(t, max_text_len) for t in token_lists]
    return (np.stack([o[0] for o in out]), np.stack([o[1] for o in out]), np.asarray([o[2] for o in out], np.int32))

  def __call__(self, token_lists: Sequence[Sequence[str]], max_text_len: int = 20):
    """Like :meth:`encode`, but with GloVe vectors ``[B, T, dim_word]`` in place of ids when given."""
    ids, pos, lens = self.encode(token_lists, max_text_len)
    if self.vectors is None:
      return ids, pos, lens
    return self.vectors[ids], pos, lens


def build_word_vocab(token_lists: Sequence[Sequence[str]], min_count: int = 1) -> dict[str, int]:
  """Vocabulary for the learned-word-vector path: sos=0, eos=1, unk=2, then words by first appearance."""
  counts: dict[str, int] = {}
  for tokens in token_lists:
    for item in tokens:
      word = item.partition("/")[0]
      counts[word] = counts.get(word, 0) + 1
  vocab = {"sos": 0, "eos": 1, "unk": 2}
  for word, c in counts.items():
    if c >= min_count and word not in vocab:
      vocab[word] = len(vocab)
  return vocab
