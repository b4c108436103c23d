"""The quickstart's report: `report/report.md` (`write_report`), `report/summary.json` (`summary_record`, with the
machine it ran on), the README's table (`summary_table`, `readme_with_table`), the one-screen summary
(`summary_screen`), the comparison of a run with the committed docs/quickstart/summary.json
(`table_differences`, `machine_differences`) and the copy into docs (`export_docs`). Reads the summary dicts
`pipelines.quickstart.run_quickstart` returns and records; runs nothing.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import shutil

import jax
import numpy as np

from easytune_jax.core import rerun
from easytune_jax.core.machine import cpu_model


def summary_table(summary: dict) -> list[str]:
  """The quickstart's table (markdown lines) from its `report/summary.json`: one row per model, one measure per
  column: the val held-out reward of fine-tuning (fixed captions and noise) and the test-split reward-model
  score and evaluator metrics of the evaluation protocol (mean ± 95% CI). The README's table is this table
  of the committed `docs/quickstart/summary.json` (tests/test_docs.py), and `--check_against` compares a
  fresh run's table with it digit for digit. No timing is in it: seconds depend on the machine."""
  results = summary["results"]
  ft = summary["finetune"]
  first_ft = next(iter(ft.values()), None)
  fmt = lambda v, d=3: f"{v[0]:.{d}f} ± {v[1]:.{d}f}"  # noqa: E731
  lines = [
    "| | val held-out reward | test reward-model score | R@1 | R@3 | MM-Dist | FID | Diversity |",
    "|---|---|---|---|---|---|---|---|",
  ]
  if results:
    m, r = results[0]["metrics"], results[0].get("reward") or {}
    lines.append(
      f"| Real motions | – | {fmt(r['gt_reward']) if r else '–'} | {fmt(m['gt_R_precision_top_1'])} | "
      f"{fmt(m['gt_R_precision_top_3'])} | {fmt(m['gt_Matching_score'], 2)} | {fmt(m['gt_FID'], 2)} | "
      f"{fmt(m['gt_Diversity'], 2)} |"
    )
  for res in results:
    name, m, r = res["method"], res["metrics"], res.get("reward") or {}
    if name == "base":
      val = f"{first_ft['base_heldout_reward']:.3f}" if first_ft else "–"
    else:
      val = f"{ft[name]['final_heldout_reward']:.3f}" if name in ft else "–"
    lines.append(
      f"| {name} | {val} | {fmt(r['reward']) if r else '–'} | {fmt(m['R_precision_top_1'])} | "
      f"{fmt(m['R_precision_top_3'])} | {fmt(m['Matching_score'], 2)} | {fmt(m['FID'], 2)} | "
      f"{fmt(m['Diversity'], 2)} |"
    )
  return lines


def summary_record(summary: dict, root: pathlib.Path) -> dict:
  """What `report/summary.json` holds: fine-tuning summaries, per-row metrics and reward scores, media,
  stage seconds and the machine, with paths relative to the workdir."""
  record = {k: v for k, v in summary.items() if k != "evaluate"}
  record["results"] = [
    {"method": r["method"], "metrics": r["metrics"], "reward": r.get("reward") or {}}
    for r in summary["evaluate"]["results"]
  ]
  record["machine"] = machine_description()
  return rerun.relative_strings(json.loads(json.dumps(record, default=str)), root)


def machine_description() -> dict:
  """The library versions and CPU a run was made with (the figures depend on them)."""
  import flax
  import jaxlib
  import optax

  return {
    "jax": jax.__version__,
    "jaxlib": jaxlib.__version__,
    "flax": flax.__version__,
    "optax": optax.__version__,
    "numpy": np.__version__,
    "python": platform.python_version(),
    "backend": jax.default_backend(),
    "cpu": cpu_model(),
    "cpu_count": os.cpu_count(),
  }


