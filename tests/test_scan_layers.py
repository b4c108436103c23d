"""Skip transformers run as lax.scans over their stacked layers (`models.layers.run_skip_layers`): the same
parameter tree, outputs and gradients as the unrolled modules (official MLD VAE / denoiser, official SPM)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from easytune_jax.models import layers, spm_official
from easytune_jax.models import mld_official as mo
from easytune_jax.models.spm import SPMConfig

VCFG = mo.OfficialVAEConfig.tiny(num_layers=5, dropout=0.1)
DCFG = mo.OfficialDenoiserConfig.tiny(num_layers=5, dropout=0.1)
SCFG = SPMConfig.official(dim_motion=6, latent_dim=8, ff_dim=16, num_layers=5, num_heads=2)
B, L = 3, 7


def _close(a, b, tol=2e-5):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


def _both(module_cls, config, variables, fn):
  """fn(module, variables) under scan_layers=False and True, each as one compiled program."""
  return [jax.jit(functools.partial(fn, module_cls(config, scan_layers=s)))(variables) for s in (False, True)]


def test_default_and_override():
  assert layers.SCAN_LAYERS is False  # slower on the CPU (docs/benchmark/profile/README.md)
  assert layers.resolve_scan(None) is layers.SCAN_LAYERS and layers.resolve_scan(True)


def test_official_vae_scan_equals_unrolled():
  v = mo.init_vae(VCFG, jax.random.key(0))
  assert jax.tree.structure(v) == jax.tree.structure(
    jax.eval_shape(mo.OfficialMLDVAE(VCFG, scan_layers=True).init, jax.random.key(0), *mo.vae_init_inputs(VCFG))
  )
  assert {
    "input_blocks_0",
    "input_blocks_1",
    "middle_block",
    "linear_blocks_0",
    "linear_blocks_1",
    "output_blocks_0",
    "output_blocks_1",
    "norm",
  } == set(v["params"]["decoder"])
  x = jax.random.normal(jax.random.key(1), (B, L, VCFG.nfeats))
  mask = jnp.arange(L)[None] < jnp.array([L, 4, 2])[:, None]
  z = jax.random.normal(jax.random.key(2), (B, VCFG.latent_size, VCFG.latent_dim))

  def run(m, var):
    enc = m.apply(var, x, mask, method=m.encode)
    dec = m.apply(var, z, mask, method=m.decode)
    g = jax.grad(lambda p, zz: jnp.sum(m.apply({"params": p}, zz, mask, method=m.decode) ** 2), (0, 1))(
      var["params"], z
    )
    return enc, dec, g

  a, b = _both(mo.OfficialMLDVAE, VCFG, v, run)
  _close(a, b)


def test_official_denoiser_scan_equals_unrolled():
  v = mo.init_denoiser(DCFG, jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (B, DCFG.latent_size, DCFG.latent_dim))
  t = jnp.array([999, 500, 3])
  cond = {"text": jax.random.normal(jax.random.key(2), (B, 2, DCFG.text_dim))}

  def run(m, var):
    out = m.apply(var, x, t, cond)
    g = jax.grad(lambda p: jnp.sum(m.apply({"params": p}, x, t, cond) ** 2))(var["params"])
    return out, g

  a, b = _both(mo.OfficialMLDDenoiser, DCFG, v, run)
  _close(a, b)


def test_official_spm_scan_equals_unrolled_and_dropout_runs():
  e = 10
  text = jax.random.normal(jax.random.key(1), (B, 4, e))
  tmask = jnp.arange(4)[None] < jnp.array([4, 2, 1])[:, None]
  motion = jax.random.normal(jax.random.key(2), (B, L, SCFG.dim_motion))
  mask = jnp.arange(L)[None] < jnp.array([L, 5, 3])[:, None]
  t = jnp.array([10, 200, 0])
  v = jax.jit(spm_official.OfficialSPM(SCFG).init)(jax.random.key(0), text, tmask, motion, mask, t)

  def run(m, var):
    out = m.apply(var, text, tmask, motion, mask, t)
    no_t = m.apply(var, motion, mask, None, method=m.encode_motion)
    g = jax.grad(lambda mo_: jnp.sum(m.apply(var, mo_, mask, t, method=m.encode_motion)[0] ** 2))(motion)
    return out, no_t, g

  a, b = _both(spm_official.OfficialSPM, SCFG, v, run)
  _close(a, b)
  m = spm_official.OfficialSPM(SCFG, scan_layers=True)
  noisy = jax.jit(
    lambda v: m.apply(v, motion, mask, t, False, method=m.encode_motion, rngs={"dropout": jax.random.key(3)})
  )(v)
  assert all(np.isfinite(np.asarray(u)).all() for u in noisy)
  assert not np.allclose(np.asarray(noisy[0]), np.asarray(b[1][0]))


@pytest.mark.parametrize("n", [1, 3])
def test_run_skip_layers_matches_a_python_loop(n):
  rng = np.random.default_rng(n)
  c = 4
  w = lambda: {"w": jnp.asarray(rng.normal(size=(c, c)), jnp.float32)}
  params = {f"input_blocks_{i}": w() for i in range(n)} | {"middle_block": w()}
  params |= {f"output_blocks_{i}": w() for i in range(n)}
  params |= {f"linear_blocks_{i}": {"w": jnp.asarray(rng.normal(size=(2 * c, c)), jnp.float32)} for i in range(n)}
  block = lambda p, h, k: jnp.tanh(h @ p["w"])
  linear = lambda p, h: h @ p["w"]
  x = jnp.asarray(rng.normal(size=(2, 3, c)), jnp.float32)
  h, skips = x, []
  for i in range(n):
    h = block(params[f"input_blocks_{i}"], h, None)
    skips.append(h)
  h = block(params["middle_block"], h, None)
  for i in range(n):
    h = block(
      params[f"output_blocks_{i}"], linear(params[f"linear_blocks_{i}"], jnp.concatenate([h, skips.pop()], -1)), None
    )
  _close(layers.run_skip_layers(block, linear, params, n, x), h, 1e-5)
