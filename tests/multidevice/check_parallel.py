"""Runs on 8 fake CPU devices (XLA_FLAGS set by the caller); prints one JSON line of results.

Each check compares a step run on a sharded mesh with the same step on one device, same global batch.
"""

import json
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax

from easytune_jax.core import parallel
from easytune_jax.core.checkpoint import Checkpointer
from easytune_jax.core.optim import OptimConfig, apply_gradients, create_train_state, make_optimizer

assert jax.device_count() == 8, jax.devices()
results = {}


def max_diff(a, b):
  return float(max(jax.tree.leaves(jax.tree.map(lambda x, y: jnp.max(jnp.abs(x - y)), a, b))))


def mlp_contrastive_problem():
  """A two-tower model with an InfoNCE loss over the whole batch: negatives must be global."""
  k = jax.random.split(jax.random.key(0), 3)
  params = {"wt": jax.random.normal(k[0], (64, 128)) * 0.1, "wm": jax.random.normal(k[1], (64, 128)) * 0.1}
  tx = make_optimizer(OptimConfig(learning_rate=1e-2))

  def loss_fn(p, batch):
    t = batch["text"] @ p["wt"]
    m = batch["motion"] @ p["wm"]
    t = t / jnp.linalg.norm(t, axis=-1, keepdims=True)
    m = m / jnp.linalg.norm(m, axis=-1, keepdims=True)
    logits = t @ m.T / 0.1
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, jnp.arange(logits.shape[0])))

  def step(state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(state.params, batch)
    state, finite = apply_gradients(state, grads, tx, loss)
    return state, {"loss": loss}

  batch = {"text": jax.random.normal(k[2], (32, 64)), "motion": jax.random.normal(k[2], (32, 64)) + 0.3}
  return create_train_state(params, tx), step, batch


def check_contrastive(spec):
  state, step, batch = mlp_contrastive_problem()
  ref_state, ref_m = jax.jit(step)(state, batch)
  mesh = parallel.make_mesh(spec)
  sh_state = parallel.shard_state(state, mesh, min_size=16)
  shardings = parallel.state_shardings(mesh, state, min_size=16)
  f = jax.jit(step, in_shardings=(shardings, parallel.batch_sharding(mesh)), out_shardings=(shardings, None))
  new, m = f(sh_state, parallel.shard_batch(batch, mesh))
  specs = {"params.wt": str(new.params["wt"].sharding.spec), "mu.wt": str(new.opt_state[1][0].mu["wt"].sharding.spec)}
  return {
    "param_diff": max_diff(new.params, ref_state.params),
    "loss_diff": abs(float(m["loss"] - ref_m["loss"])),
    "specs": specs,
    "batch_spec": str(parallel.shard_batch(batch, mesh)["text"].sharding.spec),
  }, new


results["contrastive_data8"], _ = check_contrastive("data=8")
results["contrastive_data4_fsdp2"], sharded_state = check_contrastive("data=4,fsdp=2")

# A checkpoint written from the 8-device (FSDP) state restores on 4 devices here and on 1 device in the
# parent test process.
ckdir = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp()
ck = Checkpointer(ckdir)
ck.save(1, sharded_state, {"note": "written on 8 devices"})
mesh4 = parallel.make_mesh("data=4", devices=jax.devices()[:4])
template4 = parallel.shard_state(mlp_contrastive_problem()[0], mesh4, min_size=16)
restored4 = ck.restore(template4)
results["restore_on_4"] = {
  "diff": max_diff(jax.device_get(restored4.params), jax.device_get(sharded_state.params)),
  "devices": len(restored4.params["wt"].sharding.device_set),
}
# gathered: a whole copy on this process's first device, equal bit for bit to the FSDP-sharded state;
# place / replicate: host and one-device values onto mesh shardings (key arrays included).
whole = parallel.gathered(sharded_state.params)
key = jax.random.key(3)
placed = parallel.place(
  {"k": key, "x": np.arange(16.0)}, {"k": parallel.replicated(mesh4), "x": parallel.batch_sharding(mesh4)}
)
rep = parallel.replicate({"w": np.ones((3, 2))}, mesh4)
results["gathered"] = {
  "devices": sorted({len(x.sharding.device_set) for x in jax.tree.leaves(whole)}),
  "device": str(jax.tree.leaves(whole)[0].sharding.device_set.pop()),
  "diff": max_diff(whole, jax.device_get(sharded_state.params)),
  "sharded_before": len(sharded_state.params["wt"].sharding.device_set),
}
results["placed"] = {
  "key_equal": bool(np.array_equal(jax.random.key_data(placed["k"]), jax.random.key_data(key))),
  "key_devices": len(placed["k"].sharding.device_set),
  "x_spec": str(placed["x"].sharding.spec),
  "x_equal": bool(np.array_equal(np.asarray(placed["x"]), np.arange(16.0))),
  "rep_spec": str(rep["w"].sharding.spec),
  "rep_devices": len(rep["w"].sharding.device_set),
  "unchanged": parallel.place(placed, {"k": parallel.replicated(mesh4), "x": parallel.batch_sharding(mesh4)})["x"]
  is placed["x"],
}
try:
  parallel.check_batch_divisible(30, parallel.make_mesh("data=8"))
except ValueError as e:
  results["indivisible_error"] = str(e)
print("RESULTS " + json.dumps(results))
