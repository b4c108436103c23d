"""The lax.scan sampler against a hand-unrolled Python loop of the DDIM formulas."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from easytune_jax.core import sampling, schedules


def tiny_denoiser():
  """A nonlinear conditional denoiser: out = tanh(x W + c + time_feature(t))."""
  k1, k2 = jax.random.split(jax.random.key(0))
  params = {"w": jax.random.normal(k1, (6, 6)) * 0.3, "tw": jax.random.normal(k2, (6,)) * 0.01}

  def denoise(p, x, t, cond):
    return jnp.tanh(x @ p["w"] + cond["c"] + p["tw"] * t[:, None].astype(x.dtype) / 1000.0)

  return params, denoise


def reference_loop(params, denoise, x, cond, uncond, w, T, eta=0.0, rng=None, pt="epsilon"):
  """Plain Python loop, float64 numpy, guidance written out separately."""
  s64 = schedules.make_schedule(schedules.DiffusionConfig(prediction_type=pt))
  abar = np.asarray(s64.alphas_cumprod, np.float64)
  ts, prev = schedules.ddim_timesteps(1000, T)
  x = np.asarray(x, np.float64)
  x0s = []
  for i in range(T):
    t = np.full((x.shape[0],), ts[i])
    ou = np.asarray(denoise(params, jnp.asarray(x, jnp.float32), jnp.asarray(t), uncond), np.float64)
    oc = np.asarray(denoise(params, jnp.asarray(x, jnp.float32), jnp.asarray(t), cond), np.float64)
    out = ou + w * (oc - ou)
    a_t = abar[ts[i]]
    a_p = abar[prev[i]] if prev[i] >= 0 else abar[0]
    if pt == "epsilon":
      x0, eps = (x - np.sqrt(1 - a_t) * out) / np.sqrt(a_t), out
    else:
      x0 = np.sqrt(a_t) * x - np.sqrt(1 - a_t) * out
      eps = np.sqrt(a_t) * out + np.sqrt(1 - a_t) * x
    std = eta * np.sqrt((1 - a_p) / (1 - a_t) * (1 - a_t / a_p))
    x = np.sqrt(a_p) * x0 + np.sqrt(1 - a_p - std**2) * eps
    if eta > 0:
      x = x + std * np.asarray(sampling.step_noise(rng, jnp.asarray(i), x.shape, jnp.float32), np.float64)
    x0s.append(x0)
  return x, np.stack(x0s)


@pytest.mark.parametrize("eta,pt", [(0.0, "epsilon"), (0.5, "epsilon"), (0.0, "v_prediction")])
def test_sampler_matches_unrolled_loop(eta, pt):
  params, denoise = tiny_denoiser()
  s = schedules.make_schedule(schedules.DiffusionConfig(prediction_type=pt))
  ts = sampling.make_timesteps(s, sampling.SamplerConfig(num_steps=10))
  x_T = jax.random.normal(jax.random.key(1), (3, 6))
  cond = {"c": jax.random.normal(jax.random.key(2), (3, 6)) * 0.5}
  uncond = {"c": jnp.zeros((3, 6))}
  rng = jax.random.key(3)
  out = jax.jit(
    lambda p, x: sampling.sample(denoise, p, s, ts, x, cond, uncond, 4.0, eta, rng, return_trajectory=True)
  )(params, x_T)
  want_x, want_x0s = reference_loop(params, denoise, x_T, cond, uncond, 4.0, 10, eta, rng, pt)
  np.testing.assert_allclose(np.asarray(out.x0), want_x, rtol=2e-4, atol=2e-4)
  np.testing.assert_allclose(np.asarray(out.x0_hats), want_x0s, rtol=2e-4, atol=2e-4)
  assert out.trajectory.shape == (10, 3, 6)
  np.testing.assert_array_equal(np.asarray(out.trajectory[0]), np.asarray(x_T))


def test_jit_and_no_jit_agree_and_partial_runs_compose():
  params, denoise = tiny_denoiser()
  s = schedules.make_schedule()
  ts = sampling.make_timesteps(s, sampling.SamplerConfig(num_steps=8))
  x_T = jax.random.normal(jax.random.key(1), (2, 6))
  cond, uncond = {"c": jnp.ones((2, 6)) * 0.1}, {"c": jnp.zeros((2, 6))}
  f = lambda p, x: sampling.sample(denoise, p, s, ts, x, cond, uncond, 7.5).x0
  np.testing.assert_allclose(np.asarray(jax.jit(f)(params, x_T)), np.asarray(f(params, x_T)), atol=1e-5)
  # Running steps 0..4 then 5..7 equals running 0..7 (the DRaFT-K split relies on this).
  mid = sampling.sample(denoise, params, s, ts, x_T, cond, uncond, 7.5, stop_index=5).x0
  end = sampling.sample(denoise, params, s, ts, mid, cond, uncond, 7.5, start_index=5).x0
  np.testing.assert_allclose(np.asarray(end), np.asarray(f(params, x_T)), atol=1e-5)


def test_guidance_one_equals_conditional_model():
  params, denoise = tiny_denoiser()
  x, t = jax.random.normal(jax.random.key(4), (3, 6)), jnp.array([981, 500, 1])
  cond, uncond = {"c": jnp.ones((3, 6))}, {"c": jnp.zeros((3, 6))}
  guided = sampling.guided_denoise(denoise, params, x, t, cond, uncond, 1.0)
  np.testing.assert_allclose(np.asarray(guided), np.asarray(denoise(params, x, t, cond)), atol=1e-6)
  plain = sampling.guided_denoise(denoise, params, x, t, cond, None, 7.5)
  np.testing.assert_allclose(np.asarray(plain), np.asarray(denoise(params, x, t, cond)), atol=1e-6)


def test_no_retracing_across_calls():
  params, denoise = tiny_denoiser()
  s = schedules.make_schedule()
  ts = sampling.make_timesteps(s, sampling.SamplerConfig(num_steps=5))
  uncond = {"c": jnp.zeros((2, 6))}

  @jax.jit
  @chex.assert_max_traces(n=1)
  def run(p, x, cond, w):
    return sampling.sample(denoise, p, s, ts, x, cond, uncond, w).x0

  for i in range(3):
    run(params, jnp.full((2, 6), float(i)), {"c": jnp.full((2, 6), 0.1 * i)}, jnp.float32(2.0 + i))


def test_sampler_config_validation():
  with pytest.raises(ValueError, match="guidance_scale"):
    sampling.SamplerConfig(guidance_scale=-1.0)
  with pytest.raises(ValueError, match="rng"):
    params, denoise = tiny_denoiser()
    s = schedules.make_schedule()
    ts = sampling.make_timesteps(s, sampling.SamplerConfig(num_steps=2))
    sampling.sample(denoise, params, s, ts, jnp.zeros((1, 6)), {"c": jnp.zeros((1, 6))}, eta=0.5)
