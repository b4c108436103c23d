"""Text -> motion files: the library side of `launch/generate.py` (notebooks call it too).

`generate_to_files(generator, texts, out_dir, GenerateConfig(...))` samples one motion per caption in batches
(classifier-free guidance, DDIM) and writes, per caption `i`, files named `<i:03d>_<caption slug>`:

  *_features.npy   [L, D] float32 de-normalised features (dataset units, HumanML3D's 263-D vector), L = length
  *_joints.npy     [L, 22, 3] float32 joint positions in metres (Y up, HumanML3D skeleton order)
  *.gif            stick-figure animation (viz.animate_motion, `animation_size` pixels square), when `gif`
  *.mp4            the same as MP4 when `mp4` and ffmpeg is on PATH (else skipped, and `notes` says so)
  *.bvh            BVH on the HumanML3D skeleton (data/bvh.py: shortest-arc IK, per-motion mean bone lengths,
                   centimetres by default), when `bvh`

and `generated.json`: the config, the sampler used (DDIM steps and guidance scale: the generator's own unless the
config sets them, and where each comes from), one record per caption (text, length, files, BVH max position
error) and timings.
Randomness: batch k draws its noise from `fold_in(PRNGKey(seed), k)`, so a run is reproducible for a given seed,
batch size and caption order. The last batch is padded (repeating its last caption) to `batch_size` so every batch
reuses one compiled sampler.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from easytune_jax import viz
from easytune_jax.bundles.generator import Generator, resolve_sampler
from easytune_jax.bundles.guided import GuidedGenerator, with_guidance
from easytune_jax.core.guidance import GuidanceConfig
from easytune_jax.data import bvh


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
  """Sampling and output options of :func:`generate_to_files`.

  Attributes:
    guidance_scale: CFG weight w (1 = the conditional model alone); num_steps: DDIM steps. None (the default):
      the generator's own (`Generator.sampler_defaults`: what its workdir records; bundles/generator.py
      `resolve_sampler`).
    seed: root seed of the noise; length: frames per motion (0: the generator's own, its max_length; at 20 fps).
    batch_size: captions per sampler call.
    gif / mp4 / bvh: which files besides the .npy arrays; bvh_scale: BVH length unit per metre (100: cm).
    animation_size: width and height of the GIF / MP4 in pixels (line widths scale with it).
    guidance: reward-guided sampling (core/guidance.py; the default: off); reward: the guiding reward (a
      `rewards.registry` spec; its 'spm' term needs a reward model folder), reward_text: the text encoder of an
      embedding-input reward (`bundles.task.load_task`).
  """

  guidance_scale: float | None = None
  num_steps: int | None = None
  seed: int = 0
  length: int = 0
  batch_size: int = 8
  gif: bool = True
  mp4: bool = False
  bvh: bool = True
  bvh_scale: float = 100.0
  animation_size: int = 480
  guidance: GuidanceConfig = GuidanceConfig()
  reward: str = "spm"
  reward_text: str = ""

  def __post_init__(self):
    checks = (
      ("num_steps", self.num_steps is None or self.num_steps >= 1, ">= 1 or none (the generator's own)"),
      ("guidance_scale", self.guidance_scale is None or self.guidance_scale >= 0, ">= 0 or none (the generator's own)"),
      ("batch_size", self.batch_size >= 1, ">= 1"),
      ("length", self.length >= 0, ">= 0 (0: the generator's max_length)"),
      ("bvh_scale", self.bvh_scale > 0, "> 0"),
      (
        "animation_size",
        MIN_ANIMATION_SIZE <= self.animation_size <= MAX_ANIMATION_SIZE,
        f"{MIN_ANIMATION_SIZE}..{MAX_ANIMATION_SIZE} pixels",
      ),
    )
    for name, ok, expected in checks:
      if not ok:
        raise ValueError(f"GenerateConfig.{name}: expected {expected}, found {getattr(self, name)}")


MIN_ANIMATION_SIZE, MAX_ANIMATION_SIZE = 64, 4096


def animation_style(size: int) -> dict:
  """`viz.animate_motion` keywords for a `size` x `size` pixel animation: the quickstart report's look (3.5 pt limbs
  on 320-pixel panels at 100 dpi) scaled to `size`."""
  return {"panel_size": size / 100, "dpi": 100, "linewidth": 3.5 * size / 320}


def slug(text: str, max_chars: int = 40) -> str:
  """File-name-safe lower-case words of `text` joined by '_' (at most `max_chars`; 'motion' if none)."""
  s = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:max_chars].rstrip("_")
  return s or "motion"


def read_text_file(path: str | os.PathLike) -> list[str]:
  """Captions of a text file, one per non-empty line (surrounding whitespace stripped). Raises ValueError naming
  the file when it is not UTF-8 text, empty, or holds only blank lines."""
  try:
    with open(path, encoding="utf-8") as f:
      lines = f.read().splitlines()
  except UnicodeDecodeError as e:
    raise ValueError(
      f"{os.fspath(path)}: expected UTF-8 text (one caption per line), found byte {e.start} that is not"
    ) from None
  captions = [line.strip() for line in lines if line.strip()]
  if not lines:
    raise ValueError(f"{os.fspath(path)}: the file is empty; expected one caption per line")
  if not captions:
    raise ValueError(f"{os.fspath(path)}: all {len(lines)} lines are blank; expected one caption per line")
  return captions


def check_captions(texts: Sequence[str]) -> list[str]:
  """`texts` as a list; ValueError naming the first empty or blank one (it would give an unconditional motion)."""
  if isinstance(texts, str):
    raise TypeError("texts: expected a sequence of captions, found a single str")
  texts = list(texts)
  if not texts:
    raise ValueError("texts: expected at least one caption")
  for i, t in enumerate(texts):
    if not isinstance(t, str) or not t.strip():
      kind = "an empty caption" if t == "" else f"a blank caption {t!r}" if isinstance(t, str) else repr(t)
      raise ValueError(f"texts[{i}]: expected a caption, found {kind}")
  return texts


def generate_to_files(
  generator: Generator,
  texts: Sequence[str],
  out_dir: str | os.PathLike,
  config: GenerateConfig = GenerateConfig(),
  params: Any = None,
  lengths: int | Sequence[int] | None = None,
  progress: bool = True,
  reward_workdir: str | None = None,
) -> dict:
  """Samples one motion per caption and writes its files (see the module docstring).

  Args:
    generator: a Generator bundle (trained workdir, converted official checkpoint, or fine-tuned).
    texts: N captions; out_dir: created if needed.
    config: sampling / output options (its None num_steps / guidance_scale: the generator's own).
    params: denoiser params to sample with instead of `generator.params` (e.g. fine-tuned ones).
    lengths: frames per caption (an int or N ints); default `config.length`, or the generator's max_length.
    progress: show a tqdm bar over the captions.
    reward_workdir: the reward model folder of `config.guidance` (reward-guided sampling; its 'spm' term); a
      `GuidedGenerator` brings its own reward.

  Returns:
    The manifest written to `<out_dir>/generated.json`: {"config", "sampler" (the DDIM steps and guidance scale
    used and where each comes from: `SamplerChoice.to_dict`), "generator", "motions": [{"text", "length",
    "files", "bvh_max_error_m"}], "notes", "guidance" (what reward guidance did), "timing": {"sample_s" per
    batch (the first includes compilation), "write_s"}}.
  """
  texts = check_captions(texts)
  if not isinstance(generator, GuidedGenerator):
    generator = with_guidance(generator, config.guidance, reward_workdir, config.reward, config.reward_text)
  n = len(texts)
  if lengths is None:
    lengths = config.length or generator.max_length
  lengths = np.broadcast_to(np.asarray(lengths, np.int64), (n,)).copy()
  generator.frame_mask(lengths)  # validates 1 <= length <= max_length, with the model's limit in the message
  sampler = resolve_sampler(generator, config.num_steps, config.guidance_scale, name="generate")
  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  notes = []
  want_mp4 = config.mp4 and shutil.which("ffmpeg") is not None
  if config.mp4 and not want_mp4:
    notes.append("mp4: ffmpeg not found on PATH (matplotlib's writer needs it); no MP4 written")
  key = jax.random.PRNGKey(config.seed)
  bs = config.batch_size
  records, sample_s, write_s = [], [], 0.0
  bar = tqdm(total=n, unit="motion", desc="generate", disable=not progress)
  for k, start in enumerate(range(0, n, bs)):
    chunk, chunk_len = texts[start : start + bs], lengths[start : start + bs]
    pad = bs - len(chunk)
    t0 = time.perf_counter()
    padded_len = np.concatenate([chunk_len, np.repeat(chunk_len[-1:], pad)])
    feats, joints = generator.generate(
      chunk + chunk[-1:] * pad,
      padded_len,
      jax.random.fold_in(key, k),
      guidance_scale=sampler.guidance_scale,
      num_steps=sampler.num_steps,
      params=params,
    )
    sample_s.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for i, (text, length) in enumerate(zip(chunk, chunk_len)):
      records.append(_write_one(out_dir, start + i, text, int(length), feats[i], joints[i], config, want_mp4))
      bar.update(1)
    write_s += time.perf_counter() - t0
  bar.close()
  manifest = {
    "config": dataclasses.asdict(config),
    "sampler": sampler.to_dict(),
    "generator": type(generator).__name__,
    "guidance": generator.guidance.describe() if isinstance(generator, GuidedGenerator) else "no reward guidance",
    "fps": 20.0,
    "motions": records,
    "notes": notes,
    "timing": {"sample_s": [round(s, 4) for s in sample_s], "write_s": round(write_s, 4)},
  }
  with open(os.path.join(out_dir, "generated.json"), "w") as f:
    json.dump(manifest, f, indent=1)
  return manifest


def _write_one(out_dir, index, text, length, feats, joints, config: GenerateConfig, mp4: bool) -> dict:
  stem = os.path.join(out_dir, f"{index:03d}_{slug(text)}")
  j = joints[:length]
  np.save(stem + "_features.npy", feats[:length])
  np.save(stem + "_joints.npy", j)
  files = [stem + "_features.npy", stem + "_joints.npy"]
  style = animation_style(config.animation_size)
  if config.gif:
    files.append(viz.animate_motion(j, stem + ".gif", title=text[:60], **style))
  if mp4:
    files.append(viz.animate_motion(j, stem + ".mp4", title=text[:60], **style))
  err = None
  if config.bvh:
    out = bvh.joints_to_bvh(j, stem + ".bvh", scale=config.bvh_scale)
    files.append(out["path"])
    err = out["max_error_m"]
  return {"text": text, "length": length, "files": [os.path.basename(f) for f in files], "bvh_max_error_m": err}
