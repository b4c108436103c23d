"""Reward-guided sampling (core/guidance.py): off is the plain sampler bit for bit; the guidance term is autodiff of
the reward in float64; whole guided trajectories (DDIM and flow, every option) against a float64 loop written out
here (the DDIM / Euler formulas, the reward's gradient in closed form); guidance raises a toy reward."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from easytune_jax.core import flow, sampling, schedules
from easytune_jax.core import guidance as G
from tests.test_finetune import DEC, B, W, decode, denoise, inputs, make_params, reward

T = 5


def score_of(cond):
  """The guided sampler's `score`: the toy reward of the decoded model-space sample."""
  return lambda z, t, key: reward(decode(z, cond), cond, t)


def processes():
  return {"ddim": schedules.make_schedule(), "flow": flow.make_flow()}


# --------------------------------------------------------------------------------------------- config
def test_config_defaults_are_off_and_realign_rule():
  c = G.GuidanceConfig()
  assert not c.enabled and c.scale == 0.0
  assert (c.position, c.reward_input, c.reward_timestep, c.reduction, c.normalize, c.clip, c.grad_steps) == (
    "after_step",
    "sample",
    "step",
    "mean",
    "none",
    0.0,
    1,
  )
  np.testing.assert_array_equal(G.GuidanceConfig(scale=2.0).weights(4), [2.0, 2.0, 2.0, 2.0])
  np.testing.assert_allclose(G.GuidanceConfig(scale=2.0, schedule="increasing").weights(4), [0.5, 1.0, 1.5, 2.0])
  np.testing.assert_allclose(G.GuidanceConfig(scale=2.0, schedule="decreasing").weights(4), [2.0, 1.5, 1.0, 0.5])
  np.testing.assert_array_equal(G.GuidanceConfig(scale=1.0, start_step=-2).guided_steps(5), [0, 0, 0, 1, 1])
  np.testing.assert_array_equal(G.GuidanceConfig(scale=1.0, stop_step=3, every=2).weights(5), [1, 0, 1, 0, 0])


@pytest.mark.parametrize(
  "kw,match",
  [
    ({"scale": -1.0}, r"GuidanceConfig.scale: expected >= 0 \(0: off\), found -1.0"),
    ({"scale": float("nan")}, r"GuidanceConfig.scale: expected >= 0"),
    ({"every": 0}, r"GuidanceConfig.every: expected >= 1, found 0"),
    ({"clip": -0.1}, r"GuidanceConfig.clip: expected >= 0"),
    ({"grad_steps": 0}, r"GuidanceConfig.grad_steps: expected >= 1, found 0"),
    (
      {"position": "during"},
      r"GuidanceConfig.position: expected one of \('after_step', 'before_step'\), found 'during'",
    ),
    ({"reward_input": "x0"}, r"GuidanceConfig.reward_input: expected one of"),
    ({"reward_timestep": "t"}, r"GuidanceConfig.reward_timestep: expected one of"),
    ({"schedule": "cosine"}, r"GuidanceConfig.schedule: expected one of"),
    ({"reduction": "max"}, r"GuidanceConfig.reduction: expected one of"),
    ({"normalize": "l2"}, r"GuidanceConfig.normalize: expected one of"),
  ],
)
def test_bad_config_names_the_field(kw, match):
  with pytest.raises(ValueError, match=match):
    G.GuidanceConfig(**kw)


def test_guided_sample_errors():
  proc = schedules.make_schedule()
  ts = sampling.make_timesteps(proc, sampling.SamplerConfig(num_steps=T))
  x_T, cond, uncond = inputs(jnp.float32)
  on = G.GuidanceConfig(scale=1.0)
  with pytest.raises(ValueError, match="guidance is on .*pass score="):
    G.guided_sample(denoise, make_params(jnp.float32), proc, ts, x_T, cond, uncond, W, guidance=on)
  with pytest.raises(ValueError, match=r"weights expected shape \(5,\) \(one per step\), found \(4,\)"):
    G.guided_sample(
      denoise, make_params(jnp.float32), proc, ts, x_T, cond, uncond, W, score=score_of(cond), guidance=on,
      weights=jnp.ones(4),
    )  # fmt: skip


