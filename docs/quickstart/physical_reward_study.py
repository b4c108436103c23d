"""What a physical reward term does: EasyTune on the quickstart's models with --reward=spm:1.0,skating:W.

Reuses a finished quickstart work directory (base generator, SPM reward, evaluator, data) and runs the
quickstart's EasyTune fine-tuning again with the SPM reward plus a foot-skating penalty of weight W, then
evaluates it with the quickstart's protocol (same seed, replications, evaluator). Writes
<out>/finetune_easytune_skating<W>/ and <out>/eval/eval.{json,md}.

  python docs/quickstart/physical_reward_study.py /path/to/quickstart_workdir /path/to/out 0.2 1.0
"""

import dataclasses
import pathlib
import sys

from easytune_jax.core import rerun
from easytune_jax.data.humanml3d import load_dataset
from easytune_jax.eval import evaluation
from easytune_jax.eval.report import write_results
from easytune_jax.bundles.evaluator import load_trained_evaluator
from easytune_jax.bundles.finetuned import load_finetuned_generator
from easytune_jax.bundles.generator import generator_fn
from easytune_jax.bundles.task import load_task
from easytune_jax.pipelines import quickstart as qs
from easytune_jax.train import finetune_runner as fr


def main(qs_dir: str, out: str, *weights: str):
  root, out = pathlib.Path(qs_dir), pathlib.Path(out)
  cfg = qs.QuickstartConfig()
  data_dir, gen_dir, reward_dir = str(root / "data"), str(root / "base"), str(root / "reward")
  runs = {}
  for w in weights:
    run = dataclasses.replace(qs.run_config(cfg, "easytune"), reward=f"spm:1.0,skating:{w}")
    workdir = out / f"finetune_easytune_skating{w}"
    runs[f"easytune+skating{w}"] = workdir
    print(fr.run_finetune(run, str(workdir), gen_dir, reward_dir, data_dir))
  test = load_dataset(data_dir, "test")
  evaluator = load_trained_evaluator(str(root / "evaluator")).with_dataset_stats(test.mean, test.std)
  task = load_task(gen_dir, reward_dir)
  results = []
  for name, workdir in runs.items():
    gen = load_finetuned_generator(str(workdir))
    results.append(evaluation.evaluate(
        generator_fn(gen, cfg.guidance_scale, cfg.num_steps), evaluator, test, replications=cfg.replications, mm=True,
        mm_num_samples=min(20, len(test)), mm_num_repeats=5, mm_num_times=3,
        max_length=min(gen.max_length, evaluator.max_length), seed=cfg.seed, method=name,
        reward_fn=qs.reward_fn_for(cfg, task, gen), progress=True))
  # the quickstart's evaluator and data named relative to its workdir (no machine path in the docs)
  print(write_results(rerun.relative_strings(results, root), str(out / "eval")))


if __name__ == "__main__":
  main(*sys.argv[1:])
