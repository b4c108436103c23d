"""Runs on 8 fake CPU devices (XLA_FLAGS set by the caller); prints one JSON line of results.

One EasyTune update, one DRaFT-K update, one SPM+SPL reward step and one base VAE step, each run on a mesh
(data=8 and data=4,fsdp=2) through the library's own `mesh=` paths, compared with the same step on one
device on the same global batch. The SPM step's InfoNCE/SPL similarity matrices are built inside the step,
so equality with one device shows that negatives come from the GLOBAL batch (a per-device matrix would
only see 2 or 4 rows and give a different loss and gradient).
"""

import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from easytune_jax import finetune
from easytune_jax.core import parallel, schedules
from easytune_jax.core.optim import OptimConfig, create_train_state, make_optimizer
from easytune_jax.models.spm import SPMConfig, init_spm
from easytune_jax.rewards import spm_objective as RO
from easytune_jax.train import base, base_steps
from easytune_jax.train import reward as R

assert jax.device_count() == 8, jax.devices()
MESHES = ("data=8", "data=4,fsdp=2")
B = 16  # global batch: 2 rows per device on data=8
results = {}


def max_diff(a, b):
  return float(max(jax.tree.leaves(jax.tree.map(lambda x, y: jnp.max(jnp.abs(x - y)), a, b))))


def largest_leaf_specs(state):
  """Sharding spec of the largest parameter leaf and of its Adam first moment."""
  flat = jax.tree_util.tree_flatten_with_path(state.params)[0]
  path, leaf = max(flat, key=lambda kv: kv[1].size)
  name = jax.tree_util.keystr(path)
  mu = [
    l
    for p, l in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]
    if jax.tree_util.keystr(p).endswith(".mu" + name) or jax.tree_util.keystr(p).endswith("mu" + name)
  ]
  return {
    "leaf": name,
    "shape": list(leaf.shape),
    "param": str(leaf.sharding.spec),
    "mu": [str(m.sharding.spec) for m in mu if m.shape == leaf.shape],
  }


def compare(name, run_single, run_mesh):
  t0 = time.time()
  ref_state, ref_m = jax.device_get(run_single())
  out = {}
  for spec in MESHES:
    mesh = parallel.make_mesh(spec)
    state, m = run_mesh(mesh)
    out[spec] = {
      "param_diff": max_diff(state.params, ref_state.params),
      "opt_diff": max_diff(state.opt_state, ref_state.opt_state),
      "loss_diff": abs(float(m["loss"]) - float(ref_m["loss"])) / max(abs(float(ref_m["loss"])), 1.0),
      "step": int(state.step),
      "ref_step": int(ref_state.step),
      "param_change": max_diff(state.params, initial[name].params),
      "specs": largest_leaf_specs(state),
    }
  results[name] = out
  print(f"{name}: {time.time() - t0:.1f} s", file=sys.stderr, flush=True)


initial = {}

# ------------------------------------------------------------------------------------------ fine-tuning
D, H = 64, 128  # w1 [64, 128] = 8192 elements: large enough to be FSDP-sharded (>= 4096)


def denoise(p, x, t, cond):
  h = jnp.tanh(x @ p["w1"] + p["b1"] + cond["c"] + p["tw"] * t[:, None].astype(x.dtype) / 1000.0)
  return h @ p["w2"]


def quad_reward(x, cond, t):
  return -jnp.sum(jnp.square(x - cond["target"]), axis=-1)


def finetune_problem(method, grad_chunk=1, k=2):
  ks = jax.random.split(jax.random.key(0), 8)
  params = {
    "w1": jax.random.normal(ks[0], (D, H)) * 0.1,
    "b1": jnp.zeros(H),
    "w2": jax.random.normal(ks[1], (H, D)) * 0.1,
    "tw": jax.random.normal(ks[2], (H,)) * 0.5,
  }
  cfg = finetune.FinetuneConfig(
    method=method,
    num_steps=4,
    k=k,
    guidance_scale=2.0,
    grad_chunk=grad_chunk,
    optim=OptimConfig(learning_rate=1e-2, warmup_steps=0),
  )
  tx = make_optimizer(cfg.optim)
  state = create_train_state(params, tx)
  x_T = jax.random.normal(ks[3], (B, D))
  cond = {"c": jax.random.normal(ks[4], (B, H)) * 0.3, "target": jax.random.normal(ks[5], (B, D))}
  uncond = {"c": jnp.zeros((B, H)), "target": cond["target"]}
  fn = finetune.make_update_fn(cfg, denoise, quad_reward, schedules.make_schedule(), tx, jit=False)
  return state, fn, (x_T, cond, uncond, jax.random.key(7))


for method in ("easytune", "draft"):
  state0, fn, args = finetune_problem(method)
  initial[method] = state0
  compare(
    method,
    lambda: jax.jit(fn)(state0, *args),
    lambda mesh: parallel.jit_sharded(fn, mesh, batch_argnums=(1, 2, 3))(state0, *args),
  )

