"""HumanML3D / KIT motion features <-> global joint positions (docs/humanml3d_format.md#feature-vector).

* :func:`recover_root_rot_pos`, :func:`recover_from_ric`: features -> joints, the closed form of
  docs/humanml3d_format.md#recovering-joints. Pure array code on numpy or JAX arrays with any
  leading batch dims; jittable and differentiable (reward models and metrics call it inside ``jit``).
* :func:`joints_to_features`: joints -> features, the H3D ``process_file`` pipeline
  (docs/humanml3d_format.md#feature-computation; numpy, float64) without the re-targeting step 1
  (the input is assumed to be on the wanted skeleton already; the synthetic generator builds its
  motions on the reference skeleton).

Measured on the real sample 012314 (tests/test_data_features.py, float64):
* features -> joints reproduces ``new_joints/012314.npy`` to 2.1e-7 m, and the root positions,
  single joints and coordinate sums that tests/test_data_features.py checks.
* joints -> features on those joints with the smoothed heading matches the published features
  in *every* group over frames 0..88 (root 1.4e-7, ric 2.2e-7, 6-D 7.8e-6, local velocity
  3.4e-7, contacts exact). After frame ~89 the heading-dependent dims drift (ric up to 6.8e-3 m
  at frame 168, 6-D up to 1.3e-2, root angular velocity 3e-4): the published joints stop one
  pose frame short of the clip the features were built from (the last pose frame is dropped,
  docs/humanml3d_format.md#feature-computation step 5), and the σ = 20 Gaussian (radius 4σ = 80
  frames, 'nearest' edges) of the forward vector then pads its right half with frame 169 instead of
  the unseen frame 170, so the last 80 frames see a slightly different heading. That is inherent to
  re-deriving features from a published joints file, not a bug.
* Passing ``heading=heading_from_features(x)[:F]`` (the heading is exactly recoverable from
  dim 0) removes the edge effect and then all 263 dims match on every frame: root/ric/local
  velocity <= 4.3e-8 / 2.2e-7 / 3.4e-7, contacts exact, and the 6-D block to 7.8e-6. The 6-D
  block matches because the H3D IK is a deterministic function of the positions and the heading
  (shortest-arc rotation from the template direction to each bone) and the published joints are
  already on the reference skeleton; the 7.8e-6 residual is H3D computing ``qbetween`` in
  float32.
"""

from __future__ import annotations

import numpy as np

from easytune_jax.data import skeleton as sk
from easytune_jax.data.skeleton import qbetween, qinv, qmul, qrot, xp_of


def feature_dim(joints_num: int) -> int:
  """D = 8 + 9 (J - 1) + 3 J: 263 for 22 joints, 251 for 21."""
  return 8 + 9 * (joints_num - 1) + 3 * joints_num


def joints_num_for_dim(dim: int) -> int:
  for j in (22, 21):
    if feature_dim(j) == dim:
      return j
  raise ValueError(f"feature dimension: expected 263 (HumanML3D) or 251 (KIT), found {dim}")


def feature_slices(joints_num: int) -> dict:
  """Half-open [start, stop) of each feature group (docs/humanml3d_format.md#feature-vector)."""
  j = joints_num
  ric0 = 4
  rot0 = ric0 + 3 * (j - 1)
  vel0 = rot0 + 6 * (j - 1)
  foot0 = vel0 + 3 * j
  return {
    "root_ang": (0, 1),
    "root_lin": (1, 3),
    "root_y": (3, 4),
    "ric": (ric0, rot0),
    "rot": (rot0, vel0),
    "local_vel": (vel0, foot0),
    "foot": (foot0, foot0 + 4),
  }


def _exclusive_cumsum(a, xp):
  """Along the last axis: out[..., 0] = 0, out[..., t] = sum_{k<t} a[..., k]."""
  zero = xp.zeros_like(a[..., :1])
  return xp.cumsum(xp.concatenate([zero, a[..., :-1]], axis=-1), axis=-1)


def recover_root_rot_pos(x):
  """Heading quaternions and root positions from features (docs/humanml3d_format.md#recovering-joints).

  Args:
    x: [..., F, D] de-normalised features.
  Returns:
    (q [..., F, 4] world-to-body heading (cos θ, 0, sin θ, 0), root [..., F, 3]).
  """
  xp = xp_of(x)
  theta = _exclusive_cumsum(x[..., 0], xp)  # half heading angle
  zeros = xp.zeros_like(theta)
  q = xp.stack([xp.cos(theta), zeros, xp.sin(theta), zeros], axis=-1)
  c, s = xp.cos(2.0 * theta), xp.sin(2.0 * theta)
  # Velocity stored at row t-1 belongs to frame t (rotated with frame t's heading).
  vx = xp.concatenate([xp.zeros_like(x[..., :1, 1]), x[..., :-1, 1]], axis=-1)
  vz = xp.concatenate([xp.zeros_like(x[..., :1, 2]), x[..., :-1, 2]], axis=-1)
  root_x = xp.cumsum(vx * c - vz * s, axis=-1)
  root_z = xp.cumsum(vx * s + vz * c, axis=-1)
  root = xp.stack([root_x, x[..., 3], root_z], axis=-1)
  return q, root


