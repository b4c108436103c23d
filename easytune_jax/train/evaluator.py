"""Training the T2M-architecture evaluator from scratch, and loading evaluators (trained or official).

The evaluator is the judge of every generator in the project, so it is trained on its OWN data and seed:
the TRAIN split of the dataset (never the validation/test split that metrics are reported on, and never on
anything the reward model is fine-tuned against), with ``EvaluatorTrainConfig.seed`` distinct from the reward
model's. The architecture is T2M's ``text_mot_match`` (HUMANML3D.md §A4.3, :mod:`easytune_jax.models.evaluator`)
with learned word vectors in place of GloVe (no GloVe download here): the vocabulary is built from the train
captions' ``word/POS`` tokens with :func:`build_word_vocab` and saved in the work directory.

Objective (``loss="infonce"``, the default): symmetric InfoNCE over the batch on NEGATIVE EUCLIDEAN distances
``logits_ij = -|t_i - m_j|_2 / temperature`` (the distance the protocol ranks by), cross-entropy with the
diagonal as target, averaged over text->motion and motion->text. ``loss="hinge"`` is T2M's original
``ContrastiveLoss`` (pull pairs together, push the batch shifted by a random offset beyond margin 10).

Normalisation (the evaluator's own statistics, as T2M's ``Comp_v6_KLD01/meta``; HUMANML3D.md §A1.7, §A2.2):
``mean`` = per-dim mean and ``std`` = per-dim population std averaged within each of the 7 feature groups
(:func:`group_mean_std`), both over every frame of every entry of the training split (sub-clip entries
included, as loaded); then the 4 root dims (0-3) and the 4 foot-contact dims (last 4) of ``std`` are divided
by ``feat_bias ** feat_bias_applications`` = 5 ** 2 = 25, T2M's ``feat_bias = 5`` applied twice in place.
They are saved as ``<workdir>/mean.npy``, ``std.npy`` (float32). Training batches are normalised with the
DATASET Mean/Std (the data layer) and mapped into evaluator space by :func:`renorm_for_evaluator`, with padded
frames holding dataset-space zeros: exactly the path generated motion takes at evaluation time.

Work directory::

    <workdir>/config.json        EvaluatorTrainConfig (vocab_size and dim_pose filled in)
    <workdir>/vocab.json         word -> id of the learned word vectors
    <workdir>/mean.npy, std.npy  evaluator statistics (see above)
    <workdir>/checkpoints/       orbax TrainState; metadata holds the config and the dataset Mean/Std
    <workdir>/metrics.*          JSONL / CSV / TensorBoard: loss, grad norm, val R-precision / MM-Dist
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import time
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from easytune_jax import metrics as M
from easytune_jax import parallel
from easytune_jax.data import batching
from easytune_jax.data.humanml3d import MotionDataset, group_mean_std, load_dataset
from easytune_jax.data.safe_io import load_npy, read_json
from easytune_jax.data.text import Tokenizer
from easytune_jax.models.evaluator import (EvaluatorConfig, WordVectorizer, build_word_vocab, evaluator_embed_motion,
                                           evaluator_embed_text, evaluator_loss, init_evaluator,
                                           renorm_for_evaluator)
from easytune_jax.train import common

LOSSES = ("infonce", "hinge")


# --------------------------------------------------------------------------------------------- config
@dataclasses.dataclass(frozen=True)
class EvaluatorTrainConfig:
    """Everything evaluator training needs. Defaults: the CPU config (about a minute on 2 cores).

    Attributes:
      model: network sizes; ``vocab_size`` and ``dim_pose`` are filled in from the data.
      optim: AdamW + schedule + clipping.
      batch_size: pairs per contrastive batch (the negatives of InfoNCE).
      steps: optimizer steps.
      max_length: fixed padded frame window (multiple of 4); crops longer than it get a random window
        (:func:`batching.make_batch`). 196 = every HumanML3D crop whole.
      seed: the evaluator's own seed (data order, dropout); keep it distinct from the reward model's.
      loss, temperature, margin: objective (module docstring).
      feat_bias, feat_bias_applications: root / foot-contact std divisor ``feat_bias ** applications``.
      min_word_count: words seen fewer times map to ``unk``.
      train_split, val_split: split-file stems. Validation retrieval uses ``val_split`` (or 'test' when it
        is missing or has fewer than ``r_precision_group`` entries) -- monitoring only, never optimised.
      min_len, max_len: dataset length filter.
      log_every, checkpoint_every, eval_every: loop cadence in steps (eval 0 disables validation).
      r_precision_group: group size of the validation R-precision.
    """

    model: EvaluatorConfig = dataclasses.field(default_factory=lambda: EvaluatorConfig(
        dim_word=64, dim_text_hidden=64, dim_movement_enc_hidden=64, dim_movement_latent=64,
        dim_motion_hidden=64, dim_coemb=64, dropout=0.2))
    optim: common.OptimConfig = dataclasses.field(default_factory=lambda: common.OptimConfig(
        learning_rate=2e-3, warmup_steps=20, decay_steps=280, end_lr_factor=0.05, grad_clip_norm=1.0))
    batch_size: int = 32
    steps: int = 300
    max_length: int = 196
    seed: int = 4242
    loss: str = "infonce"
    temperature: float = 1.0
    margin: float = 10.0
    feat_bias: float = 5.0
    feat_bias_applications: int = 2
    min_word_count: int = 1
    train_split: str = "train"
    val_split: str = "val"
    min_len: int = 40
    max_len: int = 200
    log_every: int = 25
    checkpoint_every: int = 100
    eval_every: int = 100
    r_precision_group: int = 32

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"EvaluatorTrainConfig.loss: expected one of {LOSSES}, found {self.loss!r}")
        if self.max_length % self.model.unit_length:
            raise ValueError(f"EvaluatorTrainConfig.max_length: expected a multiple of unit_length="
                             f"{self.model.unit_length}, found {self.max_length}")
        if self.batch_size < 2:
            raise ValueError(f"EvaluatorTrainConfig.batch_size: a contrastive batch needs >= 2 pairs, "
                             f"found {self.batch_size}")

    @property
    def std_divisor(self) -> float:
        return float(self.feat_bias ** self.feat_bias_applications)


def get_config(name: str = "tiny") -> EvaluatorTrainConfig:
    """'tiny': the CPU config (widths 64, 300 steps of batch 32 on whole 196-frame crops; ~1 min on 2 cores).
    'paper': the official T2M sizes (``EvaluatorConfig.paper()``) with learned 300-d word vectors, lr 1e-4."""
    if name == "tiny":
        return EvaluatorTrainConfig()
    if name == "paper":
        return EvaluatorTrainConfig(
            model=EvaluatorConfig.paper(), batch_size=32, steps=100_000,
            optim=common.OptimConfig(learning_rate=1e-4, warmup_steps=1000, decay_steps=99_000, end_lr_factor=0.1),
            log_every=100, checkpoint_every=5000, eval_every=5000)
    raise ValueError(f"evaluator config name: expected 'tiny' or 'paper', found {name!r}")


def config_to_dict(config: EvaluatorTrainConfig) -> dict:
    return dataclasses.asdict(config)


def config_from_dict(d: Mapping[str, Any], where: str = "config") -> EvaluatorTrainConfig:
    return common.config_from_dict(EvaluatorTrainConfig, d, where)


# --------------------------------------------------------------------------------------------- statistics
def evaluator_statistics(dataset: MotionDataset, feat_bias: float = 5.0,
                         feat_bias_applications: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """T2M-style evaluator stats of ``dataset`` (module docstring): (mean float32 [D], std float32 [D])."""
    if not len(dataset):
        raise ValueError(f"evaluator_statistics: dataset {dataset.root!r} split {dataset.split!r} has no entries")
    mean, std = group_mean_std([e.motion for e in dataset.entries], dataset.info.joints_num)
    div = np.float32(feat_bias ** feat_bias_applications)
    std = std.copy()
    std[:4] /= div      # root angular velocity, root linear velocity (x, z), root height
    std[-4:] /= div     # foot contacts (dropped by the evaluator input, kept for T2M parity of the file)
    if np.any(std <= 0):
        raise ValueError(f"evaluator_statistics: std has non-positive entries at dims "
                         f"{np.nonzero(std <= 0)[0][:10].tolist()} (constant features in the training split)")
    return mean.astype(np.float32), std.astype(np.float32)


# --------------------------------------------------------------------------------------------- the bundle
_NO_TEXT_TOKENIZER = None


def _host_tokenizer() -> Tokenizer:
    """The data layer's batch builder needs a caption tokenizer; the evaluator reads 'word/POS' tokens instead,
    so a specials-only one is enough (its ids are discarded)."""
    global _NO_TEXT_TOKENIZER
    if _NO_TEXT_TOKENIZER is None:
        _NO_TEXT_TOKENIZER = Tokenizer(["<pad>", "<unk>", "<sos>", "<eos>"], max_length=4)
    return _NO_TEXT_TOKENIZER


TRACE_COUNTS = {"text": 0, "motion": 0}   # traces of the jitted embed functions (tests check no retrace)


# Module-level jits with the (hashable, frozen) config static: every Evaluator of one config shares the
# compiled functions, so building a new bundle (per validation round, per loader call) does not recompile.
@functools.partial(jax.jit, static_argnames="config")
def _embed_text_jit(params, words, pos, lens, *, config: EvaluatorConfig):
    TRACE_COUNTS["text"] += 1
    return evaluator_embed_text(params, words, pos, lens, config=config)


@functools.partial(jax.jit, static_argnames="config")
def _embed_motion_jit(params, x_norm, lengths, stats, *, config: EvaluatorConfig):
    TRACE_COUNTS["motion"] += 1
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
                raise ValueError(f"Evaluator {self.name!r}: {field} expected finite float [{d}] (dim_pose), "
                                 f"found shape {a.shape}")
            setattr(self, field, a)
        if np.any(self.eval_std <= 0) or np.any(self.dataset_std <= 0):
            raise ValueError(f"Evaluator {self.name!r}: std expected > 0")
        if self.max_length % self.config.unit_length:
            raise ValueError(f"Evaluator.max_length: expected a multiple of {self.config.unit_length}, "
                             f"found {self.max_length}")
        self._stats = tuple(jnp.asarray(a) for a in (self.dataset_mean, self.dataset_std, self.eval_mean,
                                                     self.eval_std))

    @property
    def dim(self) -> int:
        return self.config.dim_coemb

    def with_dataset_stats(self, mean: np.ndarray, std: np.ndarray) -> "Evaluator":
        """The same evaluator for motions normalised with another dataset Mean/Std."""
        return dataclasses.replace(self, dataset_mean=mean, dataset_std=std)

    def check_dataset_stats(self, mean: np.ndarray, std: np.ndarray, where: str) -> None:
        """Raises if motions normalised with (mean, std) would be renormalised with other statistics."""
        for what, a, b in (("Mean", mean, self.dataset_mean), ("Std", std, self.dataset_std)):
            a = np.asarray(a, np.float32)
            if a.shape != b.shape or not np.allclose(a, b, rtol=1e-5, atol=1e-6):
                diff = float(np.max(np.abs(a - b))) if a.shape == b.shape else float("nan")
                raise ValueError(f"{where}: dataset {what} differs from the one evaluator {self.name!r} renormalises "
                                 f"from (max |diff| {diff:.3g}, shapes {a.shape} vs {b.shape}); build it with "
                                 "evaluator.with_dataset_stats(dataset.mean, dataset.std)")

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
            emb = _embed_text_jit(self.params, self._pad_rows(words[s:e], b), self._pad_rows(pos[s:e], b),
                                  # padded rows get length 1 (sos only) so their GRU runs on real data
                                  np.concatenate([lens[s:e], np.ones(b - (e - s), np.int32)]), config=self.config)
            out.append(np.asarray(emb)[:e - s])
        return np.concatenate(out, 0) if out else np.zeros((0, self.dim), np.float32)

    def embed_motion(self, x_norm: np.ndarray, lengths: Sequence[int]) -> np.ndarray:
        """Dataset-normalised features [B, L, D] (frames >= length ignored) -> float32 [B, E].

        Frames at or beyond each length are set to dataset-space zeros and renormalised with
        ``((x * std_d + mean_d) - mean_e) / std_e`` (HUMANML3D.md §B.1); the GRU sees ``length // 4`` steps.
        """
        x = np.asarray(x_norm, np.float32)
        lengths = np.asarray(lengths, np.int32)
        d = self.config.dim_pose
        if x.ndim != 3 or x.shape[-1] != d:
            raise ValueError(f"embed_motion: expected x_norm [B, L, {d}], found {x.shape}")
        if lengths.shape != (x.shape[0],):
            raise ValueError(f"embed_motion: expected lengths [{x.shape[0]}], found {lengths.shape}")
        if np.any(lengths < self.config.unit_length) or np.any(lengths > min(x.shape[1], self.max_length)):
            raise ValueError(f"embed_motion: lengths expected in [{self.config.unit_length}, "
                             f"{min(x.shape[1], self.max_length)}] (frames given, evaluator max_length), found "
                             f"{lengths.min()}..{lengths.max()}")
        if x.shape[1] > self.max_length:
            x = x[:, :self.max_length]
        elif x.shape[1] < self.max_length:
            x = np.pad(x, ((0, 0), (0, self.max_length - x.shape[1]), (0, 0)))
        out = []
        for s, e in self._chunks(x.shape[0]):
            b = self.batch_size
            emb = _embed_motion_jit(self.params, self._pad_rows(x[s:e], b),
                                    np.concatenate([lengths[s:e], np.full(b - (e - s), self.config.unit_length,
                                                                          np.int32)]), self._stats, config=self.config)
            out.append(np.asarray(emb)[:e - s])
        return np.concatenate(out, 0) if out else np.zeros((0, self.dim), np.float32)


# --------------------------------------------------------------------------------------------- training
def _batch_fn(config: EvaluatorTrainConfig, dataset: MotionDataset, vectorizer: WordVectorizer):
    tok = _host_tokenizer()

    def batch_fn(step: int) -> dict:
        arrays, host = batching.batch_at(dataset, step, config.batch_size, config.seed, tok,
                                         max_length=config.max_length, unit_length=config.model.unit_length)
        ids, pos, lens = vectorizer.encode(host["pos_tokens"], config.model.max_text_len)
        return {"motion": arrays["motion"], "mask": arrays["mask"], "length": arrays["length"],
                "words": ids, "pos_ohot": pos, "text_lengths": lens}
    return batch_fn


def make_train_step(config: EvaluatorTrainConfig, tx: optax.GradientTransformation, dataset_mean, dataset_std,
                    eval_mean, eval_std, key: jax.Array, mesh=None):
    """Jitted ``step(state, batch) -> (state, metrics)``; batch = motion (dataset-normalised) [B, L, D], mask,
    length, words [B, 22], pos_ohot, text_lengths. Dropout key = fold_in(key, step); non-finite steps are
    skipped by :func:`common.apply_gradients`. ``mesh`` (``parallel.make_mesh``): data-parallel / FSDP step;
    the contrastive loss's negatives still span the GLOBAL batch."""
    cfg = config.model
    stats = tuple(jnp.asarray(a, jnp.float32) for a in (dataset_mean, dataset_std, eval_mean, eval_std))
    loss_kw = {"kind": config.loss}
    if config.loss == "infonce":
        loss_kw["temperature"] = config.temperature
    else:
        loss_kw["margin"] = config.margin

    def step(state: common.TrainState, batch: dict):
        k_drop, k_shift = jax.random.split(jax.random.fold_in(key, state.step))
        eb = {"words": batch["words"], "pos_ohot": batch["pos_ohot"], "text_lengths": batch["text_lengths"],
              "motion": renorm_for_evaluator(batch["motion"], *stats, mask=batch["mask"]),
              "motion_lengths": batch["length"]}
        kw = dict(loss_kw)
        if config.loss == "hinge":  # T2M: negatives = the batch shifted by a random offset in [1, B - 1]
            kw["shift"] = jax.random.randint(k_shift, (), 1, batch["words"].shape[0])
        (loss, aux), grads = jax.value_and_grad(evaluator_loss, has_aux=True)(
            state.params, eb, config=cfg, rng=k_drop, deterministic=False, **kw)
        state, finite = common.apply_gradients(state, grads, tx, loss)
        return state, {"loss": loss, "grad_norm": optax.tree.norm(grads), "finite": finite, **aux}

    if mesh is not None:
        return parallel.jit_sharded(step, mesh, batch_argnums=(1,), donate_state=True)
    return jax.jit(step, donate_argnums=0)


