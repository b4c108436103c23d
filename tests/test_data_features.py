"""features <-> joints on the real HumanML3D sample 012314 and on synthetic / hand-built motions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from easytune_jax.data import features as F
from easytune_jax.data import skeleton as sk
from easytune_jax.data import synthetic_motion as SM
from tests import reference_data


def _load(sub):
  return np.load(reference_data.path(f"humanml3d_sample/{sub}/012314.npy")).astype(np.float64)


@pytest.fixture(scope="module")
def sample():
  return _load("new_joint_vecs"), _load("new_joints")


def _reference_recover(x, j):
  """Independent loop version of docs/humanml3d_format.md#recovering-joints (quaternion rotation, step by step)."""
  f = x.shape[0]
  theta, root = 0.0, np.zeros(3)
  out = np.zeros((f, j, 3))
  for t in range(f):
    if t > 0:
      theta += x[t - 1, 0]
      phi = -2 * theta
      v = np.array([x[t - 1, 1], 0.0, x[t - 1, 2]])
      root = root + np.array([v[0] * np.cos(phi) + v[2] * np.sin(phi), 0, -v[0] * np.sin(phi) + v[2] * np.cos(phi)])
    q = np.array([np.cos(theta), 0, -np.sin(theta), 0])  # qinv of the heading
    out[t, 0] = [root[0], x[t, 3], root[2]]
    for k in range(1, j):
      l = x[t, 4 + 3 * (k - 1) : 4 + 3 * k]
      out[t, k] = sk.qrot(q, l) + np.array([root[0], 0, root[2]])
  return out


def test_recover_from_ric_real_sample(sample):
  x, joints = sample
  r = F.recover_from_ric(x, 22)
  assert np.abs(r - joints).max() < 1e-5
  np.testing.assert_allclose(r, _reference_recover(x, 22), atol=1e-10)
  expected_root = {
    0: (0, 0.836999, 0),
    50: (2.314686, 0.738248, 0.358186),
    100: (0.257978, 0.870762, -0.011065),
    169: (-0.026959, 0.904520, -0.053258),
  }
  for t, v in expected_root.items():
    np.testing.assert_allclose(r[t, 0], v, atol=1e-6)
  np.testing.assert_allclose(r[169, 10], (0.235802, 0.010250, 0.096518), atol=1e-6)
  np.testing.assert_allclose(r[169, 11], (-0.399463, 0.007575, 0.053619), atol=1e-6)
  assert abs(r.sum() - 6716.7164) < 1e-3 and abs(np.abs(r).sum() - 7116.1922) < 1e-3
  assert abs(x[:169, 0].sum() - (-0.395469)) < 1e-6
  np.testing.assert_allclose(
    x[0, :8], [0.106373, -0.002094, 0.001620, 0.836999, 0.080579, 0.773063, 0.006591, -0.032647], atol=1e-6
  )


def test_recover_from_ric_jax_batched_jit_grad(sample):
  x, joints = sample
  xb = np.stack([x[:160], x[10:170]])  # leading batch dim
  with jax.enable_x64(True):
    r = jax.jit(lambda a: F.recover_from_ric(a, 22))(jnp.asarray(xb))
    np.testing.assert_allclose(np.asarray(r[0]), F.recover_from_ric(x[:160], 22), atol=1e-10)
    np.testing.assert_allclose(np.asarray(r[1]), F.recover_from_ric(x[10:170], 22), atol=1e-10)
    g = jax.jit(jax.grad(lambda a: F.recover_from_ric(a, 22)[..., 5, 10, 0].sum()))(jnp.asarray(x))
    # joint 10 x at frame 5 depends on heading/velocity rows < 5 and ric row 5 only (causal)
    assert np.all(np.asarray(g[6:]) == 0) and np.abs(np.asarray(g[:5, :3])).sum() > 0
    eps = 1e-6
    d = np.zeros_like(x)
    d[2, 0] = eps
    fd = (F.recover_from_ric(x + d, 22)[5, 10, 0] - F.recover_from_ric(x - d, 22)[5, 10, 0]) / (2 * eps)
    assert abs(float(g[2, 0]) - fd) < 1e-6


