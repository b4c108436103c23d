"""Gradient placement of EasyTune and the baselines against independently unrolled Python definitions.

The references below never call `easytune_jax.finetune`: they write DDIM, guidance, the reward and every
stop_gradient out by hand (float64 under `jax.enable_x64`), and compare parameters/gradients exactly.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from easytune_jax import finetune
from easytune_jax.core import sampling, schedules
from easytune_jax.core.optim import OptimConfig, create_train_state, make_optimizer

B, D, H, C = 3, 5, 7, 5
T = 5
W = 2.0  # guidance scale


# --------------------------------------------------------------------------------------------- tiny problem
def make_params(dtype):
  ks = jax.random.split(jax.random.key(0), 4)
  return {
    "w1": (jax.random.normal(ks[0], (D, H)) * 0.4).astype(dtype),
    "b1": (jax.random.normal(ks[1], (H,)) * 0.1).astype(dtype),
    "w2": (jax.random.normal(ks[2], (H, D)) * 0.4).astype(dtype),
    "tw": (jax.random.normal(ks[3], (H,)) * 0.5).astype(dtype),
  }


def denoise(p, x, t, cond):
  """Nonlinear conditional MLP: eps = tanh(x W1 + b1 + c + tw t/1000) W2."""
  h = jnp.tanh(
    x @ p["w1"] + p["b1"] + cond["c"] @ jnp.ones((C, H), x.dtype) * 0.3 + p["tw"] * t[:, None].astype(x.dtype) / 1000.0
  )
  return h @ p["w2"]


DEC = np.linspace(-1.0, 1.0, D * D).reshape(D, D) * 0.5 + np.eye(D)


def decode(z, cond):
  """A frozen linear 'VAE decoder' (its weights are constants, never trained)."""
  del cond
  return z @ jnp.asarray(DEC, z.dtype)


def reward(x, cond, t):
  """Quadratic reward [B]; a timestep, when given, scales it (so tests see which t was passed)."""
  r = -jnp.sum(jnp.square(x - cond["target"]), axis=-1)
  if t is not None:
    r = r * (1.0 + t.astype(x.dtype) / 1000.0)
  return r


def inputs(dtype, seed=1):
  ks = jax.random.split(jax.random.key(seed), 4)
  x_T = jax.random.normal(ks[0], (B, D)).astype(dtype)
  cond = {"c": jax.random.normal(ks[1], (B, C)).astype(dtype), "target": jax.random.normal(ks[2], (B, D)).astype(dtype)}
  uncond = {"c": jnp.zeros((B, C), dtype), "target": cond["target"]}
  return x_T, cond, uncond


# --------------------------------------------------------------------------------------------- references
class Ref:
  """DDIM (eta=0, epsilon) + CFG written from the formulas, float64 abar from numpy."""

  def __init__(self, num_steps=T):
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    self.abar = np.cumprod(1.0 - betas)
    self.ts, self.prev = schedules.ddim_timesteps(1000, num_steps)

  def out(self, p, x, i, cond, uncond):
    t = jnp.full((B,), int(self.ts[i]), jnp.int32)
    return denoise(p, x, t, uncond) + W * (denoise(p, x, t, cond) - denoise(p, x, t, uncond))

  def ddim(self, out, x, i):
    a = self.abar[self.ts[i]]
    ap = self.abar[self.prev[i]] if self.prev[i] >= 0 else self.abar[0]
    x0 = (x - np.sqrt(1 - a) * out) / np.sqrt(a)
    return np.sqrt(ap) * x0 + np.sqrt(1 - ap) * out, x0

  def step(self, p, x, i, cond, uncond):
    return self.ddim(self.out(p, x, i, cond, uncond), x, i)

  def R(self, x, cond, t=None):
    r = -jnp.sum(jnp.square(decode(x, None) - cond["target"]), axis=-1)
    return r if t is None else r * (1.0 + t / 1000.0)

  def trajectory(self, p, x, cond, uncond, stop):
    """Inputs x_{t_i} of steps 0..stop-1's successors, computed without any gradient."""
    xs = [x]
    for i in range(stop):
      xs.append(jax.lax.stop_gradient(self.step(p, xs[-1], i, cond, uncond)[0]))
    return xs


def setup(dtype=jnp.float64):
  return make_params(dtype), schedules.make_schedule(dtype=dtype), *inputs(dtype)