def validation_samples(dataset: MotionDataset, max_length: int, seed: int, unit_length: int = 4):
    """Deterministic caption/crop per entry of ``dataset``: (x_norm [N, max_length, D], lengths [N], tokens)."""
    arrays, host = batching.make_batch(dataset, np.arange(len(dataset)), np.random.default_rng([seed, 99]),
                                       _host_tokenizer(), max_length=max_length, unit_length=unit_length)
    return arrays["motion"], arrays["length"], host["pos_tokens"]


def retrieval_metrics(evaluator: Evaluator, x_norm, lengths, pos_tokens, *, group: int = 32, seed: int = 0,
                      prefix: str = "val/") -> dict:
    """R-precision top-1/2/3 and MM-Dist of real pairs, plus the MM-Dist of mismatched (shuffled) pairs."""
    t = evaluator.embed_text(pos_tokens)
    m = evaluator.embed_motion(x_norm, lengths)
    n = t.shape[0]
    group = min(group, n)
    rng = np.random.default_rng(seed)
    out = {f"{prefix}{k}": float(v) for k, v in M.r_precision(t, m, rng.permutation(n), group_size=group).items()}
    shift = rng.integers(1, n) if n > 1 else 0
    out[f"{prefix}shuffled_Matching_score"] = float(np.mean(np.linalg.norm(t - np.roll(m, shift, axis=0), axis=-1)))
    return out


