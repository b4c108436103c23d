"""Procedural text-motion dataset on the HumanML3D skeleton, written in the exact HumanML3D layout
(`write_synthetic_dataset`; `launch/make_synthetic.py`).

Each motion is 1-3 parameterised actions (``ACTIONS``, `data/synthetic_actions.py`) blended with smooth 16-frame
cross-fades into global joints (`data/synthetic_motion.py`). Per-motion style (speed, amplitude, gesture rate,
phase) varies so that motions of one caption differ. Features are computed with
:func:`features.joints_to_features`, so the dataset exercises the real pipeline, and ``new_joints`` is
``recover_from_ric`` of the float32 features (as H3D does).

Captions (`data/synthetic_captions.py`): 3 per motion from varied templates and synonyms, tokenised as
``word/POS`` by a small rule-based tagger over the closed vocabulary. ``metadata.json`` stores every motion's
segments (action, label, parameters, frames) and each caption's action labels;
:func:`synthetic_captions.caption_action_labels` recovers the labels from a caption string alone.
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
from easytune_jax.data.synthetic_actions import ACTIONS, FPS
from easytune_jax.data.synthetic_captions import action_phrase, make_caption, mirror_caption, mirror_segments, pos_tag
from easytune_jax.data.synthetic_motion import make_motion


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
      msegs = mirror_segments(segs)
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