def cfg(method, **kw):
  return finetune.FinetuneConfig(method=method, num_steps=kw.pop("num_steps", T), guidance_scale=W, **kw)


def assert_tree_close(a, b, rtol=1e-9, atol=1e-12):
  jax.tree.map(lambda u, v: np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=atol), a, b)


def tree_norm(t):
  return float(optax.tree.norm(t))


# --------------------------------------------------------------------------------------------- config
def test_config_validation_errors():
  with pytest.raises(
    ValueError,
    match=r"method: expected one of \('easytune', 'draft', 'refl', "
    r"'alignprop', 'drtune', 'motionrft'\), found 'ppo'",
  ):
    finetune.FinetuneConfig(method="ppo")
  with pytest.raises(ValueError, match=r"k: expected 1 <= k <= num_steps=10, found 11"):
    finetune.FinetuneConfig(num_steps=10, k=11)
  with pytest.raises(ValueError, match=r"m: expected 1 <= m <= num_steps=10, found 12"):
    finetune.FinetuneConfig(method="refl", num_steps=10, m=12)
  for p in (0.0, 1.5):
    with pytest.raises(ValueError, match=r"p: expected a probability in \(0, 1\]"):
      finetune.FinetuneConfig(method="alignprop", p=p)
  with pytest.raises(ValueError, match=r"guidance_scale: expected >= 0, found -1"):
    finetune.FinetuneConfig(guidance_scale=-1.0)
  with pytest.raises(ValueError, match=r"k: DRTune needs k <= t_train=4"):
    finetune.FinetuneConfig(method="drtune", num_steps=10, t_train=4, k=5)
  with pytest.raises(ValueError, match=r"sampler_variant: expected one of"):
    finetune.FinetuneConfig(sampler_variant="lagged")
  with pytest.raises(ValueError, match=r"regularizer: expected one of \('none', 'diffusion', 'kl'\)"):
    finetune.FinetuneConfig(regularizer="l2")
  c = finetune.FinetuneConfig(num_steps=20)
  assert (c.num_grad_steps, c.stop_range, c.updates_per_trajectory) == (20, 10, 20)
  assert finetune.FinetuneConfig(method="draft").updates_per_trajectory == 1


# --------------------------------------------------------------------------------------------- one-step loss
@pytest.mark.parametrize("reward_input,reward_timestep", [("x0_hat", None), ("x0_hat", "t"), ("x_prev", "t")])
def test_step_loss_value_and_grad_match_formula(reward_input, reward_timestep):
  with jax.enable_x64(True):
    params, sched, x_T, cond, uncond = setup()
    ref = Ref()
    ts = sampling.make_timesteps(sched, sampling.SamplerConfig(num_steps=T))
    loss_fn = finetune.make_step_loss(
      denoise, reward, sched, ts, W, decode=decode, reward_input=reward_input, reward_timestep=reward_timestep
    )
    x_t = ref.trajectory(params, x_T, cond, uncond, 2)[2]

    def expected(p):
      x_prev, x0 = ref.step(p, x_t, 2, cond, uncond)
      x, t = (x0, ref.ts[2]) if reward_input == "x0_hat" else (x_prev, max(ref.prev[2], 0))
      return -jnp.mean(ref.R(x, cond, t if reward_timestep else None))

    (loss, aux), g = jax.jit(jax.value_and_grad(loss_fn, has_aux=True), static_argnums=())(
      params, x_t, jnp.int32(2), cond, uncond
    )
    np.testing.assert_allclose(loss, expected(params), rtol=1e-12)
    assert_tree_close(g, jax.grad(expected)(params))
    x_prev, x0 = ref.step(params, x_t, 2, cond, uncond)
    np.testing.assert_allclose(aux.x_prev, x_prev, rtol=1e-12)
    np.testing.assert_allclose(aux.x0_hat, x0, rtol=1e-12)
    assert aux.reward.shape == (B,)
    # x_t is held constant: no gradient flows into it.
    gx = jax.grad(lambda x: loss_fn(params, x, 2, cond, uncond)[0])(x_t)
    np.testing.assert_array_equal(gx, 0.0)


