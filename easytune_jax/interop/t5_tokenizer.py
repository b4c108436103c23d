"""T5's tokenizer (``spiece.model`` through sentencepiece, or a HF ``tokenizer.json`` through ``tokenizers``),
as ``SentenceTransformer`` calls it: text -> SentencePiece ids + ``</s>`` (truncated to ``max_seq_length``,
padded to the batch's longest with ``<pad>``). Read by :func:`easytune_jax.interop.sentence_t5.load_sentence_t5`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np


class T5Tokenizer:
  """T5's tokenizer with T5's conventions, as ``SentenceTransformer`` calls the HF T5 tokenizer: strip (and
  optionally lower-case) the text, the model's ids, truncate to ``max_length - 1`` pieces, append ``</s>``; batches
  are padded with ``<pad>`` to the longest row (``padding=True``) or to ``max_length``.

  Two backends, the same ids: ``sentencepiece`` on a ``spiece.model`` (``T5Tokenizer(path)``, the layout of the
  released ``sentence-t5-large``), or HF ``tokenizers`` on a ``tokenizer.json`` (:meth:`from_tokenizer_json`, what
  transformers >= 5 saves: a Unigram model converted from the SentencePiece one; tests/test_text_encoders.py checks
  that both give the same ids).

  Not reproduced with ``spiece.model``: HF's added-token matching (a literal ``</s>`` or ``<extra_id_0>`` inside a
  caption is split into pieces there, while HF maps it to the special id; the ``tokenizer.json`` backend does as HF).

  Attributes:
    max_length: truncation length including ``</s>`` (sentence-transformers' ``max_seq_length``).
    pad_id, eos_id: the model's ids (T5: 0 and 1). path: the tokenizer file.
    sp: the ``sentencepiece.SentencePieceProcessor`` or None. tokenizer: the ``tokenizers.Tokenizer`` or None.
  """

  def __init__(self, spm_path: str, max_length: int = 256, do_lower_case: bool = False):
    import sentencepiece  # the spiece.model backend

    if not os.path.exists(spm_path):
      raise FileNotFoundError(f"{spm_path}: SentencePiece model not found")
    sp = sentencepiece.SentencePieceProcessor(model_file=spm_path)
    self.sp, self.tokenizer = sp, None
    self._setup(spm_path, max_length, do_lower_case, int(sp.eos_id()), int(sp.pad_id()), int(sp.get_piece_size()))

  @classmethod
  def from_tokenizer_json(
    cls,
    path: str,
    max_length: int = 256,
    do_lower_case: bool = False,
    eos_token: str = "</s>",
    pad_token: str = "<pad>",
  ) -> T5Tokenizer:
    """From a HF ``tokenizer.json`` (its normaliser, pre-tokeniser and Unigram model; ``</s>`` is appended here)."""
    from tokenizers import Tokenizer

    if not os.path.exists(path):
      raise FileNotFoundError(f"{path}: tokenizer file not found")
    try:
      tok = Tokenizer.from_file(path)
    except Exception as e:  # tokenizers raises a bare Exception
      raise ValueError(f"{path}: not a HF tokenizers file ({e})") from None
    tok.no_truncation()
    tok.no_padding()
    self = cls.__new__(cls)
    self.sp, self.tokenizer = None, tok
    eos, pad = tok.token_to_id(eos_token), tok.token_to_id(pad_token)
    self._setup(
      path,
      max_length,
      do_lower_case,
      -1 if eos is None else eos,
      -1 if pad is None else pad,
      tok.get_vocab_size(with_added_tokens=True),
    )
    return self

  def _setup(self, path: str, max_length: int, do_lower_case: bool, eos_id: int, pad_id: int, size: int) -> None:
    if max_length < 1:
      raise ValueError(f"T5Tokenizer.max_length: expected >= 1, found {max_length}")
    if eos_id < 0 or pad_id < 0:
      raise ValueError(
        f"{path}: expected a T5 tokenizer with </s> and <pad> ids, found eos_id={eos_id}, pad_id={pad_id}"
      )
    self.path = path
    self.max_length = int(max_length)
    self.do_lower_case = bool(do_lower_case)
    self.eos_id, self.pad_id = eos_id, pad_id
    self._size = int(size)

  @property
  def vocab_size(self) -> int:
    """Pieces of the model (with the added tokens of a ``tokenizer.json``)."""
    return self._size

  def encode(self, text: str) -> list[int]:
    """Ids of one text: pieces (truncated to ``max_length - 1``) + ``</s>``."""
    text = str(text).strip()
    if self.do_lower_case:
      text = text.lower()
    if self.tokenizer is not None:
      pieces = list(self.tokenizer.encode(text, add_special_tokens=False).ids)
    else:
      pieces = list(self.sp.encode(text))
    return pieces[: self.max_length - 1] + [self.eos_id]

  def __call__(
    self, texts: Sequence[str], padding: str = "longest", pad_to: int | None = None
  ) -> tuple[np.ndarray, np.ndarray]:
    """Batch of texts -> (ids int32 [B, L], mask bool [B, L]).

    Args:
      texts: B strings.
      padding: ``"longest"`` (L = longest row, as sentence-transformers) or ``"max_length"``.
      pad_to: optional L >= the longest row (overrides ``padding``).
    """
    rows = [self.encode(t) for t in texts]
    longest = max((len(r) for r in rows), default=1)
    length = self.max_length if padding == "max_length" else longest
    if pad_to is not None:
      if pad_to < longest:
        raise ValueError(f"T5Tokenizer: pad_to={pad_to} is shorter than the longest row ({longest})")
      length = pad_to
    ids = np.full((len(rows), length), self.pad_id, np.int32)
    mask = np.zeros((len(rows), length), bool)
    for i, r in enumerate(rows):
      ids[i, : len(r)] = r
      mask[i, : len(r)] = True
    return ids, mask
