"""The paper setting's randomness (issue 33): the denoiser's dropout at every step and the reward's noise per
scored step, against the unrolled float64 references of tests/test_finetune.py given the same keys.

The references draw the masks and the reward noise themselves from the documented derivation
(fold_in(fold_in(trajectory key, stream), step)); the guided call is ONE denoiser call on [uncond; cond], so
a step's mask is drawn for [2B, H] and its first B rows belong to the unconditional branch.
"""

import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from easytune_jax import finetune
from easytune_jax.bundles.generator import Generator
from easytune_jax.bundles.task import MotionTask
from easytune_jax.core import sampling
from easytune_jax.core.optim import create_train_state
from easytune_jax.models import mld_official as mo
from tests.test_finetune import B, C, H, Ref, T, W, assert_tree_close, cfg, decode, setup

KEEP = 0.7  # dropout 0.3: masks that change the outputs visibly


def hidden(p, x, t, cond):
  return jnp.tanh(
    x @ p["w1"] + p["b1"] + cond["c"] @ jnp.ones((C, H), x.dtype) * 0.3 + p["tw"] * t[:, None].astype(x.dtype) / 1000.0
  )


def drop_denoise(p, x, t, cond, rng=None):
  """tests/test_finetune.py's denoiser with (inverted) dropout on its hidden layer when given a key."""
  h = hidden(p, x, t, cond)
  if rng is not None:
    h = jnp.where(jax.random.bernoulli(rng, KEEP, h.shape), h / KEEP, 0.0)
  return h @ p["w2"]


def noisy_reward(x, cond, t, rng=None):
  """Quadratic reward whose target is perturbed by N(0, 0.3^2) noise drawn from `rng` (a stochastic reward)."""
  target = cond["target"]
  if rng is not None:
    target = target + 0.3 * jax.random.normal(rng, target.shape, target.dtype)
  return -jnp.sum(jnp.square(x - target), axis=-1)


def step_key(rng, stream, i):
  return jax.random.fold_in(jax.random.fold_in(rng, stream), i)


class RefD(Ref):
  """The unrolled reference with the trajectory's dropout masks and per-step reward noise (key `rng`)."""

  def __init__(self, rng, dropout=True, reward_noise=True):
    super().__init__()
    self.rng, self.dropout, self.reward_noise = rng, dropout, reward_noise

  def out(self, p, x, i, cond, uncond):
    t = jnp.full((B,), int(self.ts[i]), jnp.int32)
    hu, hc = hidden(p, x, t, uncond), hidden(p, x, t, cond)
    if self.dropout:
      keep = jax.random.bernoulli(step_key(self.rng, finetune.DROPOUT_STREAM, i), KEEP, (2 * B, H))
      hu, hc = jnp.where(keep[:B], hu / KEEP, 0.0), jnp.where(keep[B:], hc / KEEP, 0.0)
    ou, oc = hu @ p["w2"], hc @ p["w2"]
    return ou + W * (oc - ou)

  def R(self, x, cond, i):
    target = cond["target"]
    if self.reward_noise:
      noise = jax.random.normal(step_key(self.rng, finetune.REWARD_STREAM, i), target.shape, target.dtype)
      target = target + 0.3 * noise
    return -jnp.sum(jnp.square(decode(x, None) - target), axis=-1)


RANDOM = dict(denoiser_dropout=True, reward_noise="per_step")


# --------------------------------------------------------------------------------------------- keys and masks
def test_dropout_masks_differ_across_steps_and_trajectories_and_repeat_for_a_key():
  masks = jax.jit(
    lambda k: jax.vmap(lambda i: jax.random.bernoulli(finetune.dropout_key(k, i), KEEP, (2 * B, H)))(jnp.arange(T))
  )
  a, a2, b = masks(jax.random.key(0)), masks(jax.random.key(0)), masks(jax.random.key(1))
  np.testing.assert_array_equal(a, a2)  # the same trajectory key: the same masks
  assert len({np.asarray(m).tobytes() for m in a}) == T  # a new mask at every step
  assert all((np.asarray(a[i]) != np.asarray(b[i])).any() for i in range(T))  # and in every trajectory
  # The reward's stream is another one.
  assert (
    np.asarray(jax.random.key_data(finetune.reward_key(jax.random.key(0), 2)))
    != np.asarray(jax.random.key_data(finetune.dropout_key(jax.random.key(0), 2)))
  ).any()


