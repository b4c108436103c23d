"""The CPU threefry lowering switch (core/prng.py): same random bits, straight-line vs loop in the program."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from easytune_jax.core import prng


def _draw(key):
  return jax.random.bits(key, (3, 50, 7)), jax.random.bernoulli(jax.random.fold_in(key, 1), 0.9, (4, 33))


@pytest.fixture
def restore_default():
  yield
  prng.apply_default()


def test_unrolled_and_rolled_lowerings_give_the_same_bits(restore_default):
  key = jax.random.key(3)
  out, hlo = {}, {}
  for kind in ("rolled", "unrolled"):
    assert prng.set_cpu_threefry_lowering(kind)
    fn = jax.jit(lambda k: _draw(k))  # a fresh function: traced and lowered under `kind`
    hlo[kind] = fn.lower(key).as_text()
    out[kind] = jax.device_get(fn(key))
  assert "while" in hlo["rolled"] and "while" not in hlo["unrolled"]
  for a, b in zip(out["rolled"], out["unrolled"]):
    np.testing.assert_array_equal(a, b)
  # The bits are JAX's own threefry bits (the eager default path gives the same).
  np.testing.assert_array_equal(out["unrolled"][0], np.asarray(jax.random.bits(key, (3, 50, 7))))
  assert out["unrolled"][1].dtype == np.bool_ and 0.8 < out["unrolled"][1].mean() < 1.0


def test_bad_kind_and_env_default(monkeypatch, restore_default):
  with pytest.raises(ValueError, match="expected 'unrolled' or 'rolled', found 'fast'"):
    prng.set_cpu_threefry_lowering("fast")
  monkeypatch.setenv(prng.ENV, "rolled")
  assert prng.apply_default()
  assert "while" in jax.jit(lambda k: jax.random.bits(k, (8,))).lower(jax.random.key(0)).as_text()
  monkeypatch.setenv(prng.ENV, "unrolled")
  assert prng.apply_default()
  assert "while" not in jax.jit(lambda k: jax.random.bits(k, (8,), jnp.uint32)).lower(jax.random.key(0)).as_text()
