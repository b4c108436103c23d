"""Synthetic dataset: determinism, layout, features, statistics, captions <-> labels."""

import filecmp
import os

import numpy as np
import pytest

from easytune_jax.data import features as F
from easytune_jax.data import humanml3d as H
from easytune_jax.data import synthetic as S
from easytune_jax.data import synthetic_actions as SA
from easytune_jax.data import synthetic_captions as SC
from easytune_jax.data import synthetic_motion as SM


@pytest.fixture(scope="module")
def two_writes(tmp_path_factory):
  a = str(tmp_path_factory.mktemp("syn_a"))
  b = str(tmp_path_factory.mktemp("syn_b"))
  kw = dict(min_len=40, max_len=100, mirror=True, subclip_fraction=0.5)
  meta = S.write_synthetic_dataset(a, 14, seed=3, **kw)
  S.write_synthetic_dataset(b, 14, seed=3, **kw)
  return a, b, meta


def _all_files(root):
  out = []
  for d, _, files in os.walk(root):
    out += [os.path.relpath(os.path.join(d, f), root) for f in files]
  return sorted(out)


def test_byte_identical_and_layout(two_writes, tmp_path):
  a, b, meta = two_writes
  files = _all_files(a)
  assert files == _all_files(b)
  for f in files:
    assert filecmp.cmp(os.path.join(a, f), os.path.join(b, f), shallow=False), f
  for name in ("Mean.npy", "Std.npy", "train.txt", "val.txt", "test.txt", "train_val.txt", "all.txt", "metadata.json"):
    assert name in files
  assert sum(f.startswith("new_joint_vecs/") for f in files) == 28  # 14 + 14 mirrored
  # a different seed gives different data
  c = str(tmp_path)
  S.write_synthetic_dataset(c, 3, seed=4, min_len=40, max_len=60)
  assert not filecmp.cmp(
    os.path.join(a, "new_joint_vecs", "000000.npy"), os.path.join(c, "new_joint_vecs", "000000.npy"), shallow=False
  )
  # splits: 80/5/15, mirror with its base, no overlap, train_val/all unions
  split = {s: open(os.path.join(a, f"{s}.txt")).read().split() for s in ("train", "val", "test", "train_val", "all")}
  assert (len(split["train"]), len(split["val"]), len(split["test"])) == (22, 2, 4)
  assert not set(split["train"]) & set(split["test"])
  assert all(("M" + i) in split[s] for s in ("train", "val", "test") for i in split[s] if not i.startswith("M"))
  assert split["train_val"] == split["train"] + split["val"]
  assert sorted(split["all"]) == sorted(meta["motions"])


def test_features_joints_and_stats(two_writes):
  a, _, meta = two_writes
  feats = []
  for mid, m in meta["motions"].items():
    x = np.load(os.path.join(a, "new_joint_vecs", f"{mid}.npy"))
    j = np.load(os.path.join(a, "new_joints", f"{mid}.npy"))
    assert x.dtype == np.float32 and x.shape == (m["length"], 263) and 40 <= m["length"] <= 100
    assert np.all(np.isfinite(x))
    assert j.dtype == np.float32 and j.shape == (m["length"], 22, 3)
    np.testing.assert_allclose(j, F.recover_from_ric(x.astype(np.float64), 22), atol=1e-4)
    assert set(np.unique(x[:, -4:])) <= {0.0, 1.0}
    assert abs(j[..., 1].min()) < 1e-5  # floor at y = 0
    feats.append(x)
  # Mean / Std: per-dim mean, group-averaged population std (independent recomputation).
  allx = np.concatenate(feats).astype(np.float64)
  mean, std = np.load(os.path.join(a, "Mean.npy")), np.load(os.path.join(a, "Std.npy"))
  assert mean.dtype == std.dtype == np.float32 and mean.shape == std.shape == (263,)
  np.testing.assert_allclose(mean, allx.mean(0), atol=1e-5)
  groups = [(0, 1), (1, 3), (3, 4), (4, 67), (67, 193), (193, 259), (259, 263)]
  for lo, hi in groups:
    expect = np.sqrt(((allx[:, lo:hi] - allx[:, lo:hi].mean(0)) ** 2).mean(0)).mean()
    np.testing.assert_allclose(std[lo:hi], expect, rtol=1e-4)
  assert np.all(std > 0)