def recover_from_ric(x, joints_num: int):
  """Global joint positions from features (closed form, docs/humanml3d_format.md#recovering-joints).
  [..., F, D] -> [..., F, J, 3].

  Uses only dims 0-3 and the ric block. Causal in time, so trailing padding never changes a
  valid frame.
  """
  xp = xp_of(x)
  theta = _exclusive_cumsum(x[..., 0], xp)
  c, s = xp.cos(2.0 * theta)[..., None], xp.sin(2.0 * theta)[..., None]
  _, root = recover_root_rot_pos(x)
  ric = x[..., 4 : 4 + 3 * (joints_num - 1)]
  ric = ric.reshape(ric.shape[:-1] + (joints_num - 1, 3))
  lx, ly, lz = ric[..., 0], ric[..., 1], ric[..., 2]
  gx = lx * c - lz * s + root[..., 0:1]
  gz = lx * s + lz * c + root[..., 2:3]
  joints = xp.stack([gx, ly, gz], axis=-1)
  return xp.concatenate([root[..., None, :], joints], axis=-2)


def heading_from_features(x):
  """The pose-frame heading quaternions r_t used to build features x [F, D] -> [F + 1, 4].

  Frame F (one beyond the last feature row) is included since x[F - 1, 0] gives its increment.
  """
  xp = xp_of(x)
  theta = xp.cumsum(xp.concatenate([xp.zeros_like(x[..., :1, 0]), x[..., 0]], axis=-1), axis=-1)
  zeros = xp.zeros_like(theta)
  return xp.stack([xp.cos(theta), zeros, xp.sin(theta), zeros], axis=-1)


def smoothed_heading(positions, face_joints=sk.HML_FACE_JOINTS, sigma: float = 20.0):
  """H3D heading quaternions r_t (world -> body) from global positions [T, J, 3] -> [T, 4].

  Reproduces ``inverse_kinematics_np(..., smooth_forward=True)``, including its quirk: the four
  face indices ``[r_hip, l_hip, r_sh, l_sh]`` are unpacked as ``l_hip, r_hip, sdr_r, sdr_l``, so
  the hip term has the opposite sign of the shoulder term (the shoulders dominate, 0.38 m vs
  0.12 m apart). The forward vector is Gaussian-smoothed over time (σ frames, 'nearest' edges)
  and r_0 is forced to the identity.
  """
  l_hip, r_hip, sdr_r, sdr_l = face_joints
  across = (positions[:, r_hip] - positions[:, l_hip]) + (positions[:, sdr_r] - positions[:, sdr_l])
  across = across / np.linalg.norm(across, axis=-1, keepdims=True)
  forward = sk.cross(np.broadcast_to(np.array([0.0, 1.0, 0.0]), across.shape), across)
  if sigma > 0:
    from scipy.ndimage import gaussian_filter1d  # scipy on first use: launchers that never extract features skip it

    forward = gaussian_filter1d(forward, sigma, axis=0, mode="nearest")
  forward = forward / np.linalg.norm(forward, axis=-1, keepdims=True)
  r = qbetween(forward, np.broadcast_to(np.array([0.0, 0.0, 1.0]), forward.shape))
  r[0] = np.array([1.0, 0.0, 0.0, 0.0])
  return r


def normalize_pose_frame(positions, face_joints=sk.HML_FACE_JOINTS):
  """Floor at y = 0, frame-0 root at the xz origin, frame 0 facing +Z
  (docs/humanml3d_format.md#feature-computation step 2).

  positions: [T, J, 3] -> [T, J, 3] (float64).
  """
  p = np.array(positions, dtype=np.float64, copy=True)
  p[..., 1] -= p[..., 1].min()
  p -= np.array([p[0, 0, 0], 0.0, p[0, 0, 2]])
  r_hip, l_hip, sdr_r, sdr_l = face_joints
  across = (p[0, r_hip] - p[0, l_hip]) + (p[0, sdr_r] - p[0, sdr_l])
  across = across / np.linalg.norm(across)
  fwd = sk.cross(np.array([0.0, 1.0, 0.0]), across)
  fwd = fwd / np.linalg.norm(fwd)
  q = qbetween(fwd, np.array([0.0, 0.0, 1.0]))
  return qrot(np.broadcast_to(q, p.shape[:-1] + (4,)), p)


