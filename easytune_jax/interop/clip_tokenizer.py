"""CLIP's byte-level BPE tokenizer through HF ``tokenizers`` (Rust, no torch), set up as transformers'
``CLIPTokenizer``: the tokenizer pads every caption to 77 tokens (``padding="max_length"``, truncation):

    text -> NFC, runs of whitespace -> " ", lower-case -> split (``'s 't 're 've 'm 'll 'd``, letter runs, single
         digits, runs of other non-space characters) -> bytes -> BPE with ``</w>`` word ends
         -> <|startoftext|> ids[:75] <|endoftext|>, padded with the pad token (``<|endoftext|>``) to 77

Read from a folder's ``tokenizer.json`` or ``vocab.json`` + ``merges.txt`` by
:func:`easytune_jax.interop.clip.load_clip_text`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from easytune_jax.data.safe_io import read_json

SOT, EOT = "<|startoftext|>", "<|endoftext|>"

# CLIP's pre-tokenizer split: the regex of the original CLIP and of HF's CLIPTokenizer (the special tokens are
# matched as added tokens before it sees the text).
SPLIT_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def _split_pre_tokenizer():
  from tokenizers import Regex, pre_tokenizers

  return pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="removed", invert=True)


def build_clip_tokenizer(vocab: dict, merges: Sequence[tuple[str, str]], unk_token: str = EOT):
  """A ``tokenizers.Tokenizer`` set up as transformers' ``CLIPTokenizer`` (5.x; the ``CLIPConverter`` of 4.x) builds
  it from ``vocab.json`` + ``merges.txt``: byte-level BPE with ``</w>`` word ends (unknown -> ``unk_token``),
  normaliser NFC -> whitespace runs to one space -> lower-case, pre-tokeniser :data:`SPLIT_PATTERN` then
  byte-level, post-processor ``<|startoftext|> ... <|endoftext|>``, the two special tokens as added tokens (matched
  on the raw text). Its ``to_str()`` is the ``tokenizer.json`` transformers saves for such a folder
  (tests/test_text_encoders.py compares them)."""
  from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

  for tok in (SOT, EOT, unk_token):
    if tok not in vocab:
      raise ValueError(f"vocab.json: expected the special token {tok!r} in the vocabulary")
  tokenizer = Tokenizer(
    models.BPE(
      vocab=dict(vocab),
      merges=[tuple(m) for m in merges],
      dropout=None,
      continuing_subword_prefix="",
      end_of_word_suffix="</w>",
      fuse_unk=False,
      unk_token=unk_token,
    )
  )
  tokenizer.normalizer = normalizers.Sequence(
    [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
  )
  tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
    [_split_pre_tokenizer(), pre_tokenizers.ByteLevel(add_prefix_space=False)]
  )
  tokenizer.decoder = decoders.ByteLevel()
  tokenizer.post_processor = processors.RobertaProcessing(
    (EOT, vocab[EOT]),
    (SOT, vocab[SOT]),
    False,
    False,  # sep, cls, trim_offsets, add_prefix_space
  )
  tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (SOT, EOT)])
  return tokenizer


def pre_tokenize(text: str) -> list[str]:
  """The pieces CLIP's split pattern (:data:`SPLIT_PATTERN`) cuts a normalised text into (whitespace dropped)."""
  return [piece for piece, _ in _split_pre_tokenizer().pre_tokenize_str(text)]


