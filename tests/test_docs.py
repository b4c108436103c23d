"""The committed documents tell what a fresh clone gives and hold nothing a reader cannot open.

* The README's quickstart table is the table of the committed docs/quickstart/summary.json, character for
  character (CI reruns the quickstart and compares its table with that summary, .ci/run).
* The README's benchmark tables (performance section) are those of the committed docs/benchmark/t50 and t10
  benchmark.json files, character for character.
* No committed document holds an absolute path of the machine it was made on.
"""

import copy
import json
import pathlib
import re

import pytest

from easytune_jax.bench import report as bench_report
from easytune_jax.pipelines import quickstart_report

ROOT = pathlib.Path(__file__).resolve().parents[1]
SUMMARY = ROOT / "docs" / "quickstart" / "summary.json"


def test_readme_table_is_the_committed_summary_table():
  summary = json.loads(SUMMARY.read_text())
  readme = (ROOT / "README.md").read_text()
  assert quickstart_report.readme_with_table(readme, summary) == readme, (
    "README.md's quickstart table differs from docs/quickstart/summary.json: regenerate both with "
    "`python -m launch.quickstart --workdir runs/quickstart --export_docs=docs/quickstart --readme=README.md`"
  )
  table = "\n".join(quickstart_report.summary_table(summary))
  assert table in readme and "| base |" in table and "| easytune |" in table
  assert summary["machine"]["cpu"] and summary["machine"]["jax"]  # the run states what it was made with


@pytest.mark.parametrize("docs_dir", ["docs/benchmark/t50", "docs/benchmark/t10", "docs/benchmark/memory"])
def test_readme_benchmark_tables_are_the_committed_json(docs_dir):
  """The performance section quotes its memory, speed and equal-time tables from the committed benchmark runs;
  each states the CPU it ran on, and each speed run chose its checkpoints on the val split."""
  result = json.loads((ROOT / docs_dir / "benchmark.json").read_text())
  readme = (ROOT / "README.md").read_text()
  assert bench_report.readme_with_tables(readme, result, docs_dir) == readme, (
    f"README.md's tables of {docs_dir} differ from its benchmark.json: regenerate with the command in "
    f"docs/benchmark/README.md and --readme=README.md"
  )
  assert result["machine"]["cpu_model"] and result["machine"]["cpu_flags"]
  if docs_dir.endswith("memory"):
    return
  assert result["config"]["select_metric"] and result["summary"]["selected_variant_per_method"]
  floors = [r["speed"]["floor"]["over_floor_with_optimizer"] for r in result["records"] if "speed" in r]
  assert floors and min(floors) >= 0.95, floors  # the committed floors bound (timer noise aside)


def test_readme_flow_table_is_the_committed_flow_summary():
  """The flow generator's quickstart table (README "Generators and sampling processes") is its summary's."""
  summary = json.loads((ROOT / "docs" / "flow_quickstart" / "summary.json").read_text())
  readme = (ROOT / "README.md").read_text()
  assert quickstart_report.readme_with_table(readme, summary, docs_dir="docs/flow_quickstart") == readme
  assert summary["generator"] == "flow"


def test_table_check_names_each_changed_row():
  summary = json.loads(SUMMARY.read_text())
  assert quickstart_report.table_differences(summary, summary) == []
  changed = copy.deepcopy(summary)
  row = next(r for r in changed["results"] if r["method"] == "easytune")
  row["metrics"]["FID"][0] += 0.006  # moves the printed second decimal
  diff = quickstart_report.table_differences(changed, summary)
  assert (
    len(diff) == 2 and diff[0].startswith("expected: | easytune |") and diff[1].startswith("found:    | easytune |")
  )
  tiny = copy.deepcopy(summary)
  next(r for r in tiny["results"] if r["method"] == "easytune")["metrics"]["FID"][0] += 1e-9  # below the digits
  assert quickstart_report.table_differences(tiny, summary) == []
  assert quickstart_report.machine_differences(changed, summary) == []  # same machine: the digits must agree
  other = copy.deepcopy(changed)
  other["machine"]["cpu"] = "Some Other CPU"
  assert quickstart_report.machine_differences(other, summary) == [
    f"cpu: {summary['machine']['cpu']!r} -> 'Some Other CPU'"
  ]
  with pytest.raises(ValueError, match=r"NOTES.md: expected the quickstart-table markers once each"):
    quickstart_report.readme_with_table("no markers", summary, "NOTES.md")


_MACHINE_PATH = re.compile(r"(^|[\s:('\"`])/(work|root|home|tmp/pytest-of-\w+|Users)/")


def _strings(obj):
  if isinstance(obj, str):
    yield obj
  elif isinstance(obj, dict):
    for v in obj.values():
      yield from _strings(v)
  elif isinstance(obj, list):
    for v in obj:
      yield from _strings(v)


def test_committed_docs_hold_no_machine_path():
  bad = []
  for path in sorted((ROOT / "docs").rglob("*")):
    if path.suffix == ".json":
      bad += [f"{path.relative_to(ROOT)}: {s}" for s in _strings(json.loads(path.read_text())) if s.startswith("/")]
    elif path.suffix == ".md":
      bad += [
        f"{path.relative_to(ROOT)}:{i + 1}: {line.strip()}"
        for i, line in enumerate(path.read_text().splitlines())
        if _MACHINE_PATH.search(line)
      ]
  assert not bad, "absolute machine paths in committed docs:\n" + "\n".join(bad[:20])