# --------------------------------------------------------------------------------------------- EasyTune
@pytest.mark.parametrize("k,lam", [(T, 0.0), (3, 0.5)])
def test_easytune_frozen_sgd_equals_sum_of_independent_step_grads(k, lam):
  with jax.enable_x64(True):
    params, sched, x_T, cond, uncond = setup()
    ref, lr, rng = Ref(), 0.01, jax.random.key(5)
    tx = optax.sgd(lr)
    reg = dict(regularizer="diffusion", reg_weight=lam) if lam else {}
    update = finetune.make_update_fn(cfg("easytune", k=k, **reg), denoise, reward, sched, tx, decode=decode)
    data = {"x0": x_T * 0.5, "cond": cond}
    state, m = update(create_train_state(params, tx), x_T, cond, uncond, rng, data if lam else None)
    # Reference: trajectory with theta_old; g_i = grad of step i's own loss with x_{t_i} a constant
    # (+ lam * the data denoising loss drawn with the documented key fold_in(split(rng)[1], i)).
    xs = ref.trajectory(params, x_T, cond, uncond, T)
    reg_rng = jax.random.split(rng)[1]

    def step_obj(p, i):
      obj = -jnp.mean(ref.R(ref.step(p, xs[i], i, cond, uncond)[1], cond))
      if lam:
        obj = obj + lam * finetune.diffusion_loss(denoise, sched, p, data, jax.random.fold_in(reg_rng, i))
      return obj

    grads = [jax.grad(step_obj)(params, i) for i in range(T - k, T)]
    expected = jax.tree.map(lambda p, *g: p - lr * sum(g), params, *grads)
    assert_tree_close(state.params, expected)
    assert int(state.step) == k and m["reward_per_step"].shape == (k,)
    np.testing.assert_allclose(m["grad_norm_per_step"], [tree_norm(g) for g in grads], rtol=1e-10)
    rewards = [float(jnp.mean(ref.R(ref.step(params, xs[i], i, cond, uncond)[1], cond))) for i in range(T - k, T)]
    np.testing.assert_allclose(m["reward_per_step"], rewards, rtol=1e-10)
    assert bool(m["finite"])
    if lam:  # the regulariser really contributed
      plain = [
        jax.grad(lambda p, i=i: -jnp.mean(ref.R(ref.step(p, xs[i], i, cond, uncond)[1], cond)))(params)
        for i in range(T - k, T)
      ]
      assert tree_norm(jax.tree.map(lambda *g: sum(g[:k]) - sum(g[k:]), *grads, *plain)) > 1e-3


def test_easytune_online_equals_python_loop_with_latest_params():
  with jax.enable_x64(True):
    params, sched, x_T, cond, uncond = setup()
    ref, lr = Ref(), 0.05
    tx = optax.sgd(lr)
    update = finetune.make_update_fn(
      cfg("easytune", sampler_variant="online"), denoise, reward, sched, tx, decode=decode
    )
    state, _ = update(create_train_state(params, tx), x_T, cond, uncond, jax.random.key(5))
    p, x = params, x_T
    for i in range(T):
      g = jax.grad(lambda q: -jnp.mean(ref.R(ref.step(q, x, i, cond, uncond)[1], cond)))(p)
      x = ref.step(p, x, i, cond, uncond)[0]  # the sampler uses the params of that moment
      p = jax.tree.map(lambda a, b: a - lr * b, p, g)
    assert_tree_close(state.params, p)
    # ... and differs from the frozen variant (the test can tell them apart).
    frozen = finetune.make_update_fn(cfg("easytune"), denoise, reward, sched, tx, decode=decode)
    s2, _ = frozen(create_train_state(params, tx), x_T, cond, uncond, jax.random.key(5))
    assert tree_norm(jax.tree.map(jnp.subtract, s2.params, state.params)) > 1e-6


