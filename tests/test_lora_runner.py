"""Adapter fine-tuning through the harness on the trained tiny models: adapter-only checkpoints (sizes recorded),
resume bit-identical, the fine-tuned generator = base + merged adapter, the refusal of another base, the merged
export as a generator folder (launch/export_merged.py)."""

import dataclasses
import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from easytune_jax import finetune
from easytune_jax.bundles import adapter as adapter_io
from easytune_jax.bundles import finetuned
from easytune_jax.bundles.generator import load_generator
from easytune_jax.core.checkpoint import Checkpointer
from easytune_jax.train import finetune_runner as fr
from tests.test_finetune_runner import _cfg

LORA = finetune.LoraConfig(rank=4, alpha=8.0)


def lora_cfg(method="easytune", trajectories=2, **kw):
  c = _cfg(method, trajectories, **kw)
  return dataclasses.replace(c, finetune=dataclasses.replace(c.finetune, lora=LORA))


def test_adapter_run_checkpoints_resumes_bit_identical_and_loads_merged(tiny_pipeline, tmp_path):
  p = tiny_pipeline
  whole, split = tmp_path / "whole", tmp_path / "split"
  s = fr.run_finetune(lora_cfg(trajectories=4), str(whole), p.generator, p.reward, p.data, progress=False)
  fr.run_finetune(lora_cfg(trajectories=2), str(split), p.generator, p.reward, p.data, progress=False)
  s2 = fr.run_finetune(lora_cfg(trajectories=4), str(split), p.generator, p.reward, p.data, progress=False)
  assert s["updates"] == s2["updates"] == 16 and s2["trajectories"] == 4
  base = load_generator(p.generator)
  info = json.loads((whole / "finetune.json").read_text())
  rec = info["adapter"]
  assert rec["base_fingerprint"] == finetune.lora.fingerprint(base.params) and rec["lora"]["rank"] == 4
  assert s["adapter"]["adapter_params"] == rec["adapter_params"] < rec["base_params"] / 4
  assert 0 < s["adapter"]["checkpoint_bytes"] and 0 < s["adapter"]["best_bytes"]
  # adapter-only checkpoints: the stored state is the adapter (params and AdamW moments), its metadata names the base
  template = jax.eval_shape(lambda: finetune.lora.init_adapter(base.params, LORA, fr.adapter_key(0)))
  got = {}
  for name, work in (("whole", whole), ("split", split)):
    got[name] = adapter_io.restore_adapter(work, base.params, LORA, _cfg("easytune").finetune.optim, False, "final")
    assert jax.tree.structure(got[name]) == jax.tree.structure(template)
    ck = Checkpointer(work / "checkpoints")
    assert ck.metadata()["adapter"]["base_fingerprint"] == rec["base_fingerprint"]
    ck.close()
  for a, b in zip(jax.tree.leaves(got["whole"]), jax.tree.leaves(got["split"])):  # resume = uninterrupted, bit for bit
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # the fine-tuned generator: the base with the adapter merged in (what generate / evaluate load)
  gen = finetuned.load_any_generator(str(whole))
  want = adapter_io.merge_jit(base.params, got["whole"], LORA.scale)
  for a, b in zip(jax.tree.leaves(gen.params), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert (
    max(
      float(np.abs(np.asarray(a) - np.asarray(b)).max())
      for a, b in zip(jax.tree.leaves(gen.params), jax.tree.leaves(base.params))
    )
    > 0
  )
  best = finetuned.load_finetuned_generator(str(whole), "best")  # best/ holds an adapter too
  assert jax.tree.structure(best.params) == jax.tree.structure(base.params)

  # the merged export through its launcher: a generator folder, equal params, samples
  out = tmp_path / "merged"
  r = subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.export_merged",
      f"--run_workdir={whole}",
      f"--out_dir={out}",
      "--config.safetensors=true",
    ],
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  report = json.loads(r.stdout[r.stdout.index("{") :])
  # sizes reported (at this tiny size orbax's own files dominate the folders; docs/lora has real sizes)
  assert report["params_bytes"] == rec["base_bytes"] and report["run_checkpoint_bytes"]["checkpoints"] > 0
  merged = load_generator(str(out))
  for a, b in zip(jax.tree.leaves(merged.params), jax.tree.leaves(gen.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert merged.sampler_defaults.num_steps == 4 and (out / "denoiser.safetensors").is_file()
  _, joints = merged.generate(["a person walks forward."], [32], jax.random.key(0), num_steps=4)
  assert np.all(np.isfinite(joints))

  # another base is refused, naming both: a run whose recorded base differs, and a resume on it
  info["adapter"]["base_fingerprint"] = "0" * 64
  info["adapter"]["generator_workdir"] = "/elsewhere/base"
  (whole / "finetune.json").write_text(json.dumps(info))
  with pytest.raises(adapter_io.AdapterBaseMismatch, match=f"/elsewhere/base.*{p.generator}"):
    finetuned.load_finetuned_generator(str(whole))
  with pytest.raises(adapter_io.AdapterBaseMismatch, match="/elsewhere/base"):
    fr.run_finetune(lora_cfg(trajectories=5), str(whole), p.generator, p.reward, p.data, progress=False)


def test_adapter_run_with_a_trajectory_method_and_leaves_trained_whole(tiny_pipeline, tmp_path):
  p = tiny_pipeline
  c = _cfg("draft", 2)
  c = dataclasses.replace(c, finetune=dataclasses.replace(c.finetune, lora=finetune.LoraConfig(train_whole="bias")))
  s = fr.run_finetune(c, str(tmp_path / "bias"), p.generator, p.reward, p.data, progress=False)
  assert s["updates"] == 2 and s["adapter"]["adapter_params"] < s["adapter"]["base_params"]
  base = load_generator(p.generator)
  gen = finetuned.load_finetuned_generator(str(tmp_path / "bias"))
  changed = {
    path: not np.array_equal(np.asarray(a), np.asarray(finetune.lora.named_leaves(base.params)[path]))
    for path, a in finetune.lora.named_leaves(gen.params).items()
  }
  assert not any(v for k, v in changed.items() if "bias" not in k)  # only the leaves trained whole moved
  assert sum(v for k, v in changed.items() if "bias" in k) > len([k for k in changed if "bias" in k]) // 2