def test_joints_to_features_real_sample(sample):
  x, joints = sample
  sl = F.feature_slices(22)
  # With the heading recovered from dim 0, every dim matches the published file.
  f = F.joints_to_features(joints, 22, heading=F.heading_from_features(x)[:170])
  assert f.shape == (169, 263)
  d = np.abs(f - x[:169])
  for g in ("root_ang", "root_lin", "root_y", "ric", "local_vel", "foot"):
    assert d[:, slice(*sl[g])].max() < 1e-4, g
  assert d[:, slice(*sl["rot"])].max() < 2e-5  # H3D computed qbetween in float32
  assert np.array_equal(f[:, -4:], x[:169, -4:])
  # With the smoothed-heading estimate (pure joints input), frames 0..88 match everywhere;
  # beyond that the Gaussian window reaches the missing last pose frame (features.py docstring).
  fs = F.joints_to_features(joints, 22)
  ds = np.abs(fs - x[:169])
  assert ds[:89].max() < 2e-5
  assert ds[:, slice(*sl["foot"])].max() == 0 and ds[:, slice(*sl["root_y"])].max() < 1e-6
  assert ds[:, slice(*sl["local_vel"])].max() < 1e-3


def test_quaternion_helpers_roundtrip():
  rng = np.random.default_rng(0)
  q = sk.qnormalize(rng.normal(size=(50, 4)))
  q = q * np.sign(q[:, :1])
  m = sk.quat_to_matrix(q)
  np.testing.assert_allclose(m @ np.swapaxes(m, -1, -2), np.broadcast_to(np.eye(3), m.shape), atol=1e-12)
  np.testing.assert_allclose(sk.matrix_to_quat(m), q, atol=1e-10)
  np.testing.assert_allclose(sk.cont6d_to_matrix(sk.matrix_to_cont6d(m)), m, atol=1e-12)
  v = rng.normal(size=(50, 3))
  np.testing.assert_allclose(sk.qrot(q, v), np.einsum("nij,nj->ni", m, v), atol=1e-12)
  np.testing.assert_allclose(sk.qrot(sk.qmul(q, sk.qinv(q)), v), v, atol=1e-12)
  a, b = rng.normal(size=(50, 3)), rng.normal(size=(50, 3))
  qb = sk.qbetween(a, b)
  np.testing.assert_allclose(
    sk.qrot(qb, a / np.linalg.norm(a, axis=-1, keepdims=True)),
    b / np.linalg.norm(b, axis=-1, keepdims=True),
    atol=1e-12,
  )
  assert np.all(np.isfinite(sk.qbetween(np.array([0.0, -1, 0]), np.array([0.0, 1, 0]))))
  with jax.enable_x64(True):
    np.testing.assert_allclose(np.asarray(sk.matrix_to_quat(jnp.asarray(m))), q, atol=1e-10)
    np.testing.assert_allclose(np.asarray(sk.qrot(jnp.asarray(q), jnp.asarray(v))), sk.qrot(q, v), atol=1e-12)


def test_ik_fk_chain_roundtrip():
  st = {"speed": 1.0, "amp": 1.0, "rate": 1.0, "phase": 0.0}
  segs = [{"action": "walk", "label": 0, "params": {"direction": "circle", "speed": "fast"}, "start": 0, "end": 60}]
  p = SM.generate_joints(segs, 60, st)
  r = F.smoothed_heading(p)
  quats = sk.inverse_kinematics_h3d(p, r)
  lengths = np.linalg.norm(p[0] - p[0, list((0,) + sk.HML_PARENTS[1:])], axis=-1)
  rec = sk.forward_kinematics_chain(quats, p[:, 0], sk.HML_RAW_OFFSETS * lengths[:, None])
  np.testing.assert_allclose(rec, p, atol=1e-9)


