"""Adapter checkpoints (finetune/lora.py) on disk: the record that ties an adapter to its base, the refusal to load
it onto another base, restoring an adapter run's adapter, and merged exports.

An adapter fine-tuning run (`FinetuneConfig.lora.enabled`) writes adapter-only orbax checkpoints: `checkpoints/`
holds the TrainState of the adapter (its params and AdamW moments) and `best/` the adapter params; finetune.json
and every checkpoint's metadata carry the record (`adapter_record`): the base's generator folder and its
`lora.fingerprint` (sha256 of the base denoiser params' paths, shapes and values), the LoraConfig and the sizes.
`check_base` refuses a base whose fingerprint differs, naming both.

A merged export (`write_merged`; `launch/export_merged.py` through `bundles.finetuned.export_merged`) is a generator
folder: `merged.json` (marker: the base generator folder it completes, relative and absolute, fingerprints, the
sampler it was fine-tuned with) and `params/` (an orbax checkpoint of the full merged denoiser params);
`load_generator` loads it (`load_merged_generator`, registered here), so generate / evaluate / finetune take it as
any generator folder. The VAE, text encoder and dataset statistics come from the recorded base folder (adapter
fine-tuning never changes them).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import tempfile
from typing import Any

import jax

from easytune_jax.bundles.generator import Generator, SamplerDefaults, load_generator, register_workdir_loader
from easytune_jax.core.checkpoint import Checkpointer
from easytune_jax.core.optim import OptimConfig, create_train_state, make_optimizer
from easytune_jax.data.safe_io import read_json, write_json
from easytune_jax.finetune import lora
from easytune_jax.interop.safetensors import save_safetensors

MARKER = "merged.json"


class AdapterBaseMismatch(ValueError):
  """An adapter (or a merged export) was asked to load onto a base other than the one it was trained on."""


def adapter_record(base_params: Any, generator_workdir: str, config: lora.LoraConfig, adapter: Any) -> dict:
  """What finetune.json and each adapter checkpoint record: the base's folder and fingerprint, the LoraConfig
  and the sizes (`lora.summary`)."""
  return {
    "generator_workdir": str(pathlib.Path(generator_workdir).absolute()),
    "base_fingerprint": lora.fingerprint(base_params),
    "lora": dataclasses.asdict(config),
    "scale": config.scale,
    **lora.summary(base_params, adapter),
  }


def check_base(record: dict | None, base_params: Any, base_workdir: str, where: str) -> None:
  """Raises AdapterBaseMismatch naming both bases when `base_params` are not the base `record` was made on."""
  if not record or "base_fingerprint" not in record:
    raise AdapterBaseMismatch(f"{where}: field 'adapter': expected the record of the adapter's base, found none")
  got = lora.fingerprint(base_params)
  if got != record["base_fingerprint"]:
    raise AdapterBaseMismatch(
      f"{where}: the adapter was trained on the base generator {record.get('generator_workdir')} (params "
      f"fingerprint {record['base_fingerprint'][:16]}), but the base given is {pathlib.Path(base_workdir).absolute()} "
      f"(fingerprint {got[:16]}): its denoiser params differ; load the adapter onto the generator it was trained on"
    )


def _adapter_template(base_params: Any, config: lora.LoraConfig) -> Any:
  return jax.eval_shape(lambda: lora.init_adapter(base_params, config, jax.random.key(0)))


def restore_adapter(
  workdir: str | os.PathLike, base_params: Any, config: lora.LoraConfig, optim: OptimConfig, ema: bool, which: str
) -> Any:
  """The adapter of an adapter run: `best/` (which='best', when present) or the latest `checkpoints/` state's
  params (its EMA is not used, as for full runs). Checkpoint errors name the folder, key and shapes."""
  workdir = pathlib.Path(workdir)
  template = _adapter_template(base_params, config)
  if which == "best" and (workdir / "best").is_dir():
    ck = Checkpointer(workdir / "best", max_to_keep=1)
    try:
      return ck.restore(template)
    finally:
      ck.close()
  tx = make_optimizer(optim)
  state = jax.eval_shape(lambda a: create_train_state(a, tx, use_ema=ema), template)
  ck = Checkpointer(workdir / "checkpoints")
  try:
    return ck.restore(state).params
  finally:
    ck.close()


merge_jit = jax.jit(lora.merge, static_argnums=2)


def _rel(path: str | os.PathLike, start: pathlib.Path) -> str:
  return os.path.relpath(pathlib.Path(path).absolute(), start.absolute())


def write_merged(gen: Generator, out_dir: str | os.PathLike, info: dict, safetensors: bool = False) -> dict:
  """Writes the merged export of `gen` (its params: the full merged denoiser) into `out_dir` (must not exist;
  written in a temporary sibling folder renamed into place). `info`: at least `generator_workdir` (the base
  folder) and `base_fingerprint`; the sampler defaults of `gen` are recorded. `safetensors`: also
  `denoiser.safetensors` ('/'-joined parameter paths) for tools outside JAX. Returns the paths and sizes."""
  out = pathlib.Path(out_dir).absolute()
  if out.exists():
    raise FileExistsError(f"{out}: expected a new folder for the merged export, found an existing path")
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
  try:
    record = {
      **info,
      "generator_workdir": _rel(info["generator_workdir"], out),
      "generator_workdir_absolute": str(pathlib.Path(info["generator_workdir"]).absolute()),
      "merged_fingerprint": lora.fingerprint(gen.params),
      "params_bytes": lora.tree_bytes(gen.params),
    }
    if gen.sampler_defaults is not None:
      s = gen.sampler_defaults
      record["sampler"] = {"num_steps": s.num_steps, "guidance_scale": s.guidance_scale, "source": s.source}
    ck = Checkpointer(tmp / "params", max_to_keep=1)
    ck.save(0, gen.params, {"merged": record})
    ck.close()
    if safetensors:
      flat = {k: jax.device_get(x) for k, x in lora.named_leaves(gen.params).items()}
      save_safetensors(tmp / "denoiser.safetensors", flat, {"format": "easytune_jax merged denoiser"})
    write_json(tmp / MARKER, record, indent=2)
    os.replace(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return {"out_dir": str(out), "params_bytes": record["params_bytes"], "disk_bytes": folder_bytes(out)}


def folder_bytes(path: str | os.PathLike) -> int:
  """Bytes of the files under `path` (0 when it does not exist)."""
  p = pathlib.Path(path)
  return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.exists() else 0


def load_merged_generator(workdir: str | os.PathLike) -> Generator:
  """A merged export (`write_merged`) as a Generator: the recorded base folder's generator with the merged
  denoiser params; refused (AdapterBaseMismatch) when that base's params are no longer the recorded ones."""
  workdir = pathlib.Path(workdir)
  info = read_json(workdir / MARKER, "merged export")
  candidates = [workdir / info["generator_workdir"]] if info.get("generator_workdir") else []
  candidates += [pathlib.Path(info["generator_workdir_absolute"])] if info.get("generator_workdir_absolute") else []
  base_dir = next((c for c in candidates if c.is_dir()), None)
  if base_dir is None:
    raise FileNotFoundError(
      f"{workdir / MARKER}: field 'generator_workdir': the base generator folder is missing (tried "
      f"{[str(c) for c in candidates]}); a merged export needs its base's VAE and text encoder"
    )
  base = load_generator(str(base_dir))
  check_base(info, base.params, str(base_dir), str(workdir / MARKER))
  ck = Checkpointer(workdir / "params", max_to_keep=1)
  try:
    params = ck.restore(base.params)
  finally:
    ck.close()
  s = info.get("sampler")
  own = SamplerDefaults(int(s["num_steps"]), float(s["guidance_scale"]), f"{workdir} ({s['source']})") if s else None
  return dataclasses.replace(base, params=params, sampler_defaults=own or base.sampler_defaults)


register_workdir_loader(MARKER, load_merged_generator)