# The batched frozen path (grad_chunk=2, K=3: a chunk of 2 and one of 1) on the mesh, with the state donated,
# against the SEQUENTIAL path (grad_chunk=1) on one device: the same K=3 AdamW updates.
state0, seq_fn, args = finetune_problem("easytune", grad_chunk=1, k=3)
_, batched_fn, _ = finetune_problem("easytune", grad_chunk=2, k=3)
initial["easytune_batched"] = state0
compare(
  "easytune_batched",
  lambda: jax.jit(seq_fn)(state0, *args),
  lambda mesh: parallel.jit_sharded(batched_fn, mesh, batch_argnums=(1, 2, 3), donate_state=True)(
    jax.tree.map(jnp.copy, state0), *args
  ),
)

# ------------------------------------------------------------------------------------------ SPM + SPL
L, LT, V = 32, 12, 40
rcfg = RO.RewardTrainConfig(
  model=SPMConfig(
    word_dim=16, latent_dim=16, ff_dim=32, num_layers=1, num_heads=2, patch_size=4, vocab_size=V, dim_motion=263
  ),
  batch_size=B,
  max_length=L,
  text_max_length=LT,
  spl_k=4,
)
# Adam's first step is lr * g / (|g| + eps): with eps=1e-8 a parameter whose gradient is ~1e-8 moves by a
# lr-sized amount whose sign follows float32 rounding, so the comparison uses eps=1e-3 (then a gradient
# difference dg moves a parameter by at most lr * dg / 1e-3). EasyTune/DRaFT gradients are large.
optim = OptimConfig(learning_rate=1e-3, warmup_steps=0, eps=1e-3)
ks = np.random.default_rng(0)
lengths = ks.integers(16, L + 1, B)
mask = np.arange(L)[None] < lengths[:, None]
tok_len = ks.integers(3, LT + 1, B)
token_mask = np.arange(LT)[None] < tok_len[:, None]
spm_batch = {
  "motion": (ks.standard_normal((B, L, 263)) * mask[..., None]).astype(np.float32),
  "mask": mask,
  "length": lengths.astype(np.int32),
  "tokens": np.where(token_mask, ks.integers(4, V, (B, LT)), 0).astype(np.int32),
  "token_mask": token_mask,
}
tx = make_optimizer(optim)
spm_state = create_train_state(init_spm(rcfg.model, jax.random.key(3)), tx)
initial["spm_spl"] = spm_state
key = jax.random.key(11)
fresh = lambda: jax.tree.map(jnp.copy, spm_state)  # the jitted step donates its state
spm_metrics = {}


def spm_single():
  state, m = R.make_train_step(rcfg, optim, True, key)(fresh(), spm_batch)
  spm_metrics.update({k: float(v) for k, v in m.items() if np.ndim(v) == 0})
  return state, m


compare("spm_spl", spm_single, lambda mesh: R.make_train_step(rcfg, optim, True, key, mesh=mesh)(fresh(), spm_batch))
results["spm_spl_metrics"] = spm_metrics

# ------------------------------------------------------------------------------------------ base VAE step
bcfg = base.apply_overrides(
  base.BaseConfig(),  # the 'tiny' preset
  [
    "data.batch_size=16",
    "data.max_length=32",
    "data.text_max_length=16",
    "vae.latent_dim=16",
    "vae.width=32",
    "vae.ff_dim=64",
    "vae.num_heads=2",
    "vae_optim.warmup_steps=0",
    "vae_optim.decay_steps=0",
    "vae_optim.eps=1e-3",
  ],
)
nfeats = bcfg.vae.nfeats
assert nfeats == 263, nfeats  # the HumanML3D feature size, as the SPM batch above
vae_batch = {
  "motion": spm_batch["motion"],
  "mask": mask,
  "length": spm_batch["length"],
  "tokens": spm_batch["tokens"],
  "token_mask": token_mask,
}
mean, std = np.zeros(nfeats, np.float32), np.ones(nfeats, np.float32)
vae_state = create_train_state(base.init_vae_params(bcfg, jax.random.key(4)), base.vae_tx(bcfg))
initial["vae"] = vae_state
compare(
  "vae",
  lambda: base_steps.make_vae_step(bcfg, mean, std, jax.random.key(5))(vae_state, vae_batch),
  lambda mesh: base_steps.make_vae_step(bcfg, mean, std, jax.random.key(5), mesh=mesh)(vae_state, vae_batch),
)

# ------------------------------------------------------------------------------------------ bad batch
try:
  bad = {k: v[:12] for k, v in vae_batch.items()}
  base_steps.make_vae_step(bcfg, mean, std, jax.random.key(5), mesh=parallel.make_mesh("data=8"))(vae_state, bad)
except ValueError as e:
  results["indivisible_error"] = str(e)
print("RESULTS " + json.dumps(results))