def test_generator_denoise_dropout_is_keyed_and_off_without_key():
  # The official MLD denoiser (bundles/official_generator.py) through Generator.denoise, dropout 0.1.
  config = mo.OfficialDenoiserConfig.tiny(dropout=0.1)
  module = mo.OfficialMLDDenoiser(config)
  params = mo.init_denoiser(config, jax.random.key(0))
  gen = types.SimpleNamespace(modules=types.SimpleNamespace(denoiser=module))
  x = jax.random.normal(jax.random.key(1), (4, config.latent_size, config.latent_dim))
  t = jnp.array([10, 200, 500, 900], jnp.int32)
  cond = {"text": jax.random.normal(jax.random.key(2), (4, 1, config.text_dim)), "text_mask": jnp.ones((4, 1), bool)}
  f = jax.jit(lambda k: Generator.denoise(gen, params, x, t, cond, rng=k))
  plain = jax.jit(lambda: Generator.denoise(gen, params, x, t, cond))()
  np.testing.assert_array_equal(plain, jax.jit(lambda: module.apply(params, x, t, cond))())  # no key: eval mode
  k0, k0b, k1 = f(jax.random.key(3)), f(jax.random.key(3)), f(jax.random.key(4))
  np.testing.assert_array_equal(k0, k0b)
  assert float(jnp.max(jnp.abs(k0 - plain))) > 1e-3 and float(jnp.max(jnp.abs(k0 - k1))) > 1e-3


def test_motion_task_reward_key_per_row_and_per_call():
  seen = []

  def fn(x, cond, t):
    seen.append(cond["reward_rng"])
    return jnp.zeros(x.shape[:1])

  task = MotionTask(gen=None, reward_fn=fn, reward_needs_rng=True)
  data = jax.random.key_data(jax.random.key(5))
  cond = {"reward": {"reward_rng": jnp.broadcast_to(data, (3, 2))}, "mask": jnp.ones((3, 4), bool)}
  task.reward(jnp.zeros((3, 4, 2)), cond)
  np.testing.assert_array_equal(seen[-1], data)  # the per-batch key, from row 0
  k = jax.random.key(9)
  task.reward(jnp.zeros((3, 4, 2)), cond, rng=k)
  assert seen[-1] is k  # the per-step key replaces it
  det = MotionTask(gen=None, reward_fn=fn, reward_needs_rng=False)
  det.reward(jnp.zeros((3, 4, 2)), cond, rng=k)
  np.testing.assert_array_equal(seen[-1], data)  # a deterministic reward ignores it


def test_config_reward_noise_validation():
  with pytest.raises(ValueError, match=r"reward_noise: expected one of \('per_batch', 'per_step'\), found 'x'"):
    finetune.FinetuneConfig(reward_noise="x")


def test_options_off_call_the_contract_without_keys_and_on_need_them():
  # Off (the defaults): the 4-argument denoiser and 3-argument reward are called as before (a keyword would
  # raise TypeError here); on: they are given `rng`.
  params, sched, x_T, cond, uncond = setup(jnp.float32)
  tx = optax.sgd(0.01)

  def den4(p, x, t, c):
    return drop_denoise(p, x, t, c)

  def rew3(x, c, t):
    return noisy_reward(x, c, t)

  for method in finetune.METHODS:
    update = finetune.make_update_fn(cfg(method, k=2 if method == "draft" else None), den4, rew3, sched, tx, jit=False)
    update(create_train_state(params, tx), x_T, cond, uncond, jax.random.key(0))
  for opt in (dict(denoiser_dropout=True), dict(reward_noise="per_step")):
    update = finetune.make_update_fn(cfg("draft", **opt), den4, rew3, sched, tx, jit=False)
    with pytest.raises(TypeError, match="rng"):
      update(create_train_state(params, tx), x_T, cond, uncond, jax.random.key(0))


