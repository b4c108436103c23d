"""Shared Flax blocks: timestep features vs diffusers' formula, masking invariance, KL formulas."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from easytune_jax.models import layers


def test_timestep_embedding_matches_diffusers_formula():
  t = np.array([0, 1, 500, 999])
  dim, half = 16, 8
  freqs = np.exp(-math.log(10000.0) * np.arange(half) / half)
  arg = t[:, None] * freqs[None]
  want = np.concatenate([np.cos(arg), np.sin(arg)], -1)  # flip_sin_to_cos=True
  np.testing.assert_allclose(np.asarray(layers.timestep_embedding(jnp.asarray(t), dim)), want, atol=2e-4)
  no_flip = np.asarray(layers.timestep_embedding(jnp.asarray(t), dim, flip_sin_to_cos=False))
  np.testing.assert_allclose(no_flip, np.concatenate([np.sin(arg), np.cos(arg)], -1), atol=2e-4)


@pytest.mark.parametrize("skip", [False, True])
def test_encoder_padding_never_changes_valid_outputs(skip):
  enc = layers.TransformerEncoder(num_layers=3, num_heads=2, ff_dim=32, dropout=0.0, skip=skip)
  x = jax.random.normal(jax.random.key(0), (2, 7, 16))
  mask = jnp.array([[1] * 7, [1] * 4 + [0] * 3], bool)
  params = enc.init(jax.random.key(1), x, mask)
  y1 = enc.apply(params, x, mask)
  x2 = x.at[1, 4:].set(100.0)  # garbage in padded frames
  y2 = enc.apply(params, x2, mask)
  np.testing.assert_allclose(np.asarray(y1[1, :4]), np.asarray(y2[1, :4]), atol=1e-5)
  np.testing.assert_allclose(np.asarray(y1[0]), np.asarray(y2[0]), atol=1e-6)
  with pytest.raises(ValueError, match="odd"):
    layers.TransformerEncoder(num_layers=2, num_heads=2, ff_dim=8, skip=True).init(jax.random.key(0), x, mask)


def test_distribution_tokens_and_kl():
  enc = layers.DistributionTokenEncoder(latent_dim=16, num_tokens=1, num_layers=1, num_heads=2, ff_dim=32, dropout=0.0)
  x = jax.random.normal(jax.random.key(0), (3, 5, 9))
  mask = jnp.array([[1] * 5, [1] * 3 + [0] * 2, [1] + [0] * 4], bool)
  params = jax.jit(enc.init)(jax.random.key(1), x, mask)
  apply = jax.jit(enc.apply)
  mu, logvar = apply(params, x, mask)
  assert mu.shape == logvar.shape == (3, 1, 16)
  mu2, _ = apply(params, x.at[2, 1:].set(-50.0), mask)
  np.testing.assert_allclose(np.asarray(mu[2]), np.asarray(mu2[2]), atol=1e-5)
  m, lv = np.array([0.3, -1.0]), np.array([0.2, -0.5])
  want = np.mean(0.5 * (np.exp(lv) + m**2 - 1 - lv))
  assert float(layers.kl_to_standard_normal(jnp.asarray(m), jnp.asarray(lv))) == pytest.approx(want, rel=1e-5)
  assert float(layers.kl_between(jnp.asarray(m), jnp.asarray(lv), jnp.zeros(2), jnp.zeros(2))) == pytest.approx(
    want, rel=1e-5
  )
  assert float(layers.kl_between(jnp.asarray(m), jnp.asarray(lv), jnp.asarray(m), jnp.asarray(lv))) == pytest.approx(
    0.0, abs=1e-7
  )
