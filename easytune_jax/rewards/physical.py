"""Physical-plausibility rewards on decoded joints, differentiable, behind the reward contract.

Each term is a penalty p >= 0 per motion (lower is more plausible) computed from global joint positions
[B, F, J, 3] (metres, Y up) over the valid frames of a frame mask; the reward is -p. They are the smooth
counterparts of the physical metrics of `easytune_jax.metrics` (same constants, same frame conventions):

- `skating_penalty`: contact-weighted horizontal foot speed (m/s). A foot's contact weight is
  sigmoid((SKATE_HEIGHT - h) / softness) at both ends of a transition, so the penalty is the expected speed
  of a foot that should stand still; `metrics.foot_skating_ratio` thresholds the same quantities (contact
  below 5 cm, speed above 0.5 m/s) and has zero gradient almost everywhere.
- `jitter_penalty`: mean joint jerk magnitude (m/s^3), equal to `metrics.jitter` (its norm is made safe at 0
  so padded frames give finite gradients).
- `penetration_penalty`: mean depth of the lowest joint below the floor y = 0 (m), equal to
  `metrics.floor_penetration`.

Typical magnitudes on HumanML3D-like motion: skating ~0.05-0.5 m/s, jitter ~10-200 m/s^3, penetration
~0-0.02 m; weight them accordingly when summing with a [-1, 1] retrieval reward (see `rewards.registry`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from easytune_jax.metrics import FOOT_JOINTS, SKATE_HEIGHT

_EPS = 1e-12


def _safe_norm(v: jax.Array, axis: int = -1) -> jax.Array:
  """Euclidean norm with a finite gradient at 0 (sqrt(sum v^2 + eps) - sqrt(eps))."""
  return jnp.sqrt(jnp.sum(jnp.square(v), axis=axis) + _EPS) - jnp.sqrt(_EPS)


def _masked_mean(values: jax.Array, valid: jax.Array) -> jax.Array:
  """Mean over axis 1 of values [B, N] where valid [B, N]; 0 for rows without valid entries."""
  valid = valid.astype(values.dtype)
  return jnp.sum(values * valid, axis=1) / jnp.maximum(jnp.sum(valid, axis=1), 1.0)


def skating_penalty(
  joints: jax.Array,
  mask: jax.Array,
  *,
  fps: float = 20.0,
  feet=FOOT_JOINTS,
  height: float = SKATE_HEIGHT,
  softness: float = 0.01,
) -> jax.Array:
  """Contact-weighted horizontal foot speed, mean over valid transitions and feet.

  Args:
    joints: [B, F, J, 3] global positions (Y up). mask: bool [B, F] valid frames (a prefix).
    fps: frame rate. feet: foot joint indices. height: contact height (m). softness: sigmoid width (m).
  Returns:
    [B] penalty in m/s.
  """
  f = joints[:, :, jnp.asarray(feet), :]  # [B, F, 2, 3]
  disp = f[:, 1:] - f[:, :-1]
  speed = _safe_norm(jnp.stack([disp[..., 0], disp[..., 2]], -1)) * fps  # [B, F-1, 2]
  contact = jax.nn.sigmoid((height - f[..., 1]) / softness)  # [B, F, 2]
  weight = contact[:, 1:] * contact[:, :-1]
  valid = mask[:, 1:] & mask[:, :-1]  # transition t -> t+1 inside
  return _masked_mean(jnp.mean(weight * speed, axis=-1), valid)


def jitter_penalty(joints: jax.Array, mask: jax.Array, *, fps: float = 20.0) -> jax.Array:
  """Mean joint jerk magnitude |x_{t+3} - 3x_{t+2} + 3x_{t+1} - x_t| * fps^3 over valid windows. [B]."""
  jerk = joints[:, 3:] - 3 * joints[:, 2:-1] + 3 * joints[:, 1:-2] - joints[:, :-3]
  mag = jnp.mean(_safe_norm(jerk), axis=-1) * fps**3  # [B, F-3]
  return _masked_mean(mag, mask[:, 3:])


def penetration_penalty(joints: jax.Array, mask: jax.Array, *, up_axis: int = 1) -> jax.Array:
  """Mean over valid frames of max(0, -min_j y_j): depth of the lowest joint below the floor. [B] metres."""
  depth = jax.nn.relu(-jnp.min(joints[..., up_axis], axis=-1))  # [B, F]
  return _masked_mean(depth, mask)


PENALTIES = {"skating": skating_penalty, "jitter": jitter_penalty, "penetration": penetration_penalty}
