"""The method table: a new trajectory method is ONE row of `finetune.METHODS`.

`WINDOW` below is the whole diff of adding a toy method ("ReFL with depth k": gradient through the k steps
that end at a random loss step i_stop ~ U{T-M..T-1}, scored at x0_hat of i_stop). Once the row is in the
table, the config validates it, `make_update_fn` runs it, and the benchmark parses, names and sizes it; its
gradient is checked against an independently unrolled definition like every built-in row.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from easytune_jax import finetune
from easytune_jax.bench.config import BenchmarkConfig, finetune_config
from easytune_jax.bench.measure import expected_work
from easytune_jax.bench.variants import parse_variant
from easytune_jax.core.optim import create_train_state
from tests.test_finetune import Ref, T, assert_tree_close, cfg, decode, denoise, reward, setup


# ----------------------------------------------------------------------- the diff of adding a method
def _window_choose(rng, c):
  T, K = c.num_steps, c.num_grad_steps
  i_stop = jax.random.randint(rng, (), max(T - c.stop_range, K - 1), T, dtype=jnp.int32)
  steps = jnp.arange(T)
  return finetune.Choice(i_stop - K + 1, (steps > i_stop - K) & (steps <= i_stop), i_stop, jnp.zeros((), jnp.int32))


WINDOW = finetune.StepPolicy(
  "Window",
  span=lambda c: c.num_grad_steps,
  choose=_window_choose,
  scores="step",
  default_k=lambda c: 2,
  uses=("k", "m"),
)
# ----------------------------------------------------------------------- end of the diff


@pytest.fixture
def window(monkeypatch):
  monkeypatch.setitem(finetune.METHODS, "window", WINDOW)


def test_toy_row_equals_its_unrolled_definition(window):
  with jax.enable_x64(True):
    params, sched, x_T, cond, uncond = setup()
    ref, seen = Ref(), set()
    config = cfg("window", k=2, m=3)
    assert (config.num_grad_steps, config.updates_per_trajectory) == (2, 1)
    loss_fn = finetune.make_trajectory_loss(config, denoise, reward, sched, decode=decode)

    @functools.partial(jax.jit, static_argnums=0)
    def definition(i_stop, p):
      """The toy row's loss and gradient written out, and ReFL's gradient at the same stop step."""

      def window_loss(p):
        x = ref.trajectory(params, x_T, cond, uncond, i_stop - 1)[-1]  # held constant
        x = ref.step(p, x, i_stop - 1, cond, uncond)[0]
        return -jnp.mean(ref.R(ref.step(p, x, i_stop, cond, uncond)[1], cond))

      def refl_loss(p):
        x = ref.trajectory(params, x_T, cond, uncond, i_stop)[-1]
        return -jnp.mean(ref.R(ref.step(p, x, i_stop, cond, uncond)[1], cond))

      return *jax.value_and_grad(window_loss)(p), jax.grad(refl_loss)(p)

    grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    for seed in (0, 1, 2, 5):
      (loss, aux), g = grad_fn(params, x_T, cond, uncond, jax.random.key(seed))
      i_stop = int(aux.loss_index)
      seen.add(i_stop)
      assert T - 3 <= i_stop < T
      np.testing.assert_array_equal(aux.grad_mask, (np.arange(T) > i_stop - 2) & (np.arange(T) <= i_stop))
      expected_loss, expected_grad, refl_grad = definition(i_stop, params)
      assert expected_loss.dtype == jnp.float64
      np.testing.assert_allclose(loss, expected_loss, rtol=1e-12)
      assert_tree_close(g, expected_grad)
      # Depth 2 really differs from ReFL (depth 1) at the same stop step.
      assert float(optax.tree.norm(jax.tree.map(jnp.subtract, g, refl_grad))) > 1e-6
    assert len(seen) >= 2


def test_toy_row_runs_in_the_update_and_the_benchmark(window):
  params, sched, x_T, cond, uncond = setup(jnp.float32)
  tx = optax.adam(1e-2)
  update = finetune.make_update_fn(cfg("window", k=2), denoise, reward, sched, tx, decode=decode)
  state, m = update(create_train_state(params, tx), x_T, cond, uncond, jax.random.key(0))
  assert int(state.step) == 1 and bool(m["finite"]) and int(m["grad_mask"].sum()) == 2
  v = parse_variant("window-3+remat@1e-3")
  assert v.name == "Window-3+remat@0.001" and v.applies(3) and not v.applies(2)
  ft = finetune_config(BenchmarkConfig(), v, 10)
  assert (ft.method, ft.num_grad_steps, ft.remat, expected_work(ft)["grad_step"]) == ("window", 3, True, 3.0)
  with pytest.raises(ValueError, match="'\\+online' is a per-step method's sampler variant, not for 'window'"):
    parse_variant("window+online")


def test_config_errors_name_the_table():
  with pytest.raises(
    ValueError,
    match=r"method: expected one of \('easytune', 'draft', 'refl', 'alignprop', "
    r"'drtune', 'motionrft'\), found 'window'",
  ):
    finetune.FinetuneConfig(method="window")
  with pytest.raises(ValueError, match="a trajectory row needs `choose`, a per-step row none"):
    finetune.StepPolicy("Broken", span=lambda c: 1)
  with pytest.raises(ValueError, match="scores: expected 'final' or 'step', found 'x0'"):
    finetune.StepPolicy("Broken", span=lambda c: 1, choose=_window_choose, scores="x0")


def test_final_scoring_row_must_end_at_the_last_step(monkeypatch):
  early = finetune.StepPolicy(
    "Early",
    span=lambda c: 1,
    choose=lambda rng, c: finetune.Choice(0, jnp.arange(c.num_steps) == 0, jnp.int32(0), jnp.int32(0)),
  )
  monkeypatch.setitem(finetune.METHODS, "early", early)
  params, sched, x_T, cond, uncond = setup(jnp.float32)
  loss_fn = finetune.make_trajectory_loss(cfg("early"), denoise, reward, sched, decode=decode)
  with pytest.raises(
    ValueError,
    match=r"scores='final' needs the span to end at step T-1, found start 0 \+ "
    r"span 1 != T=5",
  ):
    loss_fn(params, x_T, cond, uncond, jax.random.key(0))
