"""Optimizer, guarded updates, atomic checkpoints, metric logs and the resumable loop."""

import struct

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from easytune_jax.core.checkpoint import Checkpointer, CheckpointError, NonFiniteStateError
from easytune_jax.core.config import check_config_matches, config_from_dict
from easytune_jax.core.metric_writer import MetricWriter, read_metrics
from easytune_jax.core.optim import (
  OptimConfig,
  apply_gradients,
  create_train_state,
  learning_rate_schedule,
  make_optimizer,
  tree_all_finite,
)
from easytune_jax.train.loop import NonFiniteError, train_loop


def quadratic_problem():
  params = {"w": jnp.array([1.0, -2.0, 3.0]), "b": jnp.array(0.5)}
  tx = make_optimizer(OptimConfig(learning_rate=0.1, grad_clip_norm=0.0))

  def step_fn(state, batch):
    loss, grads = jax.value_and_grad(lambda p: jnp.sum((p["w"] * batch - 1.0) ** 2) + p["b"] ** 2)(state.params)
    state, finite = apply_gradients(state, grads, tx, loss)
    return state, {"loss": loss, "finite": finite}

  return params, tx, jax.jit(step_fn)


def test_optimizer_matches_optax_adamw_and_mask_freezes():
  cfg = OptimConfig(learning_rate=1e-2, warmup_steps=2, decay_steps=10, grad_clip_norm=1.0)
  params = {"a": jnp.ones(3), "b": jnp.ones(2)}
  grads = {"a": jnp.array([3.0, 0.0, 4.0]), "b": jnp.array([1.0, 1.0])}
  tx = make_optimizer(cfg)
  ref = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(learning_rate_schedule(cfg), weight_decay=0.0))
  s1, s2 = tx.init(params), ref.init(params)
  for _ in range(3):
    u1, s1 = tx.update(grads, s1, params)
    u2, s2 = ref.update(grads, s2, params)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6), u1, u2)
  sched = learning_rate_schedule(cfg)
  assert float(sched(0)) == 0.0 and float(sched(2)) == pytest.approx(1e-2)
  assert float(sched(12)) == pytest.approx(0.0, abs=1e-9)
  masked = make_optimizer(OptimConfig(learning_rate=1e-2), trainable_mask={"a": True, "b": False})
  u, _ = masked.update(grads, masked.init(params), params)
  assert np.all(np.asarray(u["b"]) == 0) and np.any(np.asarray(u["a"]) != 0)


def test_apply_gradients_skips_nonfinite():
  params, tx, _ = quadratic_problem()
  state = create_train_state(params, tx, use_ema=True)
  good = {"w": jnp.ones(3), "b": jnp.array(1.0)}
  state, finite = apply_gradients(state, good, tx, jnp.array(1.0), ema_decay=0.5)
  assert bool(finite)
  bad = {"w": jnp.array([jnp.nan, 0.0, 0.0]), "b": jnp.array(1.0)}
  new, finite = apply_gradients(state, bad, tx, jnp.array(1.0), ema_decay=0.5)
  assert not bool(finite) and int(new.skipped) == 1 and int(new.step) == 2
  # A skip keeps params, EMA and the optimizer's moments and count (the schedule does not advance).
  jax.tree.map(
    np.testing.assert_array_equal,
    (new.params, new.ema_params, new.opt_state),
    (state.params, state.ema_params, state.opt_state),
  )
  # A non-finite loss with finite gradients is skipped too.
  new, finite = apply_gradients(new, good, tx, jnp.array(jnp.inf), ema_decay=0.5)
  assert not bool(finite) and int(new.skipped) == 2
  jax.tree.map(np.testing.assert_array_equal, new.params, state.params)
  new, finite = apply_gradients(new, good, tx, jnp.array(1.0), ema_decay=0.5)
  assert bool(finite) and int(new.skipped) == 2 and int(new.step) == 4
  # The update after the skips is the second update of an uninterrupted run.
  ref = create_train_state(params, tx)
  for _ in range(2):
    ref, _ = apply_gradients(ref, good, tx, jnp.array(1.0))
  jax.tree.map(np.testing.assert_array_equal, new.params, ref.params)
  np.testing.assert_allclose(new.ema_params["w"], 0.5 * state.ema_params["w"] + 0.5 * new.params["w"], rtol=1e-6)


