"""Stick-figure strips of motions (matplotlib, Agg backend) to eyeball generated data."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from easytune_jax.data.skeleton import HML_KINEMATIC_CHAIN  # noqa: E402

_CHAIN_COLORS = ("tab:red", "tab:blue", "black", "tab:orange", "tab:green")  # R leg, L leg, spine, R arm, L arm


def plot_motion_strips(
  joints_list: Sequence[np.ndarray],
  captions: Sequence[str],
  path: str,
  num_poses: int = 8,
  chains=HML_KINEMATIC_CHAIN,
  dpi: int = 90,
) -> None:
  """One row per motion: `num_poses` evenly spaced, root-centred poses in an oblique view
  (35 degrees off the +Z front, slightly from above), plus a top view (x, z) of the root trail
  (so locomotion and turns show). Left limbs green/blue, right limbs orange/red.

  Args:
    joints_list: list of [T, J, 3] global joint positions (Y-up, metres).
    captions: one title per motion.
    path: output PNG path.
  """
  n = len(joints_list)
  fig, axes = plt.subplots(n, 2, figsize=(14, 2.6 * n), gridspec_kw={"width_ratios": [4, 1]}, squeeze=False)
  for row, (j, cap) in enumerate(zip(joints_list, captions)):
    j = np.asarray(j, np.float64)
    ax, top = axes[row]
    frames = np.linspace(0, len(j) - 1, num_poses).round().astype(int)
    # Oblique view (camera 35 degrees off the front, slightly above) of root-centred poses,
    # side by side, so both sideways (wave) and forward (kick, bow) movements show.
    c, s = np.cos(np.deg2rad(35)), np.sin(np.deg2rad(35))
    for k, f in enumerate(frames):
      shift = 1.1 * k
      d = j[f] - j[f, 0] * np.array([1.0, 0.0, 1.0])
      u = d[:, 0] * c + d[:, 2] * s
      v = d[:, 1] + 0.15 * (d[:, 2] * c - d[:, 0] * s)
      for chain, col in zip(chains, _CHAIN_COLORS):
        ax.plot(u[list(chain)] + shift, v[list(chain)], color=col, lw=2)
      ax.text(shift, -0.15, f"t={f}", ha="center", fontsize=7)
    ax.set_aspect("equal")
    ax.set_xlim(-0.8, 1.1 * (num_poses - 1) + 0.8)
    ax.set_ylim(-0.25, 2.3)
    ax.axhline(0, color="gray", lw=0.5)
    ax.set_title("\n".join(textwrap.wrap(cap, 110)), fontsize=8, loc="left")
    ax.set_xticks([])
    top.plot(j[:, 0, 0], j[:, 0, 2], color="k", lw=1)
    top.scatter(j[frames, 0, 0], j[frames, 0, 2], c=np.arange(len(frames)), cmap="viridis", s=10)
    top.set_aspect("equal", adjustable="datalim")
    top.set_title("root trail (x, z), top view", fontsize=7)
    top.tick_params(labelsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=dpi)
  plt.close(fig)
