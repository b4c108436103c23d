"""The quickstart's reward-guidance comparison: plain vs reward-guided sampling of the base and fine-tuned generators.

`pipelines.quickstart` runs it as the stage 'guidance' when `QuickstartConfig.guidance.scale > 0` (off by default,
so the default quickstart and its checked table do not change). It evaluates the guided rows with the protocol of
the stage 'evaluate' (same replications, seed and reward score; the plain rows are that stage's own results),
times each row's sampler on one evaluation batch and compiles its memory, and writes `<workdir>/guidance/`:
eval.json / eval.md of the guided rows, guidance.json (the four rows, timings, memory, machine) and guidance.md (the
table). `measure_samplers` and `guidance_table` are usable on their own.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import statistics
import time
from collections.abc import Callable

import jax
import numpy as np

from easytune_jax.bundles.guided import GuidedGenerator, sampler_memory
from easytune_jax.core import rerun
from easytune_jax.eval.report import write_results


def cpu_description() -> dict:
  """The CPU model and its flags line (/proc/cpuinfo, what `lscpu` prints as 'Model name' / 'Flags')."""
  out = {"model": None, "flags": None}
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and out["model"] is None:
          out["model"] = value.strip()
        elif key == "flags" and out["flags"] is None:
          out["flags"] = value.strip()
  except OSError:
    pass
  return out


def measure_samplers(
  gens: dict, captions: list, length: int, num_steps: int, guidance_scale: float, repeats: int = 10
) -> dict:
  """{name: timing}: seconds per `gen.generate` call on the batch `captions` (all `length` frames) for each of
  `gens` (Generators or GuidedGenerators), the first call (with compilation) apart, then `repeats` rounds in which
  every sampler runs once (round robin: a busy machine slows every row alike); plus each sampler's compiled memory
  (`bundles.guided.sampler_memory`) and the load average around the timed rounds."""
  lengths = [length] * len(captions)

  def call(gen, i):
    t0 = time.perf_counter()
    gen.generate(captions, lengths, jax.random.key(1000 + i), guidance_scale, num_steps, normalized=True)
    return time.perf_counter() - t0

  first = {name: call(gen, 0) for name, gen in gens.items()}
  load = os.getloadavg()
  times = {name: [] for name in gens}
  for i in range(repeats):
    for name, gen in gens.items():
      times[name].append(call(gen, i + 1))
  load_after = os.getloadavg()
  return {
    name: {
      "batch_size": len(captions),
      "length": length,
      "num_steps": num_steps,
      "first_call_s": round(first[name], 4),
      "seconds_per_batch": round(statistics.median(ts), 4),
      "min_s": round(min(ts), 4),
      "all_s": [round(t, 4) for t in ts],
      "loadavg_before": [round(v, 2) for v in load],
      "loadavg_after": [round(v, 2) for v in load_after],
      "memory": sampler_memory(gens[name], len(captions), num_steps, length),
    }
    for name, ts in times.items()
  }


def guidance_rows(plain: dict, guided: dict) -> list[tuple[str, dict]]:
  """Row order of the table: each plain row followed by its guided row ({name: evaluation result})."""
  rows = []
  for name, res in plain.items():
    rows.append((name, res))
    if f"{name}+guidance" in guided:
      rows.append((f"{name}+guidance", guided[f"{name}+guidance"]))
  return rows


def guidance_table(record: dict) -> list[str]:
  """Markdown lines: per row the test reward-model score, evaluator R@1 / R@3 / MM-Dist / FID / Diversity (mean ±
  95% CI) and the sampling seconds per batch and compiled memory (`record`: guidance.json)."""
  fmt = lambda v, d=3: f"{v[0]:.{d}f} ± {v[1]:.{d}f}"  # noqa: E731
  lines = [
    "| | test reward-model score | R@1 | R@3 | MM-Dist | FID | Diversity | sampling s / batch | compiled MiB |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for row in record["rows"]:
    m, r, t = row["metrics"], row.get("reward") or {}, row["timing"]
    lines.append(
      f"| {row['method']} | {fmt(r['reward']) if r else '–'} | {fmt(m['R_precision_top_1'])} | "
      f"{fmt(m['R_precision_top_3'])} | {fmt(m['Matching_score'], 2)} | {fmt(m['FID'], 2)} | "
      f"{fmt(m['Diversity'], 2)} | {t['seconds_per_batch']:.3f} | {t['memory']['total'] / 2**20:.1f} |"
    )
  return lines


def guidance_markdown(record: dict) -> str:
  cpu, t0 = record["cpu"], record["rows"][0]["timing"]
  lines = [
    "# Reward-guided sampling on the quickstart models",
    "",
    f"Guidance: {record['guidance_description']}; reward {record['reward']!r}. Evaluator metrics: the separate "
    "T2M-style evaluator on the test split (mean ± 95% CI over the replications); the reward-model score is the "
    "reward that guides (it grades its own guidance).",
    "",
    *guidance_table(record),
    "",
    f"Sampling time: median of {len(t0['all_s'])} calls of one batch of {t0['batch_size']} captions x "
    f"{t0['length']} frames, {t0['num_steps']} steps, after a first call that compiles, the rows called in turn "
    f"(load average {t0['loadavg_before'][0]:.2f} before, {t0['loadavg_after'][0]:.2f} after, "
    f"{record['cpu_count']} cores); compiled MiB: XLA's memory analysis of that sampler call (temp + arguments + "
    f"output). CPU: {cpu['model']}.",
    "",
  ]
  return "\n".join(lines)


def run_guidance_comparison(
  plain: dict,
  guided: dict,
  evaluate_row: Callable,
  out_dir: pathlib.Path,
  captions: list,
  length: int,
  num_steps: int,
  guidance_scale: float,
  plain_results: dict,
  reward: str,
  repeats: int = 10,
  root: pathlib.Path | None = None,
) -> dict:
  """Evaluates the guided rows, times every row and writes `out_dir`'s files (module docstring).

  Args:
    plain / guided: {row name: Generator} / {row name ('<plain>+guidance'): GuidedGenerator}.
    evaluate_row: `(gen, name) -> evaluation result` (the protocol of the plain rows).
    captions, length: the timing batch; num_steps, guidance_scale: the sampler of every row.
    plain_results: {row name: the plain rows' evaluation results}; reward: the guiding reward's spec.
    root: the quickstart workdir: the files name its folders relative to it (`core.rerun.relative_strings`).
  Returns:
    guidance.json's record, with "paths".
  """
  out_dir.mkdir(parents=True, exist_ok=True)
  guided_results = {name: evaluate_row(gen, name) for name, gen in guided.items()}
  written = list(guided_results.values())
  paths = write_results(written if root is None else rerun.relative_strings(written, root), str(out_dir))
  timing = measure_samplers({**plain, **guided}, captions, length, num_steps, guidance_scale, repeats)
  rows = []
  for name, res in guidance_rows(plain_results, guided_results):
    rows.append({"method": name, "metrics": res["metrics"], "reward": res.get("reward") or {}, "timing": timing[name]})
  first_guided = next(iter(guided.values()))
  assert isinstance(first_guided, GuidedGenerator)
  record = {
    "guidance": dataclasses.asdict(first_guided.guidance),
    "guidance_description": first_guided.guidance.describe(),
    "reward": reward,
    "rows": rows,
    "cpu": cpu_description(),
    "cpu_count": os.cpu_count(),
    "jax": jax.__version__,
    "numpy": np.__version__,
  }
  (out_dir / "guidance.json").write_text(json.dumps(record, indent=1))
  (out_dir / "guidance.md").write_text(guidance_markdown(record))
  record["paths"] = {
    "json": str(out_dir / "guidance.json"),
    "markdown": str(out_dir / "guidance.md"),
    "eval_json": paths["json"],
    "eval_markdown": paths["markdown"],
  }
  return record


def export_guidance_docs(workdir: str, docs_dir: str) -> list[str]:
  """Copies a quickstart's guidance/guidance.json and guidance.md (the stage 'guidance') into `docs_dir`."""
  src, docs = pathlib.Path(workdir) / "guidance", pathlib.Path(docs_dir)
  docs.mkdir(parents=True, exist_ok=True)
  written = []
  for name in ("guidance.json", "guidance.md"):
    (docs / name).write_bytes((src / name).read_bytes())
    written.append(str(docs / name))
  return written