# --------------------------------------------------------------------------------------------- off = plain
@pytest.mark.parametrize("kind,eta", [("ddim", 0.0), ("ddim", 0.7), ("ddpm", 0.0), ("flow", 0.0), ("flow", 1.0)])
def test_scale_zero_is_the_plain_sampler_bit_for_bit(kind, eta):
  proc = {
    "ddim": schedules.make_schedule(),
    "ddpm": schedules.make_schedule(schedules.DiffusionConfig(sampler="ddpm")),
    "flow": flow.make_flow(),
  }[kind]
  ts = sampling.make_timesteps(proc, sampling.SamplerConfig(num_steps=T))
  params = make_params(jnp.float32)
  x_T, cond, uncond = inputs(jnp.float32)
  rng = jax.random.key(4)
  plain = jax.jit(lambda p: sampling.sample(denoise, p, proc, ts, x_T, cond, uncond, W, eta, rng, True))(params)
  off = dataclasses.replace(G.GuidanceConfig(), position="before_step", reward_input="clean_estimate", normalize="unit")
  for cfg in (G.GuidanceConfig(), off):
    got = jax.jit(
      lambda p, cfg=cfg: G.guided_sample(
        denoise, p, proc, ts, x_T, cond, uncond, W, eta, rng, score=score_of(cond), guidance=cfg,
        return_trajectory=True,
      )
    )(params)  # fmt: skip
    for a, b in zip(got, plain):
      np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------------------------- the term
def test_guidance_term_is_autodiff_of_the_reward_float64():
  with jax.enable_x64(True):
    x_T, cond, _ = inputs(jnp.float64)
    z = x_T * 0.7 + 0.1
    t = jnp.asarray([10, 500, 990], jnp.int32)

    def batch_mean_reward(z):  # the reward written again: -(1 + t/1000) |z DEC - target|^2, batch mean
      x = z @ jnp.asarray(DEC)
      return jnp.mean(-(1.0 + t / 1000.0) * jnp.sum((x - cond["target"]) ** 2, axis=-1))

    term = jax.jit(lambda z: G.guidance_term(score_of(cond), z, t, G.GuidanceConfig(scale=1.0)))(z)
    auto = jax.grad(batch_mean_reward)(z)
    np.testing.assert_allclose(term, auto, rtol=1e-12, atol=1e-14)
    # closed form of the same gradient, and a central finite difference of one coordinate
    closed = -2.0 * (1.0 + t[:, None] / 1000.0) * ((z @ DEC) - cond["target"]) @ DEC.T / B
    np.testing.assert_allclose(term, closed, rtol=1e-12)
    h, e = 1e-6, jnp.zeros_like(z).at[1, 2].set(1.0)
    fd = (batch_mean_reward(z + h * e) - batch_mean_reward(z - h * e)) / (2 * h)
    np.testing.assert_allclose(term[1, 2], fd, rtol=1e-7)
    # 'sum' = B x 'mean'; 'unit' rows have norm 1; clip caps each row's norm
    per_sample = G.guidance_term(score_of(cond), z, t, G.GuidanceConfig(scale=1.0, reduction="sum"))
    np.testing.assert_allclose(per_sample, B * auto, rtol=1e-12)
    unit = G.guidance_term(score_of(cond), z, t, G.GuidanceConfig(scale=1.0, reduction="sum", normalize="unit"))
    np.testing.assert_allclose(unit, per_sample / np.linalg.norm(per_sample, axis=1, keepdims=True), rtol=1e-12)
    norms = np.linalg.norm(per_sample, axis=1)
    cap = float(np.median(norms))
    clipped = G.guidance_term(score_of(cond), z, t, G.GuidanceConfig(scale=1.0, reduction="sum", clip=cap))
    np.testing.assert_allclose(clipped, per_sample * np.minimum(1.0, cap / norms)[:, None], rtol=1e-12)


# --------------------------------------------------------------------------------------------- trajectories
def reward_grad(z, target, factor, reduction):
  """d/dz of the toy reward's batch mean or sum: -2 factor (z DEC - target) DEC^T (/ B for the mean)."""
  g = -2.0 * factor[:, None] * ((z @ DEC) - target) @ DEC.T
  return g / z.shape[0] if reduction == "mean" else g


