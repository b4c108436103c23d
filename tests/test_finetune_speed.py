"""Speed paths of the fine-tuning updates (issue 20): the batched frozen EasyTune path (`grad_chunk`) equals
the sequential one, every method's jitted update donates its state without recompiling, and the optional
bfloat16 compute path gives finite float32 gradients close to float32's.

The tiny problem (MLP denoiser, frozen linear decoder, quadratic reward) is tests/test_finetune.py's.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from easytune_jax import finetune
from easytune_jax.core import schedules
from easytune_jax.core.optim import OptimConfig, create_train_state, make_optimizer
from tests.test_finetune import T, cfg, decode, denoise, reward, setup


def copy(tree):
  return jax.tree.map(jnp.copy, tree)


def run(config, params, sched, x_T, cond, uncond, tx, rng=None, ema_decay=0.0, **kw):
  """One update from a fresh state (params copied) -> (state, metrics) as host arrays."""
  update = finetune.make_update_fn(config, denoise, reward, sched, tx, decode=decode, ema_decay=ema_decay)
  state = create_train_state(params, tx, use_ema=ema_decay > 0)
  rng = jax.random.key(3) if rng is None else rng
  return jax.device_get(update(state, x_T, cond, uncond, rng, **kw))


def assert_trees_close(a, b, rtol, atol):
  flat_a = jax.tree_util.tree_flatten_with_path(a)[0]
  flat_b = jax.tree.leaves(b)
  assert len(flat_a) == len(flat_b)
  for (path, u), v in zip(flat_a, flat_b):
    u, v = np.asarray(u), np.asarray(v)
    if u.dtype == bool or np.issubdtype(u.dtype, np.integer):
      np.testing.assert_array_equal(u, v, err_msg=jax.tree_util.keystr(path))
    else:
      np.testing.assert_allclose(u, v, rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path))


# --------------------------------------------------------------------------------------------- config
def test_grad_chunk_and_compute_dtype_validation():
  with pytest.raises(ValueError, match=r"grad_chunk: expected >= 1, found 0"):
    finetune.FinetuneConfig(grad_chunk=0)
  with pytest.raises(
    ValueError,
    match=r"grad_chunk: batched per-step gradients need a per-step method \(easytune\) with "
    r"sampler_variant='frozen'.*found grad_chunk=2 with method='easytune', "
    r"sampler_variant='online'",
  ):
    finetune.FinetuneConfig(grad_chunk=2, sampler_variant="online")
  with pytest.raises(ValueError, match=r"grad_chunk: .*method='draft'"):
    finetune.FinetuneConfig(method="draft", grad_chunk=2)
  with pytest.raises(ValueError, match=r"compute_dtype: expected one of \('float32', 'bfloat16'\), found 'fp8'"):
    finetune.FinetuneConfig(compute_dtype="fp8")
  c = finetune.FinetuneConfig(num_steps=10, k=4, grad_chunk=16)
  assert c.chunk_size == 4 and finetune.FinetuneConfig(num_steps=10).chunk_size == 1
  # grad_chunk = 1 with the online sampler and the baselines stays valid (the sequential path).
  finetune.FinetuneConfig(grad_chunk=1, sampler_variant="online")


# --------------------------------------------------------------------------------------------- batched == sequential
MASK = {"w1": True, "b1": False, "w2": True, "tw": True}
CASES = {
  # name: (FinetuneConfig overrides, chunk sizes to compare with C = 1, extras)
  "plain": (dict(), (2, 3, 5), {}),  # K = 5: chunks 2+2+1, 3+2, one chunk of 5
  "k3": (dict(k=3), (2, 3), {}),  # K < T: the first steps are plain sampling
  "eta": (dict(eta=0.7), (2, 5), {}),  # per-step DDIM noise (fold_in by step index)
  "diffusion": (dict(regularizer="diffusion", reg_weight=0.3), (2,), {"data": True}),
  "kl": (dict(regularizer="kl", reg_weight=0.5), (3,), {"base": True}),
  "mask": (dict(), (2,), {"mask": True}),  # frozen leaf b1: no update, no optimizer state
  "ema": (dict(), (4,), {"ema": 0.9}),
  "x_prev_t": (dict(reward_input="x_prev", reward_timestep="t", eta=0.3), (2,), {}),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_batched_frozen_path_equals_sequential_float32(case):
  """Parameters, AdamW state (clipping on), EMA and every per-step metric after one K-update trajectory:
  equal to float32 rounding (measured max relative difference ~1e-7; asserted rtol 2e-5)."""
  over, chunks, extra = CASES[case]
  params, sched, x_T, cond, uncond = setup(jnp.float32)
  tx = make_optimizer(OptimConfig(learning_rate=1e-2, weight_decay=1e-3), MASK if extra.get("mask") else None)
  kw = {}
  if extra.get("data"):
    kw["data_batch"] = {"x0": x_T * 0.5, "cond": cond}
  if extra.get("base"):
    kw["base_params"] = jax.tree.map(lambda v: v * 0.9, params)
  ema = extra.get("ema", 0.0)
  ref_state, ref_m = run(cfg("easytune", **over), params, sched, x_T, cond, uncond, tx, ema_decay=ema, **kw)
  assert int(ref_state.step) == cfg("easytune", **over).num_grad_steps and bool(ref_m["finite"])
  moved = max(
    float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
    for a, b in zip(jax.tree.leaves(ref_state.params), jax.tree.leaves(params))
  )
  assert moved > 1e-3  # the trajectory really changed the params
  if extra.get("mask"):
    np.testing.assert_array_equal(ref_state.params["b1"], params["b1"])
  for c in chunks:
    state, m = run(cfg("easytune", grad_chunk=c, **over), params, sched, x_T, cond, uncond, tx, ema_decay=ema, **kw)
    assert_trees_close(state, ref_state, rtol=2e-5, atol=1e-7)
    assert_trees_close(m, ref_m, rtol=2e-5, atol=1e-6)


def test_batched_frozen_path_equals_sequential_float64():
  """In float64 the two paths agree to 1e-10 (eta > 0, KL regulariser, clipping + AdamW, chunks 2+2+1)."""
  with jax.enable_x64(True):
    params, sched, x_T, cond, uncond = setup(jnp.float64)
    tx = make_optimizer(OptimConfig(learning_rate=1e-2))
    base = jax.tree.map(lambda v: v * 0.9, params)
    over = dict(eta=0.5, regularizer="kl", reg_weight=0.5)
    ref = run(cfg("easytune", **over), params, sched, x_T, cond, uncond, tx, base_params=base)
    got = run(cfg("easytune", grad_chunk=2, **over), params, sched, x_T, cond, uncond, tx, base_params=base)
    assert_trees_close(got, ref, rtol=1e-10, atol=1e-13)


@pytest.mark.slow
def test_batched_path_skips_nonfinite_steps_like_sequential():
  def nan_reward(x, cond, t):  # NaN for the two noisiest steps (t_i > 500) of T = 4
    return jnp.where(t > 500, jnp.nan, reward(x, cond, None))

  params, sched, x_T, cond, uncond = setup(jnp.float32)
  tx = make_optimizer(OptimConfig(learning_rate=1e-2))
  out = {}
  for c in (1, 3, 4):
    config = cfg("easytune", num_steps=4, reward_timestep="t", grad_chunk=c)
    update = finetune.make_update_fn(config, denoise, nan_reward, sched, tx, decode=decode)
    out[c] = jax.device_get(update(create_train_state(params, tx), x_T, cond, uncond, jax.random.key(0)))
    np.testing.assert_array_equal(out[c][1]["finite_per_step"], [False, False, True, True])
    assert int(out[c][0].skipped) == 2 and int(out[c][0].step) == 4
  for c in (3, 4):
    assert_trees_close(out[c][0], out[1][0], rtol=2e-5, atol=1e-7)


def mlp_problem(b=8, l=16, d=64, h=256):
  """A denoiser whose activations [B, L, H] dominate its parameters (the memory tests' problem)."""
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

  x_T = jnp.ones((b, l, d))
  return params, mlp, rew, x_T, {"c": jnp.ones((b, h))}, {"c": jnp.zeros((b, h))}


@pytest.mark.slow
def test_batched_path_memory_grows_with_chunk_and_stays_flat_in_T():
  params, mlp, rew, x_T, cond, uncond = mlp_problem()
  sched, tx = schedules.make_schedule(), optax.adam(1e-3)
  state = create_train_state(params, tx)
  temp = {}
  for n, c in [(20, 1), (20, 2), (20, 5), (20, 10), (100, 5)]:
    update = finetune.make_update_fn(cfg("easytune", num_steps=n, grad_chunk=c), mlp, rew, sched, tx, jit=False)
    temp[(n, c)] = finetune.compiled_memory(update, state, x_T, cond, uncond, jax.random.key(0))["temp"]
  print("compiled temp bytes (T, C):", temp)
  assert temp[(20, 1)] < temp[(20, 2)] < temp[(20, 5)] < temp[(20, 10)]
  assert temp[(20, 10)] < 10 * temp[(20, 1)]  # at most C one-step residuals + C gradients
  assert abs(temp[(100, 5)] / temp[(20, 5)] - 1) < 0.10  # still flat in T at a fixed C


# --------------------------------------------------------------------------------------------- donation
@pytest.mark.slow
@pytest.mark.parametrize("method", finetune.METHODS)
def test_every_method_donates_its_state_and_never_retraces(method):
  params, sched, x_T, cond, uncond = setup(jnp.float32)
  tx = make_optimizer(OptimConfig(learning_rate=1e-3))
  config = cfg(method, k=2 if method in ("draft", "drtune") else None, m=3)
  state = create_train_state(params, tx)
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
  raw = finetune.make_update_fn(config, denoise, reward, sched, tx, decode=decode, jit=False)
  mem = finetune.compiled_memory(raw, state, x_T, cond, uncond, jax.random.key(0), donate_argnums=(0,))
  # Every byte of the new state is written over the donated old one (params, Adam moments, counters).
  assert mem["alias"] == state_bytes, (mem, state_bytes)
  # The library's jitted update donates (the state passed in is deleted) and compiles once over 3 calls.
  update = finetune.make_update_fn(config, denoise, reward, sched, tx, decode=decode)
  chex.clear_trace_counter()  # chex counts per code object: the methods' updates share theirs
  counted = jax.jit(chex.assert_max_traces(raw, n=1), donate_argnums=0)
  s1, s2 = state, copy(state)
  for step in range(3):
    rng = jax.random.fold_in(jax.random.key(0), step)
    old = s1
    s1, _ = update(s1, x_T + step, cond, uncond, rng)
    s2, _ = counted(s2, x_T + step, cond, uncond, rng)
    assert all(x.is_deleted() for x in jax.tree.leaves(old))
  assert update._cache_size() == 1
  assert int(s1.step) == 3 * config.updates_per_trajectory
  assert_trees_close(s1, s2, rtol=0, atol=0)
  # The caller's params were copied into the state: donation never deleted them.
  assert not any(x.is_deleted() for x in jax.tree.leaves(params))


@pytest.mark.slow
@pytest.mark.parametrize("over", [dict(), dict(grad_chunk=5), dict(sampler_variant="online")])
def test_easytune_donation_saves_the_state_in_compiled_memory(over):
  """Donation removes the second copy of the optimizer state from the compiled total; the 'frozen' sampler
  reads theta_old after the new params are written, so XLA keeps one params-sized temporary there (the
  'online' sampler saves the params too)."""
  params, mlp, rew, x_T, cond, uncond = mlp_problem()
  tx = optax.adam(1e-3)
  state = create_train_state(params, tx)
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
  param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
  raw = finetune.make_update_fn(
    cfg("easytune", num_steps=10, **over), mlp, rew, schedules.make_schedule(), tx, jit=False
  )
  args = (state, x_T, cond, uncond, jax.random.key(0))
  saving = (
    finetune.compiled_memory(raw, *args)["total"] - finetune.compiled_memory(raw, *args, donate_argnums=(0,))["total"]
  )
  expected = state_bytes - (0 if over.get("sampler_variant") == "online" else param_bytes)
  print(over, "compiled total saved by donation:", saving, "expected about", expected)
  assert 0.99 * expected <= saving <= state_bytes


@pytest.mark.slow
def test_batched_path_donates_and_never_retraces():
  params, sched, x_T, cond, uncond = setup(jnp.float32)
  tx = make_optimizer(OptimConfig(learning_rate=1e-3))
  raw = finetune.make_update_fn(cfg("easytune", grad_chunk=2), denoise, reward, sched, tx, decode=decode, jit=False)
  state = create_train_state(params, tx)
  mem = finetune.compiled_memory(raw, state, x_T, cond, uncond, jax.random.key(0), donate_argnums=(0,))
  assert mem["alias"] == sum(x.nbytes for x in jax.tree.leaves(state))
  chex.clear_trace_counter()
  update = jax.jit(chex.assert_max_traces(raw, n=1), donate_argnums=0)
  for step in range(3):
    state, _ = update(state, x_T + step, cond, uncond, jax.random.fold_in(jax.random.key(0), step))
  assert int(state.step) == 3 * T


# --------------------------------------------------------------------------------------------- bfloat16
@pytest.mark.slow
@pytest.mark.parametrize("method,chunk", [("easytune", 1), ("easytune", 5), ("draft", 1), ("refl", 1)])
def test_bfloat16_compute_path_finite_and_close_to_float32(method, chunk):
  params, sched, x_T, cond, uncond = setup(jnp.float32)
  seen = []

  def denoise_spy(p, x, t, c):  # records the dtypes the network sees (at trace time)
    seen.append((p["w1"].dtype, x.dtype, c["c"].dtype))
    return denoise(p, x, t, c)

  k = 2 if method == "draft" else None
  lr = 1e-3
  out = {}
  for dt in ("float32", "bfloat16"):
    config = cfg(method, k=k, m=3, grad_chunk=chunk, compute_dtype=dt)
    tx = optax.sgd(lr)  # the parameter change is then lr * (sum of) gradients: compares the gradients
    update = finetune.make_update_fn(config, denoise_spy, reward, sched, tx, decode=decode)
    state, m = update(create_train_state(params, tx), x_T, cond, uncond, jax.random.key(4))
    out[dt] = jax.device_get((state, m))
  assert (jnp.bfloat16, jnp.bfloat16, jnp.bfloat16) in seen and (jnp.float32, jnp.float32, jnp.float32) in seen
  (s32, m32), (s16, m16) = out["float32"], out["bfloat16"]
  # float32 master params and metrics, finite gradients.
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(s16.params))
  assert bool(m16["finite"]) and np.isfinite(m16["grad_norm"]) and float(m16["grad_norm"]) > 0
  assert np.asarray(m16["loss"]).dtype == np.float32
  # Bounded difference: loss within 2% and the update direction (sum of step gradients) within 10%
  # (bfloat16 keeps 8 bits of mantissa: ~0.4% per rounding; measured here: loss ~0.1-0.5%, update ~1-3%).
  np.testing.assert_allclose(m16["loss"], m32["loss"], rtol=2e-2)
  d32 = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), s32.params, params)
  d16 = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), s16.params, params)
  err = float(optax.tree.norm(jax.tree.map(np.subtract, d16, d32))) / float(optax.tree.norm(d32))
  print(
    f"{method} C={chunk}: loss {float(m32['loss']):.4f} vs {float(m16['loss']):.4f}; relative update "
    f"difference {err:.4f}"
  )
  assert err < 0.10


