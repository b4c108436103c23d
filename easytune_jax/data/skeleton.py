"""Skeletons (HumanML3D 22 joints, KIT 21 joints), quaternion maths and forward kinematics.

Conventions (docs/humanml3d_format.md#conventions, docs/humanml3d_format.md#skeleton): quaternions are
``(w, x, y, z)`` with the real part first, the world is Y-up, the body faces +Z in the first frame and its
left side is +X.

Every quaternion / rotation helper works on numpy *and* JAX arrays with any leading batch dims:
the array module is picked from the inputs (``jax.Array`` -> ``jax.numpy``, otherwise ``numpy``),
so the same code serves float64 data generation and jitted, differentiable reward / metric code.

Reference bone lengths (``HML_BONE_LENGTHS``): the real reference skeleton ``000021`` is not
available here. Every HumanML3D file is re-targeted to that skeleton
(docs/humanml3d_format.md#feature-computation step 1), so its bone lengths are constant over the frames of
*any* processed file. They were measured as the mean
``|P[t, j] - P[t, parent(j)]|`` over the 170 frames of the real sample
``new_joints/012314.npy``; their standard deviation over the frames is 2.4e-7 m at most, which
confirms that these are the 000021 lengths (up to float32 rounding), in metres.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# ---------------------------------------------------------------------------------------------
# Skeleton tables
# ---------------------------------------------------------------------------------------------

HML_JOINT_NAMES = (
  "pelvis",
  "left_hip",
  "right_hip",
  "spine1",
  "left_knee",
  "right_knee",
  "spine2",
  "left_ankle",
  "right_ankle",
  "spine3",
  "left_foot",
  "right_foot",
  "neck",
  "left_collar",
  "right_collar",
  "head",
  "left_shoulder",
  "right_shoulder",
  "left_elbow",
  "right_elbow",
  "left_wrist",
  "right_wrist",
)
HML_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19)
# right leg, left leg, spine-head, right arm, left arm (t2m_kinematic_chain).
HML_KINEMATIC_CHAIN = (
  (0, 2, 5, 8, 11),
  (0, 1, 4, 7, 10),
  (0, 3, 6, 9, 12, 15),
  (9, 14, 17, 19, 21),
  (9, 13, 16, 18, 20),
)
HML_RAW_OFFSETS = np.array(
  [
    [0, 0, 0],
    [1, 0, 0],
    [-1, 0, 0],
    [0, 1, 0],
    [0, -1, 0],
    [0, -1, 0],
    [0, 1, 0],
    [0, -1, 0],
    [0, -1, 0],
    [0, 1, 0],
    [0, 0, 1],
    [0, 0, 1],
    [0, 1, 0],
    [1, 0, 0],
    [-1, 0, 0],
    [0, 0, 1],
    [0, -1, 0],
    [0, -1, 0],
    [0, -1, 0],
    [0, -1, 0],
    [0, -1, 0],
    [0, -1, 0],
  ],
  dtype=np.float64,
)
# Bone length of joint j = |P_j - P_parent(j)| of the 000021 reference skeleton, measured on the
# real sample 012314 (see module docstring); entry 0 (root) is 0.
HML_BONE_LENGTHS = np.array(
  [
    0.000000,
    0.103074,
    0.109883,
    0.131568,
    0.393623,
    0.390188,
    0.143190,
    0.432433,
    0.425643,
    0.057365,
    0.143382,
    0.149419,
    0.219360,
    0.137487,
    0.143383,
    0.103039,
    0.131614,
    0.122984,
    0.256840,
    0.263092,
    0.266012,
    0.269876,
  ],
  dtype=np.float64,
)
HML_FACE_JOINTS = (2, 1, 17, 16)  # [r_hip, l_hip, r_shoulder, l_shoulder]
HML_FOOT_LEFT = (7, 10)
HML_FOOT_RIGHT = (8, 11)
HML_MIRROR_RIGHT = (2, 5, 8, 11, 14, 17, 19, 21)
HML_MIRROR_LEFT = (1, 4, 7, 10, 13, 16, 18, 20)

KIT_PARENTS = (-1, 0, 1, 2, 3, 3, 5, 6, 3, 8, 9, 0, 11, 12, 13, 14, 0, 16, 17, 18, 19)
KIT_KINEMATIC_CHAIN = ((0, 11, 12, 13, 14, 15), (0, 16, 17, 18, 19, 20), (0, 1, 2, 3, 4), (3, 5, 6, 7), (3, 8, 9, 10))
KIT_RAW_OFFSETS = np.array(
  [
    [0, 0, 0],
    [0, 1, 0],
    [0, 1, 0],
    [0, 1, 0],
    [0, 1, 0],
    [1, 0, 0],
    [0, -1, 0],
    [0, -1, 0],
    [-1, 0, 0],
    [0, -1, 0],
    [0, -1, 0],
    [1, 0, 0],
    [0, -1, 0],
    [0, -1, 0],
    [0, 0, 1],
    [0, 0, 1],
    [-1, 0, 0],
    [0, -1, 0],
    [0, -1, 0],
    [0, 0, 1],
    [0, 0, 1],
  ],
  dtype=np.float64,
)
KIT_FACE_JOINTS = (11, 16, 5, 8)
KIT_FOOT_LEFT = (19, 20)
KIT_FOOT_RIGHT = (14, 15)


class SkeletonSpec:
  """Static description of one skeleton kind (tables only, no arrays of data)."""

  def __init__(self, kind, parents, chain, raw_offsets, face_joints, foot_left, foot_right, foot_threshold, fps):
    self.kind = kind
    self.parents = tuple(parents)
    self.kinematic_chain = tuple(tuple(c) for c in chain)
    self.raw_offsets = np.asarray(raw_offsets, np.float64)
    self.face_joints = tuple(face_joints)
    self.foot_left = tuple(foot_left)
    self.foot_right = tuple(foot_right)
    self.foot_threshold = float(foot_threshold)
    self.fps = float(fps)

  @property
  def joints_num(self) -> int:
    return len(self.parents)

  @property
  def feature_dim(self) -> int:
    j = self.joints_num
    return 8 + 9 * (j - 1) + 3 * j


HUMANML3D = SkeletonSpec(
  "humanml3d",
  HML_PARENTS,
  HML_KINEMATIC_CHAIN,
  HML_RAW_OFFSETS,
  HML_FACE_JOINTS,
  HML_FOOT_LEFT,
  HML_FOOT_RIGHT,
  0.002,
  20.0,
)
KIT = SkeletonSpec(
  "kit", KIT_PARENTS, KIT_KINEMATIC_CHAIN, KIT_RAW_OFFSETS, KIT_FACE_JOINTS, KIT_FOOT_LEFT, KIT_FOOT_RIGHT, 0.05, 12.5
)


def skeleton_for(joints_num: int) -> SkeletonSpec:
  """Returns the spec for 22 (HumanML3D) or 21 (KIT) joints."""
  if joints_num == 22:
    return HUMANML3D
  if joints_num == 21:
    return KIT
  raise ValueError(f"joints_num: expected 22 (HumanML3D) or 21 (KIT), found {joints_num}")


# ---------------------------------------------------------------------------------------------
# Quaternion helpers (numpy or jax, any leading dims)
# ---------------------------------------------------------------------------------------------


def xp_of(*arrays):
  """The array module for the inputs: jax.numpy if any is a jax array (or tracer), else numpy."""
  return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def cross(a, b):
  """a × b over the last axis (component form: much faster than np.cross on small batches)."""
  xp = xp_of(a, b)
  a0, a1, a2 = a[..., 0], a[..., 1], a[..., 2]
  b0, b1, b2 = b[..., 0], b[..., 1], b[..., 2]
  return xp.stack([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0], axis=-1)


def qnormalize(q):
  xp = xp_of(q)
  return q / xp.linalg.norm(q, axis=-1, keepdims=True)


def qinv(q):
  """Conjugate (= inverse for unit quaternions). q: [..., 4]."""
  xp = xp_of(q)
  return q * xp.asarray([1.0, -1.0, -1.0, -1.0], dtype=q.dtype)


def qmul(q, r):
  """Hamilton product q ⊗ r. q, r: [..., 4] (broadcast)."""
  xp = xp_of(q, r)
  w1, x1, y1, z1 = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
  w2, x2, y2, z2 = r[..., 0], r[..., 1], r[..., 2], r[..., 3]
  return xp.stack(
    [
      w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
      w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
      w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
      w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
    ],
    axis=-1,
  )


def qrot(q, v):
  """Rotates v by unit quaternion q: v + 2 (w u×v + u×(u×v)). q: [..., 4], v: [..., 3]."""
  u = q[..., 1:]
  uv = cross(u, v)
  uuv = cross(u, uv)
  return v + 2.0 * (q[..., :1] * uv + uuv)


def qbetween(v0, v1):
  """Shortest-arc unit quaternion rotating direction v0 onto v1 (H3D qbetween). [..., 3] -> [..., 4].

  For exactly opposite vectors the arc is undefined (H3D returns NaN); here the rotation is
  taken by pi about an axis perpendicular to v0 so the result stays finite.
  """
  xp = xp_of(v0, v1)
  v0, v1 = xp.broadcast_arrays(v0, v1)
  c = cross(v0, v1)
  w = xp.sqrt(xp.sum(v0 * v0, -1) * xp.sum(v1 * v1, -1)) + xp.sum(v0 * v1, -1)
  q = xp.concatenate([w[..., None], c], axis=-1)
  n = xp.linalg.norm(q, axis=-1, keepdims=True)
  # Degenerate (antiparallel) case: axis = v0 × e, with e the basis vector least aligned with v0.
  ex = xp.asarray([1.0, 0.0, 0.0], dtype=v0.dtype)
  ey = xp.asarray([0.0, 1.0, 0.0], dtype=v0.dtype)
  e = xp.where(xp.abs(v0[..., :1]) < 0.9, ex, ey)
  axis = cross(v0, xp.broadcast_to(e, v0.shape))
  axis = axis / xp.maximum(xp.linalg.norm(axis, axis=-1, keepdims=True), 1e-30)
  q_pi = xp.concatenate([xp.zeros_like(w)[..., None], axis], axis=-1)
  scale = xp.sqrt(xp.sum(v0 * v0, -1) * xp.sum(v1 * v1, -1))[..., None]
  bad = n <= 1e-12 * xp.maximum(scale, 1e-30)
  return xp.where(bad, q_pi, q / xp.where(bad, 1.0, n))


def quat_from_axis_angle(axis, angle):
  """axis [..., 3] (unit), angle [...] (rad) -> [..., 4]."""
  xp = xp_of(axis, angle)
  half = 0.5 * angle
  return xp.concatenate([xp.cos(half)[..., None], xp.sin(half)[..., None] * axis], axis=-1)


def quat_to_matrix(q):
  """[..., 4] -> [..., 3, 3] (pytorch3d / H3D formula; q need not be normalised)."""
  xp = xp_of(q)
  r, i, j, k = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
  two_s = 2.0 / xp.sum(q * q, axis=-1)
  o = xp.stack(
    [
      1 - two_s * (j * j + k * k),
      two_s * (i * j - k * r),
      two_s * (i * k + j * r),
      two_s * (i * j + k * r),
      1 - two_s * (i * i + k * k),
      two_s * (j * k - i * r),
      two_s * (i * k - j * r),
      two_s * (j * k + i * r),
      1 - two_s * (i * i + j * j),
    ],
    axis=-1,
  )
  return o.reshape(q.shape[:-1] + (3, 3))


def matrix_to_quat(m):
  """[..., 3, 3] rotation matrices -> [..., 4] unit quaternions with w >= 0.

  Branch-free (all four Shepperd candidates, keep the best conditioned) so it jits.
  """
  xp = xp_of(m)
  m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
  m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
  m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
  cands = xp.stack(
    [
      xp.stack([1 + m00 + m11 + m22, m21 - m12, m02 - m20, m10 - m01], -1),
      xp.stack([m21 - m12, 1 + m00 - m11 - m22, m01 + m10, m02 + m20], -1),
      xp.stack([m02 - m20, m01 + m10, 1 - m00 + m11 - m22, m12 + m21], -1),
      xp.stack([m10 - m01, m02 + m20, m12 + m21, 1 - m00 - m11 + m22], -1),
    ],
    axis=-2,
  )  # [..., 4 candidates, 4]
  diag = xp.stack([m00 + m11 + m22, m00, m11, m22], -1)
  best = xp.argmax(diag, axis=-1)
  q = xp.take_along_axis(cands, best[..., None, None], axis=-2)[..., 0, :]
  q = q / xp.linalg.norm(q, axis=-1, keepdims=True)
  return q * xp.where(q[..., :1] < 0, -1.0, 1.0)


def matrix_to_cont6d(m):
  """First two columns stacked: (R00, R10, R20, R01, R11, R21). [..., 3, 3] -> [..., 6]."""
  xp = xp_of(m)
  return xp.concatenate([m[..., :, 0], m[..., :, 1]], axis=-1)


def quat_to_cont6d(q):
  return matrix_to_cont6d(quat_to_matrix(q))


def cont6d_to_matrix(c):
  """Gram–Schmidt of the two stored columns. [..., 6] -> [..., 3, 3] with columns (a, b, a×b)."""
  xp = xp_of(c)
  a1, a2 = c[..., :3], c[..., 3:]
  b1 = a1 / xp.linalg.norm(a1, axis=-1, keepdims=True)
  b2 = a2 - xp.sum(b1 * a2, -1, keepdims=True) * b1
  b2 = b2 / xp.linalg.norm(b2, axis=-1, keepdims=True)
  b3 = cross(b1, b2)
  return xp.stack([b1, b2, b3], axis=-1)


# ---------------------------------------------------------------------------------------------
# Forward kinematics
# ---------------------------------------------------------------------------------------------


def forward_kinematics(local_quats, root_pos, offsets, parents: Sequence[int] = HML_PARENTS):
  """Standard parent-based FK (SMPL convention): the rotation of joint j turns j's child bones.

  G_j = G_parent(j) ⊗ L_j and P_j = P_parent(j) + G_parent(j) ⊗ offset_j.

  Args:
    local_quats: [..., J, 4] local rotations (w first); entry 0 is the global root rotation.
    root_pos: [..., 3] root (joint 0) positions.
    offsets: [J, 3] rest-pose bone vectors (parent -> joint) in the parent's frame.
    parents: parent index per joint, parents[0] == -1, parents[j] < j.
  Returns:
    [..., J, 3] global joint positions.
  """
  xp = xp_of(local_quats, root_pos)
  offsets = xp.asarray(offsets, dtype=local_quats.dtype)
  glob = [local_quats[..., 0, :]]
  pos = [root_pos]
  for j in range(1, len(parents)):
    p = parents[j]
    pos.append(pos[p] + qrot(glob[p], xp.broadcast_to(offsets[j], root_pos.shape)))
    glob.append(qmul(glob[p], local_quats[..., j, :]))
  return xp.stack(pos, axis=-2)


def forward_kinematics_chain(local_quats, root_pos, offsets, chains: Sequence[Sequence[int]] = HML_KINEMATIC_CHAIN):
  """H3D ``Skeleton.forward_kinematics``: the inverse of :func:`inverse_kinematics_h3d`.

  Per kinematic chain, R starts at the root quaternion (also for the arm chains, which start
  at spine3 but do not inherit the spine rotations) and R <- R ⊗ L_j; then
  P_j = P_prev + R ⊗ offset_j (the rotation of joint j turns j's *own* bone).

  Args:
    local_quats: [..., J, 4]; root_pos: [..., 3]; offsets: [J, 3].
  Returns:
    [..., J, 3].
  """
  xp = xp_of(local_quats, root_pos)
  offsets = xp.asarray(offsets, dtype=local_quats.dtype)
  n = local_quats.shape[-2]
  pos = [None] * n
  pos[0] = root_pos
  for chain in chains:
    r = local_quats[..., 0, :]
    for i in range(1, len(chain)):
      r = qmul(r, local_quats[..., chain[i], :])
      pos[chain[i]] = pos[chain[i - 1]] + qrot(r, xp.broadcast_to(offsets[chain[i]], root_pos.shape))
  return xp.stack(pos, axis=-2)


def inverse_kinematics_h3d(
  positions, root_quat, raw_offsets=HML_RAW_OFFSETS, chains: Sequence[Sequence[int]] = HML_KINEMATIC_CHAIN
):
  """H3D ``inverse_kinematics_np``: per-joint local quaternions from global positions.

  For each chain bone (parent -> j) the *global* rotation of j is the shortest arc taking the
  template direction ``raw_offsets[j]`` onto the observed bone direction; the local rotation is
  ``inv(R_prev) ⊗ that``, with R_prev the root heading for the first bone of a chain.
  (Twist about a bone is unobservable from positions, so the shortest arc is the choice.)

  Args:
    positions: [..., T, J, 3] float; root_quat: [..., T, 4] heading quaternions.
  Returns:
    [..., T, J, 4] local quaternions, entry 0 = root_quat.
  """
  xp = xp_of(positions, root_quat)
  n = positions.shape[-2]
  child, parent, prev = [], [], []  # prev: index into [root_quat, rot_uv of joints...]
  for chain in chains:
    for i in range(len(chain) - 1):
      child.append(chain[i + 1])
      parent.append(chain[i])
      prev.append(0 if i == 0 else 1 + len(child) - 2)
  # All bones at once: the global rotation of each bone is the shortest arc template -> bone.
  v = positions[..., child, :] - positions[..., parent, :]
  v = v / xp.linalg.norm(v, axis=-1, keepdims=True)
  u = xp.broadcast_to(xp.asarray(np.asarray(raw_offsets)[child], dtype=positions.dtype), v.shape)
  rot_uv = qbetween(u, v)  # [..., n-1, 4]
  prev_rot = xp.concatenate([root_quat[..., None, :], rot_uv], axis=-2)[..., prev, :]
  local = qmul(qinv(prev_rot), rot_uv)
  order = np.argsort(np.asarray(child))
  if sorted(child) != list(range(1, n)):
    raise ValueError(f"chains: expected every joint 1..{n - 1} exactly once as a chain child, found {sorted(child)}")
  out = xp.concatenate([root_quat[..., None, :], local[..., order, :]], axis=-2)
  return out


def mirror_joints(positions, left=HML_MIRROR_LEFT, right=HML_MIRROR_RIGHT):
  """H3D mirroring: x -> -x and swap left/right joint indices. [..., J, 3] -> [..., J, 3]."""
  xp = xp_of(positions)
  out = positions * xp.asarray([-1.0, 1.0, 1.0], dtype=positions.dtype)
  perm = np.arange(positions.shape[-2])
  perm[list(left)] = right
  perm[list(right)] = left
  return out[..., perm, :]