def write_report(root: pathlib.Path, summary: dict) -> str:
  ev = summary["evaluate"]
  timings = ", ".join(f"{k} {v:.0f} s" for k, v in summary["timings"].items())
  machine = machine_description()
  lines = [
    "# easytune_jax quickstart report",
    "",
    f"Machine: jax {machine['jax']}, jaxlib {machine['jaxlib']}, backend {machine['backend']}, {machine['cpu']} "
    f"({machine['cpu_count']} cores); compute time {summary['seconds']:.0f} s ({timings}).",
    "",
    "## Summary",
    "",
    "Two different reward measures, in separate columns: the *val held-out reward* is the reward model's "
    "score of fine-tuning's fixed val captions and noise (what `best/` and the curves use); the *test "
    "reward-model score* is the same reward model on the test split under the evaluation protocol (mean ± "
    "95% CI over the replications). R-precision, MM-Dist, FID and diversity come from the separate "
    "T2M-style evaluator on the test split.",
    "",
  ]
  lines += summary_table(summary_record(summary, root))
  lines += [
    "",
    "## Held-out reward during fine-tuning (val split, fixed captions and noise)",
    "",
    "| method | base | fine-tuned | gain | fine-tuning seconds | of which compilation |",
    "|---|---|---|---|---|---|",
  ]
  for m, s in summary["finetune"].items():
    compile_s = f"{s['compile_seconds']:.0f}" if "compile_seconds" in s else "–"
    lines.append(
      f"| {m} | {s['base_heldout_reward']:.4f} | {s['final_heldout_reward']:.4f} | "
      f"{s['final_heldout_reward'] - s['base_heldout_reward']:+.4f} | {s['seconds']:.0f} | {compile_s} |"
    )
  details = (root / ev["paths"]["markdown"]).read_text()
  details = "\n".join("#" + line if line.startswith("## ") else line for line in details.splitlines())
  details = details.replace("(mean ± 95% CI)\n|", "(mean ± 95% CI)\n\n|")
  lines += [
    "",
    "## Test-split evaluation in detail (`eval/eval.md`)",
    "",
    details,
  ]
  if summary.get("guidance"):  # the optional stage 'guidance' (QuickstartConfig.guidance)
    guided = (root / summary["guidance"]["paths"]["markdown"]).read_text().splitlines()
    lines += ["", "## Reward-guided sampling (`guidance/guidance.md`)", "", *guided[1:]]
  lines += [
    "",
    "## Curves and animations",
    "",
    f"![held-out reward]({pathlib.Path(summary['media']['curves']).name})",
    "",
  ]
  for a in summary["media"]["animations"]:
    lines.append(f"- {a['caption']}: ![{a['caption']}]({pathlib.Path(a['path']).name})")
  path = root / "report" / "report.md"
  path.write_text("\n".join(lines) + "\n")
  return str(path)


def summary_screen(summary: dict) -> str:
  """One screen: per-method rewards, the metric table and the files written."""
  wall = summary.get("wall_seconds", summary["seconds"])
  root = pathlib.Path(summary["workdir"])
  skipped = summary.get("skipped", [])
  lines = [
    "",
    "=" * 78,
    f"easytune_jax quickstart: done in {wall:.0f} s",
    "stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in summary["timings"].items()),
  ]
  if skipped:
    lines.append(
      f"unchanged since the last run, not recomputed: {', '.join(skipped)} (their recorded seconds "
      f"above; delete {pathlib.Path(summary['workdir']) / rerun.MANIFEST} to recompute)"
    )
  lines.append("")
  for m, s in summary["finetune"].items():
    lines.append(f"{m:>10}: held-out reward {s['base_heldout_reward']:.4f} -> {s['final_heldout_reward']:.4f}")
  lines += [
    "",
    (root / summary["evaluate"]["paths"]["markdown"]).read_text().strip(),
    "",
    "files:",
    f"  report      {summary['report']}",
    f"  metrics     {root / summary['evaluate']['paths']['json']}",
    *([f"  guidance    {root / summary['guidance']['paths']['markdown']}"] if summary.get("guidance") else []),
    f"  curves      {root / summary['media']['curves']}",
  ]
  lines += [f"  animation   {root / a['path']}" for a in summary["media"]["animations"]]
  lines += [f"  TensorBoard tensorboard --logdir {summary['workdir']}   (pip install tensorboard)", "=" * 78]
  return "\n".join(lines)


