"""The synthetic dataset's actions (``ACTIONS``): each drives per-joint Euler angles (sinusoidal gait with arm
swing, gestures under a raise/hold/lower envelope, ...), a body-frame root velocity, a yaw rate and a vertical
lift as functions of the segment's local time (`run_action`), with a per-motion style (speed, amplitude,
gesture rate, phase); `sample_actions` draws a motion's 1-3 segments and their parameters. The joints are
made from them in `data/synthetic_motion.py`.
"""

from __future__ import annotations

import numpy as np

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

# Joint indices.
L_HIP, R_HIP, SP1, L_KNEE, R_KNEE, SP2, L_ANK, R_ANK, SP3 = 1, 2, 3, 4, 5, 6, 7, 8, 9
NECK, L_COL, R_COL, HEAD, L_SH, R_SH, L_EL, R_EL, L_WR, R_WR = 12, 13, 14, 15, 16, 17, 18, 19, 20, 21
X, Y, Z = 0, 1, 2


# ---------------------------------------------------------------------------------------------
# Time profiles
# ---------------------------------------------------------------------------------------------


def smoothstep(x):
  x = np.clip(x, 0.0, 1.0)
  return x * x * (3 - 2 * x)


def _envelope(tau, n, ramp):
  """0 -> 1 over `ramp` frames from the segment start, back to 0 over its last `ramp` frames."""
  ramp = max(1.0, min(ramp, 0.45 * n))
  return smoothstep(tau / ramp) * smoothstep((n - tau) / ramp)


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


def run_action(name, p, tau, n, st):
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
