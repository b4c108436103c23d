"""Schedules and DDIM maths against an independent float64 numpy reference of diffusers' semantics."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from easytune_jax.core import schedules


class RefDDIM:
  """Independent float64 re-statement of diffusers' DDIMScheduler (set_timesteps + step)."""

  def __init__(
    self,
    n=1000,
    beta_schedule="scaled_linear",
    beta_start=0.00085,
    beta_end=0.012,
    prediction_type="epsilon",
    set_alpha_to_one=False,
    steps_offset=1,
    spacing="leading",
    clip_sample=False,
  ):
    if beta_schedule == "linear":
      betas = [beta_start + (beta_end - beta_start) * i / (n - 1) for i in range(n)]
    elif beta_schedule == "scaled_linear":
      betas = [
        (math.sqrt(beta_start) + (math.sqrt(beta_end) - math.sqrt(beta_start)) * i / (n - 1)) ** 2 for i in range(n)
      ]
    else:
      f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
      betas = [min(1 - f((i + 1) / n) / f(i / n), 0.999) for i in range(n)]
    self.betas = np.array(betas)
    acc, abar = 1.0, []
    for b in betas:
      acc *= 1 - b
      abar.append(acc)
    self.abar = np.array(abar)
    self.final = 1.0 if set_alpha_to_one else self.abar[0]
    self.n, self.pt, self.offset, self.spacing, self.clip = n, prediction_type, steps_offset, spacing, clip_sample

  def set_timesteps(self, T):
    self.T = T
    if self.spacing == "leading":
      r = self.n // T
      ts = [i * r + self.offset for i in reversed(range(T))]
    elif self.spacing == "trailing":
      r = self.n / T
      ts = [int(round(self.n - i * r)) - 1 for i in range(T)]
    else:
      ts = [int(round(v)) for v in np.linspace(0, self.n - 1, T)][::-1]
    self.timesteps = ts
    return ts

  def step(self, out, t, x, eta=0.0, noise=None):
    prev = t - self.n // self.T
    a_t = self.abar[t]
    a_p = self.abar[prev] if prev >= 0 else self.final
    b_t = 1 - a_t
    if self.pt == "epsilon":
      x0 = (x - b_t**0.5 * out) / a_t**0.5
      eps = out
    elif self.pt == "sample":
      x0 = out
      eps = (x - a_t**0.5 * x0) / b_t**0.5
    else:
      x0 = a_t**0.5 * x - b_t**0.5 * out
      eps = a_t**0.5 * out + b_t**0.5 * x
    if self.clip:
      x0 = np.clip(x0, -1, 1)
    var = ((1 - a_p) / b_t) * (1 - a_t / a_p)
    std = eta * var**0.5
    prev_x = a_p**0.5 * x0 + (1 - a_p - std**2) ** 0.5 * eps
    if eta > 0:
      prev_x = prev_x + std * noise
    return prev_x, x0