def _roundtrip_error(p):
  f = F.joints_to_features(p, 22)
  g = F.normalize_pose_frame(p)
  return np.abs(F.recover_from_ric(f, 22) - g[:-1]).max()


def test_joints_features_joints_roundtrip_synthetic_and_random():
  rng = np.random.default_rng(1)
  for _ in range(3):
    segs, style, p = SM.make_motion(rng, 90)
    assert _roundtrip_error(p) < 1e-4
  # Random smooth motion: smoothed random joint offsets around a walking root with random yaw.
  t = np.arange(120)[:, None, None]
  base = sk.forward_kinematics(np.tile(np.array([1.0, 0, 0, 0]), (1, 22, 1)), np.zeros((1, 3)), SM.REST_OFFSETS)[0]
  wob = 0.05 * np.sin(2 * np.pi * t / 60 * rng.uniform(0.5, 2, (1, 22, 3)) + rng.uniform(0, 6, (1, 22, 3)))
  yaw = 0.8 * np.sin(np.arange(120) / 30.0)
  q = sk.quat_from_axis_angle(np.array([0.0, 1, 0]), yaw)
  p = (
    sk.qrot(q[:, None], base[None] + wob)
    + np.stack([np.sin(np.arange(120) / 20), np.ones(120), np.arange(120) * 0.03], -1)[:, None]
  )
  assert _roundtrip_error(p) < 1e-4


def test_hand_built_forward_walk_and_turn():
  f = 41
  x = np.zeros((f, 263))
  x[:, 3] = 0.9
  x[:, 4:67] = np.tile(np.array([0.1, 0.0, 0.0]), 21)  # every joint 10 cm to the body's left
  # pure forward walk: 5 cm/frame along body +Z, no rotation
  x[:, 2] = 0.05
  j = F.recover_from_ric(x, 22)
  np.testing.assert_allclose(j[:, 0, 2], 0.05 * np.arange(f), atol=1e-12)
  np.testing.assert_allclose(j[:, 0, [0]], 0, atol=1e-12)
  np.testing.assert_allclose(j[:, 5] - j[:, 0] * [1, 0, 1], np.tile([0.1, 0, 0], (f, 1)), atol=1e-12)
  # pure turn in place: 90 degrees over 40 frames (dim 0 = half yaw increment). Joints are
  # R_y(-2θ_t)·ric (docs/humanml3d_format.md#recovering-joints): positive dim 0 turns the body clockwise seen
  # from above (to its right), so its left-side joint moves from +X to +Z.
  y = np.zeros((f, 263))
  y[:, 3] = 0.9
  y[:, 4:67] = np.tile(np.array([0.1, 0.0, 0.0]), 21)
  y[:, 0] = (np.pi / 2) / 40 / 2
  j = F.recover_from_ric(y, 22)
  np.testing.assert_allclose(j[:, 0, [0, 2]], 0, atol=1e-12)
  np.testing.assert_allclose(j[0, 5], [0.1, 0, 0], atol=1e-12)
  phi = np.arange(f) * np.pi / 80
  np.testing.assert_allclose(j[:, 5], 0.1 * np.stack([np.cos(phi), 0 * phi, np.sin(phi)], -1), atol=1e-12)
  np.testing.assert_allclose(j[40, 5], [0.0, 0, 0.1], atol=1e-12)
  # joints -> features of a synthetic 90° LEFT turn (counterclockwise): dim 0 sums to -π/4
  st = {"speed": 1.0, "amp": 1.0, "rate": 1.0, "phase": 0.0}
  segs = [{"action": "turn", "label": 7, "params": {"side": "left", "angle": 90}, "start": 0, "end": 80}]
  feats = F.joints_to_features(SM.generate_joints(segs, 81, st), 22)
  total = 2 * feats[:, 0].sum()  # radians of heading change
  assert abs(total + np.pi / 2) < 0.15, total
