"""Reader of the HumanML3D / KIT-ML folder layout (docs/humanml3d_format.md#layout,
docs/humanml3d_format.md#dataset-construction).

``load_dataset(root, split)`` reproduces the T2M / MLD / MotionLCM ``Text2MotionDataset``
construction: ids in split-file order, the length filter ``min_len <= F < max_len``, whole-clip
captions collected under the id (``has_full``), sub-clip captions turned into separate entries
named ``<Letter>_<id>`` (letter drawn from a seeded RNG, re-drawn until unused), then a stable
sort by length. Mirrored ``M<id>`` ids are ordinary ids. Unlike the reference (which swallows
every exception) problems raise clear errors naming the file, the field, what was expected and
what was found; the ``on_missing="skip"`` and ``drop_nonfinite=True`` policies turn the two
expected data defects into counted, logged skips instead.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
from absl import logging

from easytune_jax.data.features import feature_dim
from easytune_jax.data.safe_io import BadFileError, load_npy, read_text

_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVW"


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static facts of a dataset kind."""

  kind: str  # 'humanml3d' | 'kit'
  dim: int  # D: 263 | 251
  joints_num: int  # J: 22 | 21
  fps: float  # 20 | 12.5


def dataset_info(dim: int) -> DatasetInfo:
  """Kind detected from the feature dimension D (263 -> HumanML3D, 251 -> KIT)."""
  if dim == feature_dim(22):
    return DatasetInfo("humanml3d", dim, 22, 20.0)
  if dim == feature_dim(21):
    return DatasetInfo("kit", dim, 21, 12.5)
  raise ValueError(f"feature dimension: expected 263 (HumanML3D) or 251 (KIT), found {dim}")


@dataclasses.dataclass
class MotionEntry:
  """One dataset entry: a clip (or sub-clip) with its captions.

  motion: float32 [F, D] raw (not normalised) features.
  captions: list of (caption, tokens) with tokens a list of 'word/POS' strings.
  """

  name: str
  motion: np.ndarray
  captions: list

  @property
  def length(self) -> int:
    return int(self.motion.shape[0])


@dataclasses.dataclass
class MotionDataset:
  """Entries sorted by length (stable), plus normalisation stats and load statistics."""

  entries: list
  mean: np.ndarray  # float32 [D]
  std: np.ndarray  # float32 [D]
  info: DatasetInfo
  root: str = ""
  split: str = ""
  skipped: dict = dataclasses.field(default_factory=dict)

  def __len__(self) -> int:
    return len(self.entries)

  def normalize(self, x):
    return normalize(x, self.mean, self.std)

  def denormalize(self, x):
    return denormalize(x, self.mean, self.std)


def normalize(x, mean, std):
  """(x - Mean) / Std over the last axis."""
  return (x - mean) / std


def denormalize(x, mean, std):
  """x * Std + Mean over the last axis."""
  return x * std + mean


def load_mean_std(
  root: str, dim: int | None = None, mean_file: str = "Mean.npy", std_file: str = "Std.npy"
) -> tuple[np.ndarray, np.ndarray]:
  """Loads and validates Mean/Std: float32 [D], finite, std > 0."""
  out = []
  for fname in (mean_file, std_file):
    path = os.path.join(root, fname)
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path}: normalisation file not found")
    a = load_npy(path, "normalisation statistics", finite=False).astype(np.float32)
    if a.ndim != 1 or (dim is not None and a.shape[0] != dim):
      raise ValueError(f"{path}: expected shape ({dim if dim is not None else 'D'},), found {a.shape}")
    if not np.all(np.isfinite(a)):
      raise ValueError(f"{path}: expected finite values, found {int(np.sum(~np.isfinite(a)))} non-finite")
    out.append(a)
  mean, std = out
  if mean.shape != std.shape:
    raise ValueError(f"{os.path.join(root, mean_file)} / {std_file}: shape mismatch {mean.shape} vs {std.shape}")
  if np.any(std <= 0):
    bad = np.nonzero(std <= 0)[0]
    raise ValueError(
      f"{os.path.join(root, std_file)}: expected std > 0, found {std[bad[0]]} at dims {bad[:10].tolist()}"
    )
  return mean, std


def group_mean_std(features, joints_num: int) -> tuple[np.ndarray, np.ndarray]:
  """H3D ``cal_mean_variance`` (docs/humanml3d_format.md#normalisation): per-dim mean, and the population
  std averaged within each of the 7 feature groups (dim 0 | 1-2 | 3 | ric | rot | local-vel | contacts).

  Args:
    features: [N_frames, D] all frames of all files, or a list of [F_i, D] arrays (two passes in
      float64 over the list, so no concatenated float64 copy is made).
  Returns:
    (mean float32 [D], std float32 [D]).
  """
  chunks = [features] if isinstance(features, np.ndarray) else list(features)
  count = sum(c.shape[0] for c in chunks)
  mean = sum(c.sum(axis=0, dtype=np.float64) for c in chunks) / count
  var = sum(np.square(c.astype(np.float64) - mean).sum(axis=0) for c in chunks) / count
  std = np.sqrt(var)
  j = joints_num
  bounds = [0, 1, 3, 4, 4 + 3 * (j - 1), 4 + 9 * (j - 1), 4 + 9 * (j - 1) + 3 * j, mean.shape[0]]
  for a, b in zip(bounds[:-1], bounds[1:]):
    std[a:b] = std[a:b].mean()
  return mean.astype(np.float32), std.astype(np.float32)