def _val_dataset(config: EvaluatorTrainConfig, data_dir: str, train: MotionDataset) -> Optional[MotionDataset]:
    kw = dict(min_len=config.min_len, max_len=config.max_len, mean=train.mean, std=train.std)
    for split in (config.val_split, "test"):
        if os.path.exists(os.path.join(data_dir, f"{split}.txt")):
            ds = load_dataset(data_dir, split, **kw)
            if len(ds) >= 2:
                return ds
    return None


def _metadata(config: EvaluatorTrainConfig, dataset: MotionDataset) -> dict:
    return {"stage": "evaluator", "config": config_to_dict(config), "dataset_mean": dataset.mean.tolist(),
            "dataset_std": dataset.std.tolist(), "vocab": "vocab.json", "eval_mean": "mean.npy",
            "eval_std": "std.npy", "dataset": {"root": str(dataset.root), "split": dataset.split,
                                               "kind": dataset.info.kind, "entries": len(dataset)}}


@functools.partial(jax.jit, static_argnames="config")
def _init_params(config: EvaluatorConfig, key: jax.Array):
    # One jitted init compiles faster on CPU than Flax's op-by-op eager init (about 9 s vs 12 s, tiny sizes),
    # and is cached per config.
    return init_evaluator(key, config, batch=2, motion_len=4 * config.unit_length)


