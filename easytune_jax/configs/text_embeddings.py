"""Presets of launch/precompute_text_embeddings.py: `TextEmbeddingConfig` (data/text.py), one per encoder output:
'sentence_t5' (sentence embeddings [N, 1, 768], the official MLD's condition), 'sentence_t5_tokens' (token
embeddings [N, L, 1024], the SPM's input), 'clip' (features [N, 1, 768]), 'clip_hidden' ([N, 77, 768])."""

from __future__ import annotations

from easytune_jax.configs import lookup
from easytune_jax.data.text import TextEmbeddingConfig

PRESETS = {
  "sentence_t5": lambda: TextEmbeddingConfig("sentence_t5", "sentence"),
  "sentence_t5_tokens": lambda: TextEmbeddingConfig("sentence_t5", "tokens"),
  "clip": lambda: TextEmbeddingConfig("clip", "features"),
  "clip_hidden": lambda: TextEmbeddingConfig("clip", "hidden"),
}


def get_config(name: str) -> TextEmbeddingConfig:
  return lookup(PRESETS, name, "configs/text_embeddings.py")
