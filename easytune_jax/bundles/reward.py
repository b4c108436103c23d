"""The reward bundle: a trained or converted SPM loaded from its workdir, and the converter that writes one.

Workdir layout (written by `train.reward.train_reward` or `convert_spm_checkpoint`): `checkpoints/` (orbax, with
JSON metadata: kind 'easytune_jax.spm_reward', the training config `rewards.spm_objective.RewardTrainConfig`, the
tokenizer vocabulary, the stage), `metrics.jsonl|csv` + TensorBoard events, `retrieval.json` (when the trainer
was given an evaluation set). The reward takes dataset-normalised features, so Mean/Std are not stored.

* `load_reward(workdir)` -> (reward(x, cond, t) -> [B], params, config); `load_reward_tokenizer(workdir)`;
  `read_reward_metadata(workdir)` (with a clear error when the checkpoint is not an SPM).
* `convert_spm_checkpoint(official_ckpt, out_workdir)`: the official EasyTune SPM as a reward workdir.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import shutil
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from easytune_jax.core.checkpoint import Checkpointer
from easytune_jax.core.optim import OptimConfig, TrainState, create_train_state, make_optimizer
from easytune_jax.data.text import Tokenizer
from easytune_jax.interop import spm_convert
from easytune_jax.models.spm import SPMConfig, init_spm, reward_fn
from easytune_jax.rewards.spm_objective import OFFICIAL_OBJECTIVE, RewardTrainConfig, stage_optim

META_KIND = "easytune_jax.spm_reward"


def tokenizer_meta(tok: Tokenizer | None) -> dict | None:
  """The word tokenizer as checkpoint metadata (None for embedding-input models)."""
  if tok is None:
    return None
  return {"vocab": tok.vocab, "max_length": tok.max_length, "add_sos_eos": tok.add_sos_eos}


def tokenizer_from_meta(d: Mapping[str, Any] | None) -> Tokenizer | None:
  """The inverse of `tokenizer_meta`."""
  return None if d is None else Tokenizer(d["vocab"], d["max_length"], d["add_sos_eos"])


def read_reward_metadata(workdir: str | os.PathLike) -> dict:
  """Metadata of the latest checkpoint in `<workdir>/checkpoints`; clear error when it is not an SPM."""
  ckpt = Checkpointer(pathlib.Path(workdir) / "checkpoints")
  try:
    meta = ckpt.metadata()
  finally:
    ckpt.close()
  if meta.get("kind") != META_KIND:
    raise ValueError(f"{workdir}: checkpoint metadata field 'kind': expected {META_KIND!r}, found {meta.get('kind')!r}")
  return meta


def state_template(config: RewardTrainConfig, optim: OptimConfig, text_emb_dim: int = 32):
  """(a zero TrainState of the SPM of `config` with the optimizer of `optim`, that optimizer): the restore
  template of a reward checkpoint."""
  shapes = jax.eval_shape(lambda: init_spm(config.model, jax.random.key(0), text_emb_dim=text_emb_dim))
  params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  tx = make_optimizer(optim)
  return create_train_state(params, tx), tx


def restore_reward_state(workdir, meta) -> TrainState:
  """The latest TrainState of the reward workdir `workdir` whose checkpoint metadata is `meta`."""
  config = RewardTrainConfig.from_dict(meta["train"])
  template, _ = state_template(config, OptimConfig(**meta["optim"]), meta.get("text_emb_dim") or 32)
  ckpt = Checkpointer(pathlib.Path(workdir) / "checkpoints")
  try:
    return ckpt.restore(template)
  finally:
    ckpt.close()


def load_reward(workdir: str | os.PathLike) -> tuple[Callable[..., jax.Array], Any, RewardTrainConfig]:
  """(reward(x, cond, t=None) -> [B], params, training config) of the latest checkpoint in `workdir`.

  cond needs the text inputs (`tokens`/`token_mask` encoded with `load_reward_tokenizer(workdir)`, or
  `text_emb`/`text_emb_mask`) and optionally the frame `mask`; x is dataset-normalised motion.
  """
  meta = read_reward_metadata(workdir)
  params = restore_reward_state(workdir, meta).params
  config = RewardTrainConfig.from_dict(meta["train"])
  return reward_fn(params, config.model), params, config


def load_reward_tokenizer(workdir: str | os.PathLike) -> Tokenizer | None:
  """The word tokenizer stored with an SPM checkpoint (None for embedding-input models)."""
  return tokenizer_from_meta(read_reward_metadata(workdir)["tokenizer"])


# --------------------------------------------------------------------------------------------- official
# How the official SPM checkpoint was trained (EasyTune's configs/spm_h3d.yaml and train_spm.py; the official
# objective), recorded as the training config of a converted checkpoint together with the checkpoint's own
# architecture. A fact about the official file, not a preset: the 'official' preset of easytune_jax/configs/reward.py
# writes the same values out (tests/test_config.py checks that they agree).
OFFICIAL_TRAINING = dict(
  batch_size=64,
  max_length=196,
  text_max_length=32,
  num_steps=100_000,
  learning_rate=1e-4,
  spl_learning_rate=1e-5,
  noise_threshold=0.5,
  log_every=100,
  checkpoint_every=2000,
  **OFFICIAL_OBJECTIVE,
)


@dataclasses.dataclass(frozen=True)
class SPMConversion:
  """launch/convert_official_spm.py's setting the checkpoint does not hold: attention heads (4 in the official
  configs; every size is read from the checkpoint's shapes)."""

  num_heads: int = 4


