"""Executes every tutorial notebook top to bottom (nbclient, kernel python3) on the tiny trained pipeline.

EASYTUNE_NB_SMALL=1 makes the notebooks tiny, EASYTUNE_NB_PIPELINE points them at the session's trained
pipeline (so they retrain nothing but their own small runs) and EASYTUNE_NB_OUT collects what they write.
Any cell error fails the test with the cell's traceback; the figures, GIFs and result files each notebook
promises must exist, and the printed numbers must show what the notebook claims.
"""

import ast
import json
import os
import pathlib
import re
import sys
import time

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
CELL_TIMEOUT_S = 300

# Files each notebook must write under EASYTUNE_NB_OUT/<name>/.
EXPECTED = {
  "01_quickstart": [
    "motion_strips.png",
    "reward_curve.png",
    "eval/eval.md",
    "eval/eval.json",
    "sample_0.gif",
    "finetune_easytune/summary.json",
  ],
  "02_step_aware_gradients": ["grad_norm_per_step.png", "memory_vs_T.png", "reward_per_update.png"],
  "03_reward_model_spl": ["similarity_clean_vs_noisy.png", "spm_spl/retrieval.json"],
}


def pipeline_root(p) -> pathlib.Path:
  root = pathlib.Path(os.path.commonpath([p.data, p.generator, p.reward, p.evaluator]))
  for sub in ("data", "base", "reward", "evaluator"):
    assert (root / sub).is_dir(), f"tiny_pipeline: expected {root / sub} (tests/pipeline.py layout)"
  return root


def execute(name: str, pipeline: pathlib.Path, out: pathlib.Path) -> tuple[nbformat.NotebookNode, float]:
  path = NB_DIR / f"{name}.ipynb"
  assert path.exists(), f"{path} not found (regenerate with `python notebooks/_build.py`)"
  nb = nbformat.read(str(path), as_version=4)
  env = dict(os.environ)
  env.update(
    EASYTUNE_NB_SMALL="1",
    EASYTUNE_NB_PIPELINE=str(pipeline),
    EASYTUNE_NB_OUT=str(out),
    PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
    MPLBACKEND="Agg",
  )
  client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(out)}})
  t0 = time.time()
  client.execute(env=env)  # raises CellExecutionError (with the cell's traceback) on any error
  seconds = time.time() - t0
  nbformat.write(nb, str(out / f"{name}.executed.ipynb"))  # kept for inspection of a failure
  return nb, seconds


def outputs(nb, kind: str) -> list:
  """All stream texts (kind='text') or the mime types of the rich outputs (kind='mime') of a notebook."""
  found = []
  for cell in nb.cells:
    for o in cell.get("outputs", []):
      if kind == "text" and o.get("output_type") == "stream":
        found.append(o["text"])
      elif kind == "mime" and o.get("output_type") in ("display_data", "execute_result"):
        found.extend(o.get("data", {}).keys())
  return found


@pytest.fixture(scope="module")
def nb_env(tiny_pipeline, tmp_path_factory):
  return pipeline_root(tiny_pipeline), tmp_path_factory.mktemp("notebooks")