def test_easytune_skips_nonfinite_steps():
  def nan_reward(x, cond, t):  # NaN for the two noisiest steps (t_i > 500)
    return jnp.where(t > 500, jnp.nan, reward(x, cond, None))

  with jax.enable_x64(True):
    params, sched, x_T, cond, uncond = setup()
    ref, lr = Ref(4), 0.01
    tx = optax.sgd(lr)
    update = finetune.make_update_fn(
      cfg("easytune", num_steps=4, reward_timestep="t"), denoise, nan_reward, sched, tx, decode=decode
    )
    state, m = update(create_train_state(params, tx), x_T, cond, uncond, jax.random.key(0))
    assert list(ref.ts) == [751, 501, 251, 1]
    np.testing.assert_array_equal(m["finite_per_step"], [False, False, True, True])
    assert int(m["skipped"]) == 2 and int(state.skipped) == 2 and not bool(m["finite"])
    xs = ref.trajectory(params, x_T, cond, uncond, 4)
    grads = [
      jax.grad(lambda p, i=i: -jnp.mean(ref.R(ref.step(p, xs[i], i, cond, uncond)[1], cond)))(params) for i in (2, 3)
    ]
    assert_tree_close(state.params, jax.tree.map(lambda p, *g: p - lr * sum(g), params, *grads))


# --------------------------------------------------------------------------------------------- baselines
def traj_grad_fn(method, sched, **kw):
  """Jitted (loss, aux), grad of a method's trajectory loss; built once per test, called once per seed."""
  loss_fn = finetune.make_trajectory_loss(cfg(method, **kw), denoise, reward, sched, decode=decode)
  return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))


@pytest.mark.parametrize("k", [2, T])
def test_draft_k_equals_unrolled_backprop_through_last_k(k):
  with jax.enable_x64(True):
    params, sched, x_T, cond, uncond = setup()
    ref = Ref()
    (loss, aux), g = traj_grad_fn("draft", sched, k=k)(params, x_T, cond, uncond, jax.random.key(0))

    def expected(p):
      x = ref.trajectory(params, x_T, cond, uncond, T - k)[-1]  # held constant
      for i in range(T - k, T):
        x = ref.step(p, x, i, cond, uncond)[0]
      return -jnp.mean(ref.R(x, cond))

    np.testing.assert_allclose(loss, expected(params), rtol=1e-12)
    assert_tree_close(g, jax.grad(expected)(params))
    np.testing.assert_array_equal(aux.grad_mask, np.arange(T) >= T - k)
    if k == T:  # DRaFT-T is plain full backprop through the sampler.

      def full(p):
        x = x_T
        for i in range(T):
          x = ref.step(p, x, i, cond, uncond)[0]
        return -jnp.mean(ref.R(x, cond))

      assert_tree_close(g, jax.grad(full)(params))


def test_refl_equals_definition_given_i_stop():
  with jax.enable_x64(True):
    params, sched, x_T, cond, uncond = setup()
    ref, seen, grad_fn = Ref(), set(), traj_grad_fn("refl", sched, m=3)
    for seed in (0, 3, 4):
      (loss, aux), g = grad_fn(params, x_T, cond, uncond, jax.random.key(seed))
      i_stop = int(aux.loss_index)
      seen.add(i_stop)
      assert T - 3 <= i_stop < T
      np.testing.assert_array_equal(aux.grad_mask, np.arange(T) == i_stop)
      x = ref.trajectory(params, x_T, cond, uncond, i_stop)[-1]
      expected = lambda p: -jnp.mean(ref.R(ref.step(p, x, i_stop, cond, uncond)[1], cond))
      np.testing.assert_allclose(loss, expected(params), rtol=1e-12)
      assert_tree_close(g, jax.grad(expected)(params))
    assert len(seen) >= 2  # the stop step is really random


def test_alignprop_equals_definition_given_mask():
  with jax.enable_x64(True):
    params, sched, x_T, cond, uncond = setup()
    ref, masks, grad_fn = Ref(), [], traj_grad_fn("alignprop", sched, p=0.4)
    for seed in range(3):
      (loss, aux), g = grad_fn(params, x_T, cond, uncond, jax.random.key(seed))
      mask = np.asarray(aux.grad_mask)
      masks.append(mask)
      assert mask.any()

      def expected(p):
        x = x_T
        for i in range(T):
          out = ref.out(p, x, i, cond, uncond)
          out = out if mask[i] else jax.lax.stop_gradient(out)  # no_grad denoiser, chain kept
          x = ref.ddim(out, x, i)[0]
        return -jnp.mean(ref.R(x, cond))

      np.testing.assert_allclose(loss, expected(params), rtol=1e-12)
      assert_tree_close(g, jax.grad(expected)(params))
    assert len({m.tobytes() for m in masks}) >= 2


