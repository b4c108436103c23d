"""Training the T2M-architecture evaluator from scratch, and loading evaluators (trained or official).

The evaluator is the judge of every generator in the project, so it is trained on its OWN data and seed:
the TRAIN split of the dataset (never the validation/test split that metrics are reported on, and never on
anything the reward model is fine-tuned against), with ``EvaluatorTrainConfig.seed`` distinct from the reward
model's. The architecture is T2M's ``text_mot_match`` (docs/humanml3d_format.md#evaluator-networks,
:mod:`easytune_jax.models.evaluator`) with learned word vectors in place of GloVe (no GloVe download here): the
vocabulary is built from the train captions' ``word/POS`` tokens with :func:`build_word_vocab` and saved in the
work directory.

Objective (``loss="infonce"``, the default): symmetric InfoNCE over the batch on NEGATIVE EUCLIDEAN distances
``logits_ij = -|t_i - m_j|_2 / temperature`` (the distance the protocol ranks by), cross-entropy with the
diagonal as target, averaged over text->motion and motion->text. ``loss="hinge"`` is T2M's original
``ContrastiveLoss`` (pull pairs together, push the batch shifted by a random offset beyond margin 10).

Normalisation (the evaluator's own statistics, as T2M's ``Comp_v6_KLD01/meta``;
docs/humanml3d_format.md#evaluator-statistics):
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
import os
import pathlib
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from easytune_jax import metrics as M
from easytune_jax.bundles.evaluator import Evaluator, _init_params, pos_only_tokenizer
from easytune_jax.core import config as config_io
from easytune_jax.core import parallel
from easytune_jax.core.checkpoint import Checkpointer
from easytune_jax.core.config import check_config_matches
from easytune_jax.core.metric_writer import MetricWriter
from easytune_jax.core.optim import OptimConfig, TrainState, apply_gradients, create_train_state, make_optimizer
from easytune_jax.core.parallel import is_main_process
from easytune_jax.data import batching
from easytune_jax.data.humanml3d import MotionDataset, group_mean_std, load_dataset
from easytune_jax.data.safe_io import read_json, write_json
from easytune_jax.data.word_vectors import WordVectorizer, build_word_vocab
from easytune_jax.models.evaluator import (
  EvaluatorConfig,
  evaluator_loss,
  renorm_for_evaluator,
)
from easytune_jax.train.loop import train_loop

LOSSES = ("infonce", "hinge")


# --------------------------------------------------------------------------------------------- config
@dataclasses.dataclass(frozen=True)
class EvaluatorTrainConfig:
  """Everything evaluator training needs. Defaults: the CPU config (widths 64, 300 steps of batch 32 on whole
  196-frame crops; about a minute on 2 cores); 'paper' is in configs/evaluator.py.

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

  model: EvaluatorConfig = dataclasses.field(
    default_factory=lambda: EvaluatorConfig(
      dim_word=64,
      dim_text_hidden=64,
      dim_movement_enc_hidden=64,
      dim_movement_latent=64,
      dim_motion_hidden=64,
      dim_coemb=64,
      dropout=0.2,
    )
  )
  optim: OptimConfig = dataclasses.field(
    default_factory=lambda: OptimConfig(
      learning_rate=2e-3, warmup_steps=20, decay_steps=280, end_lr_factor=0.05, grad_clip_norm=1.0
    )
  )
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
      raise ValueError(
        f"EvaluatorTrainConfig.max_length: expected a multiple of unit_length="
        f"{self.model.unit_length}, found {self.max_length}"
      )
    if self.batch_size < 2:
      raise ValueError(
        f"EvaluatorTrainConfig.batch_size: a contrastive batch needs >= 2 pairs, found {self.batch_size}"
      )

  @property
  def std_divisor(self) -> float:
    return float(self.feat_bias**self.feat_bias_applications)


def config_to_dict(config: EvaluatorTrainConfig) -> dict:
  return dataclasses.asdict(config)


def config_from_dict(d: Mapping[str, Any], where: str = "config") -> EvaluatorTrainConfig:
  return config_io.config_from_dict(EvaluatorTrainConfig, d, where)


# --------------------------------------------------------------------------------------------- statistics
def evaluator_statistics(
  dataset: MotionDataset, feat_bias: float = 5.0, feat_bias_applications: int = 2
) -> tuple[np.ndarray, np.ndarray]:
  """T2M-style evaluator stats of ``dataset`` (module docstring): (mean float32 [D], std float32 [D])."""
  if not len(dataset):
    raise ValueError(f"evaluator_statistics: dataset {dataset.root!r} split {dataset.split!r} has no entries")
  mean, std = group_mean_std([e.motion for e in dataset.entries], dataset.info.joints_num)
  div = np.float32(feat_bias**feat_bias_applications)
  std = std.copy()
  std[:4] /= div  # root angular velocity, root linear velocity (x, z), root height
  std[-4:] /= div  # foot contacts (dropped by the evaluator input, kept for T2M parity of the file)
  if np.any(std <= 0):
    raise ValueError(
      f"evaluator_statistics: std has non-positive entries at dims "
      f"{np.nonzero(std <= 0)[0][:10].tolist()} (constant features in the training split)"
    )
  return mean.astype(np.float32), std.astype(np.float32)


