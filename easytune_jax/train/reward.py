"""Training of the step-aware reward model (SPM): TMR pretraining and SPL fine-tuning (`train_reward`).

Stages (EasyTune, arXiv 2602.07967; TMR, arXiv 2305.00976):

* pretraining (`spl=False`): smooth-L1 reconstruction of the clean motion from the text latent and from the
  motion latent, KL terms (text||motion, motion||text, text||N(0,I), motion||N(0,I)) x 1e-5, latent
  smooth-L1 x 1e-5, InfoNCE with near-duplicate-caption filtering x 0.1; lr 1e-4.
* SPL fine-tuning (`spl=True`, usually `init_from` a pretrained workdir): the same loss + 0.01 x the SPL
  preference loss on the text x motion cosine matrix of the latents' means; lr 1e-5.

Where the parts live: the config and the official objective's named options in `rewards/spm_objective.py`
(`RewardTrainConfig`), the losses in `rewards/spm_loss.py` (`reward_loss`), the workdir layout, loading and the
official converter in `bundles/reward.py` (`load_reward`, `convert_spm_checkpoint`), the retrieval evaluation
in `eval/retrieval.py` (`evaluate_retrieval`). This module holds the jitted step and the trainer.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import time
from collections.abc import Callable, Sequence

import jax
import optax

from easytune_jax.bundles.reward import META_KIND, read_reward_metadata
from easytune_jax.bundles.reward import restore_reward_state as _restore
from easytune_jax.bundles.reward import state_template as _state_template
from easytune_jax.bundles.reward import tokenizer_from_meta as _tokenizer_from_meta
from easytune_jax.bundles.reward import tokenizer_meta as _tokenizer_meta
from easytune_jax.core import parallel
from easytune_jax.core.checkpoint import Checkpointer
from easytune_jax.core.config import check_config_matches
from easytune_jax.core.metric_writer import MetricWriter
from easytune_jax.core.optim import OptimConfig, TrainState, apply_gradients, create_train_state, make_optimizer
from easytune_jax.core.schedules import make_schedule
from easytune_jax.data.batching import batch_at
from easytune_jax.data.humanml3d import MotionDataset
from easytune_jax.data.safe_io import write_json
from easytune_jax.data.text import TextEmbeddings, Tokenizer
from easytune_jax.data.text import placeholder_tokenizer as _dummy_tokenizer
from easytune_jax.eval.retrieval import evaluate_retrieval
from easytune_jax.models.spm import init_spm
from easytune_jax.rewards.spm_loss import reward_loss
from easytune_jax.rewards.spm_objective import RewardTrainConfig
from easytune_jax.rewards.spm_objective import optim_config as _optim
from easytune_jax.train.loop import train_loop

_WHERE = __name__.replace(".", "/") + ".py"


@functools.lru_cache(maxsize=8)
def _jitted_step(config: RewardTrainConfig, optim: OptimConfig, use_spl: bool, mesh=None) -> Callable:
  # Cached by the (hashable, frozen) configs so that resumed or repeated runs in one process reuse the
  # compiled step instead of compiling it again.
  schedule = make_schedule(config.diffusion)
  tx = make_optimizer(optim)

  def step(state: TrainState, batch, rng):
    step_rng = jax.random.fold_in(rng, state.step)
    (loss, metrics), grads = jax.value_and_grad(reward_loss, has_aux=True)(
      state.params, batch, step_rng, config, schedule, use_spl
    )
    state, finite = apply_gradients(state, grads, tx, loss)
    metrics = dict(metrics, finite=finite, grad_norm=optax.tree.norm(grads))
    return state, metrics

  if mesh is not None:
    # Batch split over the mesh, state FSDP-sharded; the InfoNCE/SPL similarity matrices inside reward_loss
    # still span the GLOBAL batch (XLA gathers the embeddings), as on one device.
    return parallel.jit_sharded(step, mesh, batch_argnums=(1,), donate_state=True)
  return jax.jit(step, donate_argnums=0)


def make_train_step(
  config: RewardTrainConfig, optim: OptimConfig, use_spl: bool, rng: jax.Array, mesh=None
) -> Callable:
  """jit-compiled `(state, batch) -> (state, metrics)` with the optimizer of `optim`; per-step randomness is
  fold_in(rng, state.step), so a resumed run draws the same numbers. `mesh` (a `parallel.make_mesh`):
  data-parallel / FSDP step with the same result as one device on the same global batch."""
  step = _jitted_step(config, optim, use_spl, mesh)
  return lambda state, batch: step(state, batch, rng)


def train_reward(
  config: RewardTrainConfig,
  workdir: str | os.PathLike,
  dataset: MotionDataset,
  *,
  mode: str | None = None,
  noise_threshold: float | None = None,
  spl: bool = False,
  init_from: str | os.PathLike | None = None,
  steps: int | None = None,
  tokenizer: Tokenizer | None = None,
  text_embeddings: TextEmbeddings | None = None,
  eval_dataset: MotionDataset | None = None,
  eval_timesteps: Sequence[int] = (0, 100, 300),
  learning_rate: float | None = None,
  progress: bool = True,
  mesh=None,
) -> dict:
  """Trains (or resumes) one SPM stage in `workdir` and returns a summary dict.

  Args:
    config: training config (model sizes in `config.model`).
    workdir: output folder; an existing checkpoint there is resumed.
    dataset: training split (normalised with its own Mean/Std).
    mode, noise_threshold: override `config.model.mode` / `config.noise_threshold`.
    spl: add the SPL loss (x config.spl_weight) and use `config.spl_learning_rate`.
    init_from: workdir of a trained SPM whose parameters (and tokenizer) start this stage.
    steps: number of optimizer steps of this stage (default config.num_steps).
    tokenizer: word tokenizer (default: the init checkpoint's, else built from `dataset`'s captions).
    text_embeddings: precomputed text embeddings (switches the model to text_input='embeddings').
    eval_dataset: when given, retrieval metrics at `eval_timesteps` are written to `retrieval.json`.
    learning_rate: overrides the stage's default rate.
    mesh: `parallel.make_mesh(...)` for data-parallel / FSDP steps; config.batch_size is the GLOBAL batch
      (must divide the device count) and the InfoNCE/SPL negatives span it, as on one device.

  Returns:
    {'params', 'config', 'workdir', 'steps', 'train_seconds', 'retrieval' (or None), 'preempted'}.
  """
  workdir = pathlib.Path(workdir)
  init_meta = read_reward_metadata(init_from) if init_from is not None else None
  if init_meta is not None:
    base = RewardTrainConfig.from_dict(init_meta["train"])
    config = dataclasses.replace(config, model=base.model, text_max_length=base.text_max_length)
    if tokenizer is None:
      tokenizer = _tokenizer_from_meta(init_meta["tokenizer"])
  model_over = {}
  if mode is not None:
    model_over["mode"] = mode
  if text_embeddings is not None:
    model_over["text_input"] = "embeddings"
  elif config.model.text_input == "tokens":
    if tokenizer is None:
      tokenizer = Tokenizer.build(
        (c for e in dataset.entries for c, _ in e.captions), max_length=config.text_max_length
      )
    model_over["vocab_size"] = tokenizer.vocab_size
  model_over["dim_motion"] = dataset.info.dim
  config = dataclasses.replace(config, model=dataclasses.replace(config.model, **model_over))
  if noise_threshold is not None:
    config = dataclasses.replace(config, noise_threshold=noise_threshold)
  if init_meta is not None:
    check_config_matches(init_meta["train"]["model"], config.model.to_dict(), f"{init_from} (init_from)")
  if config.model.text_input == "embeddings" and text_embeddings is None:
    raise ValueError(
      f"{_WHERE}: train_reward: the model reads precomputed text embeddings (text_input="
      f"'embeddings'{', the official SPM' if config.model.arch == 'official' else ''}): pass "
      f"text_embeddings= (a TextEmbeddings .npz, e.g. sentence-T5-large token embeddings)"
    )
  num_steps = config.num_steps if steps is None else int(steps)
  lr = learning_rate or (config.spl_learning_rate if spl else config.learning_rate)
  optim = _optim(config, lr)
  text_emb_dim = text_embeddings.dim if text_embeddings is not None else 32

  # RBG keys (XLA's RngBitGenerator): the dropout masks and noise of a step compile about twice as fast on
  # CPU as threefry's and are equally deterministic, so a resumed run still draws the same numbers.
  rng = jax.random.key(config.seed, impl="rbg")
  k_init, k_train = jax.random.split(rng)
  state, tx = _state_template(config, optim, text_emb_dim)
  if init_meta is not None:
    params = _restore(init_from, init_meta).params
  else:
    params = init_spm(config.model, k_init, text_emb_dim=text_emb_dim)
  state = create_train_state(params, tx)
  # A different fold for the SPL stage so it does not replay the pretraining noise sequence.
  step_fn = make_train_step(config, optim, spl, jax.random.fold_in(k_train, int(spl)), mesh)

  metadata = {
    "kind": META_KIND,
    "train": config.to_dict(),
    "optim": dataclasses.asdict(optim),
    "stage": "spl" if spl else "pretrain",
    "init_from": None if init_from is None else str(init_from),
    "tokenizer": _tokenizer_meta(tokenizer),
    "text_emb_dim": text_emb_dim if text_embeddings else None,
    "text_embeddings_path": None if text_embeddings is None else text_embeddings.path,
    "dataset": {"root": dataset.root, "split": dataset.split, "dim": dataset.info.dim},
    "inputs": "reward(x, cond, t): x = dataset-normalised motion features [B, L, D]; "
    "Mean/Std are not stored (normalise with the dataset's own).",
  }
  ckpt = Checkpointer(workdir / "checkpoints")
  if ckpt.latest_step() is not None:
    saved = ckpt.metadata()
    check_config_matches(
      saved["train"],
      config.to_dict(),
      str(workdir / "checkpoints"),
      ignore=("log_every", "checkpoint_every", "num_steps"),
    )
  writer = MetricWriter(workdir)
  emb_kwargs = {"text_embeddings": text_embeddings} if text_embeddings is not None else {}

  def batch_fn(step):
    arrays, _ = batch_at(
      dataset,
      step,
      config.batch_size,
      config.seed,
      tokenizer or _dummy_tokenizer(),
      max_length=config.max_length,
      rows=None if mesh is None else parallel.host_local_slice(config.batch_size),
      **emb_kwargs,
    )
    return arrays

  t0 = time.time()
  result = train_loop(
    state=state,
    step_fn=step_fn,
    batch_fn=batch_fn,
    num_steps=num_steps,
    checkpointer=ckpt,
    writer=writer,
    metadata=metadata,
    log_every=config.log_every,
    checkpoint_every=config.checkpoint_every,
    desc=f"spm-{metadata['stage']}",
    progress=progress,
  )
  train_seconds = time.time() - t0
  ckpt.close()
  retrieval = None
  if eval_dataset is not None and not result.preempted:
    retrieval = evaluate_retrieval(
      result.state.params, config, eval_dataset, tokenizer, timesteps=eval_timesteps, text_embeddings=text_embeddings
    )
    write_json(workdir / "retrieval.json", retrieval, sort_keys=True)
    writer.write(
      result.last_step,
      {
        f"retrieval/{k}/{m}": v
        for k, d in retrieval.items()
        for m, v in d.items()
        if m.endswith(("/R1", "/R3", "/MedR"))
      },
    )
  writer.close()
  return {
    "params": result.state.params,
    "config": config,
    "workdir": str(workdir),
    "steps": result.last_step,
    "train_seconds": train_seconds,
    "retrieval": retrieval,
    "preempted": result.preempted,
    "tokenizer": tokenizer,
  }
