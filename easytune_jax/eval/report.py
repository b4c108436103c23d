"""Evaluation results as tables and files: `table_rows` (the standard table's rows, 'Real' first),
`format_results` (markdown: evaluator metrics, then the reward model's score, physical extras and counts
apart) and `write_results` (`<name>.json` + `<name>.md`)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from easytune_jax import metrics as M


def table_rows(results: Mapping[str, Any] | Sequence[Mapping[str, Any]], real_row: bool = True) -> dict:
  """Rows of the standard table: 'Real' (the gt_* values of the first result) then one row per method."""
  res = [results] if isinstance(results, Mapping) else list(results)
  rows = {}
  if real_row and res:
    m = res[0]["metrics"]
    rows["Real"] = {k[3:]: tuple(v) for k, v in m.items() if k.startswith("gt_")}
  for r in res:
    rows[r.get("method", "generated")] = {k: tuple(v) for k, v in r["metrics"].items() if not k.startswith("gt_")}
  return rows


def format_results(results: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> str:
  """Markdown: the evaluator table, then (separately) the reward model's score and physical extras."""
  res = [results] if isinstance(results, Mapping) else list(results)
  out = ["## Evaluator metrics (mean ± 95% CI)\n", M.format_markdown_table(table_rows(res))]
  if any(r.get("reward") for r in res):
    rows = {"Real": {"reward": tuple(res[0]["reward"]["gt_reward"])}} if res[0].get("reward") else {}
    rows.update({r["method"]: {"reward": tuple(r["reward"]["reward"])} for r in res if r.get("reward")})
    out += [
      "\n## Reward model score (not an evaluator metric)\n",
      M.format_markdown_table(rows, columns=(("reward", "Reward ↑"),)),
    ]
  if any(r.get("physical") for r in res):
    cols = (
      ("foot_skating", "Foot skating ↓"),
      ("jitter", "Jitter (m/s³) ↓"),
      ("floor_penetration", "Floor penetration (m) ↓"),
    )
    rows = {}
    if res[0].get("physical"):
      rows["Real"] = {k[3:]: tuple(v) for k, v in res[0]["physical"].items() if k.startswith("gt_")}
    rows.update(
      {
        r["method"]: {k: tuple(v) for k, v in r["physical"].items() if not k.startswith("gt_")}
        for r in res
        if r.get("physical")
      }
    )
    out += ["\n## Physical plausibility\n", M.format_markdown_table(rows, columns=cols, precision=4)]
  notes = []
  for r in res:
    c = r["counts"]
    notes.append(
      f"- {r['method']}: {c['replications']} replications, {c['test_entries']} test entries, "
      f"R-precision groups {c['r_precision_groups']} x {c['r_precision_group']}, diversity pairs "
      f"{c['diversity_times']}, MM {c['mm_num_samples']} x {c['mm_num_repeats']} "
      f"(pairs {c['mm_num_times']}); evaluator {r['settings']['evaluator']}"
    )
    if r["settings"].get("sampler"):
      sm = r["settings"]["sampler"]
      notes.append(f"  - sampler: {sm['num_steps']} DDIM steps, guidance scale {sm['guidance_scale']:g}")
    if r["settings"].get("guidance"):
      g = r["settings"]["guidance"]
      notes.append(
        f"  - reward guidance: scale {g['scale']:g} ({g['schedule']}, {g['position']}, {g['reward_input']}, "
        f"timestep {g['reward_timestep']}, {g['reduction']}, normalize {g['normalize']}, clip {g['clip']:g}), "
        f"reward {g['reward']}"
      )
    notes += [f"  - warning: {w}" for w in r.get("warnings", [])]
  out += ["\n## Counts\n", "\n".join(notes) + "\n"]
  return "".join(out)


def write_results(results: Mapping[str, Any] | Sequence[Mapping[str, Any]], out_dir: str, name: str = "eval") -> dict:
  """Writes ``<out_dir>/<name>.json`` (all results) and ``<out_dir>/<name>.md`` (tables); returns the paths."""
  os.makedirs(out_dir, exist_ok=True)
  res = [results] if isinstance(results, Mapping) else list(results)
  paths = {"json": os.path.join(out_dir, f"{name}.json"), "markdown": os.path.join(out_dir, f"{name}.md")}
  payload = res[0] if isinstance(results, Mapping) else {"results": res}
  with open(paths["json"], "w") as f:
    json.dump(payload, f, indent=1, sort_keys=True)
  with open(paths["markdown"], "w") as f:
    f.write(format_results(res))
  return paths