# The README's quickstart table sits between these two lines and is the table of docs/quickstart/summary.json.
def table_markers(docs_dir: str = "docs/quickstart") -> tuple[str, str]:
  """The README markers around the table generated from `<docs_dir>/summary.json` (one pair per exported run:
  the default quickstart's, the flow generator's, ...)."""
  docs_dir = str(docs_dir).rstrip("/")
  return (
    f"<!-- quickstart-table: generated from {docs_dir}/summary.json, do not edit -->",
    f"<!-- end of quickstart-table ({docs_dir}) -->",
  )


def table_differences(summary: dict, reference: dict) -> list[str]:
  """The table rows (as printed) where `summary` and `reference` (two summary.json dicts) differ, each as
  'expected: <reference row>' / 'found:    <row>' lines; [] when the tables are equal digit for digit."""
  found, expected = summary_table(summary), summary_table(reference)
  out = []
  for i in range(max(len(found), len(expected))):
    e = expected[i] if i < len(expected) else "(no row)"
    f = found[i] if i < len(found) else "(no row)"
    if e != f:
      out += [f"expected: {e}", f"found:    {f}"]
  return out


# What the table's digits depend on besides the code: another CPU or library version can move the last digits.
COMPARED_MACHINE_FIELDS = ("cpu", "cpu_count", "jax", "jaxlib", "flax", "optax", "numpy")


def machine_differences(summary: dict, reference: dict) -> list[str]:
  """'field: reference -> this run' for each of COMPARED_MACHINE_FIELDS where the two summaries' machines
  differ ([] when the tables are comparable digit for digit)."""
  m, r = summary.get("machine", {}), reference.get("machine", {})
  return [f"{k}: {r.get(k)!r} -> {m.get(k)!r}" for k in COMPARED_MACHINE_FIELDS if m.get(k) != r.get(k)]


def readme_with_table(
  readme: str, summary: dict, readme_name: str = "README.md", docs_dir: str = "docs/quickstart"
) -> str:
  """`readme` with the text between the table markers of `docs_dir` (`table_markers`) replaced by `summary`'s
  table."""
  begin, end = table_markers(docs_dir)
  if readme.count(begin) != 1 or readme.count(end) != 1:
    raise ValueError(f"{readme_name}: expected the quickstart-table markers once each ({begin!r} ... {end!r})")
  head, rest = readme.split(begin)
  _, tail = rest.split(end)
  return head + begin + "\n" + "\n".join(summary_table(summary)) + "\n" + end + tail


def export_docs(workdir: str, docs_dir: str, readme: str | None = None) -> list[str]:
  """Copies a finished quickstart's report (report.md, summary.json, curves, animations) into `docs_dir`
  and, with `readme`, rewrites the README's table from it. Returns the files written."""
  report = pathlib.Path(workdir) / "report"
  summary = json.loads((report / "summary.json").read_text())
  docs = pathlib.Path(docs_dir)
  docs.mkdir(parents=True, exist_ok=True)
  files = ["report.md", "summary.json", summary["media"]["curves"]]
  files += [a["path"] for a in summary["media"]["animations"]]
  written = []
  for f in files:
    src = report / pathlib.Path(f).name
    shutil.copyfile(src, docs / src.name)
    written.append(str(docs / src.name))
  if readme is not None:
    path = pathlib.Path(readme)
    path.write_text(readme_with_table(path.read_text(), summary, str(path), docs_dir))
    written.append(str(path))
  return written