def test_checkpointer_roundtrip_and_clear_errors(tmp_path):
  params, tx, _ = quadratic_problem()
  state = create_train_state(params, tx)
  ck = Checkpointer(tmp_path / "ck")
  assert ck.latest_step() is None
  ck.save(3, state, {"config": {"lr": 0.1}})
  assert ck.latest_step() == 3 and ck.metadata()["config"]["lr"] == 0.1
  restored = ck.restore(state)
  jax.tree.map(np.testing.assert_array_equal, restored, state)
  fresh = Checkpointer(tmp_path / "ck")  # a new process's view of the same directory
  jax.tree.map(np.testing.assert_array_equal, fresh.restore(state), state)
  assert fresh.metadata(3)["config"] == {"lr": 0.1}
  bad_shape = state.replace(params={"w": jnp.ones(4), "b": jnp.array(0.0)})
  with pytest.raises(CheckpointError, match=r"params/w.*expected shape \(4,\), found \(3,\)"):
    ck.restore(create_train_state(bad_shape.params, tx))
  with pytest.raises(CheckpointError, match="missing keys.*params/c"):
    ck.restore(create_train_state({**params, "c": jnp.ones(2)}, tx))
  with pytest.raises(CheckpointError, match="no checkpoint at step 7"):
    ck.restore(state, step=7)
  nan_state = state.replace(params={"w": jnp.array([jnp.nan, 0, 0]), "b": jnp.array(0.0)})
  with pytest.raises(NonFiniteStateError):
    ck.save(4, nan_state)
  assert ck.all_steps() == [3]  # nothing partial left behind
  with pytest.raises(CheckpointError, match="lr: checkpoint has 0.1, config has 0.2"):
    check_config_matches({"lr": 0.1}, {"lr": 0.2}, "ck")


def test_checkpoint_saved_on_another_machine_restores_from_a_shape_only_template(tmp_path):
  """A checkpoint written on a machine whose devices this one lacks (here: its sharding metadata names a GPU)
  restores into an `eval_shape` template, which is how generators and rewards are loaded (found on a GPU
  with CPU-trained checkpoints: orbax's 'Topology mismatch')."""
  params, tx, _ = quadratic_problem()
  state = create_train_state(params, tx)
  Checkpointer(tmp_path / "ck").save(1, state)
  sharding_file = tmp_path / "ck" / "1" / "state" / "_sharding"
  text = sharding_file.read_text()
  assert '\\"device_str\\": \\"cpu:0\\"' in text, text  # the layout this test rewrites
  sharding_file.write_text(text.replace("cpu:0", "gpu:0"))
  template = jax.eval_shape(lambda: create_train_state(params, tx))
  restored = Checkpointer(tmp_path / "ck").restore(template)
  jax.tree.map(np.testing.assert_array_equal, restored, state)
  assert all(leaf.devices() == {jax.devices()[0]} for leaf in jax.tree.leaves(restored.params))


def read_tensorboard_scalars(path):
  """[(step, tag, value)] of an event file: TFRecord framing (length, masked CRC32C of length and of data)
  read here, each record parsed as a tensorflow.Event protobuf."""
  from tensorboardX.proto.event_pb2 import Event
  from tensorboardX.record_writer import masked_crc32c

  data, pos, out = path.read_bytes(), 0, []
  while pos < len(data):
    header = data[pos : pos + 8]
    (n,) = struct.unpack("<Q", header)
    assert struct.unpack("<I", data[pos + 8 : pos + 12])[0] == masked_crc32c(header), f"bad header CRC at {pos}"
    record = data[pos + 12 : pos + 12 + n]
    assert struct.unpack("<I", data[pos + 12 + n : pos + 16 + n])[0] == masked_crc32c(record), f"bad CRC at {pos}"
    pos += 16 + n
    event = Event.FromString(record)
    out.extend((event.step, v.tag, v.simple_value) for v in event.summary.value)
  return out


def test_metric_writer_jsonl_csv_tensorboard(tmp_path):
  w = MetricWriter(tmp_path)
  assert not tmp_path.joinpath("metrics.jsonl").exists()  # nothing before the first write
  w.write(1, {"loss": 2.5, "acc": np.float32(0.25)})
  w.write(2, {"loss": jnp.array(1.5)})
  w.close()
  assert read_metrics(tmp_path) == [{"step": 1, "loss": 2.5, "acc": 0.25}, {"step": 2, "loss": 1.5}]
  assert (tmp_path / "metrics.csv").read_text().splitlines() == [
    "step,name,value",
    "1,loss,2.5",
    "1,acc,0.25",
    "2,loss,1.5",
  ]
  (event_file,) = tmp_path.glob("events.out.tfevents.*")
  assert read_tensorboard_scalars(event_file) == [(1, "loss", 2.5), (1, "acc", 0.25), (2, "loss", 1.5)]
  empty = MetricWriter(tmp_path / "never")
  empty.close()
  assert not (tmp_path / "never").exists()


