"""The text-motion evaluator bundle: T2M's evaluator (trained here or converted from ``finest.tar``) ready to
embed host data.

:class:`Evaluator` embeds 'word/POS' captions and dataset-normalised motions in fixed-size jitted chunks (no
retracing); :func:`load_trained_evaluator` reads a work directory written by ``train/evaluator.py``,
:func:`load_official_evaluator` the official checkpoint + GloVe + statistics. Both give the same interface.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from easytune_jax.core.checkpoint import Checkpointer
from easytune_jax.core.config import config_from_dict
from easytune_jax.core.optim import OptimConfig, create_train_state, make_optimizer
from easytune_jax.data.safe_io import load_npy, read_json
from easytune_jax.data.text import Tokenizer
from easytune_jax.data.word_vectors import WordVectorizer
from easytune_jax.interop import t2m_convert
from easytune_jax.models.evaluator import (
  EvaluatorConfig,
  evaluator_embed_motion,
  evaluator_embed_text,
  init_evaluator,
  renorm_for_evaluator,
)

# --------------------------------------------------------------------------------------------- the bundle
_NO_TEXT_TOKENIZER = None


def pos_only_tokenizer() -> Tokenizer:
  """The data layer's batch builder needs a caption tokenizer; the evaluator reads 'word/POS' tokens instead,
  so a specials-only one is enough (its ids are discarded)."""
  global _NO_TEXT_TOKENIZER
  if _NO_TEXT_TOKENIZER is None:
    _NO_TEXT_TOKENIZER = Tokenizer(["<pad>", "<unk>", "<sos>", "<eos>"], max_length=4)
  return _NO_TEXT_TOKENIZER


# Module-level jits with the (hashable, frozen) config static: every Evaluator of one config shares the
# compiled functions, so building a new bundle (per validation round, per loader call) does not recompile.
@functools.partial(jax.jit, static_argnames="config")
def _embed_text_jit(params, words, pos, lens, *, config: EvaluatorConfig):
  return evaluator_embed_text(params, words, pos, lens, config=config)


@functools.partial(jax.jit, static_argnames="config")
def _embed_motion_jit(params, x_norm, lengths, stats, *, config: EvaluatorConfig):
  mask = jnp.arange(x_norm.shape[1])[None, :] < lengths[:, None]
  return evaluator_embed_motion(params, renorm_for_evaluator(x_norm, *stats, mask=mask), lengths, config=config)


@dataclasses.dataclass(eq=False)
class Evaluator:
  """A text-motion evaluator ready to embed host data, trained here or converted from T2M's finest.tar.

  Attributes:
    config: network sizes. params: Flax params of :class:`T2MEvaluator`.
    vectorizer: 'word/POS' tokens -> ids (learned path) or GloVe vectors (official path).
    eval_mean, eval_std: float32 [D] evaluator statistics (mu_e, sigma_e).
    dataset_mean, dataset_std: float32 [D] the Mean/Std that the motions given to :meth:`embed_motion`
      are normalised with (mu_d, sigma_d).
    batch_size: rows per jitted call (inputs are chunked and padded to it, so nothing retraces).
    max_length: padded frame count per jitted call (196 = HumanML3D's longest crop).
    name: where it came from (for reports).
  """

  config: EvaluatorConfig
  params: Any
  vectorizer: WordVectorizer
  eval_mean: np.ndarray
  eval_std: np.ndarray
  dataset_mean: np.ndarray
  dataset_std: np.ndarray
  batch_size: int = 32
  max_length: int = 196
  name: str = ""

  def __post_init__(self):
    d = self.config.dim_pose
    for field in ("eval_mean", "eval_std", "dataset_mean", "dataset_std"):
      a = np.asarray(getattr(self, field), np.float32)
      if a.shape != (d,) or not np.all(np.isfinite(a)):
        raise ValueError(
          f"Evaluator {self.name!r}: {field} expected finite float [{d}] (dim_pose), found shape {a.shape}"
        )
      setattr(self, field, a)
    if np.any(self.eval_std <= 0) or np.any(self.dataset_std <= 0):
      raise ValueError(f"Evaluator {self.name!r}: std expected > 0")
    if self.max_length % self.config.unit_length:
      raise ValueError(
        f"Evaluator.max_length: expected a multiple of {self.config.unit_length}, found {self.max_length}"
      )
    self._stats = tuple(jnp.asarray(a) for a in (self.dataset_mean, self.dataset_std, self.eval_mean, self.eval_std))

  @property
  def dim(self) -> int:
    return self.config.dim_coemb

  def with_dataset_stats(self, mean: np.ndarray, std: np.ndarray) -> Evaluator:
    """The same evaluator for motions normalised with another dataset Mean/Std."""
    return dataclasses.replace(self, dataset_mean=mean, dataset_std=std)

  def check_dataset_stats(self, mean: np.ndarray, std: np.ndarray, where: str) -> None:
    """Raises if motions normalised with (mean, std) would be renormalised with other statistics."""
    for what, a, b in (("Mean", mean, self.dataset_mean), ("Std", std, self.dataset_std)):
      a = np.asarray(a, np.float32)
      if a.shape != b.shape or not np.allclose(a, b, rtol=1e-5, atol=1e-6):
        diff = float(np.max(np.abs(a - b))) if a.shape == b.shape else float("nan")
        raise ValueError(
          f"{where}: dataset {what} differs from the one evaluator {self.name!r} renormalises "
          f"from (max |diff| {diff:.3g}, shapes {a.shape} vs {b.shape}); build it with "
          "evaluator.with_dataset_stats(dataset.mean, dataset.std)"
        )

  def _chunks(self, n: int):
    for s in range(0, n, self.batch_size):
      yield s, min(s + self.batch_size, n)

  def _pad_rows(self, a: np.ndarray, rows: int) -> np.ndarray:
    if a.shape[0] == rows:
      return a
    pad = np.zeros((rows - a.shape[0],) + a.shape[1:], a.dtype)
    return np.concatenate([a, pad], axis=0)

  def embed_text(self, pos_token_lists: Sequence[Sequence[str]]) -> np.ndarray:
    """B lists of 'word/POS' tokens -> float32 [B, E] (A4.1 vectorizer; sos/eos added, <= 20 words)."""
    if isinstance(pos_token_lists, str) or any(isinstance(t, str) for t in pos_token_lists):
      raise TypeError("embed_text: expected a list of token lists (each a list of 'word/POS' strings)")
    words, pos, lens = self.vectorizer(pos_token_lists, self.config.max_text_len)
    out = []
    for s, e in self._chunks(len(lens)):
      b = self.batch_size
      emb = _embed_text_jit(
        self.params,
        self._pad_rows(words[s:e], b),
        self._pad_rows(pos[s:e], b),
        # padded rows get length 1 (sos only) so their GRU runs on real data
        np.concatenate([lens[s:e], np.ones(b - (e - s), np.int32)]),
        config=self.config,
      )
      out.append(np.asarray(emb)[: e - s])
    return np.concatenate(out, 0) if out else np.zeros((0, self.dim), np.float32)

  def embed_motion(self, x_norm: np.ndarray, lengths: Sequence[int]) -> np.ndarray:
    """Dataset-normalised features [B, L, D] (frames >= length ignored) -> float32 [B, E].

    Frames at or beyond each length are set to dataset-space zeros and renormalised with
    ``((x * std_d + mean_d) - mean_e) / std_e`` (docs/humanml3d_format.md#evaluator-motion-input); the GRU sees
    ``length // 4`` steps.
    """
    x = np.asarray(x_norm, np.float32)
    lengths = np.asarray(lengths, np.int32)
    d = self.config.dim_pose
    if x.ndim != 3 or x.shape[-1] != d:
      raise ValueError(f"embed_motion: expected x_norm [B, L, {d}], found {x.shape}")
    if lengths.shape != (x.shape[0],):
      raise ValueError(f"embed_motion: expected lengths [{x.shape[0]}], found {lengths.shape}")
    if np.any(lengths < self.config.unit_length) or np.any(lengths > min(x.shape[1], self.max_length)):
      raise ValueError(
        f"embed_motion: lengths expected in [{self.config.unit_length}, "
        f"{min(x.shape[1], self.max_length)}] (frames given, evaluator max_length), found "
        f"{lengths.min()}..{lengths.max()}"
      )
    if x.shape[1] > self.max_length:
      x = x[:, : self.max_length]
    elif x.shape[1] < self.max_length:
      x = np.pad(x, ((0, 0), (0, self.max_length - x.shape[1]), (0, 0)))
    out = []
    for s, e in self._chunks(x.shape[0]):
      b = self.batch_size
      emb = _embed_motion_jit(
        self.params,
        self._pad_rows(x[s:e], b),
        np.concatenate([lengths[s:e], np.full(b - (e - s), self.config.unit_length, np.int32)]),
        self._stats,
        config=self.config,
      )
      out.append(np.asarray(emb)[: e - s])
    return np.concatenate(out, 0) if out else np.zeros((0, self.dim), np.float32)


@functools.partial(jax.jit, static_argnames="config")
def _init_params(config: EvaluatorConfig, key: jax.Array):
  # One jitted init compiles faster on CPU than Flax's op-by-op eager init (about 9 s vs 12 s, tiny sizes),
  # and is cached per config.
  return init_evaluator(key, config, batch=2, motion_len=4 * config.unit_length)


# --------------------------------------------------------------------------------------------- loading
def load_trained_evaluator(
  workdir: str,
  *,
  dataset_mean: np.ndarray | None = None,
  dataset_std: np.ndarray | None = None,
  batch_size: int = 32,
  max_length: int = 196,
  step: int | None = None,
) -> Evaluator:
  """The evaluator trained by :func:`train_evaluator` in ``workdir`` (latest checkpoint, or ``step``).

  ``dataset_mean``/``dataset_std`` default to the Mean/Std of the dataset it was trained on (checkpoint
  metadata): the statistics its ``embed_motion`` inputs are assumed normalised with.
  """
  work = pathlib.Path(workdir)
  for f in ("config.json", "vocab.json", "mean.npy", "std.npy", "checkpoints"):
    if not (work / f).exists():
      raise FileNotFoundError(
        f"{work / f}: missing; is {work} an evaluator work directory written by launch/train_evaluator.py?"
      )
  saved = read_json(work / "config.json", "evaluator config")
  where = str(work / "config.json")
  config = config_from_dict(EvaluatorConfig, saved["model"], f"{where}: model")
  optim = config_from_dict(OptimConfig, saved["optim"], f"{where}: optim")
  vocab = read_json(work / "vocab.json", "evaluator vocabulary")
  vectorizer = WordVectorizer(vocab)
  if vectorizer.vocab_size != config.vocab_size:
    raise ValueError(
      f"{work / 'vocab.json'}: {vectorizer.vocab_size} words, config.json model.vocab_size is {config.vocab_size}"
    )
  tx = make_optimizer(optim)
  ckpt = Checkpointer(work / "checkpoints")
  try:
    template = jax.eval_shape(lambda: create_train_state(_init_params(config, jax.random.PRNGKey(0)), tx))
    state = ckpt.restore(template, step)
    meta = ckpt.metadata(step)
  finally:
    ckpt.close()
  dm = np.asarray(meta["dataset_mean"], np.float32) if dataset_mean is None else dataset_mean
  ds = np.asarray(meta["dataset_std"], np.float32) if dataset_std is None else dataset_std
  mean_e = load_npy(work / "mean.npy", "evaluator statistics", shape=(config.dim_pose,))
  std_e = load_npy(work / "std.npy", "evaluator statistics", shape=(config.dim_pose,))
  return Evaluator(
    config,
    state.params,
    vectorizer,
    mean_e,
    std_e,
    dm,
    ds,
    batch_size=batch_size,
    max_length=max_length,
    name=f"trained:{work}",
  )


def _first_existing(paths: Sequence[pathlib.Path], what: str) -> pathlib.Path:
  for p in paths:
    if p.exists():
      return p
  raise FileNotFoundError(f"{what}: none of {[str(p) for p in paths]} exists")


def load_official_evaluator(
  t2m_dir: str,
  glove_dir: str,
  mean_std_dir: str,
  *,
  dataset_mean: np.ndarray,
  dataset_std: np.ndarray,
  kind: str = "t2m",
  config: EvaluatorConfig | None = None,
  batch_size: int = 32,
  max_length: int = 196,
) -> Evaluator:
  """The official T2M evaluator (``finest.tar`` + GloVe + evaluator meta stats), same interface as trained.

  Args:
    t2m_dir: folder holding ``finest.tar`` directly, or ``text_mot_match/model/finest.tar``, or
      ``<kind>/text_mot_match/model/finest.tar`` (``deps/t2m`` / ``deps/t2m/t2m`` of the MLD layout).
    glove_dir: folder with ``our_vab_{data.npy,words.pkl,idx.pkl}``.
    mean_std_dir: evaluator statistics: ``mean.npy``/``std.npy`` (``Comp_v6_KLD01/meta``), or a folder with
      ``Comp_v6_KLD01/meta/`` (KIT: ``Comp_v6_KLD005``), or MDM's copies ``<kind>_mean.npy``/``<kind>_std.npy``.
    dataset_mean, dataset_std: [D] the dataset Mean/Std that motions given to ``embed_motion`` use.
    kind: 't2m' (HumanML3D, D = 263) or 'kit' (D = 251).
    config: network sizes (default ``EvaluatorConfig.official(dim_pose)``).
  """
  if kind not in ("t2m", "kit"):
    raise ValueError(f"load_official_evaluator: kind expected 't2m' or 'kit', found {kind!r}")
  dim = 263 if kind == "t2m" else 251
  config = EvaluatorConfig.official(dim_pose=dim) if config is None else config
  td = pathlib.Path(t2m_dir)
  ckpt = _first_existing(
    [
      td / "finest.tar",
      td / "text_mot_match" / "model" / "finest.tar",
      td / kind / "text_mot_match" / "model" / "finest.tar",
    ],
    "T2M evaluator checkpoint",
  )
  params = t2m_convert.load_t2m_evaluator(ckpt, config)
  vectorizer = t2m_convert.load_glove_vectorizer(glove_dir)
  if vectorizer.vectors.shape[1] != config.dim_word:
    raise ValueError(
      f"{glove_dir}: GloVe vectors have {vectorizer.vectors.shape[1]} dims, evaluator config "
      f"expects dim_word={config.dim_word}"
    )
  md = pathlib.Path(mean_std_dir)
  meta = "Comp_v6_KLD01" if kind == "t2m" else "Comp_v6_KLD005"
  candidates = [
    (md / "mean.npy", md / "std.npy"),
    (md / meta / "meta" / "mean.npy", md / meta / "meta" / "std.npy"),
    (md / f"{kind}_mean.npy", md / f"{kind}_std.npy"),
  ]
  for mpath, spath in candidates:
    if mpath.exists() and spath.exists():
      break
  else:
    raise FileNotFoundError(f"evaluator statistics: none of {[str(c[0]) for c in candidates]} (+ std) exists")
  mean_e = load_npy(mpath, "evaluator statistics", shape=(dim,))
  std_e = load_npy(spath, "evaluator statistics", shape=(dim,))
  return Evaluator(
    config,
    params,
    vectorizer,
    mean_e,
    std_e,
    dataset_mean,
    dataset_std,
    batch_size=batch_size,
    max_length=max_length,
    name=f"official:{ckpt}",
  )
