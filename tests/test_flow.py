"""The sampling-process protocol: flow matching and DDPM next to DDIM.

Process maths against formulas written here in float64 (and, for the stochastic samplers, against the marginals they
must keep); the sampler on a flow whose exact velocity is known; DDIM through the protocol bit-identical to the
direct composition of `guided_denoise` and `ddim_step`; and every fine-tuning method on the flow process against
its definition unrolled by hand (Euler steps, guidance, every stop_gradient), gradients compared in float64.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from easytune_jax import finetune
from easytune_jax.core import flow, sampling, schedules
from easytune_jax.core.optim import create_train_state
from easytune_jax.core.sampling_process import denoising_loss
from tests.test_finetune import B, W, assert_tree_close, decode, denoise, inputs, make_params, reward, tree_norm

T = 5


# --------------------------------------------------------------------------------------------- process maths
def test_flow_grid_and_times():
  s, s_next = flow.flow_grid(4)
  np.testing.assert_allclose(s, [1.0, 0.75, 0.5, 0.25])
  np.testing.assert_allclose(s_next, [0.75, 0.5, 0.25, 0.0])
  shifted, _ = flow.flow_grid(4, shift=3.0)
  np.testing.assert_allclose(shifted, [3 * u / (1 + 2 * u) for u in s])
  proc = flow.make_flow(flow.FlowConfig(time_shift=3.0))
  ts = sampling.make_timesteps(proc, sampling.SamplerConfig(num_steps=4))
  np.testing.assert_allclose(ts.t, shifted, rtol=1e-6)
  assert float(ts.prev_t[-1]) == 0.0
  np.testing.assert_allclose(proc.model_time(jnp.asarray([0.5, 1.0])), [500.0, 1000.0])
  np.testing.assert_array_equal(proc.reward_time(jnp.asarray([0.0, 0.5, 1.0])), [0, 500, 999])
  with pytest.raises(ValueError, match="FlowConfig.train_time: expected one of"):
    flow.FlowConfig(train_time="beta")


def test_flow_interpolant_target_and_clean_estimate_float64():
  with jax.enable_x64(True):
    proc = flow.make_flow()
    ks = jax.random.split(jax.random.key(0), 3)
    x0, eps = jax.random.normal(ks[0], (4, 3, 2), jnp.float64), jax.random.normal(ks[1], (4, 3, 2), jnp.float64)
    s = jax.random.uniform(ks[2], (4,), jnp.float64)
    x_s = proc.add_noise(x0, eps, s)
    np.testing.assert_allclose(x_s, (1 - s)[:, None, None] * x0 + s[:, None, None] * eps, rtol=1e-14)
    v = proc.training_target(x0, eps, s)
    x0_hat, eps_hat = proc.predict_x0_eps(v, x_s, s)  # the true velocity gives back x0 and eps
    np.testing.assert_allclose(x0_hat, x0, atol=1e-13)
    np.testing.assert_allclose(eps_hat, eps, atol=1e-13)
    # Euler with eta = 0 equals the ancestral formula at eta = 0 (DDIM of the interpolant); the formula runs when
    # eta is an array (not the static 0).
    euler, _ = proc.step(v, x_s, s, s * 0.6)
    ddim, _ = proc.step(v, x_s, s, s * 0.6, eta=jnp.float64(0.0), noise=jnp.zeros_like(x_s))
    np.testing.assert_allclose(euler, ddim, atol=1e-13)
    np.testing.assert_allclose(euler, (1 - 0.6 * s)[:, None, None] * x0 + 0.6 * s[:, None, None] * eps, atol=1e-13)


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_flow_stochastic_step_keeps_the_marginals(eta):
  """x_s ~ (1-s) x0 + s N(0, 1) with the exact velocity of a point mass at x0: the step's output must be distributed
  as (1-s') x0 + s' N(0, 1) for every eta (mean and standard deviation over 400k draws)."""
  with jax.enable_x64(True):
    proc, x0, s, s_next, n = flow.make_flow(), 0.7, 0.8, 0.3, 400_000
    k1, k2 = jax.random.split(jax.random.key(1))
    x_s = (1 - s) * x0 + s * jax.random.normal(k1, (n, 1), jnp.float64)
    v = (x_s - x0) / s  # exact velocity of a point mass at x0
    out, x0_hat = proc.step(v, x_s, s, s_next, eta=eta, noise=jax.random.normal(k2, (n, 1), jnp.float64))
    np.testing.assert_allclose(x0_hat, x0, atol=1e-12)
    np.testing.assert_allclose(float(jnp.mean(out)), (1 - s_next) * x0, atol=3e-3)
    np.testing.assert_allclose(float(jnp.std(out)), s_next, rtol=5e-3)
    # ... and the fresh noise really enters: the output is not the deterministic Euler output.
    assert float(jnp.max(jnp.abs(out - proc.step(v, x_s, s, s_next)[0]))) > 1e-2


def test_ddpm_step_is_the_posterior_and_matches_ddim_eta_one():
  """DDPM's ancestral step written from diffusers' formulas in float64; its mean and variance equal DDIM's at eta = 1
  (the same posterior in DDIM's parameterisation)."""
  with jax.enable_x64(True):
    sched = schedules.make_schedule(schedules.DiffusionConfig(sampler="ddpm"), dtype=jnp.float64)
    abar = np.asarray(sched.alphas_cumprod)
    ks = jax.random.split(jax.random.key(2), 3)
    x_t, out = jax.random.normal(ks[0], (3, 4), jnp.float64), jax.random.normal(ks[1], (3, 4), jnp.float64)
    noise = jax.random.normal(ks[2], (3, 4), jnp.float64)
    t, prev = 501, 481
    got, x0 = sched.step(out, x_t, t, prev, noise=noise)
    a, ap = abar[t], abar[prev]
    x0_ref = (np.asarray(x_t) - np.sqrt(1 - a) * np.asarray(out)) / np.sqrt(a)
    beta = 1 - a / ap
    mean = np.sqrt(ap) * beta / (1 - a) * x0_ref + np.sqrt(a / ap) * (1 - ap) / (1 - a) * np.asarray(x_t)
    var = (1 - ap) / (1 - a) * beta
    np.testing.assert_allclose(x0, x0_ref, rtol=1e-12)
    np.testing.assert_allclose(got, mean + np.sqrt(var) * np.asarray(noise), rtol=1e-12)
    ddim = schedules.make_schedule(dtype=jnp.float64)
    ddim_mean, _ = ddim.step(out, x_t, t, prev, eta=jnp.float64(1.0), noise=jnp.zeros_like(x_t))
    np.testing.assert_allclose(ddim_mean, mean, rtol=1e-10)
    ddim_noisy, _ = ddim.step(out, x_t, t, prev, eta=jnp.float64(1.0), noise=noise)
    np.testing.assert_allclose(ddim_noisy - ddim_mean, np.sqrt(var) * np.asarray(noise), rtol=1e-10)
    # The last step (t = 0 in diffusers' rule) adds no noise; prev_t < 0 uses abar = 1.
    last, x0_last = sched.step(out, x_t, 0, -20, noise=noise)
    np.testing.assert_allclose(last, x0_last, rtol=1e-12)
    assert sched.needs_noise(0.0) and not ddim.needs_noise(0.0)
    with pytest.raises(ValueError, match="DiffusionConfig.sampler: expected one of"):
      schedules.DiffusionConfig(sampler="euler")


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_flow_sampler_reaches_the_point_mass(eta):
  """With the exact velocity of data concentrated at x* (v = (x - x*) / s), the ODE (and the SDE) sampler ends at
  x* from any noise: the sampler's grid, times and update are wired right."""
  proc = flow.make_flow()
  target = jnp.linspace(-1.0, 1.0, 6).reshape(2, 3)

  def exact(params, x, t_model, cond):
    return (x - cond["x"]) / (t_model[:, None] / 1000.0)

  x_T = jax.random.normal(jax.random.key(0), (2, 3))
  ts = sampling.make_timesteps(proc, sampling.SamplerConfig(num_steps=7))
  out = sampling.sample(
    exact, None, proc, ts, x_T, {"x": target}, None, eta=eta, rng=jax.random.key(1), return_trajectory=True
  )
  np.testing.assert_allclose(out.x0, target, atol=1e-5)
  np.testing.assert_allclose(out.x0_hats, jnp.broadcast_to(target, out.x0_hats.shape), atol=1e-4)


def test_ddim_through_the_protocol_is_bit_identical_to_the_direct_composition():
  params = make_params(jnp.float32)
  sched = schedules.make_schedule()
  x_T, cond, uncond = inputs(jnp.float32)
  ts = sampling.make_timesteps(sched, sampling.SamplerConfig(num_steps=8))
  got = jax.jit(lambda p: sampling.sample(denoise, p, sched, ts, x_T, cond, uncond, W).x0)(params)

  def direct(p):
    def body(x, i):
      out = sampling.guided_denoise(denoise, p, x, ts.t[i], cond, uncond, W)
      return schedules.ddim_step(sched, out, x, ts.t[i], ts.prev_t[i])[0], None

    return jax.lax.scan(body, x_T, jnp.arange(8))[0]

  np.testing.assert_array_equal(got, jax.jit(direct)(params))


def test_flow_denoising_loss_is_the_velocity_regression():
  with jax.enable_x64(True):
    params, (x0, cond, _) = make_params(jnp.float64), inputs(jnp.float64)
    proc = flow.make_flow()
    k_t, k_n = jax.random.key(3), jax.random.key(4)
    got = denoising_loss(proc, lambda x, t: denoise(params, x, t, cond), x0, k_t, k_n)
    s = jax.random.uniform(k_t, (B,), jnp.float64)
    eps = jax.random.normal(k_n, x0.shape, jnp.float64)
    x_s = (1 - s)[:, None] * x0 + s[:, None] * eps
    ref = np.mean((np.asarray(denoise(params, x_s, 1000.0 * s, cond)) - np.asarray(eps - x0)) ** 2)
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    logit = flow.make_flow(flow.FlowConfig(train_time="logit_normal")).sample_train_time(k_t, 10_000)
    np.testing.assert_allclose(float(jnp.mean(logit)), 0.5, atol=0.01)


# --------------------------------------------------------------------------------------------- methods on flow
class FlowRef:
  """Euler steps of the linear-interpolant flow + CFG on the velocity, written from the formulas."""

  def __init__(self, num_steps=T):
    self.s = np.linspace(1.0, 0.0, num_steps + 1)

  def out(self, p, x, i, cond, uncond):
    t = jnp.full((B,), 1000.0 * self.s[i], x.dtype)
    return denoise(p, x, t, uncond) + W * (denoise(p, x, t, cond) - denoise(p, x, t, uncond))

  def euler(self, v, x, i):
    """-> (x_next, x0_hat)."""
    return x + (self.s[i + 1] - self.s[i]) * v, x - self.s[i] * v

  def step(self, p, x, i, cond, uncond):
    return self.euler(self.out(p, x, i, cond, uncond), x, i)

  def R(self, x, cond):
    return -jnp.sum(jnp.square(decode(x, None) - cond["target"]), axis=-1)

  def prefix(self, p, x, cond, uncond, stop):
    """x_{s_stop} after steps 0..stop-1, without gradient."""
    for i in range(stop):
      x = jax.lax.stop_gradient(self.step(p, x, i, cond, uncond)[0])
    return x


def flow_setup():
  return make_params(jnp.float64), flow.make_flow(), *inputs(jnp.float64)


def fcfg(method, **kw):
  return finetune.FinetuneConfig(method=method, num_steps=T, guidance_scale=W, **kw)


def grad_fn(method, proc, **kw):
  loss_fn = finetune.make_trajectory_loss(fcfg(method, **kw), denoise, reward, proc, decode=decode)
  return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))