def test_metric_names_follow_tensorboards_rule(tmp_path):
  """check_tag refuses exactly the names tensorboardX would rename (its own _clean_tag), and the names the trainers
  build from user text (retrieval keys, per-step vectors, reward terms) are valid as written."""
  from tensorboardX import summary

  from easytune_jax.core.metric_writer import check_tag
  from easytune_jax.rewards import spl

  names = [
    "loss",
    "retrieval/t0/full/t2m/R1",
    "reward_per_step/003",
    "heldout_reward_terms/mypkg.rewards.fn",
    "val/R_precision_top_1",
    "a-b.c_d/é",
    "retrieval/t=0/full",
    "t2m/R@1",
    "a b",
    "x:y",
    "/lead",
    "f(x)",
    "a%b",
  ]
  for name in names:
    renamed = summary._clean_tag(name) != name
    try:
      check_tag(name)
      refused = False
    except ValueError as e:
      refused = True
      assert repr(name) in str(e)
    assert refused == renamed, name
  sim = np.eye(4) + 0.1
  for key in spl.retrieval_metrics(sim):
    check_tag(f"retrieval/t0/full/{key}")
  for key in spl.batched_retrieval_metrics(np.eye(4), np.eye(4), 2):
    check_tag(f"retrieval/t300/batch2/{key}")
  w = MetricWriter(tmp_path / "m")
  with pytest.raises(ValueError, match=r"^metric name 'retrieval/t=0/x': TensorBoard would rename it"):
    w.write(1, {"retrieval/t=0/x": 1.0})
  w.close()
  assert not (tmp_path / "m").exists()


def test_loop_resume_is_identical_to_uninterrupted(tmp_path):
  params, tx, step_fn = quadratic_problem()
  batch_fn = lambda step: jnp.float32(1.0 + 0.1 * (step % 3))
  full = train_loop(
    state=create_train_state(params, tx),
    step_fn=step_fn,
    batch_fn=batch_fn,
    num_steps=12,
    checkpointer=None,
    writer=None,
    progress=False,
  )
  ck = Checkpointer(tmp_path / "ck")
  w = MetricWriter(tmp_path / "log", tensorboard=False)
  part = train_loop(
    state=create_train_state(params, tx),
    step_fn=step_fn,
    batch_fn=batch_fn,
    num_steps=5,
    checkpointer=ck,
    writer=w,
    checkpoint_every=5,
    progress=False,
  )
  assert part.last_step == 5 and ck.latest_step() == 5
  resumed = train_loop(
    state=create_train_state(params, tx),
    step_fn=step_fn,
    batch_fn=batch_fn,
    num_steps=12,
    checkpointer=ck,
    writer=w,
    progress=False,
    checkpoint_every=100,
  )
  assert resumed.last_step == 12 and ck.latest_step() == 12
  jax.tree.map(np.testing.assert_array_equal, resumed.state.params, full.state.params)
  steps = [r["step"] for r in read_metrics(tmp_path / "log")]
  assert steps == list(range(1, 13))


def test_loop_nonfinite_stop_policy_reports_step(tmp_path):
  params, tx, step_fn = quadratic_problem()
  batch_fn = lambda step: jnp.float32(jnp.nan if step == 3 else 1.0)
  ck = Checkpointer(tmp_path / "ck")
  with pytest.raises(NonFiniteError, match="at step 3"):
    train_loop(
      state=create_train_state(params, tx),
      step_fn=step_fn,
      batch_fn=batch_fn,
      num_steps=8,
      checkpointer=ck,
      writer=None,
      log_every=1,
      on_nonfinite="stop",
      progress=False,
    )
  saved = ck.restore(create_train_state(params, tx))
  assert bool(tree_all_finite(saved.params)) and int(saved.skipped) == 1
  res = train_loop(
    state=create_train_state(params, tx),
    step_fn=step_fn,
    batch_fn=batch_fn,
    num_steps=6,
    checkpointer=None,
    writer=None,
    progress=False,
  )
  assert res.nonfinite_steps == [3] and int(res.state.skipped) == 1


def test_config_from_dict_inverts_asdict_through_json():
  import dataclasses
  import json

  from easytune_jax.bundles.finetuned import RunConfig
  from easytune_jax.finetune import FinetuneConfig

  cfg = RunConfig(
    finetune=FinetuneConfig(method="draft", num_steps=7, k=3, optim=OptimConfig(learning_rate=3e-4)),
    trajectories=5,
    trainable="dec.*,mlp",
  )
  back = config_from_dict(RunConfig, json.loads(json.dumps(dataclasses.asdict(cfg))))
  assert back == cfg and isinstance(back.finetune.optim, OptimConfig)
  hash(back)

  @dataclasses.dataclass(frozen=True)
  class Sweep:
    steps: tuple = (10, 50)
    grid: tuple = ((1, 2), (3, 4))

  sweep = config_from_dict(Sweep, json.loads(json.dumps(dataclasses.asdict(Sweep()))))
  assert sweep == Sweep() and hash(sweep)  # JSON lists come back as (nested) tuples: configs stay hashable
  bad = json.loads(json.dumps(dataclasses.asdict(cfg)))
  bad["finetune"]["optim"]["learnig_rate"] = 1.0
  with pytest.raises(ValueError, match=r"run.json\.finetune\.optim: unknown OptimConfig fields \['learnig_rate'\]"):
    config_from_dict(RunConfig, bad, "run.json")
