"""BVH export (data/bvh.py): files written from joint positions, read back by an independent parser.

The parser and forward kinematics below are the test's own (text tokens -> hierarchy, channels, frames; Euler
angles -> matrices by scipy's `Rotation.from_euler` in the channel order the file declares; FK in float64), so the
round trip checks the writer's text, channel order, angle convention and units, not only its own FK.
"""

import bvh as bvh_pkg  # test-only: the `bvh` PyPI package, a standard BVH reader
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from easytune_jax.data import bvh
from easytune_jax.data import skeleton as sk


def parse_bvh(text: str) -> dict:
  """Minimal BVH reader: {"names", "parents", "offsets" [J, 3], "channels" per joint, "frame_time", "frames" [T, C]}."""
  tok = text.split()
  i = 0
  names, parents, offsets, channels, stack = [], [], [], [], []
  assert tok[0] == "HIERARCHY"
  i = 1
  while tok[i] != "MOTION":
    t = tok[i]
    if t in ("ROOT", "JOINT"):
      names.append(tok[i + 1])
      parents.append(stack[-1] if stack else -1)
      i += 2
    elif t == "End":
      assert tok[i + 1] == "Site" and tok[i + 2] == "{" and tok[i + 3] == "OFFSET" and tok[i + 7] == "}"
      i += 8
    elif t == "{":
      stack.append(len(names) - 1)
      i += 1
    elif t == "}":
      stack.pop()
      i += 1
    elif t == "OFFSET":
      offsets.append([float(x) for x in tok[i + 1 : i + 4]])
      i += 4
    elif t == "CHANNELS":
      n = int(tok[i + 1])
      channels.append(tok[i + 2 : i + 2 + n])
      i += 2 + n
    else:
      raise ValueError(f"unexpected token {t!r}")
  assert tok[i + 1] == "Frames:" and tok[i + 3] == "Frame" and tok[i + 4] == "Time:"
  num_frames, frame_time = int(tok[i + 2]), float(tok[i + 5])
  values = np.array([float(x) for x in tok[i + 6 :]])
  return {
    "names": names,
    "parents": parents,
    "offsets": np.array(offsets),
    "channels": channels,
    "frame_time": frame_time,
    "frames": values.reshape(num_frames, -1),
  }


def fk_bvh(b: dict) -> np.ndarray:
  """Global joint positions [T, J, 3] of a parsed BVH (file units), rotations in the declared channel order."""
  t = b["frames"].shape[0]
  col = 0
  glob_r, glob_p = [], []
  for j, chans in enumerate(b["channels"]):
    vals = b["frames"][:, col : col + len(chans)]
    col += len(chans)
    pos = np.zeros((t, 3))
    rot_axes, rot_vals = "", []
    for k, c in enumerate(chans):
      if c.endswith("position"):
        pos[:, "XYZ".index(c[0])] = vals[:, k]
      else:
        rot_axes += c[0]
        rot_vals.append(vals[:, k])
    local = Rotation.from_euler(rot_axes.upper(), np.stack(rot_vals, -1), degrees=True).as_matrix()
    p = b["parents"][j]
    if p < 0:
      glob_p.append(pos + b["offsets"][j])
      glob_r.append(local)
    else:
      glob_p.append(glob_p[p] + np.einsum("tij,j->ti", glob_r[p], b["offsets"][j]))
      glob_r.append(glob_r[p] @ local)
  return np.stack(glob_p, 1)


def roundtrip(joints, tmp_path, scale=100.0):
  out = bvh.joints_to_bvh(joints, tmp_path / "m.bvh", scale=scale)
  parsed = parse_bvh((tmp_path / "m.bvh").read_text())
  order = [parsed["names"].index(n) for n in sk.HML_JOINT_NAMES]  # the file lists joints depth-first
  return out, parsed, fk_bvh(parsed)[:, order] / scale


def fk_joints(rng, t=40):
  """Joints on a rigid skeleton (constant bone lengths, rigid pelvis / chest groups) from random rotations."""
  offsets = sk.HML_RAW_OFFSETS * sk.HML_BONE_LENGTHS[:, None]
  offsets[[1, 2, 3, 13, 14]] += 0.03 * rng.standard_normal((5, 3))  # non-template group geometry
  quats = sk.qnormalize(np.concatenate([np.ones((t, 22, 1)), 0.6 * rng.standard_normal((t, 22, 3))], -1))
  root = np.cumsum(0.02 * rng.standard_normal((t, 3)), 0) + [0, 0.9, 0]
  return sk.forward_kinematics(quats, root, offsets)


