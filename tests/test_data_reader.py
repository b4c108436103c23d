"""HumanML3D folder reader: construction logic (docs/humanml3d_format.md#dataset-construction) and validation errors."""

import os
import re

import numpy as np
import pytest

from easytune_jax.data import humanml3d as H

D = 263


def _write(root, name, text):
  with open(os.path.join(root, name), "w") as f:
    f.write(text)


def _make_folder(root, lengths, texts, split_ids=None):
  os.makedirs(os.path.join(root, "new_joint_vecs"), exist_ok=True)
  os.makedirs(os.path.join(root, "texts"), exist_ok=True)
  rng = np.random.default_rng(0)
  for mid, n in lengths.items():
    m = rng.normal(size=(n, D)).astype(np.float32)
    m[:, 0] = np.arange(n)  # frame index in dim 0, to check sub-clip slicing
    np.save(os.path.join(root, "new_joint_vecs", f"{mid}.npy"), m)
  for mid, t in texts.items():
    _write(os.path.join(root, "texts"), f"{mid}.txt", t)
  np.save(os.path.join(root, "Mean.npy"), np.zeros(D, np.float32))
  np.save(os.path.join(root, "Std.npy"), np.full(D, 2.0, np.float32))
  ids = split_ids if split_ids is not None else list(lengths)
  _write(root, "train.txt", "".join(f"{i}\n" for i in ids))


FULL = "a man walks forward.#a/DET man/NOUN walk/VERB forward/ADV#0.0#0.0\n"


@pytest.fixture()
def folder(tmp_path):
  root = str(tmp_path)
  lengths = {"000001": 120, "M000001": 120, "000002": 150, "000003": 60, "000004": 30, "000005": 80}
  texts = {
    "000001": FULL + "a person moves to the left.#a/DET person/NOUN move/VERB to/ADP the/DET left/NOUN#nan#nan\n",
    "M000001": FULL.replace("forward", "backward"),
    # one whole-clip caption + one sub-clip line (1.0 s .. 4.5 s -> frames 20..90)
    "000002": FULL + "a man jumps.#a/DET man/NOUN jump/VERB#1.0#4.5\n",
    "000004": FULL,  # too short: filtered by length
    # only a sub-clip caption: no full entry
    "000005": "a man waves.#a/DET man/NOUN wave/VERB#0.5#3.0\n",
  }
  _make_folder(root, lengths, texts)
  return root


def test_missing_text_error_and_skip(folder):
  with pytest.raises(FileNotFoundError, match=r"000003.*texts/000003\.txt"):
    H.load_dataset(folder, "train")
  ds = H.load_dataset(folder, "train", on_missing="skip")
  assert ds.skipped["missing"] == 1 and ds.skipped["length"] == 1
  names = [e.name for e in ds.entries]
  assert "000003" not in names and "000004" not in names
  # sub-clip entries: <Letter>_<id>, exact slice, single caption
  subs = [e for e in ds.entries if re.fullmatch(r"[A-W]_000002", e.name)]
  assert len(subs) == 1 and subs[0].length == 70
  np.testing.assert_array_equal(subs[0].motion[:, 0], np.arange(20, 90))
  assert subs[0].captions == [("a man jumps.", ["a/DET", "man/NOUN", "jump/VERB"])]
  only_sub = [e for e in ds.entries if e.name.endswith("000005")]
  assert len(only_sub) == 1 and only_sub[0].name != "000005" and only_sub[0].length == 50
  # nan#nan means whole clip; mirrored id is an ordinary id
  full1 = [e for e in ds.entries if e.name == "000001"][0]
  assert len(full1.captions) == 2 and full1.captions[1][1][-1] == "left/NOUN"
  assert [e for e in ds.entries if e.name == "M000001"][0].captions[0][0] == "a man walks backward."
  # stable sort by length: 000005 sub (50), 000002 sub (70), 000001 (120), M000001 (120), 000002 (150)
  assert [e.length for e in ds.entries] == [50, 70, 120, 120, 150]
  assert [e.name for e in ds.entries][2:] == ["000001", "M000001", "000002"]
  assert ds.info == H.DatasetInfo("humanml3d", 263, 22, 20.0)
  # letters are drawn from a seeded RNG: same seed -> same names
  ds2 = H.load_dataset(folder, "train", on_missing="skip")
  assert [e.name for e in ds2.entries] == names
  np.testing.assert_allclose(ds.denormalize(ds.normalize(full1.motion)), full1.motion, atol=1e-5)


def test_validation_errors(tmp_path):
  root = str(tmp_path)
  _make_folder(root, {"000001": 60}, {"000001": FULL})
  with pytest.raises(FileNotFoundError, match="val.txt"):
    H.load_dataset(root, "val")
  # wrong feature dimension
  np.save(os.path.join(root, "new_joint_vecs", "000001.npy"), np.zeros((60, 251), np.float32))
  with pytest.raises(ValueError, match=r"000001\.npy.*features.*\(F, 263\).*\(60, 251\)"):
    H.load_dataset(root)
  # NaN features: error unless dropped
  bad = np.zeros((60, D), np.float32)
  bad[3, 7] = np.nan
  np.save(os.path.join(root, "new_joint_vecs", "000001.npy"), bad)
  with pytest.raises(ValueError, match="NaN/inf"):
    H.load_dataset(root)
  ds = H.load_dataset(root, drop_nonfinite=True)
  assert len(ds) == 0 and ds.skipped["nonfinite"] == 1
  np.save(os.path.join(root, "new_joint_vecs", "000001.npy"), np.zeros((60, D), np.float32))
  # malformed caption line
  _write(os.path.join(root, "texts"), "000001.txt", "a man walks#a/DET man/NOUN\n")
  with pytest.raises(ValueError, match=r"000001\.txt:1.*4 '#'-separated fields.*found 2"):
    H.load_dataset(root)
  _write(os.path.join(root, "texts"), "000001.txt", "a man walks#a/DET man/NOUN#zero#0.0\n")
  with pytest.raises(ValueError, match="start/end"):
    H.load_dataset(root)
  _write(os.path.join(root, "texts"), "000001.txt", FULL)
  # Mean/Std problems
  np.save(os.path.join(root, "Std.npy"), np.zeros(D, np.float32))
  with pytest.raises(ValueError, match=r"Std\.npy.*std > 0"):
    H.load_dataset(root)
  np.save(os.path.join(root, "Std.npy"), np.ones(10, np.float32))
  with pytest.raises(ValueError, match=r"Std\.npy.*\(263,\).*\(10,\)"):
    H.load_dataset(root)
  np.save(os.path.join(root, "Std.npy"), np.ones(D, np.float32))
  assert len(H.load_dataset(root)) == 1


def test_dataset_info_and_group_std():
  assert H.dataset_info(251) == H.DatasetInfo("kit", 251, 21, 12.5)
  with pytest.raises(ValueError, match="found 100"):
    H.dataset_info(100)
  x = np.random.default_rng(0).normal(size=(50, D)) * np.linspace(0.1, 3, D)
  mean, std = H.group_mean_std(x, 22)
  np.testing.assert_allclose(mean, x.mean(0), rtol=1e-6)
  raw = x.std(0)
  for a, b in [(0, 1), (1, 3), (3, 4), (4, 67), (67, 193), (193, 259), (259, 263)]:
    np.testing.assert_allclose(std[a:b], raw[a:b].mean(), rtol=1e-6)