def test_captions_labels_and_tokens(two_writes):
  a, _, meta = two_writes
  seen_sub = 0
  for mid, m in meta["motions"].items():
    assert len(m["captions"]) == 3
    labels = [s["label"] for s in m["segments"]]
    assert 1 <= len(labels) <= 3 and [SA.ACTIONS[l] for l in labels] == [s["action"] for s in m["segments"]]
    lines = open(os.path.join(a, "texts", f"{mid}.txt")).read().strip().split("\n")
    for c, line in zip(m["captions"], lines):
      cap, toks, start, end = line.split("#")
      assert cap == c["caption"] and (start, end) == ("0.0", "0.0")
      assert SC.caption_action_labels(cap) == c["labels"] == labels
      assert SC.primary_action_label(cap) == SC.primary_action_label(m) == m["primary_label"]
      assert all(t.count("/") == 1 and t.split("/")[1].isupper() for t in toks.split(" "))
      if " left" in cap and "left/" not in toks:
        raise AssertionError(f"'left' must be kept unlemmatised: {toks}")
    if len(lines) > 3:  # sub-clip line
      seen_sub += 1
      cap, _, start, end = lines[3].split("#")
      assert float(end) > 0 and SC.caption_action_labels(cap) == m["subclip_captions"][0]["labels"]
    if mid.startswith("M"):
      base = meta["motions"][mid[1:]]
      assert [c["caption"] for c in m["captions"]] == [SC.mirror_caption(c["caption"]) for c in base["captions"]]
  assert seen_sub > 0
  assert len(SA.ACTIONS) >= 12
  assert SC.pos_tag("A man waves with the left hand, then turns right.") == [
    "a/DET",
    "man/NOUN",
    "wave/VERB",
    "with/ADP",
    "the/DET",
    "left/ADJ",
    "hand/NOUN",
    "then/ADV",
    "turn/VERB",
    "right/ADV",
  ]


def test_reader_on_synthetic(two_writes):
  a, _, meta = two_writes
  ds = H.load_dataset(a, "all")
  names = {e.name for e in ds.entries}
  assert {m for m in meta["motions"]} <= names  # every id has a full entry
  assert len(ds) == len(meta["motions"]) + sum(
    1
    for m in meta["motions"].values()
    if "subclip_captions" in m and 40 <= int(m["subclip_captions"][0]["end"] * 20) < 200
  )


def test_actions_move_as_described():
  st = {"speed": 1.0, "amp": 1.0, "rate": 1.0, "phase": 0.0}

  def joints(action, params, n=100):
    return SM.generate_joints(
      [{"action": action, "label": SA.ACTION_INDEX[action], "params": params, "start": 0, "end": n}], n, st
    )

  walk = joints("walk", {"direction": "forward", "speed": "normal"})
  assert walk[-1, 0, 2] - walk[0, 0, 2] > 4.0  # ~1.2 m/s for 5 s along +Z
  back = joints("walk", {"direction": "backward", "speed": "normal"})
  assert back[-1, 0, 2] < -2.0
  wave = joints("wave", {"hand": "right"})
  assert wave[50, 21, 1] > wave[50, 15, 1] > wave[50, 20, 1]  # right wrist above the head
  jump = joints("jump", {"mode": "in_place", "count": 1})
  assert jump[:, 0, 1].max() - jump[0, 0, 1] > 0.2  # root leaves the ground
  squat = joints("squat", {"count": 1})
  assert squat[50, 0, 1] < squat[0, 0, 1] - 0.25
  kick = joints("kick", {"side": "left"})
  assert kick[:, 10, 1].max() > 0.5 and kick[:, 11, 1].max() < 0.1  # left foot up, right stays
  turn = F.joints_to_features(joints("turn", {"side": "right", "angle": 180}, 120), 22)
  assert abs(2 * turn[:, 0].sum() - np.pi) < 0.25  # clockwise = positive yaw