def reference(kind, cfg, params, x_T, cond, uncond):
  """The guided sampler unrolled in float64 from the formulas (DDIM eta 0 / Euler), CFG written out."""
  x = np.asarray(x_T, np.float64)
  target = np.asarray(cond["target"], np.float64)
  weights = cfg.weights(T)
  if kind == "ddim":
    abar = np.cumprod(1.0 - schedules.make_betas("scaled_linear", 1000, 0.00085, 0.012))
    t_grid, prev_grid = (np.asarray(v) for v in schedules.ddim_timesteps(1000, T))
    model_t = lambda t: float(t)  # noqa: E731
    reward_t = lambda t: max(int(t), 0)  # noqa: E731
  else:
    t_grid, prev_grid = flow.flow_grid(T)
    model_t = lambda s: 1000.0 * s  # noqa: E731
    reward_t = lambda s: int(np.round(s * 999))  # noqa: E731

  def model_out(x, t):
    tt = jnp.full((x.shape[0],), model_t(t), jnp.float64)
    xj = jnp.asarray(x)
    ou, oc = denoise(params, xj, tt, uncond), denoise(params, xj, tt, cond)
    return ou + W * (oc - ou)

  def clean(x, t):  # the one-step clean estimate as a jnp function (differentiated for 'clean_estimate')
    out = model_out(x, t)
    if kind == "ddim":
      a = abar[t] if t >= 0 else abar[0]
      return (x - np.sqrt(1 - a) * out) / np.sqrt(a)
    return x - t * out

  def step(x, t, prev):
    out = np.asarray(model_out(x, t))
    if kind == "ddim":
      a_t, a_p = abar[t], (abar[prev] if prev >= 0 else abar[0])
      x0 = (x - np.sqrt(1 - a_t) * out) / np.sqrt(a_t)
      return np.sqrt(a_p) * x0 + np.sqrt(1 - a_p) * out
    return x + (prev - t) * out

  def guide(x, i, time, final):
    rt = {"step": reward_t(t_grid[i]), "sample": reward_t(time), "none": 0}[cfg.reward_timestep]
    factor = np.full(x.shape[0], 1.0 + rt / 1000.0)
    for _ in range(cfg.grad_steps):
      if cfg.reward_input == "sample" or final:
        g = reward_grad(x, target, factor, cfg.reduction)
      else:
        f = lambda z: -jnp.sum(jnp.asarray(factor)[:, None] * (clean(z, time) @ DEC - target) ** 2)  # noqa: E731
        g = np.asarray(jax.grad(f)(jnp.asarray(x))) / (x.shape[0] if cfg.reduction == "mean" else 1)
      norms = np.linalg.norm(g, axis=1, keepdims=True)
      if cfg.normalize == "unit":
        g, norms = g / norms, np.ones_like(norms)
      if cfg.clip > 0:
        g = g * np.minimum(1.0, cfg.clip / norms)
      x = x + weights[i] * g
    return x

  for i in range(T):
    t, prev = t_grid[i], prev_grid[i]
    if cfg.position == "before_step" and weights[i] != 0:
      x = guide(x, i, t, False)
    x = step(x, t, prev)
    if cfg.position == "after_step" and weights[i] != 0:
      x = guide(x, i, prev, i == T - 1)
  return x


CASES = {
  "realign_rule": dict(scale=0.4),
  "before_sum_unit_increasing": dict(
    scale=0.3, position="before_step", reward_timestep="sample", reduction="sum", normalize="unit",
    schedule="increasing", start_step=1,
  ),
  "after_clean_estimate_clip_every2": dict(
    scale=0.5, reward_input="clean_estimate", reward_timestep="none", clip=0.2, schedule="decreasing", every=2,
  ),
  "before_clean_estimate_two_grad_steps": dict(
    scale=0.2, position="before_step", reward_input="clean_estimate", reduction="sum", normalize="unit",
    clip=0.5, grad_steps=2, stop_step=-1,
  ),
  "after_sample_time_sum": dict(scale=0.05, reward_timestep="sample", reduction="sum"),
}  # fmt: skip