def check(loss, g, expected, params):
  np.testing.assert_allclose(loss, expected(params), rtol=1e-12)
  assert_tree_close(g, jax.grad(expected)(params))


def test_easytune_on_flow_equals_sum_of_independent_step_grads():
  with jax.enable_x64(True):
    params, proc, x_T, cond, uncond = flow_setup()
    ref, lr = FlowRef(), 0.01
    tx = optax.sgd(lr)
    update = finetune.make_update_fn(fcfg("easytune", k=3), denoise, reward, proc, tx, decode=decode)
    state, m = update(create_train_state(params, tx), x_T, cond, uncond, jax.random.key(5))
    grads = []
    for i in range(T - 3, T):
      x_i = ref.prefix(params, x_T, cond, uncond, i)
      grads.append(jax.grad(lambda p, i=i, x=x_i: -jnp.mean(ref.R(ref.step(p, x, i, cond, uncond)[1], cond)))(params))
    assert_tree_close(state.params, jax.tree.map(lambda p, *g: p - lr * sum(g), params, *grads))
    np.testing.assert_allclose(m["grad_norm_per_step"], [tree_norm(g) for g in grads], rtol=1e-10)


@pytest.mark.parametrize("k", [2, T])
def test_draft_on_flow_equals_unrolled_backprop(k):
  with jax.enable_x64(True):
    params, proc, x_T, cond, uncond = flow_setup()
    ref = FlowRef()
    (loss, aux), g = grad_fn("draft", proc, k=k)(params, x_T, cond, uncond, jax.random.key(0))

    def expected(p):
      x = ref.prefix(params, x_T, cond, uncond, T - k)
      for i in range(T - k, T):
        x = ref.step(p, x, i, cond, uncond)[0]
      return -jnp.mean(ref.R(x, cond))

    check(loss, g, expected, params)