def convert_spm_checkpoint(
  ckpt_path: str | os.PathLike, out_workdir: str | os.PathLike, config: SPMConfig | None = None, **overrides
) -> pathlib.Path:
  """Converts an official SPM checkpoint into a reward workdir that `load_reward` loads.

  The workdir holds `checkpoints/` (step 0: the params and a fresh optimizer state of the official SPL stage,
  so it can also be `init_from` of further training) with metadata: kind 'easytune_jax.spm_reward', the
  training config `RewardTrainConfig(model=config, **OFFICIAL_TRAINING)`, stage 'converted', the text embedding width and
  the source file with its sha256. Written into a temporary sibling folder and renamed when complete: on any
  error nothing is left at `out_workdir`. `out_workdir` must not exist yet.

  Returns the workdir path. The reward reads precomputed sentence-T5-large token embeddings
  (`cond['text_emb']`, `cond['text_emb_mask']`, see `data.text.TextEmbeddings`).
  """
  out = pathlib.Path(out_workdir).absolute()
  if out.exists():
    raise FileExistsError(f"{out}: already exists; convert_spm_checkpoint writes a new workdir")
  params, config, e = spm_convert.load_official_spm(ckpt_path, config, **overrides)
  train_config = RewardTrainConfig(model=config, **OFFICIAL_TRAINING)
  optim = dataclasses.asdict(stage_optim(train_config, spl=True))
  tx = make_optimizer(OptimConfig(**optim))
  params = jax.tree.map(np.asarray, params)
  state = create_train_state(params, tx)
  digest = hashlib.sha256(pathlib.Path(ckpt_path).read_bytes()).hexdigest()
  metadata = {
    "kind": META_KIND,
    "train": train_config.to_dict(),
    "optim": optim,
    "stage": "converted",
    "init_from": None,
    "tokenizer": None,
    "text_emb_dim": e,
    "text_embeddings_path": None,
    "dataset": {"root": None, "split": None, "dim": config.dim_motion},
    "source": {"official_checkpoint": str(pathlib.Path(ckpt_path).absolute()), "sha256": digest},
    "inputs": "reward(x, cond, t): x = dataset-normalised motion features [B, L, D]; cond['text_emb'] "
    "[B, Lt, E] sentence-T5-large token embeddings and cond['text_emb_mask']; Mean/Std are not "
    "stored (normalise with the dataset's own).",
  }
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.parent / f".{out.name}.converting-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  try:
    ckpt = Checkpointer(tmp / "checkpoints")
    try:
      ckpt.save(0, state, metadata)
    finally:
      ckpt.close()
    os.rename(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out