def test_file_layout_and_exact_roundtrip_on_a_rigid_skeleton(tmp_path):
  joints = fk_joints(np.random.default_rng(0))
  out, parsed, back = roundtrip(joints, tmp_path)
  names = parsed["names"]
  assert sorted(names) == sorted(sk.HML_JOINT_NAMES) and names[0] == "pelvis"
  assert [names[p] if p >= 0 else None for p in parsed["parents"]] == [
    sk.HML_JOINT_NAMES[sk.HML_PARENTS[sk.HML_JOINT_NAMES.index(n)]] if n != "pelvis" else None for n in names
  ]
  assert parsed["channels"][0] == bvh.ROOT_CHANNELS.split()
  assert all(c == bvh.JOINT_CHANNELS.split() for c in parsed["channels"][1:])
  assert parsed["frame_time"] == pytest.approx(0.05) and parsed["frames"].shape == (40, 6 + 21 * 3)
  # bone lengths in the file: the skeleton's, in centimetres (single-child bones follow the template direction)
  lengths = np.linalg.norm(parsed["offsets"], axis=-1)[[names.index(n) for n in sk.HML_JOINT_NAMES]] / 100.0
  np.testing.assert_allclose(lengths[4:12], sk.HML_BONE_LENGTHS[4:12], atol=1e-7)
  assert out["max_error_m"] < 1e-9
  np.testing.assert_allclose(back, joints, atol=1e-6)  # text rounding only (1e-6 cm, 1e-6 degree)


def test_roundtrip_real_humanml3d_joints(tmp_path, reference_data):
  joints = np.load(reference_data / "humanml3d_sample" / "new_joints" / "012314.npy").astype(np.float64)
  out, _, back = roundtrip(joints, tmp_path, scale=1.0)  # metres in the file
  assert out["max_error_m"] < 5e-6
  np.testing.assert_allclose(back, joints, atol=1e-5)


def test_varying_bone_lengths_use_mean_lengths_and_report_the_error(tmp_path):
  rng = np.random.default_rng(1)
  joints = fk_joints(rng, t=30)
  stretch = 1.0 + 0.01 * rng.standard_normal((30, 1, 1))  # the left shin changes length by ~1 % per frame
  bone = joints[:, 7] - joints[:, 4]
  moved = joints.copy()
  moved[:, [7, 10]] += (stretch - 1.0) * bone[:, None]
  out, _, back = roundtrip(moved, tmp_path)
  err = np.max(np.abs(back - moved))
  assert err == pytest.approx(out["max_error_m"], abs=1e-6)
  assert 1e-4 < err < 0.02
  np.testing.assert_allclose(
    back[:, np.delete(np.arange(22), [7, 10])], moved[:, np.delete(np.arange(22), [7, 10])], atol=1e-6
  )


def test_euler_angles_at_gimbal_lock():
  q = sk.qmul(
    sk.quat_from_axis_angle(np.array([0.0, 1.0, 0.0]), np.array(np.pi / 2)),
    sk.quat_from_axis_angle(np.array([1.0, 0.0, 0.0]), np.array(0.3)),
  )
  qs = np.stack([q, -q, sk.qnormalize(np.array([0.3, -0.2, 0.9, 0.1]))])
  ang = bvh.euler_zyx_degrees(qs)
  mats = Rotation.from_euler("ZYX", ang, degrees=True).as_matrix()
  np.testing.assert_allclose(mats, sk.quat_to_matrix(qs), atol=1e-9)


def test_bad_inputs(tmp_path):
  with pytest.raises(ValueError, match=r"\[T >= 1, 22, 3\]"):
    bvh.joints_to_bvh(np.zeros((5, 21, 3)), tmp_path / "x.bvh")
  with pytest.raises(ValueError, match="finite"):
    bvh.joints_to_bvh(np.full((5, 22, 3), np.nan), tmp_path / "x.bvh")
  assert not list(tmp_path.iterdir())


def test_a_standard_bvh_parser_reads_the_humanml3d_skeleton(tmp_path, reference_data):
  """The `bvh` package (PyPI, a widely used BVH reader) parses the file: the 22 HumanML3D joints with their
  parents, offsets and channels, 20 fps; posing its values with this test's FK gives back the real motion."""
  joints = np.load(reference_data / "humanml3d_sample" / "new_joints" / "012314.npy").astype(np.float64)
  path = tmp_path / "sample.bvh"
  bvh.joints_to_bvh(joints, path)
  mocap = bvh_pkg.Bvh(path.read_text())
  names = mocap.get_joints_names()
  assert sorted(names) == sorted(sk.HML_JOINT_NAMES) and mocap.nframes == joints.shape[0]
  assert mocap.frame_time == pytest.approx(0.05)
  for n in names:
    parent = mocap.joint_parent(n)
    want = sk.HML_PARENTS[sk.HML_JOINT_NAMES.index(n)]
    assert (parent.name if parent is not None else None) == (sk.HML_JOINT_NAMES[want] if want >= 0 else None)
  channels = [mocap.joint_channels(n) for n in names]
  parsed = {
    "names": names,
    "parents": [names.index(mocap.joint_parent(n).name) if mocap.joint_parent(n) else -1 for n in names],
    "offsets": np.array([mocap.joint_offset(n) for n in names]),
    "channels": channels,
    "frames": np.concatenate(
      [np.array(mocap.frames_joint_channels(n, c), float) for n, c in zip(names, channels)], axis=1
    ),
  }
  back = fk_bvh(parsed) / 100.0  # centimetres in the file
  order = [names.index(n) for n in sk.HML_JOINT_NAMES]
  np.testing.assert_allclose(back[:, order], joints, atol=1e-5)