def test_refl_on_flow_equals_definition():
  with jax.enable_x64(True):
    params, proc, x_T, cond, uncond = flow_setup()
    ref, f, seen = FlowRef(), grad_fn("refl", proc, m=3), set()
    for seed in (0, 3, 4):
      (loss, aux), g = f(params, x_T, cond, uncond, jax.random.key(seed))
      i = int(aux.loss_index)
      seen.add(i)
      x = ref.prefix(params, x_T, cond, uncond, i)
      check(loss, g, lambda p, i=i, x=x: -jnp.mean(ref.R(ref.step(p, x, i, cond, uncond)[1], cond)), params)
    assert len(seen) >= 2


def test_alignprop_and_drtune_on_flow_equal_definitions():
  with jax.enable_x64(True):
    params, proc, x_T, cond, uncond = flow_setup()
    ref = FlowRef()
    (loss, aux), g = grad_fn("alignprop", proc, p=0.4)(params, x_T, cond, uncond, jax.random.key(1))
    mask = np.asarray(aux.grad_mask)

    def alignprop(p):
      x = x_T
      for i in range(T):
        v = ref.out(p, x, i, cond, uncond)
        x = ref.euler(v if mask[i] else jax.lax.stop_gradient(v), x, i)[0]
      return -jnp.mean(ref.R(x, cond))

    check(loss, g, alignprop, params)
    (loss, aux), g = grad_fn("drtune", proc, k=2, m=3, t_train=5)(params, x_T, cond, uncond, jax.random.key(2))
    mask, i_min = np.asarray(aux.grad_mask), int(aux.loss_index)

    def drtune(p):
      x = x_T
      for i in range(i_min + 1):
        v = ref.out(p, jax.lax.stop_gradient(x), i, cond, uncond)
        x, x0 = ref.euler(v if mask[i] else jax.lax.stop_gradient(v), x, i)
      return -jnp.mean(ref.R(x0, cond))

    check(loss, g, drtune, params)


