"""Stick-figure animations and curves (matplotlib Agg + pillow; no display needed).

* :func:`animate_motion` — one skeleton ``[F, J, 3]`` to a GIF (or MP4 when ffmpeg is on PATH);
* :func:`side_by_side` — several skeletons in a grid, e.g. base vs fine-tuned for the same text and noise;
* :func:`plot_curves` — reward / metric curves to a PNG.

Frames are drawn with matplotlib's 3D axes (Y up, floor at y = 0) and written with pillow; the default
small figure and dpi keep a 100-frame GIF to a few seconds on a CPU.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image


@functools.cache
def _pyplot():
  """matplotlib.pyplot on the headless Agg backend, imported on first use (launchers that never draw skip its
  ~0.6 s import)."""
  import matplotlib

  matplotlib.use("Agg")  # headless; must precede pyplot
  import matplotlib.pyplot

  return matplotlib.pyplot


# docs/humanml3d_format.md#skeleton: right leg, left leg, spine-head, right arm, left arm (HumanML3D, 22 joints).
T2M_KINEMATIC_CHAIN = [
  [0, 2, 5, 8, 11],
  [0, 1, 4, 7, 10],
  [0, 3, 6, 9, 12, 15],
  [9, 14, 17, 19, 21],
  [9, 13, 16, 18, 20],
]
KIT_KINEMATIC_CHAIN = [[0, 11, 12, 13, 14, 15], [0, 16, 17, 18, 19, 20], [0, 1, 2, 3, 4], [3, 5, 6, 7], [3, 8, 9, 10]]
_CHAIN_COLORS = ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd"]


def kinematic_chain(num_joints: int):
  """The chain for 22 (HumanML3D) or 21 (KIT-ML) joints."""
  if num_joints == 22:
    return T2M_KINEMATIC_CHAIN
  if num_joints == 21:
    return KIT_KINEMATIC_CHAIN
  raise ValueError(
    f"viz: no kinematic chain for {num_joints} joints; expected 22 (HumanML3D) or 21 (KIT), or pass chain="
  )


def _check_joints(joints, name="joints"):
  j = np.asarray(joints, dtype=np.float64)
  if j.ndim != 3 or j.shape[-1] != 3 or j.shape[0] < 1:
    raise ValueError(f"viz: {name} expected shape [F, J, 3], found {j.shape}")
  if not np.all(np.isfinite(j)):
    raise ValueError(f"viz: {name} contains non-finite values")
  return j


def _bounds(motions):
  allj = np.concatenate([m.reshape(-1, 3) for m in motions])
  lo, hi = allj.min(0), allj.max(0)
  center = (lo + hi) / 2
  radius = max(float((hi - lo).max()) / 2, 1e-3) * 1.1
  return center, radius


class _Panel:
  """One 3D axes showing a skeleton; ``update(frame)`` moves its lines (and trails)."""

  def __init__(self, ax, joints, chain, title, center, radius, linewidth=2.0, trail=0):
    self.ax, self.joints, self.chain, self.trail = ax, joints, chain, trail
    # matplotlib 3D has z up: plot (x, z, y) so the motion's y is vertical.
    ax.set_xlim(center[0] - radius, center[0] + radius)
    ax.set_ylim(center[2] - radius, center[2] + radius)
    ax.set_zlim(min(0.0, center[1] - radius), center[1] + radius)
    ax.view_init(elev=15, azim=-60)
    ax.set_box_aspect((1, 1, 1), zoom=1.4)  # fill the panel: 3D axes leave wide margins by default
    ax.set_axis_off()
    if title:
      ax.set_title(title, fontsize=10 if trail else 8)
    xs = np.linspace(center[0] - radius, center[0] + radius, 2)
    zs = np.linspace(center[2] - radius, center[2] + radius, 2)
    gx, gz = np.meshgrid(xs, zs)
    ax.plot_surface(gx, gz, np.zeros_like(gx), color="0.85", alpha=0.5, linewidth=0)  # floor y = 0
    self.lines = [
      ax.plot([], [], [], color=_CHAIN_COLORS[i % len(_CHAIN_COLORS)], lw=linewidth, solid_capstyle="round")[0]
      for i in range(len(chain))
    ]
    # Trails: the root's path on the floor so far, and the last `trail` frames of each chain's end joint
    # (feet, head, hands).
    self.ends = [c[-1] for c in chain]
    self.root_path = ax.plot([], [], [], color="0.35", lw=max(1.0, linewidth / 2), alpha=0.8)[0] if trail else None
    self.end_paths = (
      [
        ax.plot([], [], [], color=_CHAIN_COLORS[i % len(_CHAIN_COLORS)], lw=max(1.0, linewidth / 3), alpha=0.45)[0]
        for i in range(len(chain))
      ]
      if trail
      else []
    )

  def update(self, frame):
    f = min(frame, len(self.joints) - 1)  # shorter motions hold their last pose
    p = self.joints[f]
    for line, c in zip(self.lines, self.chain):
      line.set_data_3d(p[c, 0], p[c, 2], p[c, 1])
    if self.trail:
      root = self.joints[: f + 1, 0]
      self.root_path.set_data_3d(root[:, 0], root[:, 2], np.zeros(len(root)))
      recent = self.joints[max(0, f - self.trail) : f + 1]
      for line, j in zip(self.end_paths, self.ends):
        line.set_data_3d(recent[:, j, 0], recent[:, j, 2], recent[:, j, 1])


def _render(motions, titles, chain, suptitle, ncols, panel_size, dpi, linewidth=2.0, trail=0):
  plt = _pyplot()
  n = len(motions)
  ncols = ncols or n
  nrows = -(-n // ncols)
  fig = plt.figure(figsize=(panel_size * ncols, panel_size * nrows), dpi=dpi)
  center, radius = _bounds(motions)
  panels = []
  for i, m in enumerate(motions):
    ax = fig.add_subplot(nrows, ncols, i + 1, projection="3d")
    panels.append(_Panel(ax, m, chain, titles[i] if titles else "", center, radius, linewidth, trail))
  fig.subplots_adjust(left=0, right=1, bottom=0, top=0.8 if suptitle else 1.0, wspace=0, hspace=0)
  if suptitle:  # above the panels' own titles
    fig.suptitle(suptitle, fontsize=11 if trail else 9, y=0.99)
  frames = []
  for f in range(max(len(m) for m in motions)):
    for p in panels:
      p.update(f)
    fig.canvas.draw()
    frames.append(Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()))
  plt.close(fig)
  return frames


def _write(frames, path, fps):
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  if path.lower().endswith(".mp4"):
    if shutil.which("ffmpeg") is None:
      path = path[:-4] + ".gif"  # no encoder: fall back to GIF next to the requested path
    else:
      plt = _pyplot()  # Agg selected before matplotlib.animation loads
      import matplotlib.animation as animation

      fig = plt.figure(figsize=(frames[0].width / 100, frames[0].height / 100), dpi=100)
      ax = fig.add_axes([0, 0, 1, 1])
      ax.set_axis_off()
      im = ax.imshow(np.asarray(frames[0]))
      writer = animation.FFMpegWriter(fps=fps)
      with writer.saving(fig, path, dpi=100):
        for fr in frames:
          im.set_data(np.asarray(fr))
          writer.grab_frame()
      plt.close(fig)
      return path
  duration = max(int(round(1000 / fps)), 20)
  frames[0].save(path, save_all=True, append_images=frames[1:], duration=duration, loop=0, optimize=False)
  return path


def animate_motion(
  joints,
  path,
  title: str = "",
  fps: float = 20.0,
  *,
  chain=None,
  panel_size: float = 3.0,
  dpi: int = 60,
  linewidth: float = 2.0,
  trail: int = 0,
) -> str:
  """Stick-figure animation of ``joints`` [F, J, 3] (Y up) to ``path`` (.gif, or .mp4 if ffmpeg exists).

  Returns the path written (a requested .mp4 becomes .gif when ffmpeg is missing). Image size is
  ``panel_size * dpi`` pixels square. ``linewidth``: limb width in points; ``trail`` > 0 also draws the
  root's path on the floor and the last ``trail`` frames of each end joint (hands, feet, head).
  """
  j = _check_joints(joints)
  chain = chain or kinematic_chain(j.shape[1])
  frames = _render([j], None, chain, title, 1, panel_size, dpi, linewidth, trail)
  return _write(frames, path, fps)


def side_by_side(
  motions: Sequence,
  titles: Sequence[str] | None,
  path,
  fps: float = 20.0,
  *,
  suptitle: str = "",
  ncols: int | None = None,
  chain=None,
  panel_size: float = 3.0,
  dpi: int = 60,
  linewidth: float = 2.0,
  trail: int = 0,
) -> str:
  """Grid animation of several motions [F_i, J, 3] sharing one camera; shorter ones hold their last pose.
  Each panel is ``panel_size * dpi`` pixels square; ``linewidth`` and ``trail`` as in :func:`animate_motion`."""
  if not motions:
    raise ValueError("side_by_side: expected at least one motion, found none")
  ms = [_check_joints(m, f"motions[{i}]") for i, m in enumerate(motions)]
  if len({m.shape[1] for m in ms}) != 1:
    raise ValueError(f"side_by_side: motions must share the joint count, found {[m.shape[1] for m in ms]}")
  if titles is not None and len(titles) != len(ms):
    raise ValueError(f"side_by_side: expected {len(ms)} titles, found {len(titles)}")
  chain = chain or kinematic_chain(ms[0].shape[1])
  frames = _render(ms, titles, chain, suptitle, ncols, panel_size, dpi, linewidth, trail)
  return _write(frames, path, fps)


def plot_curves(
  curves: Mapping[str, tuple],
  path,
  *,
  title: str = "",
  xlabel: str = "step",
  ylabel: str = "",
  figsize=(5.0, 3.5),
  dpi: int = 80,
) -> str:
  """Line plot of ``{name: (steps, values)}`` to a PNG; returns the path."""
  plt = _pyplot()
  if not curves:
    raise ValueError("plot_curves: expected at least one curve, found none")
  fig, ax = plt.subplots(figsize=figsize, dpi=dpi)
  for i, (name, (steps, values)) in enumerate(curves.items()):
    steps, values = np.asarray(steps), np.asarray(values)
    if steps.shape != values.shape or steps.ndim != 1:
      raise ValueError(
        f"plot_curves: curve {name!r} expected steps and values of equal 1-D shape, "
        f"found {steps.shape} and {values.shape}"
      )
    # the default cycle has 10 colours: later curves change line style so that none look alike
    ax.plot(steps, values, label=name, lw=1.5, ls=("-", "--", ":", "-.")[(i // 10) % 4])
  ax.set_xlabel(xlabel)
  if ylabel:
    ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()  # keeps the axis labels inside the image (same pixel size)
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=dpi)  # no bbox_inches: the image is exactly figsize * dpi
  plt.close(fig)
  return path


def plot_curve_panels(
  panels: Sequence[tuple], path, *, title: str = "", ylabel: str = "", panel_size=(5.0, 3.6), dpi: int = 100
) -> str:
  """Side-by-side line plots sharing the y axis, e.g. the same curves against steps and against seconds.

  Args:
    panels: ``[(curves, xlabel), ...]`` with ``curves`` ``{name: (x, values)}`` as in :func:`plot_curves`.
    path: the PNG written.
    title: figure title; ylabel: label of the shared y axis.
    panel_size: inches per panel (width, height); the image is ``len(panels) * width * dpi`` pixels wide.
  Returns:
    The path written.
  """
  plt = _pyplot()
  if not panels or not any(curves for curves, _ in panels):
    raise ValueError("plot_curve_panels: expected at least one panel with a curve, found none")
  fig, axes = plt.subplots(
    1, len(panels), figsize=(panel_size[0] * len(panels), panel_size[1]), dpi=dpi, sharey=True, squeeze=False
  )
  for ax, (curves, xlabel) in zip(axes[0], panels):
    for i, (name, (xs, values)) in enumerate(curves.items()):
      xs, values = np.asarray(xs, float), np.asarray(values, float)
      if xs.shape != values.shape or xs.ndim != 1:
        raise ValueError(
          f"plot_curve_panels: curve {name!r} expected x and values of equal 1-D shape, "
          f"found {xs.shape} and {values.shape}"
        )
      ax.plot(xs, values, label=name, lw=1.8, marker="o", ms=3.5, ls=("-", "--", ":", "-.")[(i // 10) % 4])
    ax.set_xlabel(xlabel, fontsize=10)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=9)
    if curves:
      ax.legend(fontsize=9)
  if ylabel:
    axes[0][0].set_ylabel(ylabel, fontsize=10)
  if title:
    fig.suptitle(title, fontsize=11)
  fig.tight_layout()
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=dpi)
  plt.close(fig)
  return path
