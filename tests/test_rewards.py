"""Reward registry and physical-plausibility rewards: specs, weighted sums, user functions, penalties against
the evaluation metrics and against hand-made motions, finite gradients through padded frames."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from easytune_jax import metrics
from easytune_jax.data.features import recover_from_ric
from easytune_jax.rewards import physical, registry

FPS = 20.0


def _joints(seed=0, b=3, f=24, j=22):
  """Random walks above and below the floor: [B, F, J, 3] metres."""
  rng = np.random.default_rng(seed)
  x = np.cumsum(rng.normal(0, 0.02, (b, f, j, 3)), axis=1) + rng.normal(0, 0.05, (b, 1, j, 3))
  return x.astype(np.float32)


def _mask(lengths, f):
  return np.arange(f)[None, :] < np.asarray(lengths)[:, None]


def test_jitter_and_penetration_equal_the_metrics():
  joints, lengths = _joints(), np.array([24, 17, 9])
  mask = _mask(lengths, joints.shape[1])
  np.testing.assert_allclose(
    physical.jitter_penalty(joints, mask, fps=FPS), metrics.jitter(joints, lengths, fps=FPS), rtol=1e-4
  )
  np.testing.assert_allclose(
    physical.penetration_penalty(joints, mask), metrics.floor_penetration(joints, lengths), rtol=1e-5, atol=1e-7
  )


def _feet_motion(height, speed, f=12):
  """One motion whose feet (10, 11) move along x at `speed` m/s at `height` m; the other joints stand still."""
  joints = np.zeros((1, f, 22, 3), np.float32)
  joints[..., 1] = 1.0
  joints[0, :, 10:12, 1] = height
  joints[0, :, 10:12, 0] = (np.arange(f) * speed / FPS)[:, None]
  return joints


def test_skating_penalty_is_the_speed_of_a_foot_that_should_stand_still():
  mask = np.ones((1, 12), bool)
  sliding = physical.skating_penalty(_feet_motion(0.0, 1.0), mask, fps=FPS)
  standing = physical.skating_penalty(_feet_motion(0.0, 0.0), mask, fps=FPS)
  swinging = physical.skating_penalty(_feet_motion(0.3, 1.0), mask, fps=FPS)
  # contact weight sigmoid(0.05 / 0.01)^2 = 0.987 at floor height; 1 m/s horizontal speed
  np.testing.assert_allclose(sliding, [jax.nn.sigmoid(5.0) ** 2], rtol=1e-4)
  assert float(standing[0]) < 1e-5 and float(swinging[0]) < 1e-9
  # ... and it orders motions like the thresholded metric does
  ratio = metrics.foot_skating_ratio(
    np.concatenate([_feet_motion(0.0, 1.0), _feet_motion(0.3, 1.0)]), np.array([12, 12]), fps=FPS
  )
  assert float(ratio[0]) == 1.0 and float(ratio[1]) == 0.0


@pytest.mark.parametrize("name", sorted(physical.PENALTIES))
def test_penalties_ignore_padding_and_have_finite_gradients(name):
  joints, lengths = _joints(1), np.array([24, 13, 6])
  f = joints.shape[1]
  mask = _mask(lengths, f)
  padded = np.where(mask[..., None, None], joints, 0.0)  # zero padding: zero differences (norm at 0)
  junk = np.where(mask[..., None, None], joints, 5.0)
  fn = jax.jit(physical.PENALTIES[name])  # one program, not every op compiled on its own
  np.testing.assert_allclose(fn(padded, mask), fn(junk, mask), rtol=1e-6)
  g = jax.jit(jax.grad(lambda x: jnp.sum(fn(x, mask))))(jnp.asarray(padded))
  assert np.all(np.isfinite(np.asarray(g)))
  assert np.all(np.asarray(g)[~mask] == 0)  # no gradient into frames that do not exist


def test_parse_spec():
  assert registry.parse_spec("spm") == (("spm", 1.0),)
  assert registry.parse_spec("spm:1.0, skating:0.2") == (("spm", 1.0), ("skating", 0.2))
  assert registry.parse_spec("tests.test_rewards:height_reward:-0.5") == (("tests.test_rewards:height_reward", -0.5),)
  assert registry.parse_spec("tests.test_rewards:height_reward") == (("tests.test_rewards:height_reward", 1.0),)
  with pytest.raises(ValueError, match="appears twice"):
    registry.parse_spec("spm,spm:2")
  with pytest.raises(ValueError, match="expected terms"):
    registry.parse_spec(" , ")


def height_reward(x, cond, t):
  """A user reward (module:function): mean of feature 3 (root height) over valid frames."""
  del t
  m = cond["mask"].astype(x.dtype)
  return jnp.sum(x[..., 3] * m, 1) / jnp.sum(m, 1)


def scaled_reward(x, cond, t, context):
  """A user reward that reads the context."""
  return height_reward(x, cond, t) * context.joints_num


def _context(reference_data, spm=None):
  d = reference_data / "humanml3d_sample"
  return registry.RewardContext(mean=np.load(d / "Mean.npy"), std=np.load(d / "Std.npy"), joints_num=22, spm=spm)


def test_weighted_reward_terms_and_user_functions(reference_data):
  d = reference_data / "humanml3d_sample"
  feats = np.load(d / "new_joint_vecs" / "012314.npy")[:40].astype(np.float32)
  mean, std = np.load(d / "Mean.npy"), np.load(d / "Std.npy")
  x = jnp.asarray(np.stack([(feats - mean) / std, (feats[::-1] - mean) / std]))
  cond = {"mask": jnp.asarray(_mask([40, 31], 40))}
  spm = lambda x, cond, t=None: jnp.tanh(x.mean(axis=(1, 2)))  # noqa: E731  (stands in for the SPM)
  ctx = _context(reference_data, spm)
  r = registry.build_reward("spm:1.0,skating:0.2,jitter:0.001,tests.test_rewards:scaled_reward:0.5", ctx)

  order = []  # the terms' order as term_values returns it (a jitted dict comes back with sorted keys)

  @jax.jit  # one program (eagerly, every op of the joint recovery and the penalties would compile on its own)
  def evaluate(x):
    terms = r.term_values(x, cond, None)
    order.extend(terms)
    return terms, r(x, cond, None), jax.grad(lambda x: jnp.sum(r(x, cond, None)))(x)

  terms, total, g = evaluate(x)
  assert order == ["spm", "skating", "jitter", "tests.test_rewards.scaled_reward"]  # tag-safe names
  joints = np.asarray(recover_from_ric(feats, 22))
  lengths = np.array([40, 31])
  joints2 = np.stack([joints, np.asarray(recover_from_ric(feats[::-1], 22))])
  np.testing.assert_allclose(terms["jitter"], -metrics.jitter(joints2, lengths, fps=FPS), rtol=2e-3)
  np.testing.assert_allclose(terms["tests.test_rewards.scaled_reward"], 22 * height_reward(x, cond, None), rtol=1e-6)
  want = (
    terms["spm"] + 0.2 * terms["skating"] + 0.001 * terms["jitter"] + 0.5 * terms["tests.test_rewards.scaled_reward"]
  )
  np.testing.assert_allclose(total, want, rtol=1e-6)
  assert np.all(np.isfinite(np.asarray(g))) and float(jnp.abs(g).sum()) > 0


def test_build_reward_errors(reference_data):
  ctx = _context(reference_data)
  with pytest.raises(ValueError, match="no trained reward model"):
    registry.build_reward("spm", ctx)
  with pytest.raises(ValueError, match="not registered.*skating"):
    registry.build_reward("skateing", ctx)
  with pytest.raises(ValueError, match="cannot import module 'no_such_module'"):
    registry.build_reward("no_such_module:fn", ctx)
  with pytest.raises(ValueError, match="has no function 'nope'"):
    registry.build_reward("tests.test_rewards:nope", ctx)
  with pytest.raises(ValueError, match="identifier"):
    registry.register("my-reward", lambda ctx: None)