class CLIPTokenizer:
  """CLIP's byte-level BPE through HF ``tokenizers``, as the HF ``CLIPTokenizer`` encodes with
  ``padding="max_length"``, ``truncation=True``: normalise (NFC, whitespace runs -> one space, lower-case), split
  (:data:`SPLIT_PATTERN`), map bytes to characters, BPE-merge with ``</w>`` on each word's last symbol, add
  ``<|startoftext|>`` / ``<|endoftext|>``, truncate to ``max_length``, pad with the pad token. Literal
  ``<|startoftext|>`` / ``<|endoftext|>`` in a caption are their special ids (HF's added tokens).

  Made from a folder's ``tokenizer.json`` (:meth:`from_tokenizer_json`) or from ``vocab.json`` + ``merges.txt``
  (:meth:`from_files`, :func:`build_clip_tokenizer`).

  Attributes:
    tokenizer: the ``tokenizers.Tokenizer`` (no truncation or padding; :meth:`__call__` uses a copy with both).
    encoder: token -> id. max_length: padded length (77). sot_id, eot_id, pad_id: special ids.
  """

  def __init__(self, tokenizer, max_length: int = 77, pad_token: str = EOT, path: str = "tokenizer"):
    from tokenizers import Tokenizer

    if max_length < 2:
      raise ValueError(f"CLIPTokenizer.max_length: expected >= 2, found {max_length}")
    ids = {tok: tokenizer.token_to_id(tok) for tok in (SOT, EOT, pad_token)}
    missing = [tok for tok, i in ids.items() if i is None]
    if missing:
      raise ValueError(f"{path}: expected the special token {missing[0]!r} in the vocabulary")
    self.max_length = int(max_length)
    self.sot_id, self.eot_id, self.pad_id = ids[SOT], ids[EOT], ids[pad_token]
    self.tokenizer = Tokenizer.from_str(tokenizer.to_str())
    self.tokenizer.no_truncation()
    self.tokenizer.no_padding()
    self._batch = Tokenizer.from_str(self.tokenizer.to_str())
    self._batch.enable_truncation(self.max_length)
    self._batch.enable_padding(length=self.max_length, pad_id=self.pad_id, pad_token=pad_token)
    self.encoder = self.tokenizer.get_vocab()
    empty = self.tokenizer.encode("").ids
    if empty != [self.sot_id, self.eot_id]:
      raise ValueError(
        f"{path}: expected a post-processor that wraps a text in {SOT} ... {EOT} (ids {self.sot_id}, "
        f"{self.eot_id}), an empty text gives {empty}"
      )

  @classmethod
  def from_files(cls, vocab_path: str, merges_path: str, max_length: int = 77, pad_token: str = EOT) -> CLIPTokenizer:
    """From ``vocab.json`` and ``merges.txt`` (read by ``tokenizers``; a ``#version`` first line is skipped)."""
    from tokenizers import models

    vocab = read_json(vocab_path, "vocab file", dict)
    if not os.path.exists(merges_path):
      raise FileNotFoundError(f"{merges_path}: merges file not found")
    try:
      _, merges = models.BPE.read_file(vocab_path, merges_path)
    except Exception as e:  # tokenizers raises a bare Exception
      raise ValueError(f"{merges_path}: expected lines of two space-separated symbols ({e})") from None
    try:
      tokenizer = build_clip_tokenizer(vocab, merges)
    except ValueError as e:
      raise ValueError(f"{vocab_path}: {str(e).removeprefix('vocab.json: ')}") from None
    return cls(tokenizer, max_length, pad_token, vocab_path)

  @classmethod
  def from_tokenizer_json(cls, path: str, max_length: int = 77, pad_token: str = EOT) -> CLIPTokenizer:
    """From a HF ``tokenizer.json`` (what ``transformers`` saves; its normaliser, pre-tokeniser, BPE and
    post-processor are used as saved)."""
    from tokenizers import Tokenizer

    if not os.path.exists(path):
      raise FileNotFoundError(f"{path}: tokenizer file not found")
    try:
      tokenizer = Tokenizer.from_file(path)
    except Exception as e:
      raise ValueError(f"{path}: not a HF tokenizers file ({e})") from None
    return cls(tokenizer, max_length, pad_token, path)

  def encode(self, text: str) -> list[int]:
    """Ids of one text without specials or truncation."""
    return list(self.tokenizer.encode(str(text), add_special_tokens=False).ids)

  def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Batch -> (ids int32 [B, max_length], mask bool [B, max_length]: True through ``<|endoftext|>``)."""
    ids = np.full((len(texts), self.max_length), self.pad_id, np.int32)
    mask = np.zeros((len(texts), self.max_length), bool)
    for i, t in enumerate(texts):  # one at a time: encode_batch's thread pool would warn in forked children
      enc = self._batch.encode(str(t))
      ids[i], mask[i] = enc.ids, enc.attention_mask
    return ids, mask