def train_evaluator(config: EvaluatorTrainConfig, workdir: str, data_dir: Optional[str] = None, *,
                    dataset: Optional[MotionDataset] = None, val_dataset: Optional[MotionDataset] = None,
                    steps: Optional[int] = None, batch_size: Optional[int] = None, seed: Optional[int] = None,
                    progress: bool = True, mesh=None) -> dict:
    """Trains (or resumes, or restores when finished) the evaluator on the TRAIN split into ``workdir``.

    Args:
      config: :class:`EvaluatorTrainConfig` (``get_config('tiny'|'paper')``); ``steps``, ``batch_size`` and
        ``seed`` override its fields.
      workdir: output folder (layout in the module docstring); an existing run there is resumed.
      data_dir: HumanML3D-layout folder; ``config.train_split`` is read from it (and ``val_split`` / 'test' for
        monitoring). Or pass ``dataset`` (the training split, loaded) and optionally ``val_dataset``.
      mesh: ``parallel.make_mesh(...)`` for data-parallel / FSDP steps (batch_size = GLOBAL batch, must divide
        the device count).
    Returns:
      ``{"config", "seconds", "steps", "val": final validation retrieval metrics (or {}), "workdir"}``.
    """
    over = {k: v for k, v in (("steps", steps), ("batch_size", batch_size), ("seed", seed)) if v is not None}
    config = dataclasses.replace(config, **over)
    if dataset is None:
        if data_dir is None:
            raise ValueError("train_evaluator: pass data_dir or dataset")
        dataset = load_dataset(data_dir, config.train_split, min_len=config.min_len, max_len=config.max_len)
        if val_dataset is None:
            val_dataset = _val_dataset(config, data_dir, dataset)
    if len(dataset) < config.batch_size:
        raise ValueError(f"train_evaluator: training split {dataset.root!r}/{dataset.split!r} has {len(dataset)} "
                         f"entries, expected at least batch_size={config.batch_size}")
    t0 = time.time()
    work = pathlib.Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    vocab_path = work / "vocab.json"
    if vocab_path.exists():   # resume: the vocabulary must not change under trained embeddings
        vocab = read_json(vocab_path, "evaluator vocabulary")
    else:
        vocab = build_word_vocab([toks for e in dataset.entries for _, toks in e.captions], config.min_word_count)
        vocab_path.write_text(json.dumps(vocab, indent=0))
    vectorizer = WordVectorizer(vocab)
    config = dataclasses.replace(config, model=dataclasses.replace(
        config.model, vocab_size=vectorizer.vocab_size, dim_pose=dataset.info.dim))
    mean_e, std_e = evaluator_statistics(dataset, config.feat_bias, config.feat_bias_applications)
    np.save(work / "mean.npy", mean_e)
    np.save(work / "std.npy", std_e)
    (work / "config.json").write_text(json.dumps(config_to_dict(config), indent=1))

    ckpt = common.Checkpointer(work / "checkpoints")
    if ckpt.latest_step() is not None:
        common.check_config_matches(ckpt.metadata()["config"], config_to_dict(config), str(ckpt.directory),
                                    ignore=("steps", "log_every", "checkpoint_every", "eval_every"))
    writer = common.MetricWriter(work)
    root = jax.random.PRNGKey(config.seed)
    tx = common.make_optimizer(config.optim)
    state = common.create_train_state(_init_params(config.model, jax.random.fold_in(root, 1)), tx)
    step_fn = make_train_step(config, tx, dataset.mean, dataset.std, mean_e, std_e, jax.random.fold_in(root, 2),
                              mesh)

    # On a mesh each process keeps its rows of the (identical on every host) global batch.
    train_batch = _batch_fn(config, dataset, vectorizer)
    batch_fn = train_batch if mesh is None else (lambda step: parallel.local_rows(train_batch(step)))
    eval_fn = None
    if val_dataset is not None and config.eval_every:
        vx, vl, vt = validation_samples(val_dataset, config.max_length, config.seed, config.model.unit_length)

        def eval_fn(s, step):
            ev = Evaluator(config.model, s.params, vectorizer, mean_e, std_e, dataset.mean, dataset.std,
                           batch_size=config.batch_size, max_length=config.max_length, name="training")
            return retrieval_metrics(ev, vx, vl, vt, group=config.r_precision_group, seed=config.seed)
    try:
        result = common.train_loop(
            state=state, step_fn=step_fn, batch_fn=batch_fn, num_steps=config.steps,
            checkpointer=ckpt, writer=writer, metadata=_metadata(config, dataset), log_every=config.log_every,
            checkpoint_every=config.checkpoint_every, eval_fn=eval_fn, eval_every=config.eval_every,
            desc="evaluator", progress=progress)
        final = eval_fn(result.state, result.last_step) if eval_fn is not None else {}
    finally:
        writer.close()
        ckpt.close()
    seconds = time.time() - t0
    logging.info("evaluator: %d steps in %.1f s; %s", result.last_step, seconds, final)
    return {"config": config, "seconds": seconds, "steps": result.last_step, "val": final, "workdir": str(work),
            "preempted": result.preempted}


