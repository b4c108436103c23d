"""A rerun of a finished quickstart (and of launch/evaluate.py) recomputes nothing whose inputs are unchanged
(issue 21): same outputs byte for byte, no evaluation / fine-tuning / rendering call, no new event file, seconds.

The base generator, reward model and evaluator stages reuse the tiny trained pipeline (tests/pipeline.py);
fine-tuning, evaluation and media run for real with tiny sizes.
"""

import os
import pathlib
import shutil
import subprocess
import sys
import time

import pytest

from easytune_jax import viz
from easytune_jax.bundles.finetuned import load_finetuned_generator
from easytune_jax.core import rerun
from easytune_jax.eval import evaluation
from easytune_jax.pipelines import quickstart, quickstart_report
from easytune_jax.train import finetune_runner

CFG = quickstart.QuickstartConfig(methods=("easytune",), trajectories=1, replications=1, num_animations=1, num_steps=4)


def _reuse(src):
  def stage(cfg, root, *args):
    del cfg, args
    dst = pathlib.Path(root) / pathlib.Path(src).name
    if not dst.exists():
      shutil.copytree(src, dst)
    return str(dst)

  return stage


@pytest.fixture()
def counted(monkeypatch, tiny_pipeline):
  """Stage functions of the trained pipeline, and call counters of every expensive function."""
  calls = {"evaluate": 0, "finetune": 0, "render": 0}
  monkeypatch.setattr(quickstart, "stage_data", _reuse(tiny_pipeline.data))
  monkeypatch.setattr(quickstart, "stage_base", _reuse(tiny_pipeline.generator))
  monkeypatch.setattr(quickstart, "stage_reward", _reuse(tiny_pipeline.reward))
  monkeypatch.setattr(quickstart, "stage_evaluator", _reuse(tiny_pipeline.evaluator))
  for mod, name, key in (
    (evaluation, "evaluate", "evaluate"),
    (finetune_runner, "run_finetune", "finetune"),
    (viz, "side_by_side", "render"),
  ):
    real = getattr(mod, name)

    def wrapper(*a, _real=real, _key=key, **kw):
      calls[_key] += 1
      return _real(*a, **kw)

    monkeypatch.setattr(mod, name, wrapper)
  return calls


def _outputs(root):
  files = {}
  for p in sorted(pathlib.Path(root).rglob("*")):
    if p.is_file() and p.name != rerun.MANIFEST:
      files[str(p.relative_to(root))] = p.read_bytes()
  return files


def test_rerun_of_finished_quickstart_skips_everything(tmp_path, counted):
  root = tmp_path / "qs"
  first = quickstart.run_quickstart(CFG, str(root))
  assert counted == {"evaluate": 2, "finetune": 1, "render": 1}, counted  # base + easytune rows
  assert first["skipped"] == []
  report = pathlib.Path(first["report"]).read_text()
  assert "| | val held-out reward | test reward-model score |" in report
  assert "## Standard metrics" not in report and "### Evaluator metrics" in report
  before = _outputs(root)
  events = sorted(root.rglob("events.out.tfevents.*"))
  time.sleep(0.01)

  t0 = time.time()
  second = quickstart.run_quickstart(CFG, str(root))
  seconds = time.time() - t0
  assert counted == {"evaluate": 2, "finetune": 1, "render": 1}, f"the rerun recomputed something: {counted}"
  assert second["skipped"] == ["data", "base", "reward", "evaluator", "finetune", "evaluate", "media"]
  assert _outputs(root) == before, "the rerun changed an output"
  assert sorted(root.rglob("events.out.tfevents.*")) == events, "the rerun created event files"
  print(f"\nrerun of the finished tiny quickstart: {seconds:.2f} s")
  assert seconds < 10, f"rerun took {seconds:.1f} s"
  assert second["timings"] == first["timings"] and "unchanged since the last run" in quickstart_report.summary_screen(
    second
  )

  # Copied (new modification times, as `cp -r` gives) and then moved: still finished, nothing recomputed, the
  # recorded stage times kept, the same report; no absolute path of the workdir in what it wrote.
  copy = tmp_path / "elsewhere" / "copy"
  shutil.copytree(root, copy, copy_function=shutil.copy)
  moved = tmp_path / "moved"
  root.rename(moved)
  for where in (copy, moved):
    t0 = time.time()
    again = quickstart.run_quickstart(CFG, str(where))
    seconds = time.time() - t0
    assert counted == {"evaluate": 2, "finetune": 1, "render": 1}, f"{where}: recomputed something: {counted}"
    assert again["skipped"] == second["skipped"] and again["timings"] == first["timings"]
    assert _outputs(where) == before, f"{where}: the rerun changed an output"
    print(f"rerun of the {where.name} tiny quickstart: {seconds:.2f} s")
    assert seconds < 10, f"rerun took {seconds:.1f} s"
    for name in ("report/report.md", "report/summary.json"):
      text = (where / name).read_text()
      assert str(tmp_path) not in text, f"{name} holds an absolute path: {text[:400]}"
    tuned = load_finetuned_generator(str(where / "finetune_easytune"))  # its base found beside it
    assert tuned.max_length > 0


def test_manifest_detects_changed_inputs_and_outputs(tmp_path):
  inp, out = tmp_path / "in", tmp_path / "out"
  inp.mkdir()
  out.mkdir()
  (inp / "a.npy").write_bytes(b"1")
  (out / "r.json").write_text("{}")
  m = rerun.Manifest(tmp_path)
  key = rerun.settings_key(settings={"lr": 1}, inputs=rerun.fingerprint([inp]))
  m.record("step", key, [out], {"x": 1}, 2.0)
  m = rerun.Manifest(tmp_path)  # read back
  assert m.lookup("step", key, [out])["result"] == {"x": 1}
  assert m.lookup("step", rerun.settings_key(settings={"lr": 2}, inputs=rerun.fingerprint([inp])), [out]) is None
  (inp / "a.npy").write_bytes(b"22")  # an input changed: its key changes
  assert rerun.settings_key(settings={"lr": 1}, inputs=rerun.fingerprint([inp])) != key
  (out / "r.json").write_text('{"edited": 1}')  # an output changed: the entry is stale
  assert m.lookup("step", key, [out]) is None
  (tmp_path / rerun.MANIFEST).write_text("{trunc")  # a damaged manifest only costs a recomputation
  assert rerun.Manifest(tmp_path).lookup("step", key, [out]) is None


def test_evaluate_launcher_rerun_prints_existing_results(tmp_path, tiny_pipeline):
  p = tiny_pipeline
  env = dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).resolve().parents[1]), JAX_PLATFORMS="cpu")
  args = [
    sys.executable,
    "-m",
    "launch.evaluate",
    f"--generator_workdir={p.generator}",
    f"--data_dir={p.data}",
    f"--evaluator_workdir={p.evaluator}",
    f"--out_dir={tmp_path / 'eval'}",
    "--config.quick",
    "--config.replications=1",
    "--config.num_steps=2",
    "--config.batch_size=8",
    "--names=base",
  ]
  root = pathlib.Path(__file__).resolve().parents[1]
  first = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=900)
  assert first.returncode == 0, first.stderr[-3000:]
  stat = (tmp_path / "eval" / "eval.json").stat()
  t0 = time.time()
  second = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=900)
  assert second.returncode == 0, second.stderr[-3000:]
  assert second.stdout == first.stdout and "Evaluator metrics" in second.stdout
  assert (tmp_path / "eval" / "eval.json").stat().st_mtime_ns == stat.st_mtime_ns, "the rerun rewrote eval.json"
  assert time.time() - t0 < 60