def foot_contacts(positions, foot_left, foot_right, threshold):
  """Binary contacts [T - 1, 4] = [left..., right...]: squared displacement t -> t+1 < threshold."""
  d2 = np.sum((positions[1:] - positions[:-1]) ** 2, axis=-1)
  return np.concatenate([(d2[:, list(foot_left)] < threshold), (d2[:, list(foot_right)] < threshold)], axis=-1).astype(
    np.float64
  )


def joints_to_features(
  positions,
  joints_num: int | None = None,
  *,
  normalize_frame: bool = True,
  heading=None,
  smooth_sigma: float = 20.0,
  foot_threshold: float | None = None,
):
  """Global joints -> features, H3D ``process_file`` (docs/humanml3d_format.md#feature-computation,
  steps 2-5). numpy float64.

  Args:
    positions: [T, J, 3] global joint positions (Y-up), on the target skeleton.
    joints_num: J (22 HumanML3D, 21 KIT); inferred from ``positions`` when None.
    normalize_frame: apply floor / origin / face-+Z (steps 2-4). The published ``new_joints``
      are already in that frame, where these steps are the identity up to rounding.
    heading: optional [T, 4] heading quaternions r_t to use instead of the smoothed estimate
      (e.g. :func:`heading_from_features` of a published file, to reproduce it bit-for-bit).
    smooth_sigma: σ in frames of the forward-vector smoothing (H3D: 20).
    foot_threshold: squared-displacement contact threshold (default 0.002 HumanML3D, 0.05 KIT).
  Returns:
    [T - 1, D] float64 features.
  """
  p = np.asarray(positions, dtype=np.float64)
  if p.ndim != 3 or p.shape[-1] != 3:
    raise ValueError(f"positions: expected shape [T, J, 3], found {p.shape}")
  jn = p.shape[1] if joints_num is None else joints_num
  if p.shape[1] != jn:
    raise ValueError(f"positions: expected {jn} joints, found {p.shape[1]}")
  if p.shape[0] < 2:
    raise ValueError(f"positions: need at least 2 frames, found {p.shape[0]}")
  spec = sk.skeleton_for(jn)
  thr = spec.foot_threshold if foot_threshold is None else foot_threshold
  g = normalize_pose_frame(p, spec.face_joints) if normalize_frame else p
  contacts = foot_contacts(g, spec.foot_left, spec.foot_right, thr)

  if heading is None:
    r = smoothed_heading(g, spec.face_joints, smooth_sigma)
  else:
    r = np.asarray(heading, dtype=np.float64)
    if r.shape != (g.shape[0], 4):
      raise ValueError(f"heading: expected shape {(g.shape[0], 4)}, found {r.shape}")
  quats = sk.inverse_kinematics_h3d(g, r, spec.raw_offsets, spec.kinematic_chain)
  cont6d = sk.quat_to_cont6d(quats)  # [T, J, 6]

  vel = qrot(r[1:], g[1:, 0] - g[:-1, 0])  # next frame's heading
  dq = qmul(r[1:], qinv(r[:-1]))
  r_ang = np.arcsin(np.clip(dq[:, 2:3], -1.0, 1.0))  # half the yaw increment
  t = g.shape[0]
  local = g - np.array([1.0, 0.0, 1.0]) * g[:, :1]  # subtract root x, z only
  ric = qrot(np.broadcast_to(r[:, None], local.shape[:-1] + (4,)), local)
  lvel = qrot(np.broadcast_to(r[:-1, None], (t - 1, jn, 4)), g[1:] - g[:-1])  # current heading

  return np.concatenate(
    [
      r_ang,
      vel[:, [0, 2]],
      ric[:-1, 0, 1:2],
      ric[:-1, 1:].reshape(t - 1, -1),
      cont6d[:-1, 1:].reshape(t - 1, -1),
      lvel.reshape(t - 1, -1),
      contacts,
    ],
    axis=-1,
  )


def local_rotations_from_features(x, joints_num: int):
  """The stored local rotations [..., F, J-1, 3, 3] (6-D block -> matrices by Gram–Schmidt)."""
  sl = feature_slices(joints_num)["rot"]
  c6 = x[..., sl[0] : sl[1]]
  c6 = c6.reshape(c6.shape[:-1] + (joints_num - 1, 6))
  return sk.cont6d_to_matrix(c6)