# --------------------------------------------------------------------------------------------- gradient placement
def test_step_loss_with_dropout_and_reward_noise_matches_reference():
  with jax.enable_x64(True):
    params, sched, x_T, cond, uncond = setup()
    rng = jax.random.key(7)
    ref = RefD(rng)
    ts = sampling.make_timesteps(sched, sampling.SamplerConfig(num_steps=T))
    loss_fn = finetune.make_step_loss(drop_denoise, noisy_reward, sched, ts, W, decode=decode)
    x_t = ref.trajectory(params, x_T, cond, uncond, 2)[2]
    expected = lambda p: -jnp.mean(ref.R(ref.step(p, x_t, 2, cond, uncond)[1], cond, 2))
    f = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    (loss, aux), g = f(params, x_t, jnp.int32(2), cond, uncond, None, None, rng, rng)
    np.testing.assert_allclose(loss, expected(params), rtol=1e-12)
    assert_tree_close(g, jax.grad(expected)(params))
    # Without keys the same step is the deterministic one, and it differs.
    (loss0, _), _ = f(params, x_t, jnp.int32(2), cond, uncond)
    assert abs(float(loss0) - float(loss)) > 1e-3


@pytest.mark.parametrize("k,grad_chunk,lam", [(T, 1, 0.0), (3, 2, 0.5)])
def test_easytune_frozen_with_dropout_equals_independent_step_grads(k, grad_chunk, lam):
  with jax.enable_x64(True):
    params, sched, x_T, cond, uncond = setup()
    rng, lr = jax.random.key(5), 0.01
    ref, tx = RefD(rng), optax.sgd(lr)
    reg = dict(regularizer="diffusion", reg_weight=lam) if lam else {}
    config = cfg("easytune", k=k, grad_chunk=grad_chunk, **RANDOM, **reg)
    update = finetune.make_update_fn(config, drop_denoise, noisy_reward, sched, tx, decode=decode)
    data = {"x0": x_T * 0.5, "cond": cond}
    state, m = update(create_train_state(params, tx), x_T, cond, uncond, rng, data if lam else None)
    xs = ref.trajectory(params, x_T, cond, uncond, T)  # with the trajectory's masks at theta_old
    reg_rng = jax.random.split(rng)[1]

    def step_obj(p, i):
      obj = -jnp.mean(ref.R(ref.step(p, xs[i], i, cond, uncond)[1], cond, i))
      if lam:  # the regulariser's denoiser also runs with dropout (its own documented key)
        obj = obj + lam * finetune.diffusion_loss(
          drop_denoise, sched, p, data, jax.random.fold_in(reg_rng, i), dropout=True
        )
      return obj

    grads = [jax.grad(step_obj)(params, i) for i in range(T - k, T)]
    assert_tree_close(state.params, jax.tree.map(lambda p, *g: p - lr * sum(g), params, *grads))
    rewards = [float(jnp.mean(ref.R(ref.step(params, xs[i], i, cond, uncond)[1], cond, i))) for i in range(T - k, T)]
    np.testing.assert_allclose(m["reward_per_step"], rewards, rtol=1e-10)


def test_easytune_online_with_dropout_equals_python_loop():
  with jax.enable_x64(True):
    params, sched, x_T, cond, uncond = setup()
    rng, lr = jax.random.key(6), 0.05
    ref, tx = RefD(rng), optax.sgd(lr)
    config = cfg("easytune", sampler_variant="online", **RANDOM)
    update = finetune.make_update_fn(config, drop_denoise, noisy_reward, sched, tx, decode=decode)
    state, _ = update(create_train_state(params, tx), x_T, cond, uncond, rng)
    p, x = params, x_T
    for i in range(T):
      g = jax.grad(lambda q: -jnp.mean(ref.R(ref.step(q, x, i, cond, uncond)[1], cond, i)))(p)
      x = ref.step(p, x, i, cond, uncond)[0]
      p = jax.tree.map(lambda a, b: a - lr * b, p, g)
    assert_tree_close(state.params, p)


def traj_grad(method, sched, **kw):
  config = cfg(method, **RANDOM, **kw)
  loss_fn = finetune.make_trajectory_loss(config, drop_denoise, noisy_reward, sched, decode=decode)
  return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))