# --------------------------------------------------------------------------------------------- training
def _batch_fn(config: EvaluatorTrainConfig, dataset: MotionDataset, vectorizer: WordVectorizer, mesh=None):
  """step -> training batch; on a mesh, this process's rows of it (`batching.make_batch` rows)."""
  tok = pos_only_tokenizer()
  rows = None if mesh is None else parallel.host_local_slice(config.batch_size)

  def batch_fn(step: int) -> dict:
    arrays, host = batching.batch_at(
      dataset,
      step,
      config.batch_size,
      config.seed,
      tok,
      max_length=config.max_length,
      unit_length=config.model.unit_length,
      rows=rows,
    )
    ids, pos, lens = vectorizer.encode(host["pos_tokens"], config.model.max_text_len)
    return {
      "motion": arrays["motion"],
      "mask": arrays["mask"],
      "length": arrays["length"],
      "words": ids,
      "pos_ohot": pos,
      "text_lengths": lens,
    }

  return batch_fn


def make_train_step(
  config: EvaluatorTrainConfig,
  tx: optax.GradientTransformation,
  dataset_mean,
  dataset_std,
  eval_mean,
  eval_std,
  key: jax.Array,
  mesh=None,
):
  """Jitted ``step(state, batch) -> (state, metrics)``; batch = motion (dataset-normalised) [B, L, D], mask,
  length, words [B, 22], pos_ohot, text_lengths. Dropout key = fold_in(key, step); non-finite steps are
  skipped by :func:`apply_gradients`. ``mesh`` (``parallel.make_mesh``): data-parallel / FSDP step;
  the contrastive loss's negatives still span the GLOBAL batch."""
  cfg = config.model
  stats = tuple(jnp.asarray(a, jnp.float32) for a in (dataset_mean, dataset_std, eval_mean, eval_std))
  loss_kw = {"kind": config.loss}
  if config.loss == "infonce":
    loss_kw["temperature"] = config.temperature
  else:
    loss_kw["margin"] = config.margin

  def step(state: TrainState, batch: dict):
    k_drop, k_shift = jax.random.split(jax.random.fold_in(key, state.step))
    eb = {
      "words": batch["words"],
      "pos_ohot": batch["pos_ohot"],
      "text_lengths": batch["text_lengths"],
      "motion": renorm_for_evaluator(batch["motion"], *stats, mask=batch["mask"]),
      "motion_lengths": batch["length"],
    }
    kw = dict(loss_kw)
    if config.loss == "hinge":  # T2M: negatives = the batch shifted by a random offset in [1, B - 1]
      kw["shift"] = jax.random.randint(k_shift, (), 1, batch["words"].shape[0])
    (loss, aux), grads = jax.value_and_grad(evaluator_loss, has_aux=True)(
      state.params, eb, config=cfg, rng=k_drop, deterministic=False, **kw
    )
    state, finite = apply_gradients(state, grads, tx, loss)
    return state, {"loss": loss, "grad_norm": optax.tree.norm(grads), "finite": finite, **aux}

  if mesh is not None:
    return parallel.jit_sharded(step, mesh, batch_argnums=(1,), donate_state=True)
  return jax.jit(step, donate_argnums=0)


def validation_samples(dataset: MotionDataset, max_length: int, seed: int, unit_length: int = 4):
  """Deterministic caption/crop per entry of ``dataset``: (x_norm [N, max_length, D], lengths [N], tokens)."""
  arrays, host = batching.make_batch(
    dataset,
    np.arange(len(dataset)),
    np.random.default_rng([seed, 99]),
    pos_only_tokenizer(),
    max_length=max_length,
    unit_length=unit_length,
  )
  return arrays["motion"], arrays["length"], host["pos_tokens"]


def retrieval_metrics(
  evaluator: Evaluator, x_norm, lengths, pos_tokens, *, group: int = 32, seed: int = 0, prefix: str = "val/"
) -> dict:
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


def _val_dataset(config: EvaluatorTrainConfig, data_dir: str, train: MotionDataset) -> MotionDataset | None:
  kw = dict(min_len=config.min_len, max_len=config.max_len, mean=train.mean, std=train.std)
  for split in (config.val_split, "test"):
    if os.path.exists(os.path.join(data_dir, f"{split}.txt")):
      ds = load_dataset(data_dir, split, **kw)
      if len(ds) >= 2:
        return ds
  return None


