"""Reliability (issue 11): bad inputs at every public boundary, interruption + resume, numerical faults.

* A table of bad inputs goes through the public entry points; each error must name the offending file /
  field / flag and what was expected vs found, and no failing call may leave a file behind.
* The tiny reward trainer (train_reward -> train_loop + Checkpointer, data from batch_at) runs in
  subprocesses (tests/reliability/run_reward.py): SIGKILL mid-run, resume, SIGTERM mid-run (checkpoint and
  exit), resume to the end; the final parameters equal an uninterrupted run's bit for bit.
* A NaN reward at a chosen step of the EasyTune update (finetune.make_update_fn) is reported at that step
  by train_loop (skip policy) / NonFiniteError (stop policy), and every checkpoint stays finite.
"""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from easytune_jax import finetune, metrics
from easytune_jax.core import parallel, sampling, schedules
from easytune_jax.core.checkpoint import Checkpointer, CheckpointError, NonFiniteStateError
from easytune_jax.core.config import check_config_matches
from easytune_jax.core.metric_writer import MetricWriter, read_metrics
from easytune_jax.core.optim import OptimConfig, create_train_state, make_optimizer, tree_all_finite
from easytune_jax.data import humanml3d, text
from easytune_jax.train.loop import NonFiniteError, train_loop

ROOT = pathlib.Path(__file__).resolve().parents[1]
D = 263


# --------------------------------------------------------------------------------------------- fixtures
def _write_folder(root: pathlib.Path, ids=("000000", "000001", "000002"), length=60) -> pathlib.Path:
  """A minimal valid HumanML3D folder: random features [length, 263], one caption each, Mean/Std."""
  rng = np.random.default_rng(0)
  for sub in ("new_joint_vecs", "texts"):
    (root / sub).mkdir(parents=True, exist_ok=True)
  for mid in ids:
    np.save(root / "new_joint_vecs" / f"{mid}.npy", rng.normal(size=(length, D)).astype(np.float32))
    (root / "texts" / f"{mid}.txt").write_text(
      "a person walks forward#a/DET person/NOUN walk/VERB forward/ADV#0.0#0.0\n"
    )
  np.save(root / "Mean.npy", np.zeros(D, np.float32))
  np.save(root / "Std.npy", np.ones(D, np.float32))
  (root / "train.txt").write_text("\n".join(ids) + "\n")
  return root


def _snapshot(root: pathlib.Path) -> dict:
  return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def _write_emb(path, embeddings=None, mask=None, captions=None, drop=None):
  arrays = {
    "embeddings": np.zeros((2, 3, 4), np.float32) if embeddings is None else embeddings,
    "mask": np.ones((2, 3), bool) if mask is None else mask,
    "captions": np.array(["a", "b"]) if captions is None else captions,
  }
  if drop:
    del arrays[drop]
  np.savez(path, **arrays)
  return str(path)


def _ckpt_with_state(d):
  ck = Checkpointer(d)
  ck.save(1, {"w": np.zeros(3, np.float32), "b": np.ones(2, np.float32)}, {"config": {"lr": 0.1}})
  return ck


# --------------------------------------------------------------------------------------------- bad-input table
# Each case: (id, fn(tmp) -> None that must raise, exception type, regexes that must all appear in the message).
def _data(mutate, **kw):
  def run(tmp):
    root = _write_folder(tmp / "ds")
    mutate(root)
    before = _snapshot(root)
    try:
      humanml3d.load_dataset(str(root), kw.pop("split", "train"), **kw)
    finally:
      assert _snapshot(root) == before, "a failed load_dataset wrote or touched files"

  return run


def _set_text(line):
  return lambda r: (r / "texts" / "000001.txt").write_text(line + "\n")


def _save_feat(arr):
  return lambda r: np.save(r / "new_joint_vecs" / "000001.npy", arr)


def _nan_feat(r):
  a = np.load(r / "new_joint_vecs" / "000001.npy")
  a[7, 11] = np.nan
  np.save(r / "new_joint_vecs" / "000001.npy", a)


def _ckpt_case(action):
  def run(tmp):
    ck = _ckpt_with_state(tmp / "ck")
    try:
      action(ck)
    finally:
      steps = sorted(p.name for p in (tmp / "ck").iterdir())
      ck.close()
      assert steps == ["1"], f"checkpoint directory changed by a failed call: {steps}"

  return run


def _truncate(path, keep=0.5):
  data = pathlib.Path(path).read_bytes()
  pathlib.Path(path).write_bytes(data[: int(len(data) * keep)] if isinstance(keep, float) else data[:keep])


def _feat_file(r):
  return r / "new_joint_vecs" / "000001.npy"


def _npy_object(r):
  np.save(_feat_file(r), np.array([{"a": 1}] * 3, dtype=object), allow_pickle=True)


def _ckpt_damaged(rel, action):
  """A saved checkpoint with one of its files truncated; `action(Checkpointer)` must raise; nothing is written."""

  def run(tmp):
    ck = _ckpt_with_state(tmp / "ck")
    ck.close()
    _truncate(tmp / "ck" / "1" / rel)
    before = _snapshot(tmp / "ck")
    ck = Checkpointer(tmp / "ck")
    try:
      action(ck)
    finally:
      ck.close()
      assert _snapshot(tmp / "ck") == before, "a failed checkpoint read changed the directory"

  return run


def _ckpt_absent(tmp):
  try:
    Checkpointer(tmp / "nope").metadata()
  finally:
    assert not (tmp / "nope").exists(), "reading a missing checkpoint directory created it"


def _glove_truncated(tmp):
  import pickle

  from easytune_jax.interop import t2m_convert

  np.save(tmp / "our_vab_data.npy", np.zeros((2, 300), np.float32))
  (tmp / "our_vab_words.pkl").write_bytes(pickle.dumps(["a", "b"]))
  (tmp / "our_vab_idx.pkl").write_bytes(pickle.dumps({"a": 0, "b": 1}))
  _truncate(tmp / "our_vab_data.npy", 200)
  t2m_convert.load_glove(tmp)


