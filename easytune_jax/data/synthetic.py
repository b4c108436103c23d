"""Procedural text-motion dataset on the HumanML3D skeleton, written in the exact HumanML3D layout.

Each motion is 1-3 parameterised actions (``ACTIONS``) blended with smooth 16-frame
cross-fades. Actions drive per-joint Euler angles (sinusoidal gait with arm swing, gestures
under a raise/hold/lower envelope, ...), a body-frame root velocity, a yaw rate and a vertical
lift. Global joints come from standard FK (:func:`skeleton.forward_kinematics`) on a rest pose
with the reference bone lengths (``HML_BONE_LENGTHS``); the root height keeps the lowest foot
joint on the floor (plus the jump lift). Per-motion style (speed, amplitude, gesture rate,
phase) varies so that motions of one caption differ. Features are computed with
:func:`features.joints_to_features`, so the dataset exercises the real pipeline, and
``new_joints`` is ``recover_from_ric`` of the float32 features (as H3D does).

Captions: 3 per motion from varied templates and synonyms, tokenised as ``word/POS`` by a small
rule-based tagger over the closed vocabulary (NOUN/VERB lemmatised, 'left' kept). ``metadata.json``
stores every motion's segments (action, label, parameters, frames) and each caption's action
labels; :func:`caption_action_labels` recovers the labels from a caption string alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

import numpy as np

from easytune_jax.data import skeleton as sk
from easytune_jax.data.features import joints_to_features, recover_from_ric
from easytune_jax.data.humanml3d import group_mean_std
from easytune_jax.data.safe_io import load_npy

FPS = 20.0
ACTIONS = (
  "walk",
  "jog",
  "run",
  "jump",
  "wave",
  "kick",
  "squat",
  "turn",
  "spin",
  "raise_arms",
  "punch",
  "clap",
  "step_sideways",
  "bow",
)
ACTION_INDEX = {a: i for i, a in enumerate(ACTIONS)}

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

# Joint indices.
L_HIP, R_HIP, SP1, L_KNEE, R_KNEE, SP2, L_ANK, R_ANK, SP3 = 1, 2, 3, 4, 5, 6, 7, 8, 9
NECK, L_COL, R_COL, HEAD, L_SH, R_SH, L_EL, R_EL, L_WR, R_WR = 12, 13, 14, 15, 16, 17, 18, 19, 20, 21
X, Y, Z = 0, 1, 2
_FEET = (7, 8, 10, 11)


# ---------------------------------------------------------------------------------------------
# Time profiles
# ---------------------------------------------------------------------------------------------


def _smoothstep(x):
  x = np.clip(x, 0.0, 1.0)
  return x * x * (3 - 2 * x)


def _envelope(tau, n, ramp):
  """0 -> 1 over `ramp` frames from the segment start, back to 0 over its last `ramp` frames."""
  ramp = max(1.0, min(ramp, 0.45 * n))
  return _smoothstep(tau / ramp) * _smoothstep((n - tau) / ramp)


def _bump(tau, center, width):
  """Raised cosine of total width `width` centred at `center` (0 outside)."""
  u = np.clip((tau - center) / width, -0.5, 0.5)
  return 0.5 * (1 + np.cos(2 * np.pi * u))


def _base_angles(t):
  a = np.zeros((t, 22, 3))
  a[:, L_EL, X] = a[:, R_EL, X] = -0.15  # relaxed elbows
  a[:, L_SH, Z], a[:, R_SH, Z] = 0.08, -0.08  # arms slightly away from the body
  return a


def _gait(a, tau, freq, hip, knee, arm, elbow, sign=1.0):
  """Adds a walking cycle (freq cycles / frame) to angles `a` in place."""
  ph = sign * 2 * np.pi * freq * tau
  s = np.sin(ph)
  a[:, L_HIP, X] += -hip * s
  a[:, R_HIP, X] += hip * s
  a[:, L_KNEE, X] += knee * (0.5 * (1 + np.cos(ph))) ** 2
  a[:, R_KNEE, X] += knee * (0.5 * (1 - np.cos(ph))) ** 2
  a[:, L_SH, X] += arm * s
  a[:, R_SH, X] += -arm * s
  a[:, L_EL, X] += -elbow
  a[:, R_EL, X] += -elbow
  return ph


# ---------------------------------------------------------------------------------------------
# Actions: each returns (angles [T,22,3], body velocity [T,2] (x lateral, z forward) m/frame,
# yaw rate [T] rad/frame, lift [T] m) evaluated at local time tau = t - start over all frames.
# ---------------------------------------------------------------------------------------------

_LOCO = {
  "walk": (1.2, 0.95, 0.42, 0.55, 0.35, 0.15),
  "jog": (2.3, 1.35, 0.55, 1.1, 0.45, 1.2),
  "run": (3.4, 1.55, 0.7, 1.45, 0.6, 1.4),
}  # speed m/s, freq Hz, hip, knee, arm, elbow
_WALK_SPEED = {"slow": 0.7, "normal": 1.0, "fast": 1.35}


def _act_locomotion(name, p, tau, n, st):
  t = tau.shape[0]
  speed, freq, hip, knee, arm, elbow = _LOCO[name]
  f = _WALK_SPEED.get(p.get("speed", "normal"), 1.0) * st["speed"]
  a = _base_angles(t)
  back = p["direction"] == "backward"
  _gait(
    a,
    tau + st["phase"],
    freq * min(f, 1.3) ** 0.5 / FPS,
    hip * st["amp"] * min(f, 1.3),
    knee * st["amp"],
    arm * st["amp"],
    elbow,
    -1.0 if back else 1.0,
  )
  a[:, SP1, X] += 0.05 if name != "walk" else 0.0  # lean forward when jogging/running
  vel = np.zeros((t, 2))
  vel[:, 1] = (-0.6 if back else 1.0) * speed * f / FPS
  yaw = np.zeros(t)
  if p["direction"] in ("left", "right"):
    # Curve to the side over the first 30 % of the segment, then keep going.
    sgn = 1.0 if p["direction"] == "left" else -1.0
    w = _bump(tau, 0.17 * n, 0.3 * n)
    yaw = sgn * (np.pi / 2) * w / max(w.sum(), 1e-9)
  elif p["direction"] == "circle":
    yaw = np.where((tau >= 0) & (tau < n), 2 * np.pi / n, 0.0)
  lift = np.zeros(t)
  if name != "walk":
    lift = 0.04 * st["amp"] * np.abs(np.sin(2 * np.pi * freq / FPS * (tau + st["phase"])))
  return a, vel, yaw, lift


def _act_jump(p, tau, n, st):
  t = tau.shape[0]
  a = _base_angles(t)
  c = p["count"]
  period = n / c
  u = np.clip(tau, 0, n - 1e-6) % period / period  # phase within one jump
  inside = (tau >= 0) & (tau < n)
  crouch = (_bump(u, 0.2, 0.4) + 0.6 * _bump(u, 0.88, 0.24)) * inside
  flight = np.where(inside & (u > 0.35) & (u < 0.75), np.sin(np.pi * (u - 0.35) / 0.4), 0.0)
  d = crouch * st["amp"]
  a[:, L_HIP, X] += -1.0 * d
  a[:, R_HIP, X] += -1.0 * d
  a[:, L_KNEE, X] += 1.7 * d
  a[:, R_KNEE, X] += 1.7 * d
  a[:, L_ANK, X] += -0.7 * d
  a[:, R_ANK, X] += -0.7 * d
  a[:, SP1, X] += 0.4 * d
  a[:, L_SH, X] += 0.6 * d - 1.6 * flight  # arms swing back in the crouch, up in the air
  a[:, R_SH, X] += 0.6 * d - 1.6 * flight
  lift = 0.35 * st["amp"] * flight
  vel = np.zeros((t, 2))
  if p["mode"] == "forward":
    vel[:, 1] = 0.9 * st["speed"] * flight / max(flight.sum() / c, 1e-9)
  return a, vel, np.zeros(t), lift


def _arm_gesture_env(tau, n):
  return _envelope(tau, n, 12.0)


def _act_wave(p, tau, n, st):
  t = tau.shape[0]
  a = _base_angles(t)
  env = _arm_gesture_env(tau, n)
  osc = np.sin(2 * np.pi * 2.0 * st["rate"] / FPS * tau)
  for side, sh, el, sgn in (("left", L_SH, L_EL, 1.0), ("right", R_SH, R_EL, -1.0)):
    if p["hand"] in (side, "both"):
      a[:, sh, Z] += sgn * 2.3 * env
      a[:, el, Z] += sgn * (0.35 + 0.45 * st["amp"] * osc) * env
  return a, np.zeros((t, 2)), np.zeros(t), np.zeros(t)


def _act_kick(p, tau, n, st):
  t = tau.shape[0]
  a = _base_angles(t)
  hip, knee = (L_HIP, L_KNEE) if p["side"] == "left" else (R_HIP, R_KNEE)
  a[:, hip, X] += -1.3 * st["amp"] * _bump(tau, 0.55 * n, 0.5 * n)
  a[:, knee, X] += 1.2 * _bump(tau, 0.4 * n, 0.35 * n)
  a[:, SP1, X] += -0.2 * _bump(tau, 0.55 * n, 0.5 * n)
  a[:, L_SH, Z] += 0.4 * _bump(tau, 0.5 * n, 0.7 * n)
  a[:, R_SH, Z] += -0.4 * _bump(tau, 0.5 * n, 0.7 * n)
  return a, np.zeros((t, 2)), np.zeros(t), np.zeros(t)


def _act_squat(p, tau, n, st):
  t = tau.shape[0]
  a = _base_angles(t)
  c = p["count"]
  inside = (tau >= 0) & (tau < n)
  d = np.where(inside, np.sin(np.pi * c * np.clip(tau, 0, n) / n) ** 2, 0.0) * st["amp"]
  h, k = 1.25 * d, 2.1 * d
  a[:, L_HIP, X] += -h
  a[:, R_HIP, X] += -h
  a[:, L_KNEE, X] += k
  a[:, R_KNEE, X] += k
  a[:, L_ANK, X] += h - k
  a[:, R_ANK, X] += h - k
  a[:, SP1, X] += 0.45 * d
  a[:, L_SH, X] += -1.3 * d
  a[:, R_SH, X] += -1.3 * d
  return a, np.zeros((t, 2)), np.zeros(t), np.zeros(t)


def _act_turn(p, tau, n, st, total=None):
  t = tau.shape[0]
  a = _base_angles(t)
  ang = np.deg2rad(total if total is not None else p["angle"])
  sgn = 1.0 if p["side"] == "left" else -1.0
  w = _bump(tau, 0.5 * n, 0.8 * n)
  yaw = sgn * ang * w / max(w.sum(), 1e-9)
  _gait(a, tau, 1.0 / FPS, 0.18 * w, 0.3 * w, 0.1 * w, 0.0)
  return a, np.zeros((t, 2)), yaw, np.zeros(t)


def _act_spin(p, tau, n, st):
  a, vel, yaw, lift = _act_turn(p, tau, n, st, total=360.0)
  env = _envelope(tau, n, 8.0)
  a[:, L_SH, Z] += 0.7 * env
  a[:, R_SH, Z] += -0.7 * env
  return a, vel, yaw, lift


def _act_raise_arms(p, tau, n, st):
  t = tau.shape[0]
  a = _base_angles(t)
  env = _arm_gesture_env(tau, n)
  a[:, L_SH, X] += -2.7 * st["amp"] ** 0.3 * env
  a[:, R_SH, X] += -2.7 * st["amp"] ** 0.3 * env
  a[:, L_SH, Z] += 0.15 * env
  a[:, R_SH, Z] += -0.15 * env
  return a, np.zeros((t, 2)), np.zeros(t), np.zeros(t)


def _act_punch(p, tau, n, st):
  t = tau.shape[0]
  a = _base_angles(t)
  env = _arm_gesture_env(tau, n)
  for sh, el in ((L_SH, L_EL), (R_SH, R_EL)):  # guard: fists up
    a[:, sh, X] += -0.5 * env
    a[:, el, X] += -1.9 * env
  sh, el = (L_SH, L_EL) if p["side"] == "left" else (R_SH, R_EL)
  c = p["count"]
  hit = sum(_bump(tau, n * (0.25 + 0.5 * i / max(c - 1, 1)), 12.0 / st["rate"]) for i in range(c))
  a[:, sh, X] += -1.0 * hit
  a[:, el, X] += 1.8 * hit
  a[:, SP1, Y] += (-0.25 if p["side"] == "left" else 0.25) * hit
  return a, np.zeros((t, 2)), np.zeros(t), np.zeros(t)


def _act_clap(p, tau, n, st):
  t = tau.shape[0]
  a = _base_angles(t)
  env = _arm_gesture_env(tau, n)
  osc = 0.5 * (1 - np.cos(2 * np.pi * 1.6 * st["rate"] / FPS * tau))  # 0 = apart, 1 = together
  for sh, el, sgn in ((L_SH, L_EL, 1.0), (R_SH, R_EL, -1.0)):
    a[:, sh, X] += -1.25 * env
    a[:, sh, Z] += sgn * 0.25 * env
    a[:, sh, Y] += -sgn * (0.15 + 0.45 * osc) * env
    a[:, el, X] += -0.35 * env
  return a, np.zeros((t, 2)), np.zeros(t), np.zeros(t)


def _act_step_sideways(p, tau, n, st):
  t = tau.shape[0]
  a = _base_angles(t)
  sgn = 1.0 if p["side"] == "left" else -1.0
  ph = 2 * np.pi * 0.9 * st["speed"] / FPS * (tau + st["phase"])
  a[:, L_HIP, Z] += 0.22 * st["amp"] * np.maximum(0, np.sin(ph))
  a[:, R_HIP, Z] += -0.22 * st["amp"] * np.maximum(0, -np.sin(ph))
  a[:, L_KNEE, X] += 0.25 * np.maximum(0, np.sin(ph))
  a[:, R_KNEE, X] += 0.25 * np.maximum(0, -np.sin(ph))
  vel = np.zeros((t, 2))
  vel[:, 0] = sgn * 0.45 * st["speed"] / FPS
  return a, vel, np.zeros(t), np.zeros(t)


def _act_bow(p, tau, n, st):
  t = tau.shape[0]
  a = _base_angles(t)
  d = _bump(tau, 0.5 * n, 0.85 * n) * st["amp"]
  a[:, SP1, X] += 0.45 * d
  a[:, SP2, X] += 0.3 * d
  a[:, SP3, X] += 0.2 * d
  a[:, NECK, X] += 0.25 * d
  a[:, L_HIP, X] += -0.25 * d
  a[:, R_HIP, X] += -0.25 * d
  return a, np.zeros((t, 2)), np.zeros(t), np.zeros(t)


def _run_action(name, p, tau, n, st):
  if name in _LOCO:
    return _act_locomotion(name, p, tau, n, st)
  return {
    "jump": _act_jump,
    "wave": _act_wave,
    "kick": _act_kick,
    "squat": _act_squat,
    "turn": _act_turn,
    "spin": _act_spin,
    "raise_arms": _act_raise_arms,
    "punch": _act_punch,
    "clap": _act_clap,
    "step_sideways": _act_step_sideways,
    "bow": _act_bow,
  }[name](p, tau, n, st)


_PARAM_SPACE = {
  "walk": {
    "direction": ["forward", "forward", "backward", "left", "right", "circle"],
    "speed": ["slow", "normal", "normal", "fast"],
  },
  "jog": {"direction": ["forward", "forward", "backward", "left", "right", "circle"]},
  "run": {"direction": ["forward", "forward", "left", "right", "circle"]},
  "jump": {"mode": ["in_place", "forward"], "count": [1, 2, 3]},
  "wave": {"hand": ["left", "right", "both"]},
  "kick": {"side": ["left", "right"]},
  "squat": {"count": [1, 2, 3]},
  "turn": {"side": ["left", "right"], "angle": [90, 180]},
  "spin": {"side": ["left", "right"]},
  "raise_arms": {},
  "punch": {"side": ["left", "right"], "count": [2, 3]},
  "clap": {},
  "step_sideways": {"side": ["left", "right"]},
  "bow": {},
}
_MIN_FRAMES = {"jump": 12, "squat": 16, "punch": 12}  # per repetition


def sample_actions(rng: np.random.Generator, num_frames: int) -> list[dict]:
  """1-3 segments {action, label, params, start, end} covering [0, num_frames)."""
  k = int(rng.choice([1, 2, 3], p=[0.35, 0.4, 0.25]))
  k = max(1, min(k, num_frames // 30))
  w = rng.uniform(0.6, 1.4, size=k)
  bounds = np.round(np.concatenate([[0], np.cumsum(w) / w.sum() * num_frames])).astype(int)
  segs, prev = [], None
  for i in range(k):
    n = int(bounds[i + 1] - bounds[i])
    while True:
      name = ACTIONS[int(rng.integers(len(ACTIONS)))]
      if name != prev:
        break
    params = {key: vals[int(rng.integers(len(vals)))] for key, vals in _PARAM_SPACE[name].items()}
    if "count" in params and name in _MIN_FRAMES:
      params["count"] = int(max(1 if name != "punch" else 2, min(params["count"], n // _MIN_FRAMES[name])))
    segs.append(
      {
        "action": name,
        "label": ACTION_INDEX[name],
        "params": params,
        "start": int(bounds[i]),
        "end": int(bounds[i + 1]),
      }
    )
    prev = name
  return segs


def generate_joints(segments: Sequence[dict], num_frames: int, style: dict) -> np.ndarray:
  """Global joint positions [num_frames, 22, 3] (float64) of the blended action segments."""
  t = np.arange(num_frames, dtype=np.float64)
  h = 8.0
  angles = np.zeros((num_frames, 22, 3))
  vel = np.zeros((num_frames, 2))
  yaw = np.zeros(num_frames)
  lift = np.zeros(num_frames)
  for i, s in enumerate(segments):
    up = 1.0 if i == 0 else _smoothstep((t - s["start"] + h) / (2 * h))
    down = 1.0 if i == len(segments) - 1 else _smoothstep((s["end"] + h - t) / (2 * h))
    w = up * down
    n = s["end"] - s["start"]
    a, v, y, l = _run_action(s["action"], s["params"], t - s["start"], float(n), style)
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


# ---------------------------------------------------------------------------------------------
# Captions and the rule-based POS tagger
# ---------------------------------------------------------------------------------------------

_SUBJECTS = ["a person", "a man", "a woman", "someone", "the person", "a figure"]
_COUNT_WORD = {1: "once", 2: "twice", 3: "three times"}
_SIDE = {"left": "left", "right": "right"}


def _loc_phrase(rng, direction):
  return {
    "forward": ["forward", "ahead", "straight ahead", "forward"],
    "backward": ["backward", "backwards"],
    "left": ["to the left", "to the left", "left"],
    "right": ["to the right", "to the right", "right"],
    "circle": ["in a circle", "around in a circle"],
  }[direction][int(rng.integers(2))]


def _pick(rng, options):
  return options[int(rng.integers(len(options)))]


def action_phrase(seg: dict, rng: np.random.Generator) -> str:
  """A verb phrase (third person, present) describing one segment."""
  a, p = seg["action"], seg["params"]
  if a == "walk":
    verb = _pick(rng, ["walks", "walks", "strolls"])
    speed = {
      "slow": _pick(rng, [" slowly", " at a slow pace"]),
      "normal": "",
      "fast": _pick(rng, [" quickly", " fast", " briskly"]),
    }[p["speed"]]
    return f"{verb} {_loc_phrase(rng, p['direction'])}{speed}"
  if a == "jog":
    return f"{_pick(rng, ['jogs', 'jogs', 'trots'])} {_loc_phrase(rng, p['direction'])}"
  if a == "run":
    return f"{_pick(rng, ['runs', 'runs', 'sprints'])} {_loc_phrase(rng, p['direction'])}"
  if a == "jump":
    c = _COUNT_WORD[p["count"]]
    if p["mode"] == "forward":
      return _pick(rng, [f"jumps forward {c}", f"leaps forward {c}", f"jumps ahead {c}"])
    return _pick(rng, [f"jumps {c} in place", f"jumps up and down {c}", f"jumps in place {c}"])
  if a == "wave":
    if p["hand"] == "both":
      return _pick(rng, ["waves both hands", "waves with both arms", "waves with both hands"])
    s = p["hand"]
    return _pick(rng, [f"waves with the {s} hand", f"waves the {s} hand", f"waves the {s} arm"])
  if a == "kick":
    s = p["side"]
    return _pick(rng, [f"kicks with the {s} leg", f"kicks with the {s} foot", f"does a {s} kick"])
  if a == "squat":
    c = p["count"]
    opts = [f"squats {_COUNT_WORD[c]}", f"does {['a squat', 'two squats', 'three squats'][c - 1]}"]
    if c == 1:
      opts.append("squats down and stands up")
    return _pick(rng, opts)
  if a == "turn":
    s = p["side"]
    if p["angle"] == 90:
      return _pick(rng, [f"turns {s}", f"turns to the {s}", f"turns ninety degrees to the {s}"])
    return _pick(rng, [f"turns around to the {s}", f"makes a half turn to the {s}", f"turns around to the {s}"])
  if a == "spin":
    cw = "counterclockwise" if p["side"] == "left" else "clockwise"
    return _pick(
      rng, ["spins around", f"spins {cw}", f"does a full spin to the {p['side']}", f"spins around to the {p['side']}"]
    )
  if a == "raise_arms":
    return _pick(rng, ["raises both arms", "lifts both arms up", "raises the arms above the head"])
  if a == "punch":
    s, c = p["side"], _COUNT_WORD[p["count"]]
    return _pick(rng, [f"punches with the {s} hand", f"throws a {s} punch {c}", f"punches forward with the {s} arm"])
  if a == "clap":
    return _pick(rng, ["claps", "claps the hands", "claps several times"])
  if a == "step_sideways":
    s = p["side"]
    return _pick(rng, [f"steps sideways to the {s}", f"side steps to the {s}", f"shuffles to the {s}"])
  if a == "bow":
    return _pick(rng, ["bows", "bows forward", "takes a bow", "bows down"])
  raise KeyError(a)


def make_caption(segments: Sequence[dict], rng: np.random.Generator) -> str:
  phrases = [action_phrase(s, rng) for s in segments]
  text = _pick(rng, _SUBJECTS) + " " + phrases[0]
  for i, ph in enumerate(phrases[1:]):
    last = i == len(phrases) - 2
    conn = _pick(rng, [" and then ", ", then ", " then "] if last else [", then ", " then ", " and "])
    text += conn + ph
  return text + "."


# Surface word -> (lemma, default universal POS). NOUN/VERB carry their lemma (HumanML3D
# lemmatises those two classes, except 'left'); other classes keep the surface form.
LEXICON = {
  "a": ("a", "DET"),
  "the": ("the", "DET"),
  "both": ("both", "DET"),
  "person": ("person", "NOUN"),
  "man": ("man", "NOUN"),
  "woman": ("woman", "NOUN"),
  "someone": ("someone", "PRON"),
  "figure": ("figure", "NOUN"),
  "walks": ("walk", "VERB"),
  "strolls": ("stroll", "VERB"),
  "jogs": ("jog", "VERB"),
  "trots": ("trot", "VERB"),
  "runs": ("run", "VERB"),
  "sprints": ("sprint", "VERB"),
  "forward": ("forward", "ADV"),
  "ahead": ("ahead", "ADV"),
  "straight": ("straight", "ADV"),
  "backward": ("backward", "ADV"),
  "backwards": ("backwards", "ADV"),
  "to": ("to", "ADP"),
  "left": ("left", "NOUN"),
  "right": ("right", "NOUN"),
  "in": ("in", "ADP"),
  "circle": ("circle", "NOUN"),
  "around": ("around", "ADV"),
  "slowly": ("slowly", "ADV"),
  "at": ("at", "ADP"),
  "slow": ("slow", "ADJ"),
  "pace": ("pace", "NOUN"),
  "quickly": ("quickly", "ADV"),
  "fast": ("fast", "ADV"),
  "briskly": ("briskly", "ADV"),
  "jumps": ("jump", "VERB"),
  "leaps": ("leap", "VERB"),
  "once": ("once", "ADV"),
  "twice": ("twice", "ADV"),
  "three": ("three", "NUM"),
  "two": ("two", "NUM"),
  "times": ("time", "NOUN"),
  "place": ("place", "NOUN"),
  "up": ("up", "ADP"),
  "and": ("and", "CCONJ"),
  "down": ("down", "ADP"),
  "waves": ("wave", "VERB"),
  "with": ("with", "ADP"),
  "hand": ("hand", "NOUN"),
  "hands": ("hand", "NOUN"),
  "arm": ("arm", "NOUN"),
  "arms": ("arm", "NOUN"),
  "kicks": ("kick", "VERB"),
  "kick": ("kick", "NOUN"),
  "leg": ("leg", "NOUN"),
  "foot": ("foot", "NOUN"),
  "does": ("do", "VERB"),
  "squats": ("squat", "VERB"),
  "squat": ("squat", "NOUN"),
  "stands": ("stand", "VERB"),
  "turns": ("turn", "VERB"),
  "turn": ("turn", "NOUN"),
  "ninety": ("ninety", "NUM"),
  "degrees": ("degree", "NOUN"),
  "makes": ("make", "VERB"),
  "half": ("half", "ADJ"),
  "spins": ("spin", "VERB"),
  "spin": ("spin", "NOUN"),
  "full": ("full", "ADJ"),
  "clockwise": ("clockwise", "ADV"),
  "counterclockwise": ("counterclockwise", "ADV"),
  "raises": ("raise", "VERB"),
  "lifts": ("lift", "VERB"),
  "above": ("above", "ADP"),
  "head": ("head", "NOUN"),
  "punches": ("punch", "VERB"),
  "throws": ("throw", "VERB"),
  "punch": ("punch", "NOUN"),
  "claps": ("clap", "VERB"),
  "several": ("several", "ADJ"),
  "steps": ("step", "VERB"),
  "sideways": ("sideways", "ADV"),
  "side": ("side", "ADV"),
  "shuffles": ("shuffle", "VERB"),
  "bows": ("bow", "VERB"),
  "takes": ("take", "VERB"),
  "bow": ("bow", "NOUN"),
  "then": ("then", "ADV"),
}
_BODY_OR_ACT_NOUNS = {"hand", "hands", "arm", "arms", "leg", "foot", "kick", "punch"}


def pos_tag(caption: str) -> list[str]:
  """Rule-based 'word/POS' tokens for the closed synthetic vocabulary (spaCy-like output).

  Words are lower-cased, '-' removed, non-alphabetic tokens dropped (as HumanML3D does).
  Context rules: 'left'/'right' are ADJ before a body/action noun, NOUN after 'the', else ADV;
  'squats' after a number is the plural noun.
  """
  words = [w for w in caption.lower().replace("-", "").replace(",", " ").replace(".", " ").split() if w.isalpha()]
  out = []
  for i, w in enumerate(words):
    if w not in LEXICON:
      raise KeyError(f"pos_tag: word {w!r} of caption {caption!r} is not in the synthetic LEXICON")
    lemma, pos = LEXICON[w]
    prev = words[i - 1] if i > 0 else ""
    nxt = words[i + 1] if i + 1 < len(words) else ""
    if w in ("left", "right"):
      pos = "ADJ" if nxt in _BODY_OR_ACT_NOUNS else ("NOUN" if prev == "the" else "ADV")
    elif w == "squats" and prev in ("two", "three"):
      pos = "NOUN"
    out.append(f"{lemma}/{pos}")
  return out


# Verb / noun keywords announcing each action in a caption (in order of appearance).
_ACTION_KEYWORDS = {
  "walks": "walk",
  "strolls": "walk",
  "jogs": "jog",
  "trots": "jog",
  "runs": "run",
  "sprints": "run",
  "jumps": "jump",
  "leaps": "jump",
  "waves": "wave",
  "kicks": "kick",
  "kick": "kick",
  "squats": "squat",
  "squat": "squat",
  "turns": "turn",
  "turn": "turn",
  "spins": "spin",
  "spin": "spin",
  "raises": "raise_arms",
  "lifts": "raise_arms",
  "punches": "punch",
  "punch": "punch",
  "claps": "clap",
  "steps": "step_sideways",
  "shuffles": "step_sideways",
  "bows": "bow",
  "bow": "bow",
}


def caption_action_labels(caption: str) -> list[int]:
  """Action labels (indices into ACTIONS) mentioned by a synthetic caption, in order."""
  words = caption.lower().replace(",", " ").replace(".", " ").split()
  labels = []
  for i, w in enumerate(words):
    a = _ACTION_KEYWORDS.get(w)
    if a is None or (w == "squats" and i > 0 and words[i - 1] in ("two", "three")):
      continue
    labels.append(ACTION_INDEX[a])
  return labels


def primary_action_label(caption_or_meta) -> int:
  """Integer class of a caption (first action it mentions) or of a motion's metadata dict."""
  if isinstance(caption_or_meta, dict):
    return int(caption_or_meta["segments"][0]["label"])
  labels = caption_action_labels(caption_or_meta)
  if not labels:
    raise ValueError(f"caption {caption_or_meta!r}: no synthetic action keyword found")
  return labels[0]


