"""The base trainer's data: the tokenizer of a workdir (`build_tokenizer`), train / held-out datasets
(`load_data`), the data-dependent sizes of the config (`finalize_config`), the training batch of a step
(`train_batch`, this process's rows on a mesh) and the fixed held-out batches (`validation_batches`)."""

from __future__ import annotations

import dataclasses
import os

import jax.numpy as jnp
import numpy as np

from easytune_jax.core import parallel
from easytune_jax.data import batching
from easytune_jax.data.humanml3d import MotionDataset, load_dataset
from easytune_jax.data.text import TextEmbeddings, Tokenizer
from easytune_jax.models.generator import BaseConfig

ARRAY_KEYS = ("motion", "mask", "length", "tokens", "token_mask", "text_emb", "text_emb_mask")


def batch_arrays(batch) -> dict:
  arrays = batch[0] if isinstance(batch, tuple) else batch
  return {k: jnp.asarray(v) for k, v in arrays.items() if k in ARRAY_KEYS}


def train_batch(config: BaseConfig, dataset, tokenizer, emb, step: int, mesh):
  """The training batch of `step`; on a mesh, this process's rows of it as arrays (`batching.make_batch` rows)."""
  rows = None if mesh is None else parallel.host_local_slice(config.data.batch_size)
  batch = batching.batch_at(
    dataset, step, config.data.batch_size, config.seed, tokenizer, rows=rows, **batch_kwargs(config, emb)
  )
  return batch if mesh is None else batch_arrays(batch)


def build_tokenizer(config: BaseConfig, dataset: MotionDataset, workdir: str) -> Tokenizer:
  """Loads <workdir>/tokenizer.json if present (resume), else builds it from the train captions."""
  path = os.path.join(workdir, "tokenizer.json")
  if os.path.exists(path):
    return Tokenizer.load(path)
  tok = Tokenizer.build([c for e in dataset.entries for c, _ in e.captions], max_length=config.data.text_max_length)
  os.makedirs(workdir, exist_ok=True)
  tok.save(path)
  return tok


def batch_kwargs(config: BaseConfig, text_embeddings: TextEmbeddings | None) -> dict:
  return dict(max_length=config.data.max_length, unit_length=config.data.unit_length, text_embeddings=text_embeddings)


def load_text_embeddings(config: BaseConfig) -> TextEmbeddings | None:
  if config.text.kind != "precomputed":
    return None
  if not config.data.text_embeddings:
    raise ValueError("config: text.kind='precomputed' needs data.text_embeddings (path of the .npz)")
  return TextEmbeddings(config.data.text_embeddings)


def validation_batches(
  config: BaseConfig, dataset: MotionDataset, tokenizer: Tokenizer, text_embeddings: TextEmbeddings | None = None
) -> list[dict]:
  """Fixed held-out batches: the first num_val_batches * batch_size entries, crops drawn from a fixed
  seed (so every evaluation sees the same windows)."""
  n = min(len(dataset), config.data.num_val_batches * config.data.batch_size)
  rng = np.random.default_rng([config.seed, 99])
  out = []
  for s in range(0, n, config.data.batch_size):
    idx = np.arange(s, min(s + config.data.batch_size, n))
    arrays, _ = batching.make_batch(dataset, idx, rng, tokenizer, **batch_kwargs(config, text_embeddings))
    out.append(batch_arrays(arrays))
  return out


def load_data(config: BaseConfig, data_dir: str) -> tuple[MotionDataset, MotionDataset]:
  """(train, held-out) datasets; the held-out split falls back to 'test' when 'val' is missing/too small."""
  kw = dict(min_len=config.data.min_len, max_len=config.data.max_len)
  train = load_dataset(data_dir, config.data.train_split, **kw)
  val = None
  for split in (config.data.val_split, "test"):
    if os.path.exists(os.path.join(data_dir, f"{split}.txt")):
      val = load_dataset(data_dir, split, mean=train.mean, std=train.std, **kw)
      if len(val):
        break
  return train, (val if val is not None and len(val) else train)


def finalize_config(config: BaseConfig, dataset: MotionDataset, tokenizer: Tokenizer) -> BaseConfig:
  """Fills in the data-dependent sizes: feature dim, vocabulary size, precomputed embedding dim."""
  text = dataclasses.replace(config.text, vocab_size=tokenizer.vocab_size)
  emb = load_text_embeddings(config)
  if emb is not None:
    text = dataclasses.replace(text, embed_dim=emb.dim)
  data = config.data
  if emb is not None and emb.max_length != data.text_max_length:
    data = dataclasses.replace(data, text_max_length=emb.max_length)
  return dataclasses.replace(config, text=text, data=data, vae=dataclasses.replace(config.vae, nfeats=dataset.info.dim))
