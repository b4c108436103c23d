"""The generator table: a new generator kind is ONE row of `models.generator.GENERATORS` plus its module.

`FrameMLP` and `TOY` below are the whole diff of adding a toy generator: a per-frame MLP on motion features (no VAE,
frame-conditioned) with a shifted flow-matching process. Once the row is in the table the base trainer trains it,
`load_generator` loads it, the task fine-tunes it (checked against the update unrolled by hand with the row's own
process), and the benchmark's memory sweep measures it.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from easytune_jax import finetune
from easytune_jax.bench.benchmark import run_benchmark
from easytune_jax.bench.config import BenchmarkConfig
from easytune_jax.bundles.generator import load_generator
from easytune_jax.bundles.task import load_task
from easytune_jax.core import flow
from easytune_jax.core.optim import create_train_state
from easytune_jax.data import batching
from easytune_jax.data.humanml3d import load_dataset
from easytune_jax.models import generator as gm
from easytune_jax.models.layers import timestep_embedding
from easytune_jax.train import base


# ----------------------------------------------------------------------- the diff of adding a generator
class FrameMLP(nn.Module):
  """x_t [B, L, D], t [B], cond {text [B, Lt, C], text_mask, frame_mask [B, L]} -> velocity [B, L, D] (0 at padding):
  a per-frame MLP of the frame, the time embedding and the mean text feature."""

  config: gm.DenoiserConfig

  @nn.compact
  def __call__(self, x_t, t, cond, deterministic: bool = True):
    w = self.config.width
    m = cond["text_mask"][..., None].astype(x_t.dtype)
    text = jnp.sum(cond["text"] * m, 1) / jnp.maximum(jnp.sum(m, 1), 1.0)
    time = timestep_embedding(jnp.broadcast_to(t, x_t.shape[:1]), w)
    h = nn.Dense(w)(x_t) + nn.Dense(w)(text)[:, None] + nn.Dense(w)(time)[:, None]
    out = nn.Dense(x_t.shape[-1])(nn.gelu(nn.Dense(w)(nn.gelu(h))))
    return jnp.where(cond["frame_mask"][..., None], out, 0.0)


TOY = gm.GeneratorKind(
  "ToyFlow",
  latent=False,
  denoiser=lambda c: FrameMLP(c.denoiser),
  process=lambda c: flow.make_flow(flow.FlowConfig(time_shift=2.0)),
  frame_cond=True,
)
# ----------------------------------------------------------------------- end of the diff


@pytest.fixture
def toy(monkeypatch):
  monkeypatch.setitem(gm.GENERATORS, "toyflow", TOY)


def test_unknown_kind_names_the_table():
  with pytest.raises(ValueError, match=r"BaseConfig.model: expected one of \('mld', 'mdm', 'flow'\), found 'toyflow'"):
    gm.BaseConfig(model="toyflow")


def test_toy_generator_row_trains_loads_finetunes_and_benchmarks(toy, tiny_pipeline, tmp_path):
  wd = str(tmp_path / "toy")
  config = base.apply_overrides(
    base.BaseConfig(model="toyflow"), ["diffusion_steps=40", "log_every=20", "checkpoint_every=40"]
  )
  out = base.train_and_evaluate(config, wd, tiny_pipeline.data, progress=False)
  assert "vae" not in out and np.isfinite(out["diffusion"]["val/diffusion_loss"])
  assert not (tmp_path / "toy" / "vae").exists()  # a feature-space kind trains no VAE

  gen = load_generator(wd)
  assert isinstance(gen.modules.denoiser, FrameMLP) and gen.modules.vae is None
  assert gen.process.kind == "flow" and gen.process.time_shift == 2.0
  nfeats = gen.mean.shape[0]
  assert gen.latent_shape == (config.data.max_length, nfeats)
  feats, joints = gen.generate(["a person walks forward", "someone jumps"], [40, 64], jax.random.key(0))
  assert feats.shape == (2, 64, nfeats) and np.isfinite(feats).all()
  assert np.all(feats[0, 40:] == 0) and np.all(joints[0, 40:] == 0)

  # One EasyTune update (last 2 of 4 steps, frozen sampler, SGD) equals the update unrolled with the row's process.
  task = load_task(wd, tiny_pipeline.reward)
  arrays, host = batching.batch_at(
    load_dataset(tiny_pipeline.data, "train"), 0, 4, 0, gen.tokenizer, max_length=gen.max_length
  )
  cond, uncond = task.inputs(host["caption"], arrays["length"])
  x_T = task.noise(jax.random.key(1), 4)
  ft = finetune.FinetuneConfig(method="easytune", num_steps=4, k=2, guidance_scale=2.5)
  lr, tx = 0.1, optax.sgd(0.1)
  update = finetune.make_update_fn(ft, task.denoise, task.reward, gen.process, tx, decode=task.decode)
  state, _ = update(create_train_state(gen.params, tx), x_T, cond, uncond, jax.random.key(2))

  s = flow.flow_grid(4, 2.0)[0].tolist() + [0.0]

  def velocity(p, x, i):
    t = jnp.full((4,), 1000.0 * s[i], jnp.float32)
    v_u, v_c = task.denoise(p, x, t, uncond), task.denoise(p, x, t, cond)
    return v_u + 2.5 * (v_c - v_u)

  xs = [x_T]
  for i in range(3):
    xs.append(xs[-1] + (s[i + 1] - s[i]) * velocity(gen.params, xs[-1], i))
  grads = [
    jax.grad(lambda p, i=i: -jnp.mean(task.reward(task.decode(xs[i] - s[i] * velocity(p, xs[i], i), cond), cond)))(
      gen.params
    )
    for i in (2, 3)
  ]
  got = jax.tree.map(lambda a, b: (b - a) / -lr, gen.params, state.params)
  want = jax.tree.map(lambda a, b: a + b, *grads)
  scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(want))
  assert scale > 0
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-3 * scale), got, want)

  # The benchmark's memory sweep takes the toy generator like any other: EasyTune flat in T, DRaFT-T growing.
  bcfg = dataclasses.replace(
    BenchmarkConfig(), memory_variants=("easytune", "draft-T"), memory_steps=(4, 16), speed_variants=("easytune",)
  )
  result = run_benchmark(bcfg, wd, tiny_pipeline.reward, tiny_pipeline.data, memory=True, speed=False)
  temp = {(r["method"], r["T"]): r["memory"]["temp"] for r in result["records"]}
  assert abs(temp[("easytune", 16)] / temp[("easytune", 4)] - 1) < 0.05, temp
  assert temp[("draft", 16)] > 2 * temp[("draft", 4)], temp