_MIRROR_WORDS = {"left": "right", "right": "left", "clockwise": "counterclockwise", "counterclockwise": "clockwise"}


def mirror_caption(caption: str) -> str:
  words = caption.split(" ")
  out = []
  for w in words:
    core = w.rstrip(".,")
    out.append(_MIRROR_WORDS.get(core, core) + w[len(core) :])
  return " ".join(out)


def _mirror_params(segs):
  out = []
  for s in segs:
    s = json.loads(json.dumps(s))
    for k in ("direction", "hand", "side"):
      if s["params"].get(k) in ("left", "right"):
        s["params"][k] = _MIRROR_WORDS[s["params"][k]]
    out.append(s)
  return out


# ---------------------------------------------------------------------------------------------
# Writer
# ---------------------------------------------------------------------------------------------


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


def _write_npy(path, arr):
  np.save(path, np.ascontiguousarray(arr))


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """launch/make_synthetic.py's dataset: `num_motions` base motions of `min_len`..`max_len` frames (20 fps)
  from `seed` (same seed -> byte-identical files), mirrored M<id> copies when `mirror`, a sub-clip caption line
  for `subclip_fraction` of the multi-action motions."""

  num_motions: int = 2000
  seed: int = 0
  min_len: int = 40
  max_len: int = 196
  mirror: bool = False
  subclip_fraction: float = 0.1