def check_dataset_folder(root: str) -> None:
  """FileNotFoundError when the dataset folder itself is missing (before any file inside it is blamed)."""
  if not os.path.isdir(root):
    raise FileNotFoundError(
      f"{root}: dataset folder does not exist"
      if not os.path.exists(root)
      else f"{root}: expected a dataset folder, found a file"
    )


def read_split(root: str, split: str) -> list[str]:
  """Ids of ``<root>/<split>.txt``, one per line (blank lines ignored); at least one."""
  check_dataset_folder(root)
  path = os.path.join(root, f"{split}.txt")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: split file '{split}.txt' not found")
  ids = [line.strip() for line in read_text(path, "split file").splitlines() if line.strip()]
  if not ids:
    raise BadFileError(f"{path}: split file: expected one motion id per line, found no ids (empty file)")
  bad = [i for i in ids if any(c in i for c in "/\\#\t ")]
  if bad:
    raise BadFileError(f"{path}: split file: expected one motion id per line (file stems), found {bad[0]!r}")
  return ids


def parse_text_file(path: str) -> list[tuple[str, list[str], float, float]]:
  """Lines ``caption#tok/POS tok/POS#start#end`` -> [(caption, tokens, start, end)], nan -> 0."""
  out = []
  for lineno, raw in enumerate(read_text(path, "caption file").splitlines(), 1):
    line = raw.strip()
    if not line:
      continue
    parts = line.split("#")
    if len(parts) < 4:
      raise ValueError(
        f"{path}:{lineno}: caption line: expected 'caption#tok/POS ...#start#end' "
        f"(4 '#'-separated fields), found {len(parts)} field(s): {line!r}"
      )
    caption, toks = parts[0], parts[1]
    if not caption.strip():
      raise ValueError(f"{path}:{lineno}: field caption: expected non-empty text, found {line!r}")
    try:
      start, end = float(parts[2]), float(parts[3])
    except ValueError:
      raise ValueError(
        f"{path}:{lineno}: fields start/end: expected floats, found {parts[2]!r}, {parts[3]!r}"
      ) from None
    start = 0.0 if math.isnan(start) else start
    end = 0.0 if math.isnan(end) else end
    tokens = toks.split(" ")
    bad = [t for t in tokens if "/" not in t]
    if bad:
      raise ValueError(f"{path}:{lineno}: field tokens: expected 'word/POS' items, found {bad[:3]}")
    out.append((caption, tokens, start, end))
  return out


# Process-wide defaults of load_dataset's skip policies (the launchers' --on_missing / --drop_nonfinite set them).
_POLICY = {"on_missing": "error", "drop_nonfinite": False}


def set_default_policy(on_missing: str | None = None, drop_nonfinite: bool | None = None) -> None:
  """Sets the defaults of ``load_dataset(on_missing=..., drop_nonfinite=...)`` for every later call that
  does not pass them (the launchers' ``--on_missing=skip`` and ``--drop_nonfinite`` flags)."""
  if on_missing is not None:
    if on_missing not in ("error", "skip"):
      raise ValueError(f"on_missing: expected 'error' or 'skip', found {on_missing!r}")
    _POLICY["on_missing"] = on_missing
  if drop_nonfinite is not None:
    _POLICY["drop_nonfinite"] = bool(drop_nonfinite)