def test_alignprop_mask_is_nonempty_bernoulli():
  masks = jax.vmap(lambda k: finetune.alignprop_mask(k, 0.1, 8))(jax.random.split(jax.random.key(0), 4000))
  masks = np.asarray(masks)
  assert masks.any(axis=1).all()
  # P(mask_i) given non-empty = p / (1 - (1-p)^T).
  np.testing.assert_allclose(masks.mean(), 0.1 / (1 - 0.9**8), rtol=0.06)


def test_drtune_equals_definition_given_choices():
  with jax.enable_x64(True):
    params, sched, x_T, cond, uncond = setup()
    ref, seen, grad_fn = Ref(), set(), traj_grad_fn("drtune", sched, k=2, m=3, t_train=5)
    for seed in range(3):
      (loss, aux), g = grad_fn(params, x_T, cond, uncond, jax.random.key(seed))
      s, i_min, mask = int(aux.offset), int(aux.loss_index), np.asarray(aux.grad_mask)
      seen.add((s, i_min))
      assert 0 <= s <= 1 and T - 3 <= i_min < T  # stride 5 // 2 = 2, s in {0, 1}
      np.testing.assert_array_equal(np.flatnonzero(mask), [s, s + 2])

      def expected(p):
        x = x_T
        for i in range(i_min + 1):
          out = ref.out(p, jax.lax.stop_gradient(x), i, cond, uncond)  # sg on the denoiser INPUT
          out = out if mask[i] else jax.lax.stop_gradient(out)
          x, x0 = ref.ddim(out, x, i)
        return -jnp.mean(ref.R(x0, cond))

      np.testing.assert_allclose(loss, expected(params), rtol=1e-12)
      assert_tree_close(g, jax.grad(expected)(params))
    assert len(seen) >= 2


def test_kl_regulariser_in_draft_and_errors():
  with jax.enable_x64(True):
    params, sched, x_T, cond, uncond = setup()
    base = jax.tree.map(lambda v: v * 0.9, params)
    ref, beta = Ref(), 0.3
    loss_fn = finetune.make_trajectory_loss(
      cfg("draft", k=T, regularizer="kl", reg_weight=beta), denoise, reward, sched, decode=decode
    )
    g = jax.grad(lambda p: loss_fn(p, x_T, cond, uncond, jax.random.key(0), base)[0])(params)

    def expected(p):
      x, kls = x_T, []
      for i in range(T):
        out = ref.out(p, x, i, cond, uncond)
        kls.append(jnp.mean(jnp.square(out - jax.lax.stop_gradient(ref.out(base, x, i, cond, uncond)))))
        x = ref.ddim(out, x, i)[0]
      return -jnp.mean(ref.R(x, cond)) + beta * sum(kls) / T

    assert_tree_close(g, jax.grad(expected)(params))
    tx = optax.sgd(0.1)
    update = finetune.make_update_fn(
      cfg("draft", regularizer="kl", reg_weight=beta), denoise, reward, sched, tx, decode=decode, jit=False
    )
    with pytest.raises(ValueError, match="regularizer='kl' needs `base_params`"):
      update(create_train_state(params, tx), x_T, cond, uncond, jax.random.key(0))
    update = finetune.make_update_fn(
      cfg("easytune", regularizer="diffusion", reg_weight=0.1), denoise, reward, sched, tx, decode=decode, jit=False
    )
    with pytest.raises(ValueError, match="regularizer='diffusion' needs a `data_batch`"):
      update(create_train_state(params, tx), x_T, cond, uncond, jax.random.key(0))


def test_diffusion_loss_matches_formula_with_mask():
  with jax.enable_x64(True):
    params, sched, _, cond, _ = setup()
    x0 = jax.random.normal(jax.random.key(3), (B, D), jnp.float64)
    mask = jnp.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], bool)
    rng = jax.random.key(9)
    got = finetune.diffusion_loss(denoise, sched, params, {"x0": x0, "cond": cond, "mask": mask}, rng)
    k_t, k_n = jax.random.split(rng)  # the documented draws: t ~ U{0..999}, noise ~ N(0, I)
    t = jax.random.randint(k_t, (B,), 0, 1000, dtype=jnp.int32)
    noise = jax.random.normal(k_n, x0.shape, x0.dtype)
    a = Ref().abar[np.asarray(t)][:, None]
    err = (np.asarray(denoise(params, np.sqrt(a) * x0 + np.sqrt(1 - a) * noise, t, cond)) - noise) ** 2
    m = np.asarray(mask, np.float64)
    np.testing.assert_allclose(got, (err * m).sum() / m.sum(), rtol=1e-12)
    with pytest.raises(ValueError, match="data_batch needs key 'cond'"):
      finetune.diffusion_loss(denoise, sched, params, {"x0": x0}, rng)