def write_synthetic_dataset(
  out_dir: str,
  num_motions: int = 2000,
  seed: int = 0,
  *,
  min_len: int = 40,
  max_len: int = 196,
  mirror: bool = False,
  captions_per_motion: int = 3,
  subclip_fraction: float = 0.0,
) -> dict:
  """Writes the HumanML3D layout under ``out_dir`` and returns the metadata dict.

  Args:
    out_dir: created if needed (new_joint_vecs/, new_joints/, texts/, Mean.npy, Std.npy,
      train/val/test/train_val/all.txt, metadata.json).
    num_motions: number of base motions (ids '000000'...).
    seed: everything is a function of the seed (writing twice gives byte-identical files).
    min_len, max_len: feature-frame lengths drawn uniformly in [min_len, max_len].
    mirror: also write mirrored 'M<id>' copies (joints mirrored, features recomputed, captions
      with left/right and clockwise/counterclockwise swapped), kept in the same split as <id>.
    subclip_fraction: probability that a motion with >= 2 segments gets one extra caption line
      describing only its first segment, with start/end seconds (a sub-clip line).
  """
  if not 2 <= min_len <= max_len:
    raise ValueError(f"min_len/max_len: expected 2 <= min_len <= max_len, found {min_len}, {max_len}")
  for sub in ("new_joint_vecs", "new_joints", "texts"):
    os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
  rng = np.random.default_rng(seed)
  meta = {"version": 1, "fps": FPS, "seed": seed, "actions": list(ACTIONS), "motions": {}}
  all_feats = []

  def emit(mid, joints, segs, captions, style, extra_lines, sub_meta):
    feats = joints_to_features(joints, 22).astype(np.float32)
    if not np.all(np.isfinite(feats)):
      raise FloatingPointError(f"synthetic motion {mid}: non-finite features")
    _write_npy(os.path.join(out_dir, "new_joint_vecs", f"{mid}.npy"), feats)
    _write_npy(os.path.join(out_dir, "new_joints", f"{mid}.npy"), recover_from_ric(feats, 22).astype(np.float32))
    lines = [f"{c}#{' '.join(pos_tag(c))}#0.0#0.0" for c in captions] + extra_lines
    with open(os.path.join(out_dir, "texts", f"{mid}.txt"), "w") as f:
      f.write("\n".join(lines) + "\n")
    all_feats.append(feats)
    meta["motions"][mid] = {
      "length": int(feats.shape[0]),
      "segments": segs,
      "style": style,
      "primary_action": segs[0]["action"],
      "primary_label": segs[0]["label"],
      "captions": [
        {"caption": c, "labels": [s["label"] for s in segs], "actions": [s["action"] for s in segs]} for c in captions
      ],
    }
    if sub_meta is not None:
      meta["motions"][mid]["subclip_captions"] = [sub_meta]
    return feats

  ids = [f"{i:06d}" for i in range(num_motions)]
  for mid in ids:
    f_len = int(rng.integers(min_len, max_len + 1))
    segs, style, joints = make_motion(rng, f_len + 1)
    captions, attempts = [], 0
    while len(captions) < captions_per_motion:
      c = make_caption(segs, rng)
      attempts += 1
      if c not in captions or attempts > 10 * captions_per_motion:  # prefer distinct captions
        captions.append(c)
    extra, sub_meta = [], None
    if len(segs) >= 2 and rng.uniform() < subclip_fraction:
      c = "a person " + action_phrase(segs[0], rng) + "."
      end_s = segs[0]["end"] / FPS
      extra = [f"{c}#{' '.join(pos_tag(c))}#0.0#{end_s}"]
      sub_meta = {"caption": c, "start": 0.0, "end": end_s, "labels": [segs[0]["label"]]}
    emit(mid, joints, segs, captions, style, extra, sub_meta)
    if mirror:
      msegs = _mirror_params(segs)
      mextra, msub = [], None
      if sub_meta is not None:
        c = mirror_caption(sub_meta["caption"])
        mextra = [f"{c}#{' '.join(pos_tag(c))}#0.0#{sub_meta['end']}"]
        msub = dict(sub_meta, caption=c)
      emit("M" + mid, sk.mirror_joints(joints), msegs, [mirror_caption(c) for c in captions], style, mextra, msub)

  mean, std = group_mean_std(all_feats, 22)
  _write_npy(os.path.join(out_dir, "Mean.npy"), mean)
  _write_npy(os.path.join(out_dir, "Std.npy"), std)

  perm = np.random.default_rng([seed, 7]).permutation(num_motions)
  n_train, n_val = int(round(0.8 * num_motions)), int(round(0.05 * num_motions))
  parts = {"train": perm[:n_train], "val": perm[n_train : n_train + n_val], "test": perm[n_train + n_val :]}
  split_ids = {}
  for name, idx in parts.items():
    base = [ids[i] for i in sorted(idx)]
    split_ids[name] = base + (["M" + b for b in base] if mirror else [])
  split_ids["train_val"] = split_ids["train"] + split_ids["val"]
  split_ids["all"] = split_ids["train"] + split_ids["val"] + split_ids["test"]
  for name, lst in split_ids.items():
    with open(os.path.join(out_dir, f"{name}.txt"), "w") as f:
      f.write("".join(f"{i}\n" for i in lst))
  meta["splits"] = {k: len(v) for k, v in split_ids.items()}
  with open(os.path.join(out_dir, "metadata.json"), "w") as f:
    json.dump(meta, f, sort_keys=True, indent=1)
  return meta


def load_metadata(root: str) -> dict:
  path = os.path.join(root, "metadata.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: synthetic metadata not found")
  with open(path) as f:
    return json.load(f)


def write_preview(root: str, path: str, ids: Sequence[str]) -> None:
  """Stick-figure strips of ``new_joints/<id>.npy`` with each motion's first caption."""
  from easytune_jax.data.preview import plot_motion_strips  # matplotlib only when asked

  meta = load_metadata(root)
  joints = [load_npy(os.path.join(root, "new_joints", f"{i}.npy"), "joints", ndim=3) for i in ids]
  captions = [f"{i}: {meta['motions'][i]['captions'][0]['caption']}" for i in ids]
  plot_motion_strips(joints, captions, path)