# --------------------------------------------------------------------------------------------- loading
def load_trained_evaluator(workdir: str, *, dataset_mean: Optional[np.ndarray] = None,
                           dataset_std: Optional[np.ndarray] = None, batch_size: int = 32,
                           max_length: int = 196, step: Optional[int] = None) -> Evaluator:
    """The evaluator trained by :func:`train_evaluator` in ``workdir`` (latest checkpoint, or ``step``).

    ``dataset_mean``/``dataset_std`` default to the Mean/Std of the dataset it was trained on (checkpoint
    metadata): the statistics its ``embed_motion`` inputs are assumed normalised with.
    """
    work = pathlib.Path(workdir)
    for f in ("config.json", "vocab.json", "mean.npy", "std.npy", "checkpoints"):
        if not (work / f).exists():
            raise FileNotFoundError(f"{work / f}: missing; is {work} an evaluator work directory written by "
                                    "launch/train_evaluator.py?")
    config = config_from_dict(read_json(work / "config.json", "evaluator config"), str(work / "config.json"))
    vocab = read_json(work / "vocab.json", "evaluator vocabulary")
    vectorizer = WordVectorizer(vocab)
    if vectorizer.vocab_size != config.model.vocab_size:
        raise ValueError(f"{work / 'vocab.json'}: {vectorizer.vocab_size} words, config.json model.vocab_size "
                         f"is {config.model.vocab_size}")
    tx = common.make_optimizer(config.optim)
    ckpt = common.Checkpointer(work / "checkpoints")
    try:
        template = jax.eval_shape(lambda: common.create_train_state(
            _init_params(config.model, jax.random.PRNGKey(0)), tx))
        state = ckpt.restore(template, step)
        meta = ckpt.metadata(step)
    finally:
        ckpt.close()
    dm = np.asarray(meta["dataset_mean"], np.float32) if dataset_mean is None else dataset_mean
    ds = np.asarray(meta["dataset_std"], np.float32) if dataset_std is None else dataset_std
    dim = config.model.dim_pose
    mean_e = load_npy(work / "mean.npy", "evaluator statistics", shape=(dim,))
    std_e = load_npy(work / "std.npy", "evaluator statistics", shape=(dim,))
    return Evaluator(config.model, state.params, vectorizer, mean_e, std_e,
                     dm, ds, batch_size=batch_size, max_length=max_length, name=f"trained:{work}")