def test_cast_floating_leaves_ints_and_keys():
  tree = {
    "w": jnp.ones((2,), jnp.float32),
    "i": jnp.arange(3),
    "b": jnp.array([True]),
    "k": jax.random.key(0),
    "py": 1.5,
  }
  out = finetune.cast_floating(tree, jnp.bfloat16)
  assert out["w"].dtype == jnp.bfloat16 and out["i"].dtype == tree["i"].dtype and out["b"].dtype == bool
  assert out["k"].dtype == tree["k"].dtype and out["py"] == 1.5
  d, r, dec = finetune.with_compute_dtype(denoise, reward, None, "float32")
  assert d is denoise and r is reward and dec is None


# --------------------------------------------------------------------------------------------- benchmark wiring
def test_benchmark_chunk_variants_and_floor_record():
  from easytune_jax.bench.config import BenchmarkConfig, finetune_config
  from easytune_jax.bench.measure import floor_record
  from easytune_jax.bench.variants import Variant, parse_variant

  v = parse_variant("easytune-10+chunk5@1e-4")
  assert v == Variant("easytune", 10, False, 1e-4, False, 5) and v.name == "EasyTune-10+chunk5@0.0001"
  assert v.family == "EasyTune-10+chunk5"
  cfg_b = BenchmarkConfig(grad_chunk=4)
  assert finetune_config(cfg_b, v, 50).chunk_size == 5
  assert finetune_config(cfg_b, parse_variant("easytune"), 50).grad_chunk == 4
  assert finetune_config(cfg_b, parse_variant("easytune+online"), 50).grad_chunk == 1
  assert finetune_config(cfg_b, parse_variant("draft-1"), 50).grad_chunk == 1
  for bad, msg in (
    ("easytune+chunk0", "expected '\\+chunk<C>' with C >= 1"),
    ("draft-1+chunk2", "'\\+chunk<C>' batches frozen per-step gradients, not for 'draft'"),
    ("easytune+online+chunk2", "not for 'easytune\\+online'"),
  ):
    with pytest.raises(ValueError, match=msg):
      parse_variant(bad)
  with pytest.raises(ValueError, match="grad_chunk"):
    BenchmarkConfig(grad_chunk=0)
  # A floor is one dispatch + the method's expected work (from its row) x the primitives.
  floor = {"T": 10, "dispatch_seconds": 0.01, "nograd_step_seconds": 0.1, "grad_step_seconds": 0.2}
  floor.update(reward_grad_seconds=0.3, reward_eval_seconds=0.05, optimizer_update_seconds=0.02)
  ft = finetune_config(BenchmarkConfig(), parse_variant("easytune-4"), 10)  # 6 no-grad, 4 x (grad + reward + update)
  r = floor_record(floor, ft, 6.0)
  assert r["work"] == {"nograd_step": 6, "grad_step": 4, "reward_grad": 4, "reward_eval": 0, "optimizer_update": 4}
  assert r["floor_seconds"] == pytest.approx(0.01 + 0.6 + 0.8 + 1.2)
  assert r["floor_with_optimizer_seconds"] == pytest.approx(2.61 + 0.08) and r["over_floor"] == pytest.approx(6 / 2.61)
  ft = finetune_config(BenchmarkConfig(), parse_variant("draft-3"), 10)  # 7 no-grad, 3 grad, ONE reward + update
  assert floor_record(floor, ft, 3.0)["floor_with_optimizer_seconds"] == pytest.approx(0.01 + 0.7 + 0.6 + 0.3 + 0.02)
  # Random rows are counted from their draws: ReFL's loss step i ~ U{T-M..T-1} has i no-grad steps before it.
  w = floor_record(floor, finetune_config(BenchmarkConfig(), parse_variant("refl"), 10), 1.0)["work"]
  assert w["grad_step"] == 1 and w["nograd_step"] == pytest.approx(10 - 5.5, abs=0.1)
  # AlignProp's non-empty Bernoulli(p) mask: p T / (1 - (1 - p)^T) gradient steps of T.
  w = floor_record(floor, finetune_config(BenchmarkConfig(), parse_variant("alignprop"), 10), 1.0)["work"]
  assert w["grad_step"] == pytest.approx(5 / (1 - 0.5**10), abs=0.1) and w["nograd_step"] + w["grad_step"] == 10
  # MotionRFT: k ~ U{1..T}; k = T (prob 1/T) has no gradient step, only a reward evaluation.
  w = floor_record(floor, finetune_config(BenchmarkConfig(), parse_variant("motionrft"), 10), 1.0)["work"]
  assert w["reward_eval"] == pytest.approx(0.1, abs=0.02) and w["grad_step"] == pytest.approx(0.9, abs=0.02)


