"""Joint positions -> BVH (Biovision Hierarchy) files on the HumanML3D skeleton, with rotations by inverse kinematics.

A small writer of our own (about a hundred lines) rather than a PyPI package: the maintained BVH libraries are
parsers/editors (``bvh``, ``bvhio``, ``pymo``) that leave the part that matters here, turning joint *positions*
into per-joint rotations, to the caller, and none of them is needed to print the text format.

File layout (what a standard BVH parser reads back):

* 22 joints named as ``skeleton.HML_JOINT_NAMES`` with ``skeleton.HML_PARENTS``; the root ``pelvis`` has
  6 channels ``Xposition Yposition Zposition Zrotation Yrotation Xrotation``, every other joint 3 rotation
  channels ``Zrotation Yrotation Xrotation`` (rotation matrix ``Rz(a) Ry(b) Rx(c)``, intrinsic order, degrees);
  leaves (feet, head, wrists) close with an ``End Site``.
* World Y up, body facing +Z (HumanML3D, docs/humanml3d_format.md#conventions). Lengths in centimetres by
  default (``scale=100``; the joints are in metres), the usual BVH unit; ``Frame Time`` 0.05 s (20 fps).
* Forward kinematics is the BVH one: ``G_j = G_parent ⊗ L_j``, ``P_j = P_parent + G_parent · offset_j``
  (``skeleton.forward_kinematics``).

Rest pose (OFFSETs), per motion:

* a joint with one child: the child's offset is the template direction ``skeleton.HML_RAW_OFFSETS[child]`` times
  the motion's mean bone length over its frames (so the rest pose is the HumanML3D template pose: legs and arms
  down, feet and head forward);
* a joint with several children (pelvis -> hips + spine1, spine3 -> neck + collars): one rotation must carry all its
  child bones, so their rest vectors are the motion's own mean geometry of that group, measured in the group's own
  frame (x from the right to the left child, y towards the third child). HumanML3D's joints come from SMPL's rigid
  pelvis / chest, so these groups are rigid within a motion (angles between the three bones of sample 012314 vary by
  < 1e-3 degrees over its frames) and the fit is exact there.

Rotations (the shortest-arc IK of HumanML3D's ``inverse_kinematics_np``, restated for the parent-based BVH
convention and solved in closed form; some exporters, e.g. MoMask's ``joints2bvh``, instead fit the rotations of a
template skeleton iteratively):

* one child: the shortest arc taking the rest direction onto the observed bone direction in the parent's frame
  (twist about a bone is unobservable from positions; zero twist relative to the parent is the choice);
* several children: the Kabsch rotation of the group's rest vectors onto the observed bones (the root's rotation
  is that of the pelvis group);
* leaves: identity.

So every bone direction of a joint with one child is reproduced exactly and positions are exact when the input's
bone lengths are constant and its multi-child groups rigid (tests/test_bvh.py, written, parsed back and FK'd: a
rigid synthetic skeleton 2e-8 m, the real float32 sample 012314 1.4e-6 m). Generated joints (features -> ``recover_from_ric``) have bone lengths
that vary a little from frame to frame: the BVH keeps the per-motion mean lengths, so joint positions then differ
by the accumulated length deviations along each chain; :func:`joints_to_bvh` reports the max error.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from easytune_jax.data import skeleton as sk

ROOT_CHANNELS = "Xposition Yposition Zposition Zrotation Yrotation Xrotation"
JOINT_CHANNELS = "Zrotation Yrotation Xrotation"


@dataclasses.dataclass
class BVHMotion:
  """A skeleton and its motion in BVH terms (metres, float64).

  Attributes:
    names: J joint names; parents: J parent indices (-1 for the root, parents[j] < j).
    offsets: [J, 3] rest offset of each joint from its parent (row 0: zeros).
    end_sites: {leaf joint index: [3] End Site offset}.
    root_positions: [T, 3] root (joint 0) positions.
    local_quats: [T, J, 4] local rotations (w, x, y, z); row 0 is the root's global rotation.
    frame_time: seconds per frame.
  """

  names: tuple
  parents: tuple
  offsets: np.ndarray
  end_sites: dict
  root_positions: np.ndarray
  local_quats: np.ndarray
  frame_time: float = 0.05

  def positions(self) -> np.ndarray:
    """Forward kinematics: [T, J, 3] joint positions (metres)."""
    return sk.forward_kinematics(self.local_quats, self.root_positions, self.offsets, self.parents)


def _kabsch(rest: np.ndarray, obs: np.ndarray) -> np.ndarray:
  """Rotations R minimising sum_i |R rest_i - obs_i|^2. rest [K, 3] or [T, K, 3], obs [T, K, 3] -> [T, 3, 3]."""
  h = np.einsum("tki,tkj->tij", np.broadcast_to(rest, obs.shape), obs)
  u, _, vt = np.linalg.svd(h)
  d = np.sign(np.linalg.det(np.einsum("tji,tkj->tik", vt, u)))  # det(V U^T): no reflections
  fix = np.stack([np.ones_like(d), np.ones_like(d), d], -1)
  return np.einsum("tji,tj,tkj->tik", vt, fix, u)


def _unit(v: np.ndarray) -> np.ndarray:
  return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def _group_frame(template: np.ndarray, bones: np.ndarray) -> np.ndarray:
  """Per-frame rotation taking a multi-child group's template frame to its observed frame: x along the difference
  of the two most opposite children (left hip - right hip), y along a third child (spine) made orthogonal to x
  (so an upright, forward-facing pelvis gets an upright frame). Two children: Kabsch of the directions.
  template [K, 3] unit directions, bones [T, K, 3] -> [T, 3, 3]."""
  k = len(template)
  if k < 3:
    return _kabsch(template, _unit(bones))
  dots = template @ template.T + 3.0 * np.eye(k)
  a, b = np.unravel_index(np.argmin(dots), dots.shape)
  m = next(i for i in range(k) if i not in (a, b))

  def frame(v):
    x = _unit(v[..., a, :] - v[..., b, :])
    y = _unit(v[..., m, :] - np.sum(v[..., m, :] * x, -1, keepdims=True) * x)
    return np.stack([x, y, sk.cross(x, y)], -1)

  return np.einsum("tij,kj->tik", frame(bones), frame(template))


def joints_to_bvh_motion(
  joints: np.ndarray,
  parents: Sequence[int] = sk.HML_PARENTS,
  raw_offsets: np.ndarray = sk.HML_RAW_OFFSETS,
  names: Sequence[str] = sk.HML_JOINT_NAMES,
  fps: float = 20.0,
) -> BVHMotion:
  """Inverse kinematics: joint positions -> a BVHMotion (rest offsets + local rotations; see the module docstring).

  Args:
    joints: [T, J, 3] global joint positions (metres, Y up), T >= 1 valid frames (no padding).
    parents: J parent indices (topologically ordered); raw_offsets: [J, 3] template bone directions; names: J names.
    fps: frames per second of `joints`.

  Returns:
    The BVHMotion whose `positions()` reproduce `joints` up to the bone-length / rigidity deviations of the input.
  """
  p = np.asarray(joints, np.float64)
  num_joints = len(parents)
  if p.ndim != 3 or p.shape[0] < 1 or p.shape[1:] != (num_joints, 3) or not np.all(np.isfinite(p)):
    raise ValueError(f"joints: expected finite [T >= 1, {num_joints}, 3] positions, found shape {p.shape}")
  if len(names) != num_joints or np.shape(raw_offsets) != (num_joints, 3):
    raise ValueError(f"names / raw_offsets: expected {num_joints} joints, found {len(names)} / {np.shape(raw_offsets)}")
  children = [[c for c in range(num_joints) if parents[c] == j] for j in range(num_joints)]
  t = p.shape[0]
  template = _unit(np.asarray(raw_offsets, np.float64))
  offsets = np.zeros((num_joints, 3))
  glob = np.zeros((t, num_joints, 4))
  local = np.zeros((t, num_joints, 4))
  local[..., 0] = 1.0
  for j in range(num_joints):
    kids = children[j]
    par = parents[j]
    g_par = glob[:, par] if par >= 0 else np.broadcast_to(np.array([1.0, 0, 0, 0]), (t, 4))
    if not kids:
      glob[:, j] = g_par
      continue
    bones = p[:, kids] - p[:, j : j + 1]  # [T, K, 3]
    if len(kids) == 1:
      c = kids[0]
      offsets[c] = template[c] * np.mean(np.linalg.norm(bones[:, 0], axis=-1))
      in_parent = sk.qrot(sk.qinv(g_par), bones[:, 0])
      local[:, j] = sk.qbetween(np.broadcast_to(template[c], in_parent.shape), in_parent)
      glob[:, j] = sk.qmul(g_par, local[:, j])
    else:
      frame = _group_frame(template[kids], bones)  # template -> bones, per frame
      rest = np.mean(np.einsum("tji,tkj->tki", frame, bones), axis=0)  # the group's mean geometry in that frame
      offsets[kids] = rest
      glob[:, j] = sk.matrix_to_quat(_kabsch(rest, bones))
      local[:, j] = sk.qmul(sk.qinv(g_par), glob[:, j])
  lengths = np.linalg.norm(offsets, axis=-1)
  end_sites = {j: template[j] * 0.5 * lengths[j] for j in range(num_joints) if not children[j]}
  return BVHMotion(
    names=tuple(names),
    parents=tuple(parents),
    offsets=offsets,
    end_sites=end_sites,
    root_positions=p[:, 0].copy(),
    local_quats=local,
    frame_time=1.0 / fps,
  )


def euler_zyx_degrees(q: np.ndarray) -> np.ndarray:
  """Unit quaternions [..., 4] -> BVH ``Zrotation Yrotation Xrotation`` angles [..., 3] in degrees (R = Rz Ry Rx).

  At gimbal lock (|Y| = 90 degrees) Z is set to 0 and X carries the remaining rotation, so the matrix is kept.
  """
  m = sk.quat_to_matrix(np.asarray(q, np.float64))
  sy = np.clip(-m[..., 2, 0], -1.0, 1.0)
  cy = np.sqrt(m[..., 0, 0] ** 2 + m[..., 1, 0] ** 2)
  lock = cy < 1e-9
  z = np.where(lock, 0.0, np.arctan2(m[..., 1, 0], m[..., 0, 0]))
  x = np.where(lock, np.arctan2(-m[..., 1, 2], m[..., 1, 1]), np.arctan2(m[..., 2, 1], m[..., 2, 2]))
  y = np.arctan2(sy, cy)
  return np.degrees(np.stack([z, y, x], -1))


def bvh_text(motion: BVHMotion, scale: float = 100.0) -> str:
  """The BVH file text of `motion`; lengths multiplied by `scale` (100: metres -> centimetres)."""
  parents = motion.parents
  children = [[c for c in range(len(parents)) if parents[c] == j] for j in range(len(parents))]
  lines = ["HIERARCHY"]

  def vec(v):
    return " ".join(f"{x * scale:.6f}" for x in v)

  def emit(j, depth):
    pad = "  " * depth
    lines.append(f"{pad}{'ROOT' if parents[j] < 0 else 'JOINT'} {motion.names[j]}")
    lines.append(f"{pad}{{")
    lines.append(f"{pad}  OFFSET {vec(motion.offsets[j])}")
    chans = ROOT_CHANNELS if parents[j] < 0 else JOINT_CHANNELS
    lines.append(f"{pad}  CHANNELS {len(chans.split())} {chans}")
    for c in children[j]:
      emit(c, depth + 1)
    if not children[j]:
      lines.extend([f"{pad}  End Site", f"{pad}  {{", f"{pad}    OFFSET {vec(motion.end_sites[j])}", f"{pad}  }}"])
    lines.append(f"{pad}}}")

  order = []

  def visit(j):  # channel order in MOTION rows = depth-first order of the hierarchy
    order.append(j)
    for c in children[j]:
      visit(c)

  emit(0, 0)
  visit(0)
  angles = euler_zyx_degrees(motion.local_quats)  # [T, J, 3]
  rows = np.concatenate([motion.root_positions * scale, angles[:, order].reshape(len(angles), -1)], axis=1)
  lines += ["MOTION", f"Frames: {len(rows)}", f"Frame Time: {motion.frame_time:.6f}"]
  lines += [" ".join(f"{x:.6f}" for x in row) for row in rows]
  return "\n".join(lines) + "\n"


def joints_to_bvh(joints: np.ndarray, path: str | os.PathLike, fps: float = 20.0, scale: float = 100.0, **kw) -> dict:
  """Writes `joints` [T, J, 3] (metres; T valid frames) as a BVH file (HumanML3D skeleton by default; `kw` go to
  :func:`joints_to_bvh_motion`).

  Returns:
    {"path": the file, "max_error_m": max |FK(BVH) - joints| in metres before text rounding, "motion": BVHMotion}.
  """
  motion = joints_to_bvh_motion(joints, fps=fps, **kw)
  err = float(np.max(np.abs(motion.positions() - np.asarray(joints, np.float64))))
  path = os.fspath(path)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(bvh_text(motion, scale))
  os.replace(tmp, path)
  return {"path": path, "max_error_m": err, "motion": motion}