@pytest.mark.parametrize("beta_schedule", schedules.BETA_SCHEDULES)
def test_betas_and_alphas_cumprod(beta_schedule):
  ref = RefDDIM(beta_schedule=beta_schedule)
  with jax.enable_x64(True):
    s = schedules.make_schedule(schedules.DiffusionConfig(beta_schedule=beta_schedule))
    np.testing.assert_allclose(np.asarray(s.betas), ref.betas, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(np.asarray(s.alphas_cumprod), ref.abar, rtol=1e-10)
    assert float(s.final_alpha_cumprod) == pytest.approx(ref.abar[0])


def test_mld_schedule_known_values():
  # MLD's scaled_linear 0.00085..0.012: abar_0 = 1 - 0.00085 and abar_999 ~ 0.00466.
  with jax.enable_x64(True):
    s = schedules.make_schedule()
    assert float(s.alphas_cumprod[0]) == pytest.approx(0.99915, abs=1e-12)
    assert float(s.alphas_cumprod[-1]) == pytest.approx(0.0046600, rel=1e-3)
  one = schedules.make_schedule(schedules.DiffusionConfig(set_alpha_to_one=True))
  assert float(one.final_alpha_cumprod) == 1.0


@pytest.mark.parametrize("spacing", schedules.TIMESTEP_SPACINGS)
@pytest.mark.parametrize("T", [10, 50, 1000])
def test_ddim_timesteps(spacing, T):
  offset = 1 if spacing == "leading" and T < 1000 else 0
  ref = RefDDIM(spacing=spacing, steps_offset=offset)
  ts, prev = schedules.ddim_timesteps(1000, T, spacing, offset)
  assert list(ts) == ref.set_timesteps(T)
  np.testing.assert_array_equal(prev, ts - 1000 // T)
  assert ts.dtype == np.int32 and np.all(np.diff(ts) < 0)


def test_ddim_timesteps_mld_defaults():
  ts, prev = schedules.ddim_timesteps(1000, 50)
  assert ts[0] == 981 and ts[-1] == 1 and prev[-1] == -19
  with pytest.raises(ValueError, match="num_inference_steps"):
    schedules.ddim_timesteps(1000, 0)
  with pytest.raises(ValueError, match="steps_offset"):
    schedules.ddim_timesteps(1000, 1000, "leading", 1)


def test_config_validation_names_the_field():
  with pytest.raises(ValueError, match="beta_schedule.*'cosine'"):
    schedules.DiffusionConfig(beta_schedule="cosine")
  with pytest.raises(ValueError, match="prediction_type"):
    schedules.DiffusionConfig(prediction_type="eps")


@pytest.mark.parametrize("prediction_type", schedules.PREDICTION_TYPES)
@pytest.mark.parametrize("eta", [0.0, 0.5])
@pytest.mark.parametrize("T", [10, 50, 1000])
def test_ddim_step_matches_reference(prediction_type, eta, T):
  offset = 0 if T == 1000 else 1
  ref = RefDDIM(prediction_type=prediction_type, steps_offset=offset)
  ts = ref.set_timesteps(T)
  rng = np.random.default_rng(T)
  idx = sorted({0, 1, T // 2, T - 1})
  with jax.enable_x64(True):
    s = schedules.make_schedule(schedules.DiffusionConfig(prediction_type=prediction_type))
    jts, jprev = schedules.ddim_timesteps(1000, T, "leading", offset)
    step = jax.jit(lambda o, x, t, p, n: schedules.ddim_step(s, o, x, t, p, eta=eta, noise=n))
    for i in idx:
      x = rng.normal(size=(3, 5, 4))
      out = rng.normal(size=(3, 5, 4))
      noise = rng.normal(size=(3, 5, 4))
      want_prev, want_x0 = ref.step(out, ts[i], x, eta, noise)
      got_prev, got_x0 = step(out, x, jnp.full((3,), jts[i]), jnp.full((3,), jprev[i]), noise)
      np.testing.assert_allclose(np.asarray(got_prev), want_prev, rtol=1e-6, atol=1e-6)
      np.testing.assert_allclose(np.asarray(got_x0), want_x0, rtol=1e-6, atol=1e-6)


def test_clip_sample_and_eta_requires_noise():
  ref = RefDDIM(clip_sample=True)
  ref.set_timesteps(10)
  with jax.enable_x64(True):
    s = schedules.make_schedule(schedules.DiffusionConfig(clip_sample=True))
    x = np.linspace(-3, 3, 12).reshape(2, 6)
    out = np.linspace(2, -2, 12).reshape(2, 6)
    got, x0 = schedules.ddim_step(s, out, x, jnp.array([901, 901]), jnp.array([801, 801]))
    want, want_x0 = ref.step(out, 901, x)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-10)
    assert np.abs(np.asarray(x0)).max() <= 1.0
    with pytest.raises(ValueError, match="noise"):
      schedules.ddim_step(s, out, x, 901, 801, eta=0.3)


@pytest.mark.parametrize("prediction_type", schedules.PREDICTION_TYPES)
def test_add_noise_target_and_inversion(prediction_type):
  with jax.enable_x64(True):
    s = schedules.make_schedule(schedules.DiffusionConfig(prediction_type=prediction_type))
    rng = np.random.default_rng(0)
    x0, noise = rng.normal(size=(4, 7)), rng.normal(size=(4, 7))
    t = jnp.array([0, 10, 500, 999])
    xt = schedules.add_noise(s, x0, noise, t)
    abar = np.asarray(s.alphas_cumprod)[np.asarray(t)][:, None]
    np.testing.assert_allclose(np.asarray(xt), np.sqrt(abar) * x0 + np.sqrt(1 - abar) * noise, atol=1e-12)
    # A perfect model output recovers x0 and eps exactly, for every prediction type.
    target = schedules.training_target(s, x0, noise, t)
    x0_hat, eps_hat = schedules.predict_x0_eps(s, target, xt, t)
    np.testing.assert_allclose(np.asarray(x0_hat), x0, atol=1e-9)
    np.testing.assert_allclose(np.asarray(eps_hat), noise, atol=1e-9)


def test_vmappable_over_timesteps_and_train_sampling():
  s = schedules.make_schedule()
  x = jnp.ones((2, 3))
  f = jax.vmap(lambda t: schedules.add_noise(s, x, x, jnp.full((2,), t)))
  assert f(jnp.arange(5)).shape == (5, 2, 3)
  t = schedules.sample_train_timesteps(jax.random.key(0), 4096, s)
  assert t.dtype == jnp.int32 and int(t.min()) >= 0 and int(t.max()) <= 999
  assert int(schedules.sample_train_timesteps(jax.random.key(1), 4096, s, 500).max()) < 500