def test_floor_loop_chains_every_iteration_and_uses_every_output():
  """The floor's loop runs `fn` n times on a chained input: with a tiny fn whose output sum is known, the first
  argument moves by 1e-30 x the sum per iteration (float64, where such steps are visible), and a train
  state is carried through the optimizer update (its step counts the iterations)."""
  from easytune_jax.bench.measure import _looped
  from easytune_jax.core.optim import apply_gradients

  with jax.enable_x64(True):
    x, y = jnp.zeros((3,), jnp.float64), jnp.ones((2,), jnp.float64)
    out = _looped(lambda x, y: {"a": x + 1.0, "b": y}, 4)(x, y)
    # each iteration adds 1e-30 * (3 * (x + 1) + 2) to x; x stays ~0, so 4 * 5e-30
    np.testing.assert_allclose(np.asarray(out[0]), 4 * 5e-30, rtol=1e-6)  # the step is summed in float32
    np.testing.assert_array_equal(np.asarray(out[1]), np.ones(2))
  tx = optax.sgd(0.1)
  params = {"w": jnp.ones((2,))}
  state = create_train_state(params, tx)
  st, _ = _looped(lambda s, g: apply_gradients(s, g, tx, jnp.float32(0.0)), 5)(state, {"w": jnp.ones((2,))})
  assert int(st.step) == 5
  np.testing.assert_allclose(np.asarray(st.params["w"]), 1.0 - 5 * 0.1, rtol=1e-6)