def load_dataset(
  root: str,
  split: str = "train",
  *,
  min_len: int = 40,
  max_len: int = 200,
  fps: float | None = None,
  on_missing: str | None = None,
  drop_nonfinite: bool | None = None,
  seed: int = 0,
  mean: np.ndarray | None = None,
  std: np.ndarray | None = None,
  max_items: int | None = None,
) -> MotionDataset:
  """Builds the dataset of one split (docs/humanml3d_format.md#dataset-construction).

  Args:
    root: dataset folder (new_joint_vecs/, texts/, Mean.npy, Std.npy, <split>.txt).
    split: split-file stem ('train', 'val', 'test', 'train_val', 'all').
    min_len, max_len: keep clips / sub-clips with min_len <= F < max_len.
    fps: sub-clip seconds -> frames (default: the kind's fps, 20 HumanML3D / 12.5 KIT; KIT
      captions are always whole-clip, so it only matters for HumanML3D).
    on_missing: 'error' raises on an id without a feature or text file (or an empty text file);
      'skip' skips it, counts it in ``skipped`` and logs a warning. None: the process default
      (:func:`set_default_policy`, 'error' unless a launcher got ``--on_missing=skip``).
    drop_nonfinite: drop (counted, logged) instead of raising on features with NaN/inf. None: the process
      default (False unless a launcher got ``--drop_nonfinite``).
    seed: RNG seed of the sub-clip letter names.
    mean, std: override the Mean.npy / Std.npy of ``root``.
    max_items: read only the first ids of the split (quick tests).
  Returns:
    MotionDataset.
  """
  on_missing = _POLICY["on_missing"] if on_missing is None else on_missing
  drop_nonfinite = _POLICY["drop_nonfinite"] if drop_nonfinite is None else drop_nonfinite
  if on_missing not in ("error", "skip"):
    raise ValueError(f"on_missing: expected 'error' or 'skip', found {on_missing!r}")
  if not 1 <= min_len < max_len:
    raise ValueError(f"min_len/max_len: expected 1 <= min_len < max_len, found min_len={min_len}, max_len={max_len}")
  ids = read_split(root, split)
  if max_items is not None:
    ids = ids[:max_items]
  if mean is None or std is None:
    m_path = os.path.join(root, "Mean.npy")
    m = load_npy(m_path, "normalisation statistics", finite=False) if os.path.exists(m_path) else None
    dim = int(m.shape[0]) if m is not None and m.ndim == 1 else None
    mean, std = load_mean_std(root, dim)
  mean = np.asarray(mean, np.float32)
  std = np.asarray(std, np.float32)
  if mean.ndim != 1 or mean.shape != std.shape:
    raise ValueError(f"{root}: Mean/Std: expected equal shapes (D,), found mean {mean.shape}, std {std.shape}")
  if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
    raise ValueError(f"{root}: Mean/Std: expected finite values and std > 0, found min std {np.min(std)}")
  try:
    info = dataset_info(mean.shape[0])
  except ValueError as e:
    raise ValueError(f"{os.path.join(root, 'Mean.npy')}: {e}") from None
  fps = info.fps if fps is None else fps
  rng = np.random.default_rng(seed)
  skipped = {"missing": 0, "nonfinite": 0, "length": 0, "subclip_length": 0}

  names: dict[str, MotionEntry] = {}
  order: list[str] = []
  for mid in ids:
    mpath = os.path.join(root, "new_joint_vecs", f"{mid}.npy")
    tpath = os.path.join(root, "texts", f"{mid}.txt")
    missing = [p for p in (mpath, tpath) if not os.path.exists(p)]
    if not missing and os.path.getsize(tpath) == 0:
      missing = [tpath + " (empty)"]
    if missing:
      msg = f"id {mid!r} of {split}.txt: missing {', '.join(missing)}"
      if on_missing == "error":
        raise FileNotFoundError(
          msg + " (pass --on_missing=skip to a launcher, or on_missing='skip' to load_dataset, to skip such ids)"
        )
      skipped["missing"] += 1
      logging.warning("%s; skipped", msg)
      continue
    motion = load_npy(mpath, "features", finite=False)
    if motion.ndim != 2 or motion.shape[1] != info.dim:
      raise ValueError(f"{mpath}: field 'features': expected shape (F, {info.dim}), found {motion.shape}")
    motion = motion.astype(np.float32)
    if not np.all(np.isfinite(motion)):
      msg = f"{mpath}: features contain {int(np.sum(~np.isfinite(motion)))} NaN/inf values"
      if not drop_nonfinite:
        raise ValueError(
          msg + " (pass --drop_nonfinite to a launcher, or drop_nonfinite=True to load_dataset, to drop such files)"
        )
      skipped["nonfinite"] += 1
      logging.warning("%s; dropped", msg)
      continue
    if motion.shape[0] < min_len or motion.shape[0] >= max_len:
      skipped["length"] += 1
      continue
    full_captions = []
    for caption, tokens, start, end in parse_text_file(tpath):
      if start == 0.0 and end == 0.0:
        full_captions.append((caption, tokens))
        continue
      sub = motion[int(start * fps) : int(end * fps)]
      if len(sub) < min_len or len(sub) >= max_len:
        skipped["subclip_length"] += 1
        continue
      name = f"{_LETTERS[rng.integers(len(_LETTERS))]}_{mid}"
      while name in names:
        name = f"{_LETTERS[rng.integers(len(_LETTERS))]}_{mid}"
      names[name] = MotionEntry(name, sub, [(caption, tokens)])
      order.append(name)
    if full_captions:
      names[mid] = MotionEntry(mid, motion, full_captions)
      order.append(mid)
  entries = sorted((names[n] for n in order), key=lambda e: e.length)  # Python sort is stable
  if any(v for v in skipped.values()):
    logging.info("load_dataset(%s, %s): %d entries; skipped %s", root, split, len(entries), skipped)
  return MotionDataset(entries, mean, std, info, root, split, skipped)
