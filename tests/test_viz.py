"""Visualisation writes valid images of the expected size and frame count (real HumanML3D joints)."""

import numpy as np
import pytest
from PIL import Image

from easytune_jax import viz
from tests import reference_data


def _joints():
  return np.load(reference_data.path("humanml3d_sample/new_joints/012314.npy"))


def _frames(path):
  with Image.open(path) as im:
    n = 0
    sizes = set()
    try:
      while True:
        im.seek(n)
        sizes.add(im.size)
        n += 1
    except EOFError:
      pass
    return im.format, n, sizes


def test_animate_motion_gif(tmp_path):
  j = _joints()[:12:2]  # 6 frames of the real sample (22 joints, metres)
  out = viz.animate_motion(j, tmp_path / "a.gif", title="a person walks", fps=10, panel_size=2.0, dpi=40)
  fmt, n, sizes = _frames(out)
  assert fmt == "GIF" and n == 6 and sizes == {(80, 80)}
  with Image.open(out) as im:
    im.seek(3)
    arr = np.asarray(im.convert("RGB"))
  assert arr.std() > 1.0  # something was drawn
  # frames differ as the body moves
  with Image.open(out) as im:
    a = np.asarray(im.convert("RGB")).astype(float)
    im.seek(5)
    b = np.asarray(im.convert("RGB")).astype(float)
  assert np.abs(a - b).max() > 0
  with pytest.raises(ValueError, match=r"no kinematic chain for 5 joints"):
    viz.animate_motion(np.zeros((3, 5, 3)), tmp_path / "x.gif")


def test_side_by_side_and_mp4_fallback(tmp_path):
  j = _joints()
  out = viz.side_by_side(
    [j[:4], j[10:15] + [0.5, 0, 0]], ["base", "fine-tuned"], tmp_path / "s.mp4", panel_size=2.0, dpi=30
  )
  fmt, n, sizes = _frames(out)
  assert n == 5 and sizes == {(120, 60)}  # two 60-px panels, frames = longest motion
  assert out.endswith(".mp4") == (fmt != "GIF")
  with pytest.raises(ValueError, match=r"expected 2 titles, found 1"):
    viz.side_by_side([j[:2], j[:2]], ["one"], tmp_path / "t.gif")


def test_plot_curves(tmp_path):
  out = viz.plot_curves(
    {"reward": (np.arange(10), np.linspace(0, 1, 10)), "fid": ([0, 5, 9], [3, 2, 1.5])},
    tmp_path / "c" / "curves.png",
    title="fine-tuning",
    figsize=(4, 3),
    dpi=50,
  )
  with Image.open(out) as im:
    assert im.format == "PNG" and im.size == (200, 150)
  with pytest.raises(ValueError, match=r"curve 'bad' expected steps and values of equal 1-D shape"):
    viz.plot_curves({"bad": ([1, 2], [1])}, tmp_path / "d.png")


def test_report_sized_animation_with_trails(tmp_path):
  # The quickstart's report GIFs: three 320-px panels = 960 px wide, thick limbs, root path and end-joint trails.
  j = _joints()[:8]
  plain = viz.side_by_side([j, j, j], ["base", "easytune", "draft"], tmp_path / "p.gif", panel_size=3.2, dpi=100)
  out = viz.side_by_side(
    [j, j, j],
    ["base", "easytune", "draft"],
    tmp_path / "r.gif",
    suptitle="a person walks",
    panel_size=3.2,
    dpi=100,
    linewidth=3.5,
    trail=12,
  )
  fmt, n, sizes = _frames(out)
  assert fmt == "GIF" and n == 8 and sizes == {(960, 320)}
  with Image.open(plain) as a, Image.open(out) as b:
    a.seek(7)
    b.seek(7)
    ink = lambda im: int((np.asarray(im.convert("L")) < 200).sum())  # noqa: E731
    assert ink(b) > ink(a)  # thicker limbs and trails draw more


def test_curve_panels_start_at_zero(tmp_path):
  curves = {"easytune": ([0, 6, 12], [0.70, 0.80, 0.85]), "draft": ([0, 6, 12], [0.70, 0.74, 0.78])}
  seconds = {"easytune": ([0.0, 10.5, 20.1], [0.70, 0.80, 0.85]), "draft": ([0.0, 7.0, 14.2], [0.70, 0.74, 0.78])}
  out = viz.plot_curve_panels(
    [(curves, "trajectories"), (seconds, "seconds")],
    tmp_path / "c.png",
    title="held-out reward",
    ylabel="reward",
    panel_size=(5.0, 3.6),
    dpi=100,
  )
  with Image.open(out) as im:
    assert im.format == "PNG" and im.size == (1000, 360)
    rows = np.nonzero((np.asarray(im.convert("L")) < 128).any(axis=1))[0]
  # the x-axis labels are drawn near the bottom, inside the image (not clipped at its edge)
  assert 0.9 * 360 < rows.max() < 359
  with pytest.raises(ValueError, match="at least one panel"):
    viz.plot_curve_panels([({}, "x")], tmp_path / "d.png")