def test_motionrft_is_the_one_euler_jump_from_a_random_k():
  """MotionRFT's flow fine-tuning: k ~ U{min_k..T}; Euler without gradient to s_k; one jump x_k + (0 - s_k) v(x_k)
  with gradient, scored. k = T: the whole ODE ran without gradient, the jump has length 0, the gradient is 0."""
  with jax.enable_x64(True):
    params, proc, x_T, cond, uncond = flow_setup()
    ref, f, seen = FlowRef(), grad_fn("motionrft", proc, min_k=1), set()
    for seed in range(30):
      (loss, aux), g = f(params, x_T, cond, uncond, jax.random.key(seed))
      k = int(aux.offset)
      seen.add(k)
      assert 1 <= k <= T and int(aux.loss_index) == min(k, T - 1)
      x_k = ref.prefix(params, x_T, cond, uncond, k)
      if k < T:
        check(
          loss,
          g,
          lambda p, x=x_k, k=k: -jnp.mean(ref.R(x + (0.0 - ref.s[k]) * ref.out(p, x, k, cond, uncond), cond)),
          params,
        )
      else:
        np.testing.assert_allclose(loss, -jnp.mean(ref.R(x_k, cond)), rtol=1e-12)
        assert tree_norm(g) == 0.0
    assert T in seen and len(seen) >= 4
    ks = jax.vmap(lambda r: finetune.motionrft_choices(r, 10, 3)[0])(jax.random.split(jax.random.key(0), 4000))
    assert set(np.unique(ks).tolist()) == set(range(3, 11))
    with pytest.raises(ValueError, match=r"min_k: expected 1 <= min_k <= num_steps=5, found 6"):
      fcfg("motionrft", min_k=6)


