"""Runs on 8 fake CPU devices (XLA_FLAGS set by the caller); prints one JSON line of results.

LoRA updates (EasyTune and DRaFT-K; adapter in the state, frozen base as `base_params`) on a mesh (data=8 and
data=4,fsdp=2) through `parallel.jit_sharded`, as `run_finetune(mesh=...)` runs them, against the same update on one
device on the same global batch.
"""

import json
import sys

import jax
import jax.numpy as jnp

from easytune_jax import finetune
from easytune_jax.core import parallel, schedules
from easytune_jax.core.optim import OptimConfig, create_train_state, make_optimizer

assert jax.device_count() == 8, jax.devices()
B, D, H = 16, 64, 128
results = {}


def denoise(p, x, t, cond):
  h = jnp.tanh(x @ p["w1"] + p["b1"] + cond["c"] + p["tw"] * t[:, None].astype(x.dtype) / 1000.0)
  return h @ p["w2"]


def quad_reward(x, cond, t):
  return -jnp.sum(jnp.square(x - cond["target"]), axis=-1)


def max_diff(a, b):
  return float(max(jax.tree.leaves(jax.tree.map(lambda x, y: jnp.max(jnp.abs(x - y)), a, b))))


ks = jax.random.split(jax.random.key(0), 8)
base = {
  "w1": jax.random.normal(ks[0], (D, H)) * 0.1,
  "b1": jnp.zeros(H),
  "w2": jax.random.normal(ks[1], (H, D)) * 0.1,
  "tw": jax.random.normal(ks[2], (H,)) * 0.5,
}
x_T = jax.random.normal(ks[3], (B, D))
cond = {"c": jax.random.normal(ks[4], (B, H)) * 0.3, "target": jax.random.normal(ks[5], (B, D))}
uncond = {"c": jnp.zeros((B, H)), "target": cond["target"]}
lcfg = finetune.LoraConfig(rank=4, alpha=8.0, targets="^w", train_whole="^b1$")
for method in ("easytune", "draft"):
  cfg = finetune.FinetuneConfig(
    method=method, num_steps=4, k=2, guidance_scale=2.0, lora=lcfg, optim=OptimConfig(learning_rate=1e-2, eps=1e-3)
  )
  tx = make_optimizer(cfg.optim)
  state0 = create_train_state(finetune.lora.init_adapter(base, lcfg, jax.random.key(1)), tx)
  fn = finetune.make_update_fn(cfg, denoise, quad_reward, schedules.make_schedule(), tx, jit=False)
  args = (x_T, cond, uncond, jax.random.key(7), None, base)
  ref, ref_m = jax.device_get(jax.jit(fn)(state0, *args))
  out = {}
  for spec in ("data=8", "data=4,fsdp=2"):
    mesh = parallel.make_mesh(spec)
    state, m = parallel.jit_sharded(fn, mesh, batch_argnums=(1, 2, 3, 5), donate_state=True)(
      jax.tree.map(jnp.copy, state0), *args
    )
    out[spec] = {
      "param_diff": max_diff(state.params, ref.params),
      "opt_diff": max_diff(state.opt_state, ref.opt_state),
      "loss_diff": abs(float(m["loss"]) - float(ref_m["loss"])) / max(abs(float(ref_m["loss"])), 1.0),
      "param_change": max_diff(state.params, state0.params),
      "same_structure": jax.tree.structure(state.params) == jax.tree.structure(state0.params),
    }
  results[method] = out
  print(f"{method}: done", file=sys.stderr, flush=True)

print("RESULTS " + json.dumps(results))