def test_reward_vs_val_and_readme_tables():
  """The reward-vs-evaluator figures are the Pearson correlation over every evaluation of every run and the mean
  change from the base to the last evaluation; README tables need their markers, named in the error."""
  from easytune_jax.bench import report
  from easytune_jax.bench.summary import reward_vs_val

  runs = [
    {"curve": {"reward": [0.7, 0.8, 0.9], "val": [{"R_precision_top_1": r, "MM_Dist": m} for r, m in vals]}}
    for vals in ([(0.30, 7.0), (0.32, 6.9), (0.28, 7.3)], [(0.31, 7.1), (0.33, 6.8), (0.35, 6.7)])
  ]
  got = reward_vs_val({"runs": runs})
  rewards = [0.7, 0.8, 0.9, 0.7, 0.8, 0.9]
  r1 = [0.30, 0.32, 0.28, 0.31, 0.33, 0.35]
  mm = [7.0, 6.9, 7.3, 7.1, 6.8, 6.7]
  assert got["points"] == 6
  assert got["corr_R_precision_top_1"] == pytest.approx(np.corrcoef(rewards, r1)[0, 1])
  assert got["corr_MM_Dist"] == pytest.approx(np.corrcoef(rewards, mm)[0, 1])
  assert got["last_minus_base_R_precision_top_1"] == pytest.approx(((0.28 - 0.30) + (0.35 - 0.31)) / 2)
  assert got["last_minus_base_MM_Dist"] == pytest.approx(((7.3 - 7.0) + (6.7 - 7.1)) / 2)
  with pytest.raises(ValueError, match="NOTES.md: expected the benchmark-tables markers once each"):
    report.readme_with_tables("no markers here", {}, "docs/benchmark/t50", "NOTES.md")