def _torch_zip_damaged(keep):
  def run(tmp):
    from easytune_jax.interop import torch_zip
    from tests.torch_zip import write_torch_zip

    path = tmp / "finest.tar"
    write_torch_zip(path, {"text_encoder": {"w": np.ones((4, 3), np.float32)}})
    _truncate(path, keep)
    torch_zip.load_torch_checkpoint(path)

  return run


class LauncherFailed(Exception):
  """A launcher exited with its one-line error (the message is that line)."""


def _launcher(module, args, prepare=None, leftover=()):
  """Runs `python -m launch.<module> <args>` on a bad input; the call must fail with exit status 1 and ONE stderr
  line 'error: ...' (no traceback) and leave nothing behind: `{tmp}` in args is the test's tmp folder, `{ds}` a
  valid dataset (prepared by `prepare(ds)`), `{empty}` an existing empty folder; `leftover` lists the paths
  (relative to tmp) that must exist afterwards (created before the call)."""

  def run(tmp):
    ds = _write_folder(tmp / "ds")
    for split in ("val", "test"):
      (ds / f"{split}.txt").write_text((ds / "train.txt").read_text())
    (tmp / "empty").mkdir()
    for rel in leftover:
      (tmp / rel).mkdir(parents=True, exist_ok=True)
    if prepare is not None:
      prepare(ds)
    before = {p for p in _snapshot(tmp) if not p.startswith("ds")}
    argv = [a.format(tmp=tmp, ds=ds, empty=tmp / "empty") for a in args]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
    proc = subprocess.run(
      [sys.executable, "-m", f"launch.{module}", *argv],
      cwd=str(ROOT),
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1, f"exit status {proc.returncode}: {proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr and len(errors) == 1, proc.stderr[-2000:]
    assert proc.stderr.rstrip().endswith(errors[0]), "the error line must be the last line: " + proc.stderr[-2000:]
    after = {p for p in _snapshot(tmp) if not p.startswith("ds")}
    assert after == before, f"the failed call left {sorted(after - before)} behind / removed {sorted(before - after)}"
    raise LauncherFailed(errors[0])

  return run


_FT = ["--generator_workdir={empty}", "--reward_workdir={empty}", "--data_dir={ds}"]


def _metric_tag(name):
  def run(tmp):
    writer = MetricWriter(tmp / "metrics")
    try:
      writer.write(1, {"loss": 0.5, name: 1.0})
    finally:
      writer.close()
      assert not (tmp / "metrics").exists(), "a refused metric name left files behind"

  return run


def _moved_run_without_its_base(tmp):
  """A fine-tuning run folder whose recorded base generator is neither beside it nor at its absolute path."""
  from easytune_jax.bundles.finetuned import load_finetuned_generator

  run = tmp / "moved" / "finetune_easytune"
  run.mkdir(parents=True)
  info = {"run": {}, "generator_workdir": "../base", "generator_workdir_absolute": str(tmp / "old" / "base")}
  (run / "finetune.json").write_text(json.dumps(info))
  return load_finetuned_generator(str(run))


def _fake_mesh(data, fsdp):
  # check_batch_divisible reads only mesh.devices.size and mesh.shape; this test process has one CPU device.
  return types.SimpleNamespace(devices=np.empty((data, fsdp)), shape={"data": data, "fsdp": fsdp})


CASES = [
  ("split_missing", _data(lambda r: None, split="val"), FileNotFoundError, [r"val\.txt", "not found"]),
  (
    "feature_file_missing",
    _data(lambda r: (r / "new_joint_vecs" / "000001.npy").unlink()),
    FileNotFoundError,
    [r"'000001'", r"new_joint_vecs/000001\.npy", "on_missing='skip'"],
  ),
  (
    "text_file_missing",
    _data(lambda r: (r / "texts" / "000002.txt").unlink()),
    FileNotFoundError,
    [r"'000002'", r"texts/000002\.txt"],
  ),
  (
    "text_file_empty",
    _data(lambda r: (r / "texts" / "000000.txt").write_text("")),
    FileNotFoundError,
    [r"texts/000000\.txt \(empty\)"],
  ),
  (
    "feature_dim_wrong",
    _data(_save_feat(np.zeros((60, 200), np.float32))),
    ValueError,
    [r"000001\.npy", "features", r"expected shape \(F, 263\)", r"found \(60, 200\)"],
  ),
  (
    "feature_rank_wrong",
    _data(_save_feat(np.zeros((60,), np.float32))),
    ValueError,
    [r"000001\.npy", r"found \(60,\)"],
  ),
  ("feature_nan", _data(_nan_feat), ValueError, [r"000001\.npy", "1 NaN/inf", "drop_nonfinite=True"]),
  (
    "caption_too_few_fields",
    _data(_set_text("a person walks#a/DET#0.0")),
    ValueError,
    [r"000001\.txt:1", "4 '#'-separated", r"found 3 field"],
  ),
  (
    "caption_bad_start_end",
    _data(_set_text("a man#a/DET man/NOUN#zero#0.0")),
    ValueError,
    [r"000001\.txt:1", "start/end", "expected floats", "'zero'"],
  ),
  (
    "caption_token_without_pos",
    _data(_set_text("a man#a man/NOUN#0.0#0.0")),
    ValueError,
    [r"000001\.txt:1", "word/POS", r"\['a'\]"],
  ),
  ("caption_empty", _data(_set_text("  #a/DET#0.0#0.0")), ValueError, [r"000001\.txt:1", "caption", "non-empty"]),
  (
    "length_range_inverted",
    _data(lambda r: None, min_len=80, max_len=40),
    ValueError,
    ["min_len/max_len", "min_len < max_len", "min_len=80", "max_len=40"],
  ),
  (
    "std_shape_mismatch",
    _data(lambda r: np.save(r / "Std.npy", np.ones(100, np.float32))),
    ValueError,
    [r"Std\.npy", r"expected shape \(263,\)", r"found \(100,\)"],
  ),
  (
    "std_zero",
    _data(lambda r: np.save(r / "Std.npy", np.r_[np.ones(D - 1), 0.0].astype(np.float32))),
    ValueError,
    [r"Std\.npy", "std > 0", r"dims \[262\]"],
  ),
  (
    "mean_nonfinite",
    _data(lambda r: np.save(r / "Mean.npy", np.full(D, np.inf, np.float32))),
    ValueError,
    [r"Mean\.npy", "finite", "263 non-finite"],
  ),
  (
    "mean_unknown_dim",
    _data(lambda r: [np.save(r / f, np.ones(10, np.float32)) for f in ("Mean.npy", "Std.npy")]),
    ValueError,
    [r"Mean\.npy", "263 .HumanML3D. or 251 .KIT.", "found 10"],
  ),
  (
    "on_missing_policy",
    _data(lambda r: None, on_missing="ignore"),
    ValueError,
    ["on_missing", "'error' or 'skip'", "'ignore'"],
  ),
  # corrupt / truncated / mistyped data files (issue 21): the file, what was expected, what was found
  (
    "dataset_folder_missing",
    lambda t: humanml3d.load_dataset(str(t / "no_such_dir")),
    FileNotFoundError,
    [r"no_such_dir: dataset folder does not exist"],
  ),
  (
    "split_empty",
    _data(lambda r: (r / "train.txt").write_text("\n\n")),
    ValueError,
    [r"train\.txt", "split file", "no ids"],
  ),
  (
    "split_binary",
    _data(lambda r: (r / "train.txt").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")),
    ValueError,
    [r"train\.txt", "expected UTF-8 text", "byte"],
  ),
  (
    "caption_binary",
    _data(lambda r: (r / "texts" / "000001.txt").write_bytes(b"a man\xff\xfe#a/DET#0#0\n")),
    ValueError,
    [r"000001\.txt", "caption file", "UTF-8", "byte 5"],
  ),
  (
    "feature_npy_truncated",
    _data(lambda r: _truncate(_feat_file(r), 0.6)),
    ValueError,
    [r"000001\.npy", "features", "truncated", r"float32 \(60, 263\)", "63120 bytes of data", "found 3"],
  ),
  (
    "feature_npy_header_truncated",
    _data(lambda r: _truncate(_feat_file(r), 90)),
    ValueError,
    [r"000001\.npy", "features", "unreadable header", "90 bytes"],
  ),
  (
    "feature_npy_empty",
    _data(lambda r: _truncate(_feat_file(r), 0)),
    ValueError,
    [r"000001\.npy", "features", "empty file"],
  ),
  (
    "feature_npy_not_npy",
    _data(lambda r: _feat_file(r).write_text("0.1 0.2 0.3\n" * 40)),
    ValueError,
    [r"000001\.npy", "features", r"expected a \.npy array", "unreadable header"],
  ),
  (
    "feature_npy_dtype_str",
    _data(_save_feat(np.full((60, D), "x"))),
    ValueError,
    [r"000001\.npy", "features", "expected dtype floating point", "<U1"],
  ),
  (
    "feature_npy_dtype_int",
    _data(_save_feat(np.zeros((60, D), np.int64))),
    ValueError,
    [r"000001\.npy", "features", "floating point", "found int64"],
  ),
  ("feature_npy_object", _data(_npy_object), ValueError, [r"000001\.npy", "features", "object", "pickled"]),
  (
    "feature_inf",
    _data(_save_feat(np.where(np.eye(60, D) > 0, np.inf, 0).astype(np.float32))),
    ValueError,
    [r"000001\.npy", "60 NaN/inf", "--drop_nonfinite"],
  ),
  (
    "mean_npy_truncated",
    _data(lambda r: _truncate(r / "Mean.npy", 0.5)),
    ValueError,
    [r"Mean\.npy", "normalisation", "truncated", r"\(263,\)"],
  ),
  ("std_npy_empty", _data(lambda r: _truncate(r / "Std.npy", 0)), ValueError, [r"Std\.npy", "empty file"]),
  (
    "std_nan",
    _data(lambda r: np.save(r / "Std.npy", np.r_[np.ones(D - 1), np.nan].astype(np.float32))),
    ValueError,
    [r"Std\.npy", "finite", "1 non-finite"],
  ),
  # precomputed text embeddings
  (
    "emb_file_missing",
    lambda t: text.TextEmbeddings(str(t / "nope.npz")),
    FileNotFoundError,
    [r"nope\.npz", "not found"],
  ),
  (
    "emb_array_missing",
    lambda t: text.TextEmbeddings(_write_emb(t / "e.npz", drop="mask")),
    ValueError,
    [r"e\.npz", "missing array 'mask'"],
  ),
  (
    "emb_rank",
    lambda t: text.TextEmbeddings(
      _write_emb(t / "e.npz", embeddings=np.zeros((2, 4), np.float32), mask=np.ones((2,), bool))
    ),
    ValueError,
    [r"e\.npz", "'embeddings'", "rank 3", r"\(2, 4\)"],
  ),
  (
    "emb_mask_shape",
    lambda t: text.TextEmbeddings(_write_emb(t / "e.npz", mask=np.ones((2, 5), bool))),
    ValueError,
    [r"e\.npz", r"embeddings \(2, 3, 4\)", r"mask \(2, 5\)"],
  ),
  (
    "emb_nonfinite",
    lambda t: text.TextEmbeddings(
      _write_emb(t / "e.npz", embeddings=np.where(np.arange(24).reshape(2, 3, 4) == 13, np.nan, 0).astype(np.float32))
    ),
    ValueError,
    [r"e\.npz", "'embeddings'", "finite", "1 NaN/inf", "row 1", "'b'"],
  ),
  (
    "emb_duplicate_captions",
    lambda t: text.TextEmbeddings(_write_emb(t / "e.npz", captions=np.array(["a", "a"]))),
    ValueError,
    [r"e\.npz", "'captions'", "unique", "'a'"],
  ),
  (
    "emb_npz_truncated",
    lambda t: (_truncate(_write_emb(t / "e.npz"), 0.5), text.TextEmbeddings(str(t / "e.npz"))),
    ValueError,
    [r"e\.npz", "text embeddings", r"expected a \.npz archive", "truncated"],
  ),
  (
    "emb_npz_empty",
    lambda t: (_truncate(_write_emb(t / "e.npz"), 0), text.TextEmbeddings(str(t / "e.npz"))),
    ValueError,
    [r"e\.npz", "empty file"],
  ),
  (
    "emb_dtype",
    lambda t: text.TextEmbeddings(_write_emb(t / "e.npz", embeddings=np.full((2, 3, 4), "x"))),
    ValueError,
    [r"e\.npz", "'embeddings'", "floating point", "<U1"],
  ),
  (
    "emb_captions_dtype",
    lambda t: text.TextEmbeddings(_write_emb(t / "e.npz", captions=np.array([1.0, 2.0]))),
    ValueError,
    [r"e\.npz", "'captions'", "unicode string", "float64"],
  ),
  (
    "tokenizer_json_truncated",
    lambda t: (t / "tok.json").write_text('{"vocab": ["<pad>", "<u') and text.Tokenizer.load(str(t / "tok.json")),
    ValueError,
    [r"tok\.json", "tokenizer", "invalid JSON", "line 1"],
  ),
  ("glove_npy_truncated", _glove_truncated, ValueError, [r"our_vab_data\.npy", "GloVe", "truncated"]),
  ("torch_zip_truncated", _torch_zip_damaged(0.6), ValueError, [r"finest\.tar", "zip"]),
  ("torch_zip_empty", _torch_zip_damaged(0), ValueError, [r"finest\.tar", "not a zip"]),
  (
    "emb_lookup_unknown",
    lambda t: text.TextEmbeddings(_write_emb(t / "e.npz")).lookup(["a", "zzz"]),
    KeyError,
    [r"e\.npz", "1 caption", "'zzz'"],
  ),
  # checkpoints
  (
    "ckpt_missing_key",
    _ckpt_case(lambda ck: ck.restore({"w": np.zeros(3, np.float32)})),
    CheckpointError,
    [r"ck/1", "missing keys \\[\\]", "unexpected keys \\['b'\\]"],
  ),
  (
    "ckpt_extra_key",
    _ckpt_case(lambda ck: ck.restore({"w": np.zeros(3), "b": np.ones(2), "c": np.ones(1)})),
    CheckpointError,
    [r"ck/1", "missing keys \\['c'\\]"],
  ),
  (
    "ckpt_shape",
    _ckpt_case(lambda ck: ck.restore({"w": np.zeros(4, np.float32), "b": np.ones(2, np.float32)})),
    CheckpointError,
    [r"ck/1", "key 'w'", r"expected shape \(4,\)", r"found \(3,\)"],
  ),
  (
    "ckpt_no_step",
    _ckpt_case(lambda ck: ck.restore({"w": np.zeros(3), "b": np.ones(2)}, step=7)),
    CheckpointError,
    ["ck", "no checkpoint at step 7", r"found steps \[1\]"],
  ),
  (
    "ckpt_nonfinite_save",
    _ckpt_case(lambda ck: ck.save(2, {"w": np.array([0.0, np.nan, 0.0]), "b": np.ones(2)})),
    NonFiniteStateError,
    ["non-finite", "ck", "step 2"],
  ),
  (
    "ckpt_state_truncated",
    _ckpt_damaged(
      "state/manifest.ocdbt", lambda ck: ck.restore({"w": np.zeros(3, np.float32), "b": np.ones(2, np.float32)})
    ),
    CheckpointError,
    [r"ck/1", "item 'state'", "truncated or corrupt"],
  ),
  (
    "ckpt_state_metadata_truncated",
    _ckpt_damaged(
      "state/_METADATA", lambda ck: ck.restore({"w": np.zeros(3, np.float32), "b": np.ones(2, np.float32)})
    ),
    CheckpointError,
    [r"ck/1", "item 'state'", "truncated or corrupt", "JSONDecodeError"],
  ),
  (
    "ckpt_meta_truncated",
    _ckpt_damaged("meta/metadata", lambda ck: ck.metadata()),
    CheckpointError,
    [r"ck/1", "item 'meta'", "truncated or corrupt"],
  ),
  ("ckpt_dir_missing", _ckpt_absent, CheckpointError, [r"nope", "no checkpoints", "does not exist"]),
  (
    "ckpt_config_mismatch",
    lambda t: check_config_matches(
      {"lr": 0.1, "model": {"width": 32, "heads": 2}}, {"lr": 0.1, "model": {"width": 64, "heads": 2}}, str(t / "ck")
    ),
    CheckpointError,
    ["ck", "different config", "model.width: checkpoint has 32, config has 64"],
  ),
  # flags and configs
  (
    "finetune_method",
    lambda t: finetune.FinetuneConfig(method="ppo"),
    ValueError,
    ["FinetuneConfig.method", "expected one of", "'ppo'"],
  ),
  (
    "finetune_k_gt_T",
    lambda t: finetune.FinetuneConfig(num_steps=10, k=11),
    ValueError,
    ["FinetuneConfig.k", "num_steps=10", "found 11"],
  ),
  (
    "finetune_guidance",
    lambda t: finetune.FinetuneConfig(guidance_scale=-1.0),
    ValueError,
    ["FinetuneConfig.guidance_scale", ">= 0", "-1.0"],
  ),
  (
    "finetune_p",
    lambda t: finetune.FinetuneConfig(method="alignprop", p=0.0),
    ValueError,
    ["FinetuneConfig.p", r"\(0, 1\]", "found 0.0"],
  ),
  (
    "sampler_guidance",
    lambda t: sampling.SamplerConfig(guidance_scale=-0.5),
    ValueError,
    ["SamplerConfig.guidance_scale", ">= 0", "-0.5"],
  ),
  (
    "sampler_steps",
    lambda t: sampling.SamplerConfig(num_steps=0),
    ValueError,
    ["SamplerConfig.num_steps", ">= 1", "found 0"],
  ),
  (
    "sampler_steps_gt_train",
    lambda t: sampling.make_timesteps(schedules.make_schedule(), sampling.SamplerConfig(num_steps=1001)),
    ValueError,
    ["num_inference_steps", "1..1000", "found 1001"],
  ),
  (
    "diffusion_beta",
    lambda t: schedules.DiffusionConfig(beta_schedule="cosine_x"),
    ValueError,
    ["DiffusionConfig.beta_schedule", "expected one of", "'cosine_x'"],
  ),
  (
    "diffusion_prediction",
    lambda t: schedules.DiffusionConfig(prediction_type="x0"),
    ValueError,
    ["DiffusionConfig.prediction_type", "'x0'"],
  ),
  ("optim_lr", lambda t: OptimConfig(learning_rate=0.0), ValueError, ["OptimConfig.learning_rate", "> 0", "found 0.0"]),
  (
    "loop_policy",
    lambda t: train_loop(
      state=None, step_fn=None, batch_fn=None, num_steps=1, checkpointer=None, writer=None, on_nonfinite="ignore"
    ),
    ValueError,
    ["on_nonfinite", "'skip' or 'stop'", "'ignore'"],
  ),
  ("mesh_axis", lambda t: parallel.parse_mesh_spec("model=2", 2), ValueError, ["--mesh", "'model=2'", "axis in"]),
  ("mesh_size_int", lambda t: parallel.parse_mesh_spec("data=x", 2), ValueError, ["--mesh", "'data'", "'x'"]),
  (
    "mesh_total",
    lambda t: parallel.parse_mesh_spec("data=3,fsdp=2", 8),
    ValueError,
    ["--mesh", "= 6 devices", "8 are available"],
  ),
  ("mesh_two_rest", lambda t: parallel.parse_mesh_spec("data=-1,fsdp=-1", 8), ValueError, ["--mesh", "at most one"]),
  (
    "batch_not_divisible",
    lambda t: parallel.check_batch_divisible(10, _fake_mesh(4, 1)),
    ValueError,
    ["batch_size=10", "divisible", r"\(4: "],
  ),
  # launchers (subprocesses): one line, exit status 1, no traceback, nothing left behind
  (
    "launcher_data_dir_missing",
    _launcher(
      "finetune",
      ["--workdir={tmp}/runs/ft", "--generator_workdir={empty}", "--reward_workdir={empty}", "--data_dir={tmp}/nope"],
    ),
    LauncherFailed,
    [r"^error: --data_dir=\S*nope: folder does not exist"],
  ),
  (
    "launcher_config_field_is_flag",
    _launcher("finetune", ["--workdir={tmp}/ft", *_FT, "--config.finetune.num_steps=0"]),
    LauncherFailed,
    [r"^error: --config\.finetune\.num_steps \(FinetuneConfig\.num_steps\): expected >= 1, found 0"],
  ),
  (
    "launcher_nested_config_field",
    _launcher("finetune", ["--workdir={tmp}/ft", *_FT, "--config.finetune.optim.learning_rate=0"]),
    LauncherFailed,
    [
      r"^error: --config\.finetune\.optim\.learning_rate \(OptimConfig\.learning_rate\): "
      r"expected > 0"
    ],
  ),
  (
    "launcher_unknown_config_field",
    _launcher("finetune", ["--workdir={tmp}/ft", *_FT, "--config.finetune.lr=1"]),
    LauncherFailed,
    [
      r"^error: --config\.finetune\.lr: FinetuneConfig has no field 'lr'; valid fields: method, "
      r"num_steps, .*optim"
    ],
  ),
  (
    "launcher_bad_config_value",
    _launcher("finetune", ["--workdir={tmp}/ft", *_FT, "--config.finetune.k=abc"]),
    LauncherFailed,
    [r"^error: --config\.finetune\.k='abc': expected int \(FinetuneConfig\.k: int \| None\)"],
  ),
  (
    "launcher_unknown_preset",
    _launcher("train_reward", ["--workdir={tmp}/rw", "--data_dir={ds}", "--config=huge"]),
    LauncherFailed,
    [r"^error: --config='huge': expected a preset \(tiny, paper, official, paper_tmr\)"],
  ),
  (
    "launcher_empty_generator_workdir",
    _launcher("finetune", ["--workdir={tmp}/runs/ft", *_FT]),
    LauncherFailed,
    [r"^error: \S*empty/diffusion/checkpoints: no diffusion checkpoints", "train_base"],
  ),
  (
    "launcher_existing_workdir_kept",
    _launcher("finetune", ["--workdir={tmp}/mine", *_FT], leftover=("mine",)),
    LauncherFailed,
    ["no diffusion checkpoints"],
  ),
  (
    "launcher_truncated_features",
    _launcher(
      "train_base", ["--workdir={tmp}/base", "--data_dir={ds}"], prepare=lambda ds: _truncate(_feat_file(ds), 0.6)
    ),
    LauncherFailed,
    [r"^error: \S*000001\.npy: features: truncated"],
  ),
  (
    "launcher_quickstart_truncated_features",
    _launcher(
      "quickstart", ["--workdir={tmp}/runs/qs", "--data_dir={ds}"], prepare=lambda ds: _truncate(_feat_file(ds), 0.6)
    ),
    LauncherFailed,
    [r"^error: \S*000001\.npy: features: truncated"],
  ),
  (
    "launcher_empty_caption_names_flag",
    _launcher(
      "evaluate",
      [
        "--generator_workdir={empty}",
        "--evaluator_workdir={empty}",
        "--data_dir={ds}",
        "--config.split=train",
        "--out_dir={tmp}/eval",
      ],
      prepare=lambda ds: (ds / "texts" / "000001.txt").write_text(""),
    ),
    LauncherFailed,
    [r"000001\.txt \(empty\)", "--on_missing=skip"],
  ),
  (
    "launcher_on_missing_skip_flag",
    _launcher(  # skips the id, then stops at the (empty) evaluator folder
      "evaluate",
      [
        "--generator_workdir={empty}",
        "--evaluator_workdir={empty}",
        "--data_dir={ds}",
        "--config.split=train",
        "--out_dir={tmp}/eval",
        "--on_missing=skip",
      ],
      prepare=lambda ds: (ds / "texts" / "000001.txt").write_text(""),
    ),
    LauncherFailed,
    [r"^error: \S*empty/config\.json: missing"],
  ),
  (
    "launcher_usage_error",
    _launcher("quickstart", ["--workdir={tmp}/qs", "--config.methods=easytune,ppo"]),
    LauncherFailed,
    [r"^error: --config\.methods \(QuickstartConfig\.methods\): unknown \['ppo'\]"],
  ),
  (
    "launcher_usage_error_help",
    _launcher("generate", ["--out_dir={tmp}/gen"]),
    LauncherFailed,
    [r"^error: give --text", r"see --help"],
  ),
  # generate's captions: empty / blank --text, an empty, blank-only or non-UTF-8 --text_file (each its own line)
  (
    "launcher_generate_empty_text",
    _launcher("generate", ["--out_dir={tmp}/gen", "--generator_workdir={empty}", "--text="]),
    LauncherFailed,
    [r"^error: --text: expected a caption, found an empty string \(see --help\)$"],
  ),
  (
    "launcher_generate_blank_text",
    _launcher(
      "generate", ["--out_dir={tmp}/gen", "--generator_workdir={empty}", "--text=a person jumps", "--text=   "]
    ),
    LauncherFailed,
    [r"^error: --text \(#2 of 2\): expected a caption, found only whitespace \(3 characters\) \(see --help\)$"],
  ),
  (
    "launcher_generate_empty_text_file",
    _launcher(
      "generate",
      ["--out_dir={tmp}/gen", "--generator_workdir={empty}", "--text_file={tmp}/prompts.txt"],
      prepare=lambda ds: (ds.parent / "prompts.txt").write_text(""),
    ),
    LauncherFailed,
    [r"^error: --text_file=\S*/prompts\.txt: the file is empty; expected one caption per line \(see --help\)$"],
  ),
  (
    "launcher_generate_blank_text_file",
    _launcher(
      "generate",
      ["--out_dir={tmp}/gen", "--generator_workdir={empty}", "--text_file={tmp}/prompts.txt"],
      prepare=lambda ds: (ds.parent / "prompts.txt").write_text("\n   \n\t\n"),
    ),
    LauncherFailed,
    [
      r"^error: --text_file=\S*/prompts\.txt: all 3 lines are blank; expected one caption per line "
      r"\(see --help\)$"
    ],
  ),
  (
    "launcher_generate_binary_text_file",
    _launcher(
      "generate",
      ["--out_dir={tmp}/gen", "--generator_workdir={empty}", "--text_file={tmp}/prompts.txt"],
      prepare=lambda ds: (ds.parent / "prompts.txt").write_bytes(b"a man\xff\xfe jumps\n"),
    ),
    LauncherFailed,
    [
      r"^error: --text_file=\S*/prompts\.txt: expected UTF-8 text \(one caption per line\), found byte 5 "
      r"that is not \(see --help\)$"
    ],
  ),
  (
    "launcher_generate_animation_size",
    _launcher(
      "generate", ["--out_dir={tmp}/gen", "--generator_workdir={empty}", "--text=a", "--config.animation_size=8"]
    ),
    LauncherFailed,
    [
      r"^error: --config\.animation_size \(GenerateConfig\.animation_size\): expected 64\.\.4096 pixels, found 8 "
      r"\(--verbose shows the traceback\)$"
    ],
  ),
  (
    "launcher_evaluate_num_steps",
    _launcher(
      "evaluate",
      [
        "--generator_workdir={empty}",
        "--evaluator_workdir={empty}",
        "--data_dir={ds}",
        "--out_dir={tmp}/eval",
        "--noprogress",
        "--config.num_steps=0",
      ],
    ),
    LauncherFailed,
    [
      r"^error: --config\.num_steps \(EvaluateConfig\.num_steps\): expected >= 1 or none \(each generator's own\), "
      r"found 0 \(--verbose shows the traceback\)$"
    ],
  ),
  (
    "launcher_file_flag_missing",
    _launcher("train_reward", ["--workdir={tmp}/rw", "--data_dir={ds}", "--text_embeddings={tmp}/none.npz"]),
    LauncherFailed,
    [r"^error: --text_embeddings=\S*none\.npz: file does not exist"],
  ),
  # metrics
  (
    "fid_nan",
    lambda t: metrics.fid(np.r_[np.zeros((4, 3)), [[np.nan, 0, 0]]], np.ones((5, 3))),
    ValueError,
    ["fid", "gen_emb", "1 non-finite"],
  ),
  (
    "fid_inf_gt",
    lambda t: metrics.fid(np.ones((5, 3)), np.full((5, 3), np.inf)),
    ValueError,
    ["fid", "gt_emb", "15 non-finite"],
  ),
  (
    "fid_dims",
    lambda t: metrics.fid(np.ones((5, 3)), np.ones((5, 4))),
    ValueError,
    ["fid", r"gen_emb \(5, 3\)", r"gt_emb \(5, 4\)"],
  ),
  ("fid_one_sample", lambda t: metrics.fid(np.ones((1, 3)), np.ones((5, 3))), ValueError, ["fid", "N>=2"]),
  ("fid_rank", lambda t: metrics.fid(np.ones(5), np.ones(5)), ValueError, ["fid", r"\[N, E\]", r"\(5,\)"]),
  # metric names TensorBoard would rename (issue 37): refused, nothing written
  (
    "metric_tag_illegal",
    _metric_tag("retrieval/t=0/full/t2m/R@1"),
    ValueError,
    [
      r"^metric name 'retrieval/t=0/full/t2m/R@1': TensorBoard would rename it \(characters \['=', '@'\]\); "
      r"expected letters, digits, '_', '-', '\.' and '/' \(not leading\), e\.g\. 'retrieval/t0/full/t2m/R1'$"
    ],
  ),
  ("metric_tag_leading_slash", _metric_tag("/loss"), ValueError, [r"^metric name '/loss': .*\(a leading '/'\)"]),
  # a moved fine-tuning run whose base generator did not move with it (issue 37)
  (
    "finetune_run_base_missing",
    _moved_run_without_its_base,
    FileNotFoundError,
    [
      r"moved/finetune_easytune/finetune\.json: field 'generator_workdir': the recorded folder is missing",
      r"moved/base', '.*old/base'\]",
      "beside the run",
    ],
  ),
]


# Each launcher row starts a Python process (~5 s): the fast tier keeps one per kind of failure (input folder
# flag, a library error turned into one line, a usage error), the slow tier runs them all.
FAST_LAUNCHER_ROWS = ("launcher_data_dir_missing", "launcher_truncated_features", "launcher_usage_error")


def _row(case):
  slow = case[0].startswith("launcher_") and case[0] not in FAST_LAUNCHER_ROWS
  return pytest.param(*case, id=case[0], marks=pytest.mark.slow if slow else ())


@pytest.mark.parametrize("name,fn,exc,patterns", [_row(c) for c in CASES])
def test_bad_input_is_named(tmp_path, name, fn, exc, patterns):
  with pytest.raises(exc) as info:
    fn(tmp_path)
  msg = str(info.value)
  for pat in patterns:
    assert re.search(pat, msg), f"{name}: message lacks {pat!r}: {msg}"
  # Raised by a check of this project (or by the launcher harness above), not incidentally by a library.
  origin = traceback.extract_tb(info.tb)[-1].filename
  assert origin.startswith((str(ROOT / "easytune_jax"), __file__)), f"{name}: raised in {origin}"


@pytest.mark.parametrize(
  "launcher",
  ["finetune", *(pytest.param(n, marks=pytest.mark.slow) for n in ("train_base", "train_reward", "train_evaluator"))],
)
def test_multihost_flags_in_help(launcher):
  env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
  out = subprocess.run(
    [sys.executable, "-m", f"launch.{launcher}", "--help"],
    cwd=str(ROOT),
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  ).stdout
  for flag in (
    "--mesh",
    "--coordinator_address",
    "--num_processes",
    "--process_id",
    "--[no]distributed",
    "--[no]verbose",
    "--on_missing",
    "--[no]drop_nonfinite",
  ):
    assert f"  {flag}" in out, f"{launcher} --help does not list {flag}"


def test_bad_input_table_breaks_valid_inputs():
  """The inputs the table's rows break are valid: every boundary accepts them unbroken. So each row's error
  comes from its one fault, and no check rejects good inputs."""
  tmp = pathlib.Path(tempfile.mkdtemp())
  ds = humanml3d.load_dataset(str(_write_folder(tmp / "ds")))
  assert sorted(e.name for e in ds.entries) == ["000000", "000001", "000002"]
  emb, mask = text.TextEmbeddings(_write_emb(tmp / "e.npz")).lookup(["b", "a"])
  assert emb.shape == (2, 3, 4) and mask.all()
  ck = _ckpt_with_state(tmp / "ck")
  restored = ck.restore({"w": np.zeros(3, np.float32), "b": np.zeros(2, np.float32)})
  ck.close()
  np.testing.assert_array_equal(restored["b"], np.ones(2))
  check_config_matches({"lr": 0.1}, {"lr": 0.1}, "ck")
  finetune.FinetuneConfig(method="alignprop", num_steps=10, k=10, guidance_scale=0.0, p=0.5)
  sched = schedules.make_schedule(schedules.DiffusionConfig(beta_schedule="linear", prediction_type="sample"))
  assert len(sampling.make_timesteps(sched, sampling.SamplerConfig(num_steps=500, guidance_scale=0.0)).t) == 500
  OptimConfig(learning_rate=1e-6)
  assert parallel.parse_mesh_spec("data=-1,fsdp=2", 8) == {"data": 4, "fsdp": 2}
  parallel.check_batch_divisible(8, _fake_mesh(4, 1))
  x = np.random.default_rng(0).normal(size=(5, 3))
  assert np.isfinite(metrics.fid(x, x + 1.0))


def test_skip_policies_count_and_keep_the_rest(tmp_path):
  root = _write_folder(tmp_path / "ds", ids=("000000", "000001", "000002", "000003"))
  (root / "texts" / "000001.txt").unlink()
  _nan_feat(root)  # 000001's features (its text is gone: counted as missing first)
  a = np.load(root / "new_joint_vecs" / "000002.npy")
  a[0, 0] = np.inf
  np.save(root / "new_joint_vecs" / "000002.npy", a)
  ds = humanml3d.load_dataset(str(root), on_missing="skip", drop_nonfinite=True)
  assert sorted(e.name for e in ds.entries) == ["000000", "000003"]
  assert ds.skipped["missing"] == 1 and ds.skipped["nonfinite"] == 1
  # Without opting in, the same folder is an error.
  with pytest.raises(FileNotFoundError, match="000001"):
    humanml3d.load_dataset(str(root))


def test_fid_degenerate_embeddings_are_regularised():
  # Identical rows (zero covariance) and rank-1 embeddings: finite, exactly the mean term.
  x = np.ones((6, 4))
  assert metrics.fid(x, x) == pytest.approx(0.0, abs=1e-12)
  y = np.outer(np.arange(6.0), np.ones(4))
  val = metrics.fid(y, y + 2.0)
  assert np.isfinite(val) and val == pytest.approx(16.0, abs=1e-6)


# --------------------------------------------------------------------------------------------- interruption
def _start(data, workdir, steps, cache):
  env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
  return subprocess.Popen(
    [
      sys.executable,
      str(ROOT / "tests" / "reliability" / "run_reward.py"),
      str(data),
      str(workdir),
      str(steps),
      str(cache),
    ],
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def _finish(proc, timeout=240):
  out, _ = proc.communicate(timeout=timeout)
  return proc.returncode, out


def _ckpt_steps(workdir):
  d = pathlib.Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def _kill_after_checkpoint(proc, workdir, newer_than, sig, timeout=240):
  """Sends `sig` once a checkpoint newer than `newer_than` is complete (orbax renames it into place)."""
  t0 = time.time()
  while time.time() - t0 < timeout:
    steps = _ckpt_steps(workdir)
    if steps and steps[-1] > newer_than:
      proc.send_signal(sig)
      return steps[-1]
    if proc.poll() is not None:
      raise AssertionError(f"run ended before a checkpoint > {newer_than}: {proc.communicate()[0][-3000:]}")
    time.sleep(0.02)
  proc.kill()
  raise AssertionError("no checkpoint appeared in time")


def _wait_for_checkpoint(proc, workdir, timeout=240):
  t0 = time.time()
  while not _ckpt_steps(workdir):
    if proc.poll() is not None or time.time() - t0 > timeout:
      raise AssertionError(f"reference run made no checkpoint: {proc.communicate()[0][-3000:]}")
    time.sleep(0.05)


def _final(workdir):
  with np.load(pathlib.Path(workdir) / "final.npz") as z:
    return {k: z[k] for k in z.files}


@pytest.mark.slow  # four training subprocesses
def test_sigkill_and_sigterm_resume_bit_identical(tmp_path):
  from easytune_jax.data.synthetic import write_synthetic_dataset

  data = tmp_path / "data"
  write_synthetic_dataset(str(data), num_motions=40, seed=5, min_len=40, max_len=72)
  # Persistent compilation cache shared by the subprocesses (and by later sessions: entries are keyed by
  # the computation and the jax version, so a stale entry cannot be picked up).
  cache = pathlib.Path(
    os.environ.get("EASYTUNE_TEST_JAX_CACHE", pathlib.Path(tempfile.gettempdir()) / "easytune_jax_reliability_cache")
  )
  steps = 6
  ref = _start(data, tmp_path / "ref", steps, cache)  # uninterrupted
  # Start the interrupted chain once the reference has compiled (its first checkpoint exists), so the two
  # do not compile the same step concurrently; then they overlap.
  _wait_for_checkpoint(ref, tmp_path / "ref")
  run = tmp_path / "run"
  p1 = _start(data, run, steps, cache)
  killed_at = _kill_after_checkpoint(p1, run, 0, signal.SIGKILL)
  rc1, out1 = _finish(p1)
  assert rc1 == -signal.SIGKILL, out1[-3000:]
  assert not (run / "final.npz").exists()
  p2 = _start(data, run, steps, cache)  # resumes from the SIGKILLed run's checkpoint
  term_at = _kill_after_checkpoint(p2, run, _ckpt_steps(run)[-1], signal.SIGTERM)
  rc2, out2 = _finish(p2)
  assert rc2 == 3, f"SIGTERM: expected a checkpoint and exit 3, found rc={rc2}: {out2[-3000:]}"
  m = re.search(r"PREEMPTED at step (\d+)", out2)
  assert m and int(m.group(1)) >= term_at and int(m.group(1)) < steps, out2[-2000:]
  assert _ckpt_steps(run)[-1] == int(m.group(1)), "SIGTERM did not checkpoint the step it stopped at"
  p3 = _start(data, run, steps, cache)
  rc3, out3 = _finish(p3)
  assert rc3 == 0 and f"DONE at step {steps}" in out3, out3[-3000:]
  rc_ref, out_ref = _finish(ref)
  assert rc_ref == 0, out_ref[-3000:]
  a, b = _final(tmp_path / "ref"), _final(run)
  assert a.keys() == b.keys() and len(a) > 5
  for k in a:
    assert np.array_equal(a[k], b[k]), f"{k}: resumed run differs (killed at {killed_at}, SIGTERM at {term_at})"
  # Metrics of the resumed run cover every step; the preempted steps are logged once per run that did them.
  logged = {r["step"] for r in read_metrics(run)}
  assert logged == set(range(1, steps + 1))


# --------------------------------------------------------------------------------------------- NaN injection
def _toy_finetune(K=2, T=4, dim=6, batch=4):
  def denoise(p, x, t, cond):
    h = jnp.tanh(x @ p["w1"] + cond["c"] + p["tw"] * t[:, None] / 1000.0)
    return h @ p["w2"]

  def reward(x, cond, t):
    # `poison` [B] is 0, or NaN on the step chosen by the test: a reward model that blows up.
    return -jnp.sum((x - cond["c"]) ** 2, axis=-1) + cond["poison"]

  params = {"w1": jnp.eye(dim) * 0.5, "w2": jnp.eye(dim) * 0.5, "tw": jnp.zeros(dim)}
  cfg = finetune.FinetuneConfig(
    method="easytune", num_steps=T, k=K, guidance_scale=2.0, optim=OptimConfig(learning_rate=1e-2)
  )
  tx = make_optimizer(cfg.optim)
  update = finetune.make_update_fn(cfg, denoise, reward, schedules.make_schedule(), tx)
  return update, create_train_state(params, tx), K, dim, batch


@pytest.mark.parametrize("policy", ["skip", "stop"])
def test_nan_reward_reported_at_its_step_and_checkpoints_stay_finite(tmp_path, policy):
  update, state, K, dim, batch = _toy_finetune()
  bad_step, num_steps = 3, 6
  root = jax.random.key(0)

  def batch_fn(step):
    poison = np.full((batch,), np.nan if step == bad_step else 0.0, np.float32)
    cond = {"c": np.ones((batch, dim), np.float32), "poison": poison}
    uncond = {"c": np.zeros((batch, dim), np.float32), "poison": poison}
    rng = jax.random.fold_in(root, step)
    return jax.random.normal(jax.random.fold_in(rng, 1), (batch, dim)), cond, uncond, rng

  def step_fn(s, b):
    return update(s, *b)

  ck = Checkpointer(tmp_path / "ck", max_to_keep=10)
  writer = MetricWriter(tmp_path / "log", tensorboard=False)
  kwargs = dict(
    state=state,
    step_fn=step_fn,
    batch_fn=batch_fn,
    num_steps=num_steps,
    checkpointer=ck,
    writer=writer,
    log_every=1,
    checkpoint_every=1,
    on_nonfinite=policy,
    progress=False,
    state_step=lambda s: int(s.step) // K,
  )
  if policy == "stop":
    with pytest.raises(NonFiniteError, match=f"at step {bad_step} .last finite checkpoint: step {bad_step + 1}"):
      train_loop(**kwargs)
    assert ck.latest_step() == bad_step + 1
  else:
    res = train_loop(**kwargs)
    assert res.nonfinite_steps == [bad_step] and res.last_step == num_steps
    assert int(res.state.skipped) == K  # both inner EasyTune updates of that call skipped
  writer.close()
  logged = {r["step"]: r for r in read_metrics(tmp_path / "log")}
  assert logged[bad_step + 1]["finite"] == 0.0 and logged[bad_step]["finite"] == 1.0
  for s in ck.all_steps():
    restored = ck.restore(state, step=s)
    assert bool(tree_all_finite(restored.params)), f"checkpoint {s} holds non-finite params"
  # The skipped call left the parameters untouched: checkpoint after the bad step == checkpoint before.
  before, after = ck.restore(state, step=bad_step), ck.restore(state, step=bad_step + 1)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), before.params, after.params)
  ck.close()
