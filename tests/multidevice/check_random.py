"""Runs on 8 fake CPU devices (XLA_FLAGS set by the caller); prints one JSON line of results.

Every method of the table with the paper setting's randomness on (the denoiser's dropout at every step, a
Flax `nn.Dropout` keyed through rngs={'dropout': key}, and a stochastic reward drawing fresh noise per scored
step), plus EasyTune with the per-batch reward key carried per row in cond (`MotionTask`'s layout): one
update on the meshes data=8 and data=4,fsdp=2 against the same update on one device with the same keys. The
masks and the reward noise are drawn inside the sharded jit for the GLOBAL shapes; with JAX's partitionable
threefry (`jax_threefry_partitionable`, on by default) the bits do not depend on the sharding, so the
updates agree to float32 all-reduce rounding (a shard-dependent draw would differ by O(1)).
"""

import json
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

from easytune_jax import finetune
from easytune_jax.core import parallel, schedules
from easytune_jax.core.optim import OptimConfig, create_train_state, make_optimizer

assert jax.device_count() == 8, jax.devices()
MESHES = ("data=8", "data=4,fsdp=2")
B, D, H = 16, 64, 128
results = {"threefry_partitionable": bool(jax.config.jax_threefry_partitionable)}


class Net(nn.Module):
  @nn.compact
  def __call__(self, x, t, c, deterministic=True):
    h = jnp.tanh(nn.Dense(H, name="w1")(x) + c + nn.Dense(H, use_bias=False, name="tw")(t[:, None] / 1000.0))
    h = nn.Dropout(0.1)(h, deterministic=deterministic)
    return nn.Dense(D, name="w2")(h)


net = Net()


def denoise(p, x, t, cond, rng=None):
  if rng is None:
    return net.apply(p, x, t.astype(x.dtype), cond["c"])
  return net.apply(p, x, t.astype(x.dtype), cond["c"], False, rngs={"dropout": rng})


def noisy_reward(x, cond, t, rng=None):
  """The reward's noise: a perturbed target, from `rng` (per step) or from the per-row key in cond."""
  if rng is None:
    rng = jax.random.wrap_key_data(cond["reward_rng"][0])
  target = cond["target"] + 0.3 * jax.random.normal(rng, cond["target"].shape)
  return -jnp.sum(jnp.square(x - target), axis=-1)


def max_diff(a, b):
  return float(max(jax.tree.leaves(jax.tree.map(lambda x, y: jnp.max(jnp.abs(x - y)), a, b))))


ks = jax.random.split(jax.random.key(0), 8)
params = net.init(ks[0], jnp.zeros((1, D)), jnp.zeros((1,)), jnp.zeros((1, H)))
x_T = jax.random.normal(ks[3], (B, D))
key_rows = jnp.broadcast_to(jax.random.key_data(jax.random.key(21)), (B, 2))
cond = {"c": jax.random.normal(ks[4], (B, H)) * 0.3, "target": jax.random.normal(ks[5], (B, D)), "reward_rng": key_rows}
uncond = {**cond, "c": jnp.zeros((B, H))}
rng = jax.random.key(7)

CASES = {
  "easytune": dict(method="easytune", k=2),
  "easytune_batched": dict(method="easytune", k=3, grad_chunk=2),
  "draft": dict(method="draft", k=2),
  "refl": dict(method="refl", m=3),
  "alignprop": dict(method="alignprop", p=0.5),
  "drtune": dict(method="drtune", k=2, m=3),
  "easytune_per_batch": dict(method="easytune", k=2, reward_noise="per_batch"),
}
for name, kw in CASES.items():
  t0 = time.time()
  kw = {"denoiser_dropout": True, "reward_noise": "per_step", **kw}
  # Adam eps 1e-3 (as the SPM comparison of check_methods.py): with eps 1e-8 a parameter whose gradient is
  # ~1e-10 (e.g. a hidden unit the masks drop in most rows) moves by a lr-sized step whose size follows the
  # all-reduce's rounding; with 1e-3 a gradient difference dg moves a parameter by at most lr * dg / 1e-3.
  optim = OptimConfig(learning_rate=1e-2, warmup_steps=0, eps=1e-3)
  cfg = finetune.FinetuneConfig(num_steps=4, guidance_scale=2.0, optim=optim, **kw)
  tx = make_optimizer(cfg.optim)
  state0 = create_train_state(params, tx)
  fn = finetune.make_update_fn(cfg, denoise, noisy_reward, schedules.make_schedule(), tx, jit=False)
  ref_state, ref_m = jax.device_get(jax.jit(fn)(state0, x_T, cond, uncond, rng))
  # The same update without dropout: the random parts really change it.
  off = dict(kw, denoiser_dropout=False, reward_noise="per_batch")
  cfg_off = finetune.FinetuneConfig(num_steps=4, guidance_scale=2.0, optim=cfg.optim, **off)
  fn_off = finetune.make_update_fn(cfg_off, denoise, noisy_reward, schedules.make_schedule(), tx, jit=False)
  off_state, _ = jax.jit(fn_off)(state0, x_T, cond, uncond, rng)
  out = {"dropout_effect": max_diff(off_state.params, ref_state.params)}
  for spec in MESHES:
    mesh = parallel.make_mesh(spec)
    state, m = parallel.jit_sharded(fn, mesh, batch_argnums=(1, 2, 3))(state0, x_T, cond, uncond, rng)
    out[spec] = {
      "param_diff": max_diff(state.params, ref_state.params),
      "loss_diff": abs(float(m["loss"]) - float(ref_m["loss"])) / max(abs(float(ref_m["loss"])), 1.0),
      "param_change": max_diff(state.params, state0.params),
      "step": int(state.step),
      "ref_step": int(ref_state.step),
    }
  results[name] = out
  print(f"{name}: {time.time() - t0:.1f} s", file=sys.stderr, flush=True)
print("RESULTS " + json.dumps(results))
