"""A small, independent, pure-Python CLIP tokenizer: the reference tests/test_text_encoders.py compares the library's
(HF ``tokenizers``, interop/clip_tokenizer.py) with. It is the project's earlier hand-written implementation, written from
OpenAI CLIP's ``simple_tokenizer.py`` and HF's ``CLIPTokenizer`` conventions:

    text -> NFC, runs of whitespace -> " ", lower-case -> split (``'s 't 're 've 'm 'll 'd``, letter runs, single
         digits, runs of other non-space characters) -> bytes -> BPE with ``</w>`` word ends
         -> <|startoftext|> ids[:max_length - 2] <|endoftext|>, padded with <|endoftext|>

Literal ``<|startoftext|>`` / ``<|endoftext|>`` are their special ids. Whitespace is Python's ``str.isspace`` (a few
control characters, U+001C..U+001F, are whitespace here and not for the Rust regex ``\\s``; the tests keep them
out of the random strings).
"""

from __future__ import annotations

import json
import unicodedata

SOT, EOT = "<|startoftext|>", "<|endoftext|>"
_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")


def bytes_to_unicode() -> dict[int, str]:
  """GPT-2 / CLIP byte -> printable character table (printable Latin-1 bytes map to themselves)."""
  bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return dict(zip(bs, (chr(c) for c in cs)))


def _kind(ch: str) -> str:
  if ch.isspace():
    return "space"
  cat = unicodedata.category(ch)
  return "letter" if cat[0] == "L" else "number" if cat[0] == "N" else "other"


def pre_tokenize(text: str) -> list[str]:
  """The matches of ``'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+`` (alternatives in order)."""
  out, i, n = [], 0, len(text)
  while i < n:
    kind = _kind(text[i])
    if kind == "space":
      i += 1
      continue
    c = next((c for c in _CONTRACTIONS if text.startswith(c, i)), None)
    if c is not None:
      out.append(c)
      i += len(c)
      continue
    j = i + 1
    if kind in ("letter", "other"):
      while j < n and _kind(text[j]) == kind:
        j += 1
    out.append(text[i:j])
    i = j
  return out


def _normalize(text: str) -> str:
  text = unicodedata.normalize("NFC", text)
  out, prev_space = [], False
  for ch in text:
    if ch.isspace():
      if not prev_space:
        out.append(" ")
      prev_space = True
    else:
      out.append(ch)
      prev_space = False
  return "".join(out).lower()


def _split_specials(text: str) -> list[str]:
  """[text, special, text, special, ..., text] around literal specials."""
  parts, i = [], 0
  while True:
    hits = [(p, s) for p, s in ((text.find(s, i), s) for s in (SOT, EOT)) if p >= 0]
    if not hits:
      parts.append(text[i:])
      return parts
    p, s = min(hits)
    parts.extend([text[i:p], s])
    i = p + len(s)


class ReferenceCLIPTokenizer:
  def __init__(self, vocab_path: str, merges_path: str, max_length: int = 77):
    with open(vocab_path, encoding="utf-8") as f:
      self.encoder = json.load(f)
    with open(merges_path, encoding="utf-8") as f:
      lines = [ln for k, ln in enumerate(f.read().split("\n")) if ln.strip() and not (k == 0 and ln.startswith("#"))]
    self.bpe_ranks = {tuple(ln.split()): i for i, ln in enumerate(lines)}
    self.max_length = max_length
    self.sot_id, self.eot_id = self.encoder[SOT], self.encoder[EOT]
    self.byte_encoder = bytes_to_unicode()

  def bpe(self, token: str) -> list[str]:
    """Lowest-rank pair first, all its occurrences, until no pair has a rank."""
    word = list(token[:-1]) + [token[-1] + "</w>"]
    while len(word) > 1:
      pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
      best = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
      if best not in self.bpe_ranks:
        break
      merged, i = [], 0
      while i < len(word):
        if i < len(word) - 1 and (word[i], word[i + 1]) == best:
          merged.append(word[i] + word[i + 1])
          i += 2
        else:
          merged.append(word[i])
          i += 1
      word = merged
    return word

  def encode(self, text: str) -> list[int]:
    """Ids without the wrapping specials or truncation."""
    ids = []
    for k, part in enumerate(_split_specials(text)):
      if k % 2:
        ids.append(self.encoder[part])
        continue
      for tok in pre_tokenize(_normalize(part)):
        mapped = "".join(self.byte_encoder[b] for b in tok.encode("utf-8"))
        ids.extend(self.encoder.get(s, self.eot_id) for s in self.bpe(mapped))
    return ids

  def padded(self, text: str) -> list[int]:
    row = [self.sot_id] + self.encode(text)[: self.max_length - 2] + [self.eot_id]
    return row + [self.eot_id] * (self.max_length - len(row))
