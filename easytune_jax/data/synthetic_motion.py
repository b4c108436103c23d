"""Synthetic motions on the HumanML3D skeleton: a motion's action segments (`data/synthetic_actions.py`) blended
with smooth 16-frame cross-fades into global joint positions by standard FK (:func:`skeleton.forward_kinematics`)
on a rest pose with the reference bone lengths (``HML_BONE_LENGTHS``); the root height keeps the lowest foot
joint on the floor (plus the jump lift). `make_motion` draws one random motion (segments, style, joints).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from easytune_jax.data import skeleton as sk
from easytune_jax.data.synthetic_actions import X, Y, Z, run_action, sample_actions, smoothstep

# Rest pose: bone directions (parent frame = body frame at rest, +Z forward, +X left, +Y up),
# scaled by the reference bone lengths. Arms hang down; feet point forward.
_REST_DIRS = np.array(
  [
    [0, 0, 0],
    [0.55, -0.83, 0.0],
    [-0.55, -0.83, 0.0],
    [0, 1, -0.25],
    [0, -1, 0.02],
    [0, -1, 0.02],
    [0, 1, 0.15],
    [0, -1, -0.04],
    [0, -1, -0.04],
    [0, 1, 0.1],
    [0, -0.45, 1],
    [0, -0.45, 1],
    [0, 1, 0.15],
    [0.6, 0.8, 0],
    [-0.6, 0.8, 0],
    [0, 1, 0.35],
    [1, -0.1, 0],
    [-1, -0.1, 0],
    [0.08, -1, 0],
    [-0.08, -1, 0],
    [0.03, -1, 0.12],
    [-0.03, -1, 0.12],
  ],
  np.float64,
)
REST_OFFSETS = (
  np.concatenate([np.zeros((1, 3)), _REST_DIRS[1:] / np.linalg.norm(_REST_DIRS[1:], axis=-1, keepdims=True)])
  * sk.HML_BONE_LENGTHS[:, None]
)

_FEET = (7, 8, 10, 11)


def generate_joints(segments: Sequence[dict], num_frames: int, style: dict) -> np.ndarray:
  """Global joint positions [num_frames, 22, 3] (float64) of the blended action segments."""
  t = np.arange(num_frames, dtype=np.float64)
  h = 8.0
  angles = np.zeros((num_frames, 22, 3))
  vel = np.zeros((num_frames, 2))
  yaw = np.zeros(num_frames)
  lift = np.zeros(num_frames)
  for i, s in enumerate(segments):
    up = 1.0 if i == 0 else smoothstep((t - s["start"] + h) / (2 * h))
    down = 1.0 if i == len(segments) - 1 else smoothstep((s["end"] + h - t) / (2 * h))
    w = up * down
    n = s["end"] - s["start"]
    a, v, y, l = run_action(s["action"], s["params"], t - s["start"], float(n), style)
    w = np.broadcast_to(w, (num_frames,))
    angles += w[:, None, None] * a
    vel += w[:, None] * v
    yaw += w * y
    lift += w * l
  heading = np.cumsum(yaw) - yaw[0]
  # Local quaternions q = qy ⊗ qx ⊗ qz from the Euler angles.
  ex, ey, ez = np.eye(3)
  q = sk.qmul(
    sk.qmul(sk.quat_from_axis_angle(ey, angles[..., Y]), sk.quat_from_axis_angle(ex, angles[..., X])),
    sk.quat_from_axis_angle(ez, angles[..., Z]),
  )
  q_head = sk.quat_from_axis_angle(ey, heading)
  q[:, 0] = sk.qmul(q_head, q[:, 0])
  v_world = sk.qrot(q_head, np.stack([vel[:, 0], np.zeros(num_frames), vel[:, 1]], -1))
  root = np.cumsum(v_world, axis=0) - v_world[0]
  pos = sk.forward_kinematics(q, root, REST_OFFSETS)
  pos[..., 1] += lift[:, None] - pos[:, _FEET, 1].min(axis=1)[:, None]  # lowest foot on floor
  return pos


def make_motion(rng: np.random.Generator, num_frames: int) -> tuple[list, dict, np.ndarray]:
  """(segments, style, joints [num_frames, 22, 3]) of one random motion."""
  segs = sample_actions(rng, num_frames)
  style = {
    "speed": float(rng.uniform(0.85, 1.15)),
    "amp": float(rng.uniform(0.85, 1.15)),
    "rate": float(rng.uniform(0.85, 1.15)),
    "phase": float(rng.uniform(0, 20)),
  }
  return segs, style, generate_joints(segs, num_frames, style)