@pytest.mark.parametrize("method", finetune.METHODS)
def test_every_method_updates_on_flow_and_ddpm(method):
  """Every row runs on the flow process and on DDPM's stochastic sampler (its noise keyed per step)."""
  params, x_T, cond, uncond = make_params(jnp.float32), *inputs(jnp.float32)
  for proc in (flow.make_flow(), schedules.make_schedule(schedules.DiffusionConfig(sampler="ddpm"))):
    tx = optax.sgd(1e-2)
    config = fcfg(method, k=2 if method in ("draft", "drtune") else None, m=3)
    update = finetune.make_update_fn(config, denoise, reward, proc, tx, decode=decode)
    state, m = update(create_train_state(params, tx), x_T, cond, uncond, jax.random.key(0))
    assert bool(m["finite"]) and int(state.step) == config.updates_per_trajectory
    if method != "motionrft" or int(m["offset"]) < T:
      assert tree_norm(jax.tree.map(jnp.subtract, state.params, params)) > 0, (method, proc.kind)


@pytest.mark.slow
def test_easytune_memory_on_flow_is_flat_in_T():
  b, l, d, h = 8, 16, 64, 256
  ks = jax.random.split(jax.random.key(0), 3)
  params = {
    "w1": jax.random.normal(ks[0], (d, h)) * 0.05,
    "w2": jax.random.normal(ks[1], (h, h)) * 0.05,
    "w3": jax.random.normal(ks[2], (h, d)) * 0.05,
  }

  def mlp(p, x, t, cond):
    z = jnp.tanh(x @ p["w1"] + cond["c"][:, None] + t[:, None, None] / 1000.0)
    return jnp.tanh(z @ p["w2"]) @ p["w3"]

  rew = lambda x, cond, t: -jnp.sum(jnp.square(x), (-2, -1))  # noqa: E731
  x_T, cond, uncond = jnp.ones((b, l, d)), {"c": jnp.ones((b, h))}, {"c": jnp.zeros((b, h))}
  tx = optax.adam(1e-3)
  state = create_train_state(params, tx)
  temp = {}
  for method, n, k in [("easytune", 10, None), ("easytune", 200, None), ("draft", 10, 10), ("draft", 50, 50)]:
    config = finetune.FinetuneConfig(method=method, num_steps=n, k=k)
    update = finetune.make_update_fn(config, mlp, rew, flow.make_flow(), tx, jit=False)
    temp[(method, n)] = finetune.compiled_memory(update, state, x_T, cond, uncond, jax.random.key(0))["temp"]
  assert abs(temp[("easytune", 200)] / temp[("easytune", 10)] - 1) < 0.01, temp
  assert temp[("draft", 50)] > 3.0 * temp[("draft", 10)], temp
