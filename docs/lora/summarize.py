"""Collects the LoRA vs full fine-tuning figures of docs/lora/README.md into docs/lora/summary.json.

  python docs/lora/summarize.py --runs full=runs/quickstart/finetune_easytune,lora8=runs/lora_r8,... \
      --eval runs/eval_lora/eval.json --out docs/lora/summary.json

Per run: held-out reward (base, final), updates, seconds, the adapter record's sizes, the bytes of its
`checkpoints/` and `best/` folders, its finetune config's lora and learning rate, and the evaluator metrics of the
row named like the run in eval.json (launch/evaluate.py --names). Memory: the records of
official_paper_memory/ and official_tiny_memory/ (benchmark.json) beside this file. No machine paths are kept.
"""

import argparse
import json
import pathlib

HERE = pathlib.Path(__file__).parent


def folder_bytes(p: pathlib.Path) -> int:
  return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.exists() else 0


def run_record(path: pathlib.Path) -> dict:
  s = json.loads((path / "summary.json").read_text())
  info = json.loads((path / "finetune.json").read_text())
  ft = info["run"]["finetune"]
  out = {
    "method": s["method"],
    "lora": ft.get("lora"),
    "learning_rate": ft["optim"]["learning_rate"],
    "trajectories": s["trajectories"],
    "updates": s["updates"],
    "base_heldout_reward": s["base_heldout_reward"],
    "final_heldout_reward": s["final_heldout_reward"],
    "gain": s["final_heldout_reward"] - s["base_heldout_reward"],
    "seconds": s["seconds"],
    "compile_seconds": s["compile_seconds"],
    "checkpoints_bytes": folder_bytes(path / "checkpoints"),
    "best_bytes": folder_bytes(path / "best"),
  }
  if "adapter" in info:
    out["adapter"] = {k: v for k, v in info["adapter"].items() if k != "generator_workdir"}
  return out


def memory(name: str) -> list:
  p = HERE / name / "benchmark.json"
  if not p.exists():
    return []
  r = json.loads(p.read_text())
  return [
    {
      "variant": x["variant"],
      "T": x["T"],
      "memory_bytes": x["memory"],
      "state_bytes": x.get("state_bytes"),
      "denoiser_params": r["param_counts"]["official_mld_denoiser"],
    }
    for x in r["records"]
  ]


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--runs", required=True, help="name=folder,... (fine-tuning run folders)")
  ap.add_argument("--eval", help="eval.json of launch/evaluate.py with rows named as the runs")
  ap.add_argument("--out", default=str(HERE / "summary.json"))
  a = ap.parse_args()
  runs = {}
  for item in a.runs.split(","):
    name, path = item.split("=", 1)
    runs[name] = run_record(pathlib.Path(path))
  evals = {}
  if a.eval:
    for r in json.loads(pathlib.Path(a.eval).read_text())["results"]:
      evals[r["method"]] = {k: v for k, v in r["metrics"].items()}
      evals[r["method"]]["extras"] = r.get("extras")
  out = {
    "runs": runs,
    "evaluation": evals,
    "memory": {"official_paper": memory("official_paper_memory"), "official_tiny": memory("official_tiny_memory")},
  }
  pathlib.Path(a.out).write_text(json.dumps(out, indent=1))
  print(json.dumps({k: {"gain": v["gain"], "ckpt": v["checkpoints_bytes"]} for k, v in runs.items()}, indent=1))


if __name__ == "__main__":
  main()