@pytest.mark.parametrize("k", [2, T])
def test_draft_with_dropout_equals_unrolled_backprop(k):
  with jax.enable_x64(True):
    params, sched, x_T, cond, uncond = setup()
    rng = jax.random.key(0)
    ref = RefD(rng)
    (loss, _), g = traj_grad("draft", sched, k=k)(params, x_T, cond, uncond, rng)

    def expected(p):
      x = ref.trajectory(params, x_T, cond, uncond, T - k)[-1]
      for i in range(T - k, T):
        x = ref.step(p, x, i, cond, uncond)[0]
      return -jnp.mean(ref.R(x, cond, T - 1))  # x_0 is step T-1's output

    np.testing.assert_allclose(loss, expected(params), rtol=1e-12)
    assert_tree_close(g, jax.grad(expected)(params))


def test_refl_with_dropout_equals_definition():
  with jax.enable_x64(True):
    params, sched, x_T, cond, uncond = setup()
    grad_fn, seen = traj_grad("refl", sched, m=3), set()
    for seed in (0, 3, 4):
      rng = jax.random.key(seed)
      ref = RefD(rng)
      (loss, aux), g = grad_fn(params, x_T, cond, uncond, rng)
      i_stop = int(aux.loss_index)
      seen.add(i_stop)
      x = ref.trajectory(params, x_T, cond, uncond, i_stop)[-1]
      expected = lambda p: -jnp.mean(ref.R(ref.step(p, x, i_stop, cond, uncond)[1], cond, i_stop))
      np.testing.assert_allclose(loss, expected(params), rtol=1e-12)
      assert_tree_close(g, jax.grad(expected)(params))
    assert len(seen) >= 2


def test_alignprop_with_dropout_equals_definition():
  with jax.enable_x64(True):
    params, sched, x_T, cond, uncond = setup()
    grad_fn = traj_grad("alignprop", sched, p=0.4)
    for seed in range(2):
      rng = jax.random.key(seed)
      ref = RefD(rng)
      (loss, aux), g = grad_fn(params, x_T, cond, uncond, rng)
      mask = np.asarray(aux.grad_mask)

      def expected(p):
        x = x_T
        for i in range(T):
          out = ref.out(p, x, i, cond, uncond)
          out = out if mask[i] else jax.lax.stop_gradient(out)
          x = ref.ddim(out, x, i)[0]
        return -jnp.mean(ref.R(x, cond, T - 1))

      np.testing.assert_allclose(loss, expected(params), rtol=1e-12)
      assert_tree_close(g, jax.grad(expected)(params))


def test_drtune_with_dropout_equals_definition():
  with jax.enable_x64(True):
    params, sched, x_T, cond, uncond = setup()
    grad_fn = traj_grad("drtune", sched, k=2, m=3, t_train=5)
    for seed in range(2):
      rng = jax.random.key(seed)
      ref = RefD(rng)
      (loss, aux), g = grad_fn(params, x_T, cond, uncond, rng)
      i_min, mask = int(aux.loss_index), np.asarray(aux.grad_mask)

      def expected(p):
        x = x_T
        for i in range(i_min + 1):
          out = ref.out(p, jax.lax.stop_gradient(x), i, cond, uncond)
          out = out if mask[i] else jax.lax.stop_gradient(out)
          x, x0 = ref.ddim(out, x, i)
        return -jnp.mean(ref.R(x0, cond, i_min))

      np.testing.assert_allclose(loss, expected(params), rtol=1e-12)
      assert_tree_close(g, jax.grad(expected)(params))


def test_kl_base_output_uses_the_steps_masks():
  with jax.enable_x64(True):
    params, sched, x_T, cond, uncond = setup()
    base = jax.tree.map(lambda v: v * 0.9, params)
    rng, beta = jax.random.key(2), 0.3
    ref = RefD(rng)
    config = cfg("draft", k=T, regularizer="kl", reg_weight=beta, **RANDOM)
    loss_fn = finetune.make_trajectory_loss(config, drop_denoise, noisy_reward, sched, decode=decode)
    g = jax.jit(jax.grad(lambda p: loss_fn(p, x_T, cond, uncond, rng, base)[0]))(params)

    def expected(p):
      x, kls = x_T, []
      for i in range(T):
        out = ref.out(p, x, i, cond, uncond)
        kls.append(jnp.mean(jnp.square(out - jax.lax.stop_gradient(ref.out(base, x, i, cond, uncond)))))
        x = ref.ddim(out, x, i)[0]
      return -jnp.mean(ref.R(x, cond, T - 1)) + beta * sum(kls) / T

    assert_tree_close(g, jax.grad(expected)(params))
