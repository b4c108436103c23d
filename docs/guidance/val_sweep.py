"""The guidance scale sweep of docs/guidance/README.md: guided rows of a finished quickstart evaluated on the VAL
split (3 replications, no MultiModality), so that the scale of the test-split table is not picked on the test split.

  python docs/guidance/val_sweep.py runs/quickstart base 0,10,30,100,300,1000 [variant JSON] [out.json]

`variant`: other GuidanceConfig fields as JSON, e.g. '{"reward_input": "clean_estimate", "reward_timestep": "none"}'.
Prints one line per row and scale; appends the records to `out.json` (default docs/guidance/val_sweep.json).
"""

import dataclasses
import json
import pathlib
import sys
import time

from easytune_jax.bundles import generator
from easytune_jax.bundles.evaluator import load_trained_evaluator
from easytune_jax.bundles.finetuned import load_finetuned_generator
from easytune_jax.bundles.guided import GuidedGenerator
from easytune_jax.bundles.task import load_task
from easytune_jax.core.guidance import GuidanceConfig
from easytune_jax.data.humanml3d import load_dataset
from easytune_jax.eval import evaluation
from easytune_jax.pipelines.quickstart import QuickstartConfig, reward_fn_for


def main(root, rows, scales, variant, out):
  cfg = QuickstartConfig()
  val = load_dataset(f"{root}/data", "val")
  ev = load_trained_evaluator(f"{root}/evaluator").with_dataset_stats(val.mean, val.std)
  task = load_task(f"{root}/base", f"{root}/reward")
  path = pathlib.Path(out)
  records = json.loads(path.read_text()) if path.exists() else []
  for row in rows:
    gen = task.gen if row == "base" else load_finetuned_generator(f"{root}/finetune_{row}")
    row_task = dataclasses.replace(task, gen=gen)
    for scale in scales:
      guided = GuidedGenerator(row_task, GuidanceConfig(scale=scale, **variant))
      t0 = time.time()
      res = evaluation.evaluate(
        generator.generator_fn(guided, cfg.guidance_scale, cfg.num_steps),
        ev,
        val,
        replications=3,
        mm=False,
        max_length=min(gen.max_length, ev.max_length),
        seed=cfg.seed,
        method=f"{row}@{scale:g}",
        reward_fn=reward_fn_for(cfg, row_task, gen),
      )
      m, r = res["metrics"], res["reward"]
      print(
        f"{row:9s} scale {scale:8g}: reward {r['reward'][0]:.3f}  R@1 {m['R_precision_top_1'][0]:.3f}  "
        f"R@3 {m['R_precision_top_3'][0]:.3f}  MM-Dist {m['Matching_score'][0]:.2f}  FID {m['FID'][0]:.2f}  "
        f"Diversity {m['Diversity'][0]:.2f}  ({time.time() - t0:.0f} s)",
        flush=True,
      )
      records.append({"row": row, "scale": scale, "variant": variant, "metrics": m, "reward": r})
  path.write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
  args = sys.argv[1:]
  main(
    args[0],
    args[1].split(","),
    [float(s) for s in args[2].split(",")],
    json.loads(args[3]) if len(args) > 3 else {},
    args[4] if len(args) > 4 else "docs/guidance/val_sweep.json",
  )
