"""A fine-tuning run's record and its generator: `RunConfig` (what `train.finetune_runner.run_finetune` runs and
writes to `<run>/finetune.json`), the folders that file records (`record_path` / `recorded_path`: relative to the
run and absolute), the loaders of the fine-tuned generator (`load_finetuned_generator`, `load_any_generator`:
what evaluation and generation take as a generator workdir; an adapter run's adapter is merged onto its base,
bundles/adapter.py) and the merged export of a run (`export_merged`, `ExportConfig`: launch/export_merged.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
from typing import Any

import jax

from easytune_jax import finetune
from easytune_jax.bundles import adapter as adapter_io
from easytune_jax.bundles.generator import Generator, load_generator, recorded_sampler
from easytune_jax.core.checkpoint import Checkpointer
from easytune_jax.core.config import config_from_dict
from easytune_jax.core.optim import create_train_state, make_optimizer
from easytune_jax.data.safe_io import read_json
from easytune_jax.rewards.registry import parse_spec

# Criteria for `best/`: +1 higher is better, -1 lower is better. Evaluator metrics are measured on the VAL
# split (quick evaluation, fixed seed), never on the test split the final numbers are reported on.
BEST_METRICS = {
  "heldout_reward": 1.0,
  "R_precision_top_1": 1.0,
  "R_precision_top_3": 1.0,
  "Matching_score": -1.0,
  "FID": -1.0,
}


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """A fine-tuning run: method config, data, schedule of evaluation and checkpoints. Defaults: the CPU setting
  (the 'tiny' preset of configs/finetune.py; 'paper' is there too)."""

  finetune: finetune.FinetuneConfig = finetune.FinetuneConfig()
  trajectories: int = 20
  batch_size: int = 16
  seed: int = 0
  eval_every: int = 5
  heldout_size: int = 64
  heldout_num_steps: int | None = None  # DDIM steps of held-out sampling (default: finetune.num_steps)
  checkpoint_every: int = 10
  trainable: str = "all"
  ema_decay: float = 0.0
  on_nonfinite: str = "skip"
  best_metric: str = "heldout_reward"
  reward: str = "spm"  # rewards.registry spec, e.g. 'spm:1.0,skating:0.2'
  reward_text: str = ""  # embedding-input rewards: sentence-t5 folder or .npz

  def __post_init__(self):
    parse_spec(self.reward)  # a malformed spec fails here, before anything is loaded
    if self.trajectories < 1 or self.batch_size < 1:
      raise ValueError(
        f"RunConfig: trajectories and batch_size must be >= 1, found {self.trajectories}, {self.batch_size}"
      )
    if self.best_metric not in BEST_METRICS:
      raise ValueError(f"RunConfig.best_metric: expected one of {sorted(BEST_METRICS)}, found {self.best_metric!r}")
    if self.finetune.lora.enabled and self.trainable not in ("", "all"):
      raise ValueError(
        f"RunConfig.trainable: expected 'all' with adapter fine-tuning (finetune.lora), found {self.trainable!r}; "
        "train a subset of the base in full beside the adapter with finetune.lora.train_whole=<regexes>"
      )

  def to_dict(self) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(self)))


def run_config_from_dict(d: dict) -> RunConfig:
  return config_from_dict(RunConfig, d, "RunConfig")


def trainable_mask(params: Any, patterns: str) -> Any | None:
  """Bool pytree: leaves whose '/'-joined path matches any comma-separated regex in `patterns` train.
  'all' (or '') trains everything (returns None)."""
  if patterns in ("", "all"):
    return None
  regexes = [re.compile(p.strip()) for p in patterns.split(",") if p.strip()]
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  paths = ["/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in p) for p, _ in flat]
  mask = [any(r.search(path) for r in regexes) for path in paths]
  if not any(mask):
    raise ValueError(f"RunConfig.trainable={patterns!r} matches no parameter; paths look like {paths[:3]}")
  return jax.tree_util.tree_unflatten(jax.tree.structure(params), mask)


def record_path(name: str, path: str | None, workdir: pathlib.Path) -> dict:
  """`{name: path relative to workdir, name_absolute: absolute path}` for finetune.json (None stays None):
  the relative form keeps a run loadable when it is moved or copied together with its inputs, the absolute
  one when only the run folder moves."""
  if path is None:
    return {name: None, f"{name}_absolute": None}
  absolute = pathlib.Path(path).absolute()
  return {name: os.path.relpath(absolute, pathlib.Path(workdir).absolute()), f"{name}_absolute": str(absolute)}


def recorded_path(info: dict, name: str, workdir: str | os.PathLike) -> str:
  """The folder a run's finetune.json records under `name`: relative to the run folder if it exists there,
  else the recorded absolute path (runs written before relative paths were recorded hold only that)."""
  candidates = [pathlib.Path(os.path.normpath(pathlib.Path(workdir) / info[name]))] if info.get(name) else []
  candidates += [pathlib.Path(info[f"{name}_absolute"])] if info.get(f"{name}_absolute") else []
  for c in candidates:
    if c.exists():
      return str(c)
  raise FileNotFoundError(
    f"{pathlib.Path(workdir) / 'finetune.json'}: field {name!r}: the recorded folder is missing "
    f"(tried {[str(c) for c in candidates]}); expected it beside the run as when it was written, or at its "
    "recorded absolute path"
  )


def load_finetuned_generator(workdir: str, which: str = "final", base_workdir: str | None = None) -> Generator:
  """The base generator of a fine-tuning run with its fine-tuned denoiser params ('final' = latest
  checkpoint, 'best' = best by the run's `best_metric`, the base params if nothing beat them). Its
  `sampler_defaults` are the sampler it was fine-tuned with (`FinetuneConfig.num_steps` / `guidance_scale`; the
  base generator's when the run records none).

  An adapter run (`finetune.lora`): its adapter is restored and merged onto the base (`base_workdir`, default the
  recorded generator folder), refused (`adapter.AdapterBaseMismatch`, naming both) when that base's denoiser
  params are not the ones the adapter was trained on."""
  workdir = pathlib.Path(workdir)
  info = read_json(workdir / "finetune.json", "fine-tuning run info")
  base_dir = base_workdir or recorded_path(info, "generator_workdir", workdir)
  gen = load_generator(base_dir)
  run = run_config_from_dict(info["run"])
  lcfg = run.finetune.lora
  if lcfg.enabled:
    adapter_io.check_base(info.get("adapter"), gen.params, base_dir, str(workdir / "finetune.json"))
    adapter = adapter_io.restore_adapter(workdir, gen.params, lcfg, run.finetune.optim, run.ema_decay > 0, which)
    params = adapter_io.merge_jit(gen.params, adapter, lcfg.scale)
  elif which == "best" and (workdir / "best").is_dir():
    ck = Checkpointer(workdir / "best", max_to_keep=1)
    params = ck.restore(gen.params)
    ck.close()
  else:
    mask = trainable_mask(gen.params, run.trainable)
    tx = make_optimizer(run.finetune.optim, mask)
    ck = Checkpointer(workdir / "checkpoints")
    template = jax.eval_shape(lambda: create_train_state(gen.params, tx, use_ema=run.ema_decay > 0))
    params = ck.restore(template).params
    ck.close()
  own = recorded_sampler(
    info["run"].get("finetune"),
    run.finetune.num_steps,
    run.finetune.guidance_scale,
    f"{workdir} (FinetuneConfig, the sampler it was fine-tuned with)",
  )
  return dataclasses.replace(gen, params=params, sampler_defaults=own or gen.sampler_defaults)


@dataclasses.dataclass(frozen=True)
class ExportConfig:
  """launch/export_merged.py: which params of the run ('final' or 'best') and whether to also write
  `denoiser.safetensors` (the merged denoiser under '/'-joined parameter paths, for tools outside JAX)."""

  which: str = "final"
  safetensors: bool = False

  def __post_init__(self):
    if self.which not in ("final", "best"):
      raise ValueError(f"ExportConfig.which: expected 'final' or 'best', found {self.which!r}")


def export_merged(
  run_workdir: str, out_dir: str, config: ExportConfig = ExportConfig(), base_workdir: str | None = None
) -> dict:
  """Writes the run's merged denoiser params (adapter merged onto its base; a full run's params as they are) as
  a generator folder `out_dir` (bundles/adapter.py `write_merged`; loads with `load_generator`). Returns its
  paths and sizes (bytes of the params, of the folder, of the run's checkpoints)."""
  run_dir = pathlib.Path(run_workdir)
  info = read_json(run_dir / "finetune.json", "fine-tuning run info")
  base_dir = base_workdir or recorded_path(info, "generator_workdir", run_dir)
  gen = load_finetuned_generator(run_workdir, config.which, base_dir)
  base_fp = (info.get("adapter") or {}).get("base_fingerprint") or finetune.lora.fingerprint(
    load_generator(base_dir).params
  )
  record = {
    "source_run": str(run_dir.absolute()),
    "which": config.which,
    "generator_workdir": base_dir,
    "base_fingerprint": base_fp,
    "lora": (info["run"].get("finetune") or {}).get("lora"),
  }
  out = adapter_io.write_merged(gen, out_dir, record, safetensors=config.safetensors)
  out["run_checkpoint_bytes"] = {
    d: adapter_io.folder_bytes(run_dir / d) for d in ("checkpoints", "best") if (run_dir / d).is_dir()
  }
  return out


def load_any_generator(workdir: str, which: str = "final") -> Generator:
  """A generator workdir (trained or converted) or a fine-tuning workdir (its `which` params): what the
  command-line evaluation and generation accept as `--generator_workdir`."""
  if (pathlib.Path(workdir) / "finetune.json").is_file():
    return load_finetuned_generator(workdir, which)
  return load_generator(workdir)