@pytest.mark.parametrize("name", list(EXPECTED))
def test_notebook_executes(name, nb_env):
  pipeline, out = nb_env
  nb, seconds = execute(name, pipeline, out)
  print(f"\n{name}: executed in {seconds:.1f} s", file=sys.stderr)
  for cell in nb.cells:
    for o in cell.get("outputs", []):
      assert o.get("output_type") != "error", f"{name}: cell {cell.get('id')} raised {o.get('ename')}"
  missing = [f for f in EXPECTED[name] if not (out / name / f).is_file()]
  assert not missing, f"{name}: expected files under {out / name}, missing {missing}"
  mimes = outputs(nb, "mime")
  assert mimes.count("image/png") >= (2 if name != "03_reward_model_spl" else 1), f"{name}: images {mimes}"
  text = "".join(outputs(nb, "text"))

  if name == "01_quickstart":
    assert "image/gif" in mimes, f"01_quickstart: the side-by-side GIF was not displayed ({mimes})"
    assert "text/markdown" in mimes, "01_quickstart: the metric table was not displayed"
    table = (out / name / "eval/eval.md").read_text()
    assert all(w in table for w in ("| base", "| easytune", "R@1", "FID")), table[:600]
    methods = [r["method"] for r in json.loads((out / name / "eval/eval.json").read_text())["results"]]
    assert methods == ["base", "easytune"], methods
    m = re.search(r"(\d+) updates in \d+ s; held-out reward (-?[\d.]+) -> (-?[\d.]+)", text)
    assert m and int(m.group(1)) == 8, f"01_quickstart: expected 2 trajectories x T=4 updates, output: {text[-800:]}"
    # The notebook's claim: fine-tuning raises the held-out reward (seeded: -0.247 -> 0.364 on the tiny pipeline).
    assert float(m.group(3)) > float(m.group(2)) + 0.05, m.group(0)

  if name == "02_step_aware_gradients":
    mem = {}
    for method in ("EasyTune", "DRaFT-T"):
      m = re.search(rf"{re.escape(method)} temp bytes per T (\{{[^}}]*\}})", text)
      assert m, f"02: no memory line for {method} in the output"
      mem[method] = ast.literal_eval(m.group(1))
    ts = sorted(mem["DRaFT-T"])
    # DRaFT-T stores residuals per step: memory grows with T; EasyTune's scan does not.
    assert mem["DRaFT-T"][ts[-1]] > 2 * mem["DRaFT-T"][ts[0]], mem
    assert mem["EasyTune"][ts[-1]] <= 1.2 * mem["EasyTune"][ts[0]], mem
    assert mem["EasyTune"][ts[-1]] < mem["DRaFT-T"][ts[-1]], mem
    for method in ("DRaFT-T", "EasyTune"):
      m = re.search(rf"{re.escape(method)} per-step norms: \[([^\]]*)\]", text)
      assert m, f"02: no per-step gradient norms for {method}"
      norms = [float(v) for v in m.group(1).split()]
      # Every step gets a gradient of its own (EasyTune) or a share of the full backprop (DRaFT-T).
      assert len(norms) == 10 and all(0 < v < 1e4 for v in norms), norms
    # Section 3: EasyTune makes T updates per trajectory, DRaFT-T one; both raise the held-out reward.
    found = dict(re.findall(r"(EasyTune|DRaFT-T): held-out reward (-?[\d.]+ -> -?[\d.]+ after \d+) updates", text))
    assert set(found) == {"EasyTune", "DRaFT-T"}, text[-800:]
    runs = {k: re.match(r"(-?[\d.]+) -> (-?[\d.]+) after (\d+)", v).groups() for k, v in found.items()}
    assert int(runs["EasyTune"][2]) == 10 * int(runs["DRaFT-T"][2]) > 0, runs
    assert all(float(after) > float(before) for before, after, _ in runs.values()), runs

  if name == "03_reward_model_spl":
    assert "text/markdown" in mimes, "03: the mined pairs / retrieval tables were not displayed"
    m = re.search(r"(\d+) of (\d+) captions give a preference pair", text)
    assert m, text[-800:]
    # The printed count is the number of rows the mined-pairs table marks as a pair (retrieval mistakes).
    tables = [
      "".join(o["data"]["text/markdown"])
      for cell in nb.cells
      for o in cell.get("outputs", [])
      if "text/markdown" in o.get("data", {})
    ]
    pair_table = next(t for t in tables if "SPL pair" in t)
    rows = [r for r in pair_table.splitlines()[2:] if r.startswith("|")]
    assert len(rows) == int(m.group(2)), pair_table[:600]
    assert sum(r.rstrip().endswith("| pair |") for r in rows) == int(m.group(1)), pair_table[:600]
    retrieval = json.loads((out / name / "spm_spl/retrieval.json").read_text())
    assert set(retrieval) == {"t0/full", "t300/full"}, sorted(retrieval)  # the notebook's clean and noisy protocol
    for v in retrieval.values():
      for d in ("t2m", "m2t"):
        assert 0 <= v[f"{d}/R1"] <= v[f"{d}/R3"] <= v[f"{d}/R10"] <= 100 and v[f"{d}/MedR"] >= 1, v