def _first_existing(paths: Sequence[pathlib.Path], what: str) -> pathlib.Path:
    for p in paths:
        if p.exists():
            return p
    raise FileNotFoundError(f"{what}: none of {[str(p) for p in paths]} exists")


def load_official_evaluator(t2m_dir: str, glove_dir: str, mean_std_dir: str, *, dataset_mean: np.ndarray,
                            dataset_std: np.ndarray, kind: str = "t2m", config: Optional[EvaluatorConfig] = None,
                            batch_size: int = 32, max_length: int = 196) -> Evaluator:
    """The official T2M evaluator (``finest.tar`` + GloVe + evaluator meta stats), same interface as trained.

    Args:
      t2m_dir: folder holding ``finest.tar`` directly, or ``text_mot_match/model/finest.tar``, or
        ``<kind>/text_mot_match/model/finest.tar`` (``deps/t2m`` / ``deps/t2m/t2m`` of the MLD layout).
      glove_dir: folder with ``our_vab_{data.npy,words.pkl,idx.pkl}``.
      mean_std_dir: evaluator statistics: ``mean.npy``/``std.npy`` (``Comp_v6_KLD01/meta``), or a folder with
        ``Comp_v6_KLD01/meta/`` (KIT: ``Comp_v6_KLD005``), or MDM's copies ``<kind>_mean.npy``/``<kind>_std.npy``.
      dataset_mean, dataset_std: [D] the dataset Mean/Std that motions given to ``embed_motion`` use.
      kind: 't2m' (HumanML3D, D = 263) or 'kit' (D = 251).
      config: network sizes (default ``EvaluatorConfig.paper(dim_pose)``).
    """
    from easytune_jax.models import t2m_convert

    if kind not in ("t2m", "kit"):
        raise ValueError(f"load_official_evaluator: kind expected 't2m' or 'kit', found {kind!r}")
    dim = 263 if kind == "t2m" else 251
    config = EvaluatorConfig.paper(dim_pose=dim) if config is None else config
    td = pathlib.Path(t2m_dir)
    ckpt = _first_existing([td / "finest.tar", td / "text_mot_match" / "model" / "finest.tar",
                            td / kind / "text_mot_match" / "model" / "finest.tar"], "T2M evaluator checkpoint")
    params = t2m_convert.load_t2m_evaluator(ckpt, config)
    vectorizer = t2m_convert.load_glove_vectorizer(glove_dir)
    if vectorizer.vectors.shape[1] != config.dim_word:
        raise ValueError(f"{glove_dir}: GloVe vectors have {vectorizer.vectors.shape[1]} dims, evaluator config "
                         f"expects dim_word={config.dim_word}")
    md = pathlib.Path(mean_std_dir)
    meta = "Comp_v6_KLD01" if kind == "t2m" else "Comp_v6_KLD005"
    candidates = [(md / "mean.npy", md / "std.npy"), (md / meta / "meta" / "mean.npy", md / meta / "meta" / "std.npy"),
                  (md / f"{kind}_mean.npy", md / f"{kind}_std.npy")]
    for mpath, spath in candidates:
        if mpath.exists() and spath.exists():
            break
    else:
        raise FileNotFoundError(f"evaluator statistics: none of {[str(c[0]) for c in candidates]} (+ std) exists")
    mean_e = load_npy(mpath, "evaluator statistics", shape=(dim,))
    std_e = load_npy(spath, "evaluator statistics", shape=(dim,))
    return Evaluator(config, params, vectorizer, mean_e, std_e, dataset_mean, dataset_std, batch_size=batch_size,
                     max_length=max_length, name=f"official:{ckpt}")
