"""The benchmark's outputs: benchmark.json, the markdown tables (`markdown`) and the PNG plots (memory vs T,
held-out reward vs training wall time), written by `write_outputs`."""

from __future__ import annotations

import json
import math
import pathlib

from easytune_jax import viz
from easytune_jax.bench.measure import PRIMITIVES

_MiB = 2.0**20


def _fmt(x, digits=3):
  if x is None:
    return "-"
  if isinstance(x, float) and not math.isfinite(x):
    return str(x)
  return f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def _pm(speed: dict, key: str, spec: str) -> str:
  """'mean ± std' of a speed field (just the value for a single run)."""
  std = speed.get(key + "_std")
  v = speed.get(key)
  if v is None:
    return "-"
  return f"{v:{spec}}" + (f" ± {std:{spec.lstrip('+')}}" if std is not None else "")


def _memory_table(recs: list) -> list[str]:
  mem = [r for r in recs if "memory" in r]
  if not mem:
    return []
  lines = [
    "## Compiled update memory (MiB; XLA memory_analysis, not run)",
    "",
    "| variant | T | K | temp | total | sampling total | additional (total) | additional (temp) |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for r in mem:
    lines.append(
      f"| {r['variant']} | {r['T']} | {r['K']} | {r['memory']['temp'] / _MiB:.3f} | "
      f"{r['memory']['total'] / _MiB:.3f} | {r['sampling_memory']['total'] / _MiB:.3f} | "
      f"{r['additional_memory']['total'] / _MiB:.3f} | {r['additional_memory']['temp'] / _MiB:.3f} |"
    )
  return lines + [""]


def _speed_table(result: dict, sp: list) -> list[str]:
  base = result.get("base", {})
  lines = [
    f"## Speed and reward at T={sp[0]['speed']['T']} (base held-out reward {_fmt(base.get('heldout_reward'), 4)})",
    "",
    "| variant | s/trajectory | s/update | trajectories | train s | final reward | gain | gain/s | "
    "peak gain/s | s to target |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ]
  ttg = result["summary"].get("seconds_to_target_gain", {})
  for r in sp:
    s = r["speed"]
    lines.append(
      f"| {r['variant']} | {s['seconds_per_trajectory']:.4f} | {s['seconds_per_update']:.4f} | "
      f"{s['trajectories']:.0f} | {s['train_seconds']:.1f} | {s['final_reward']:.4f} | "
      f"{_pm(s, 'reward_gain', '+.4f')} | {_pm(s, 'reward_gain_per_second', '+.5f')} | "
      f"{_pm(s, 'peak_gain_per_second', '.4f')} | {_fmt(ttg.get(r['variant']))} |"
    )
  return lines


def _floor_table(result: dict, sp: list) -> list[str]:
  fl = [r for r in sp if "floor" in r["speed"]]
  if not fl:
    return []
  f0 = result.get("base", {}).get("floor") or {}
  prims = ", ".join(
    f"{p.replace('_', ' ')} {f0[p + '_seconds'] * 1e3:.2f} ms" for p in PRIMITIVES if p + "_seconds" in f0
  )
  lines = [
    "",
    f"Floor at T={sp[0]['speed']['T']} from primitives timed inside a compiled loop as an update runs them "
    f"({f0.get('loop_iterations', '?')} and twice as many chained iterations, the difference): {prims}; one "
    f"dispatch {f0.get('dispatch_seconds', 0.0) * 1e3:.2f} ms. A method's floor is one dispatch plus its expected "
    "work per trajectory (counted from its row of the method table) times these; / floor is the mean seconds per "
    "trajectory of the budgeted runs over it (an expectation, like the work): >= 1 when it bounds, and how far the "
    "method is from doing nothing but its primitives.",
    "",
    "| variant | C | no-grad steps | grad steps | reward grads | updates | mean s/trajectory | floor s | / floor | "
    "floor+opt s | / floor+opt |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in fl:
    f, s_ = r["speed"]["floor"], r["speed"]
    w = f["work"]
    lines.append(
      f"| {r['variant']} | {s_.get('grad_chunk', 1)} | {w['nograd_step']:.3g} | {w['grad_step']:.3g} | "
      f"{w['reward_grad']:.3g} | {w['optimizer_update']:.3g} | {s_['mean_seconds_per_trajectory']:.4f} | "
      f"{f['floor_seconds']:.4f} | {f['over_floor']:.2f} | {f['floor_with_optimizer_seconds']:.4f} | "
      f"{f['over_floor_with_optimizer']:.2f} |"
    )
  bf = result.get("base", {}).get("floor")
  if bf:
    lines += [
      "",
      f"Compiled memory: sampling {bf['sampling_memory']['total'] / _MiB:.3f} MiB, one one-step "
      f"gradient {bf['one_step_grad_memory']['total'] / _MiB:.3f} MiB (totals).",
    ]
  return lines


def _speed_notes(result: dict, sp: list) -> list[str]:
  n_runs = len(sp[0]["speed"].get("runs", [None]))
  return [
    "",
    "gain/s: final gain / train s over the whole budget; peak gain/s: the best gain / train s at "
    "a held-out evaluation; s to target: train s until the held-out gain first reaches "
    f"{_fmt(result['summary'].get('target_gain'))} (interpolated between evaluations; - = never)."
    + (
      f" Mean ± standard deviation over {n_runs} runs (seeds) per method; trajectories, train s "
      "and final reward are means."
      if n_runs > 1
      else ""
    ),
    "",
  ]


def _alignment_table(result: dict, recs: list) -> list[str]:
  al = [r for r in recs if "alignment" in r]
  if not al:
    return []
  b = result["base"]["eval"]
  lines = [
    "## Alignment (quick evaluation, same budget per method)",
    "",
    "| variant | R@1 | R@3 | MM-Dist | FID | Diversity | MM-Dist rel. improvement |",
    "|---|---|---|---|---|---|---|",
    f"| base | {b['R_precision_top_1']:.3f} | {b['R_precision_top_3']:.3f} | {b['MM_Dist']:.3f} | "
    f"{b['FID']:.3f} | {b['Diversity']:.3f} | - |",
  ]
  for r in al:
    a = r["alignment"]
    lines.append(
      f"| {r['variant']} | {a['R_precision_top_1']:.3f} | {a['R_precision_top_3']:.3f} | "
      f"{a['MM_Dist']:.3f} | {a['FID']:.3f} | {a['Diversity']:.3f} | "
      f"{a['MM_Dist_relative_improvement']:+.2%} |"
    )
  return lines + [""]


def _pm_test(t: dict, key: str, fmt: str) -> str:
  std = t.get(key + "_std")
  return f"{t[key]:{fmt}}" + ("" if std is None else f" ± {std:{fmt}}")


def _selected_table(result: dict, recs: list) -> list[str]:
  if not result["summary"].get("selected_variant_per_method"):
    return []
  metric = result["config"]["select_metric"]
  return [
    f"## Equal-time alignment, checkpoints chosen on the val split by {metric}",
    "",
    "Each method trains from the base for the same seconds; among its held-out evaluations within each budget (the "
    "base params included) the checkpoint with the best val-split score is kept, and only that one is evaluated on "
    "the test split. Per method, the learning rate whose kept checkpoints score best on val. Mean ± std over the "
    "runs (seeds); 'base kept': runs whose best checkpoint was the base itself.",
    "",
    *equal_time_rows(result),
    "",
  ]


def equal_time_rows(result: dict) -> list[str]:
  """The equal-time table (header + rows): per budget and method, the val-chosen checkpoints' test metrics."""
  chosen = result["summary"]["selected_variant_per_method"]
  by_name = {r["variant"]: r for r in result["records"]}
  b = result["base"]["eval"]
  lines = [
    "| budget s | variant | kept at s | base kept | held-out reward | R@1 | MM-Dist | MM-Dist rel. improvement | FID |",
    "|---|---|---|---|---|---|---|---|---|",
    f"| - | base | - | - | {result['base']['heldout_reward']:.4f} | {b['R_precision_top_1']:.3f} | "
    f"{b['MM_Dist']:.3f} | - | {b['FID']:.3f} |",
  ]
  for j, (budget, fams) in enumerate(chosen.items()):
    for variant in fams.values():
      c = by_name[variant]["speed"]["selected"][j]
      t = c["test"]
      rel = (b["MM_Dist"] - t["MM_Dist"]) / b["MM_Dist"]
      lines.append(
        f"| {float(budget):g} | {variant} | {c['seconds']:.1f} | {c['base_kept']}/{c['runs']} | "
        f"{c['heldout_reward']:.4f} | {_pm_test(t, 'R_precision_top_1', '.3f')} | {_pm_test(t, 'MM_Dist', '.3f')} | "
        f"{rel:+.2%} | {_pm_test(t, 'FID', '.2f')} |"
      )
  return lines


def speed_rows(result: dict) -> list[str]:
  """Per variant: seconds per trajectory (mean over the budgeted runs), its distance to its floor, updates per
  second, reward gain per second over the whole budget, time to the common target gain (header + rows)."""
  ttg = result["summary"].get("seconds_to_target_gain", {})
  target = result["summary"].get("target_gain")
  lines = [
    f"| variant | s / trajectory | / floor | updates / s | gain / s | s to +{_fmt(target, 2)} |",
    "|---|---|---|---|---|---|",
  ]
  for r in result["records"]:
    if "speed" not in r:
      continue
    s = r["speed"]
    fl = s.get("floor", {}).get("over_floor_with_optimizer")
    per_traj = s["mean_seconds_per_trajectory"]
    lines.append(
      f"| {r['variant']} | {per_traj:.4f} | {'-' if fl is None else f'{fl:.2f}'} | "
      f"{s['updates_per_trajectory'] / per_traj:.1f} | "
      f"{_pm(s, 'reward_gain_per_second', '.5f')} | {_fmt(ttg.get(r['variant']), 3)} |"
    )
  return lines


def readme_markers(docs_dir: str) -> tuple[str, str]:
  """The README markers around the tables generated from `<docs_dir>/benchmark.json`."""
  docs_dir = str(docs_dir).rstrip("/")
  return (
    f"<!-- benchmark-tables: generated from {docs_dir}/benchmark.json, do not edit -->",
    f"<!-- end of benchmark-tables ({docs_dir}) -->",
  )


def memory_rows(result: dict) -> list[str]:
  """Compiled update memory (total MiB) per variant and T, and sampling alone (header + rows)."""
  mem = [r for r in result["records"] if "memory" in r]
  Ts = sorted({r["T"] for r in mem})
  by = {(r["variant"], r["T"]): r for r in mem}
  lines = [
    "| compiled update memory, total MiB | " + " | ".join(f"T = {T}" for T in Ts) + " |",
    "|---" * (len(Ts) + 1) + "|",
  ]
  samp = {T: r["sampling_memory"]["total"] for (_, T), r in by.items()}
  lines.append(
    "| guided sampling + decode + reward (no gradient) | " + " | ".join(f"{samp[T] / _MiB:.2f}" for T in Ts) + " |"
  )
  for v in dict.fromkeys(r["variant"] for r in mem):
    cells = [f"{by[v, T]['memory']['total'] / _MiB:.2f}" if (v, T) in by else "-" for T in Ts]
    lines.append(f"| {v} | " + " | ".join(cells) + " |")
  return lines


def readme_tables(result: dict) -> list[str]:
  """What the README shows of one benchmark: the memory table where it swept memory; for speed runs their
  setting, the speed table and (with a val selection) the equal-time table."""
  c, m, base = result["config"], result["machine"], result["base"]
  if not any("speed" in r for r in result["records"]):
    return memory_rows(result)
  budgets = c.get("select_budgets") or [c["budget_seconds"]]
  seeds = c["speed_seeds"]
  lines = [
    f"T = {c['speed_steps']}, {seeds} seed{'s' * (seeds > 1)} per variant, budgets "
    f"{' / '.join(f'{float(x):g}' for x in budgets)} s of training, base held-out reward "
    f"{base['heldout_reward']:.4f} ({m.get('cpu_model') or m['device_kind']}, {m['cpu_count']} CPUs, jax "
    f"{m['jax_version']}).",
    "",
    *speed_rows(result),
  ]
  if result["summary"].get("selected_variant_per_method"):
    lines += ["", f"Checkpoints chosen on the val split by {c['select_metric']}, evaluated once on test:", ""]
    lines += equal_time_rows(result)
  return lines


def readme_with_tables(readme: str, result: dict, docs_dir: str, readme_name: str = "README.md") -> str:
  """`readme` with the text between `docs_dir`'s markers (`readme_markers`) replaced by `readme_tables(result)`."""
  begin, end = readme_markers(docs_dir)
  if readme.count(begin) != 1 or readme.count(end) != 1:
    raise ValueError(f"{readme_name}: expected the benchmark-tables markers once each ({begin!r} ... {end!r})")
  head, rest = readme.split(begin)
  _, tail = rest.split(end)
  return head + begin + "\n" + "\n".join(readme_tables(result)) + "\n" + end + tail


def _reward_vs_val_table(result: dict) -> list[str]:
  rv = result["summary"].get("reward_vs_val")
  if not rv:
    return []
  lines = [
    "## Does the reward track the evaluator during training?",
    "",
    "Over every held-out evaluation of every run (base included): the correlation of the held-out reward with the "
    "val-split R@1 and MM-Dist (aligned: r > 0 for R@1, r < 0 for MM-Dist), and each metric's change from the base "
    "to the run's last evaluation (mean over runs).",
    "",
    "| variant | points | r(reward, R@1) | r(reward, MM-Dist) | last - base R@1 | last - base MM-Dist |",
    "|---|---|---|---|---|---|",
  ]
  for v, c in rv.items():
    lines.append(
      f"| {v} | {c['points']} | {_fmt(c['corr_R_precision_top_1'], 2)} | {_fmt(c['corr_MM_Dist'], 2)} | "
      f"{c['last_minus_base_R_precision_top_1']:+.3f} | {c['last_minus_base_MM_Dist']:+.3f} |"
    )
  return lines + [""]


def _headline(s: dict) -> list[str]:
  return [
    "## Headline figures",
    "",
    "- EasyTune additional memory / DRaFT-T (no remat): "
    + ", ".join(f"T={T}: {_fmt(v)}" for T, v in s.get("easytune_over_draft_T_additional", {}).items())
    + " (paper: 31.16% total memory vs DRaFT-50)",
    f"- EasyTune memory, largest / smallest T: {s.get('easytune_memory_largest_over_smallest_T')}",
    f"- reward gain per second, EasyTune / DRaFT-T: {_fmt(s.get('gain_per_second_easytune_over_draft_T'))}"
    " (paper: 7.3x faster than DRaFT-50); EasyTune / best other method: "
    f"{_fmt(s.get('gain_per_second_easytune_over_best_baseline'))} (each method at its best learning "
    f"rate among those run: {', '.join(s.get('best_variant_per_method', {}).values())})",
    f"- time to the target gain, method / EasyTune ({s.get('easytune_variant', '-')}): "
    + ", ".join(f"{v}: {_fmt(x)}" for v, x in s.get("time_to_target_over_easytune", {}).items()),
    "",
  ]


def markdown(result: dict) -> str:
  """benchmark.md: the memory table, the speed / reward table with the floor, the alignment table and the
  headline figures (each section only where the result has its records)."""
  recs = result["records"]
  m = result["machine"]
  cpu = f", {m['cpu_model']}" if m.get("cpu_model") else ""
  lines = [f"# Benchmark ({m['backend']}: {m['device_kind']}{cpu}, {m['cpu_count']} CPUs, jax {m['jax_version']})", ""]
  if m.get("cpu_flags"):
    lines += [f"CPU flags: {' '.join(m['cpu_flags'])}", ""]
  lines += _memory_table(recs)
  sp = [r for r in recs if "speed" in r]
  if sp:
    lines += _speed_table(result, sp) + _floor_table(result, sp) + _speed_notes(result, sp)
  lines += _alignment_table(result, recs)
  lines += _selected_table(result, recs)
  lines += _reward_vs_val_table(result)
  lines += _headline(result["summary"])
  return "\n".join(lines)


def write_outputs(result: dict, out_dir: str) -> dict:
  """benchmark.json, benchmark.md, memory_vs_T.png, reward_vs_time.png under out_dir; returns their paths."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  paths = {"json": out / "benchmark.json", "md": out / "benchmark.md"}
  paths["json"].write_text(json.dumps(result, indent=2))
  paths["md"].write_text(markdown(result))
  recs = result["records"]
  mem_curves: dict = {}
  for r in recs:
    if "memory" in r:
      ts, vs = mem_curves.setdefault(r["variant"], ([], []))
      ts.append(r["T"])
      vs.append(r["memory"]["total"] / _MiB)
  if mem_curves:
    paths["memory_png"] = pathlib.Path(
      viz.plot_curves(
        {k: v for k, v in mem_curves.items() if len(v[0]) >= 1},
        out / "memory_vs_T.png",
        title="compiled update memory",
        xlabel="DDIM steps T",
        ylabel="MiB",
        figsize=(6.5, 4.5),
      )
    )
  rw = {r["variant"]: (r["speed"]["curve"]["seconds"], r["speed"]["curve"]["reward"]) for r in recs if "speed" in r}
  if rw:
    paths["reward_png"] = pathlib.Path(
      viz.plot_curves(
        rw,
        out / "reward_vs_time.png",
        title="held-out reward vs training wall time",
        xlabel="seconds",
        ylabel="held-out reward",
        figsize=(6.5, 4.5),
      )
    )
  return {k: str(v) for k, v in paths.items()}