# --------------------------------------------------------------------------------------------- all methods
@pytest.mark.parametrize("method", finetune.METHODS)
def test_every_method_updates_trainable_params_only(method):
  params, sched, x_T, cond, uncond = setup(jnp.float32)
  mask = {"w1": True, "b1": True, "w2": True, "tw": False}
  tx = make_optimizer(OptimConfig(learning_rate=1e-2), mask)
  # No regulariser: every trainable element must move through the reward path alone.
  config = cfg(method, k=2 if method in ("draft", "drtune") else None, m=3, p=0.5)
  update = finetune.make_update_fn(config, denoise, reward, sched, tx, decode=decode)
  state, m = update(create_train_state(params, tx), x_T, cond, uncond, jax.random.key(2))
  assert bool(m["finite"]) and np.isfinite(float(m["loss"])) and float(m["grad_norm"]) > 0
  assert int(state.step) == config.updates_per_trajectory
  np.testing.assert_array_equal(state.params["tw"], params["tw"])  # frozen: exactly unchanged
  for name in ("w1", "b1", "w2"):
    new, old = np.asarray(state.params[name]), np.asarray(params[name])
    assert np.isfinite(new).all() and (new != old).all(), f"{method}: {name} not updated everywhere"


def test_update_does_not_retrace():
  params, sched, x_T, cond, uncond = setup(jnp.float32)
  tx = optax.adam(1e-3)
  for method in ("easytune", "refl"):
    raw = finetune.make_update_fn(cfg(method), denoise, reward, sched, tx, decode=decode, jit=False)
    update = jax.jit(chex.assert_max_traces(raw, n=1))
    state = create_train_state(params, tx)
    for step in range(3):
      rng = jax.random.fold_in(jax.random.key(0), step)
      state, _ = update(state, x_T + step, cond, uncond, rng)
    assert int(state.step) == 3 * cfg(method).updates_per_trajectory


# --------------------------------------------------------------------------------------------- memory
@pytest.mark.slow
def test_easytune_memory_flat_in_T_while_draft_grows():
  b, l, d, h = 8, 16, 64, 256  # activations [B, L, H] per step dominate the parameters here
  ks = jax.random.split(jax.random.key(0), 3)
  params = {
    "w1": jax.random.normal(ks[0], (d, h)) * 0.05,
    "b1": jnp.zeros(h),
    "w2": jax.random.normal(ks[1], (h, h)) * 0.05,
    "w3": jax.random.normal(ks[2], (h, d)) * 0.05,
  }

  def mlp(p, x, t, cond):
    z = jnp.tanh(x @ p["w1"] + p["b1"] + cond["c"][:, None] + t[:, None, None] / 1000.0)
    return jnp.tanh(z @ p["w2"]) @ p["w3"]

  def rew(x, cond, t):
    return -jnp.sum(jnp.square(x), (-2, -1))

  sched = schedules.make_schedule()
  x_T = jnp.ones((b, l, d))
  cond, uncond = {"c": jnp.ones((b, h))}, {"c": jnp.zeros((b, h))}
  tx = optax.adam(1e-3)
  state = create_train_state(params, tx)
  temp = {}
  for method, n, k in [("easytune", 10, None), ("easytune", 100, None), ("draft", 10, 10), ("draft", 50, 50)]:
    update = finetune.make_update_fn(cfg(method, num_steps=n, k=k), mlp, rew, sched, tx, jit=False)
    temp[(method, n)] = finetune.compiled_memory(update, state, x_T, cond, uncond, jax.random.key(0))["temp"]
  print("compiled temp bytes:", temp)
  assert abs(temp[("easytune", 100)] / temp[("easytune", 10)] - 1) < 0.10
  assert temp[("draft", 50)] > 3.0 * temp[("draft", 10)]
  assert temp[("draft", 50)] > 5.0 * temp[("easytune", 100)]