def _metadata(config: EvaluatorTrainConfig, dataset: MotionDataset) -> dict:
  return {
    "stage": "evaluator",
    "config": config_to_dict(config),
    "dataset_mean": dataset.mean.tolist(),
    "dataset_std": dataset.std.tolist(),
    "vocab": "vocab.json",
    "eval_mean": "mean.npy",
    "eval_std": "std.npy",
    "dataset": {"root": str(dataset.root), "split": dataset.split, "kind": dataset.info.kind, "entries": len(dataset)},
  }


def train_evaluator(
  config: EvaluatorTrainConfig,
  workdir: str,
  data_dir: str | None = None,
  *,
  dataset: MotionDataset | None = None,
  val_dataset: MotionDataset | None = None,
  steps: int | None = None,
  batch_size: int | None = None,
  seed: int | None = None,
  progress: bool = True,
  mesh=None,
) -> dict:
  """Trains (or resumes, or restores when finished) the evaluator on the TRAIN split into ``workdir``.

  Args:
    config: :class:`EvaluatorTrainConfig` (presets: ``easytune_jax.configs.evaluator``); ``steps``, ``batch_size`` and
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
    raise ValueError(
      f"train_evaluator: training split {dataset.root!r}/{dataset.split!r} has {len(dataset)} "
      f"entries, expected at least batch_size={config.batch_size}"
    )
  t0 = time.time()
  work = pathlib.Path(workdir)
  work.mkdir(parents=True, exist_ok=True)
  vocab_path = work / "vocab.json"
  if vocab_path.exists():  # resume: the vocabulary must not change under trained embeddings
    vocab = read_json(vocab_path, "evaluator vocabulary")
  else:
    vocab = build_word_vocab([toks for e in dataset.entries for _, toks in e.captions], config.min_word_count)
    write_json(vocab_path, vocab, indent=0)
  vectorizer = WordVectorizer(vocab)
  config = dataclasses.replace(
    config, model=dataclasses.replace(config.model, vocab_size=vectorizer.vocab_size, dim_pose=dataset.info.dim)
  )
  mean_e, std_e = evaluator_statistics(dataset, config.feat_bias, config.feat_bias_applications)
  if is_main_process():
    np.save(work / "mean.npy", mean_e)
    np.save(work / "std.npy", std_e)
  write_json(work / "config.json", config_to_dict(config))

  ckpt = Checkpointer(work / "checkpoints")
  if ckpt.latest_step() is not None:
    check_config_matches(
      ckpt.metadata()["config"],
      config_to_dict(config),
      str(ckpt.directory),
      ignore=("steps", "log_every", "checkpoint_every", "eval_every"),
    )
  writer = MetricWriter(work)
  root = jax.random.PRNGKey(config.seed)
  tx = make_optimizer(config.optim)
  state = create_train_state(_init_params(config.model, jax.random.fold_in(root, 1)), tx)
  step_fn = make_train_step(config, tx, dataset.mean, dataset.std, mean_e, std_e, jax.random.fold_in(root, 2), mesh)

  batch_fn = _batch_fn(config, dataset, vectorizer, mesh)
  eval_fn = None
  if val_dataset is not None and config.eval_every:
    vx, vl, vt = validation_samples(val_dataset, config.max_length, config.seed, config.model.unit_length)

    def eval_fn(s, step):
      ev = Evaluator(
        config.model,
        s.params,
        vectorizer,
        mean_e,
        std_e,
        dataset.mean,
        dataset.std,
        batch_size=config.batch_size,
        max_length=config.max_length,
        name="training",
      )
      return retrieval_metrics(ev, vx, vl, vt, group=config.r_precision_group, seed=config.seed)

  try:
    result = train_loop(
      state=state,
      step_fn=step_fn,
      batch_fn=batch_fn,
      num_steps=config.steps,
      checkpointer=ckpt,
      writer=writer,
      metadata=_metadata(config, dataset),
      log_every=config.log_every,
      checkpoint_every=config.checkpoint_every,
      eval_fn=eval_fn,
      eval_every=config.eval_every,
      desc="evaluator",
      progress=progress,
    )
    final = eval_fn(result.state, result.last_step) if eval_fn is not None else {}
  finally:
    writer.close()
    ckpt.close()
  seconds = time.time() - t0
  logging.info("evaluator: %d steps in %.1f s; %s", result.last_step, seconds, final)
  return {
    "config": config,
    "seconds": seconds,
    "steps": result.last_step,
    "val": final,
    "workdir": str(work),
    "preempted": result.preempted,
  }