@pytest.mark.parametrize("kind", ["ddim", "flow"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_guided_trajectory_equals_the_unrolled_float64_loop(kind, case):
  cfg = G.GuidanceConfig(**CASES[case])
  with jax.enable_x64(True):
    proc = processes()[kind]
    ts = sampling.make_timesteps(proc, sampling.SamplerConfig(num_steps=T))
    params = make_params(jnp.float64)
    x_T, cond, uncond = inputs(jnp.float64)
    got = jax.jit(
      lambda p: G.guided_sample(denoise, p, proc, ts, x_T, cond, uncond, W, score=score_of(cond), guidance=cfg).x0
    )(params)
    want = reference(kind, cfg, params, x_T, cond, uncond)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    plain = reference(kind, dataclasses.replace(cfg, scale=0.0), params, x_T, cond, uncond)
    assert np.max(np.abs(want - plain)) > 1e-3  # the guidance moved the samples


def test_weights_argument_replaces_the_scale_without_recompiling():
  proc = schedules.make_schedule()
  ts = sampling.make_timesteps(proc, sampling.SamplerConfig(num_steps=T))
  params = make_params(jnp.float32)
  x_T, cond, uncond = inputs(jnp.float32)
  cfg = G.GuidanceConfig(scale=1.0, reduction="sum")
  run = jax.jit(
    lambda p, w: (
      G.guided_sample(denoise, p, proc, ts, x_T, cond, uncond, W, score=score_of(cond), guidance=cfg, weights=w).x0
    )
  )
  a = run(params, jnp.asarray(G.GuidanceConfig(scale=0.3, reduction="sum").weights(T)))
  b = jax.jit(
    lambda p: (
      G.guided_sample(
        denoise, p, proc, ts, x_T, cond, uncond, W, score=score_of(cond), guidance=dataclasses.replace(cfg, scale=0.3)
      ).x0
    )
  )(params)
  np.testing.assert_allclose(a, b, rtol=1e-6)
  run(params, jnp.zeros(T))
  assert run._cache_size() == 1


# --------------------------------------------------------------------------------------------- it helps
@pytest.mark.parametrize("kind", ["ddim", "flow"])
@pytest.mark.parametrize("position", ["after_step", "before_step"])
def test_guidance_raises_a_toy_reward(kind, position):
  """More guidance, higher final reward (each sample's own), for both processes and positions."""
  proc = processes()[kind]
  ts = sampling.make_timesteps(proc, sampling.SamplerConfig(num_steps=T))
  params = make_params(jnp.float32)
  x_T, cond, uncond = inputs(jnp.float32, seed=7)
  cfg = G.GuidanceConfig(scale=1.0, position=position, reduction="sum", reward_timestep="none")
  run = jax.jit(
    lambda w: reward(
      decode(
        G.guided_sample(
          denoise, params, proc, ts, x_T, cond, uncond, W, score=score_of(cond), guidance=cfg, weights=w
        ).x0,
        cond,
      ),
      cond,
      None,
    )
  )
  rewards = np.stack([run(jnp.full(T, s)) for s in (0.0, 0.02, 0.05, 0.1)])  # [scales, B]
  plain = reward(decode(sampling.sample(denoise, params, proc, ts, x_T, cond, uncond, W).x0, cond), cond, None)
  np.testing.assert_allclose(rewards[0], plain, rtol=1e-5)
  assert np.all(np.diff(rewards, axis=0) > 0), rewards


def test_stochastic_reward_gets_a_key_per_step():
  proc = schedules.make_schedule()
  ts = sampling.make_timesteps(proc, sampling.SamplerConfig(num_steps=T))
  params = make_params(jnp.float32)
  x_T, cond, uncond = inputs(jnp.float32)

  def noisy_score(z, t, key):  # a reward that draws noise from its key (as the official SPM does)
    shift = 0.3 * jax.random.normal(key, z.shape[1:])
    return -jnp.sum(jnp.square(decode(z, cond) - cond["target"] + shift), axis=-1)

  cfg = G.GuidanceConfig(scale=0.2)
  run = jax.jit(
    lambda k: (
      G.guided_sample(denoise, params, proc, ts, x_T, cond, uncond, W, score=noisy_score, guidance=cfg, reward_rng=k).x0
    )
  )
  a, b, c = run(jax.random.key(1)), run(jax.random.key(1)), run(jax.random.key(2))
  np.testing.assert_array_equal(a, b)
  assert np.max(np.abs(np.asarray(a) - np.asarray(c))) > 1e-4


# --------------------------------------------------------------------------------------------- docs
def test_committed_guidance_docs_hold_the_table_of_their_record():
  """docs/guidance/guidance.json is what the quickstart's stage 'guidance' wrote; guidance.md, docs/guidance/README.md
  and the README show its table as `guidance_table` renders it, digit for digit."""
  import json
  import pathlib

  from easytune_jax.pipelines.guidance import guidance_markdown, guidance_table

  root = pathlib.Path(__file__).resolve().parents[1]
  record = json.loads((root / "docs" / "guidance" / "guidance.json").read_text())
  assert [r["method"] for r in record["rows"]] == ["base", "base+guidance", "easytune", "easytune+guidance"]
  assert (root / "docs" / "guidance" / "guidance.md").read_text() == guidance_markdown(record)
  table = "\n".join(guidance_table(record))
  for doc in ("docs/guidance/README.md", "README.md"):
    assert table in (root / doc).read_text(), doc
