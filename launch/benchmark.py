"""Memory / speed / alignment benchmark of EasyTune vs DRaFT-K, ReFL, AlignProp, DRTune (issue 8).

  python -m launch.benchmark --config=tiny --out_dir=docs/benchmark \
      --generator_workdir=runs/base --reward_workdir=runs/reward --data_dir=runs/data \
      [--evaluator_workdir=runs/evaluator]

Without the workdir flags, --config=tiny builds a seconds-long tiny pipeline under <out_dir>/pipeline
(`pipelines.tiny.build_tiny_pipeline`) and benchmarks it. --config=paper is for a GPU with MLD-size models
(train them first with launch/train_base.py --config=paper, train_reward.py, train_evaluator.py): memory at
T in (10, 50, 200) and speed / alignment at T=50 (the paper's DRaFT-50 comparison), 10 minutes of training
per method. Writes benchmark.json, benchmark.md, memory_vs_T.png, reward_vs_time.png to --out_dir.
"""

import dataclasses
import json

from absl import app, flags, logging

from easytune_jax import cli
from easytune_jax.bench import benchmark
from easytune_jax.pipelines.tiny import build_tiny_pipeline
from easytune_jax.core.metric_writer import quiet_library_logs

FLAGS = flags.FLAGS
flags.DEFINE_enum("config", "tiny", ["tiny", "paper"], "Benchmark preset (benchmark.get_config).")
flags.DEFINE_string("out_dir", None, "Where benchmark.json / .md / .png go.", required=True)
flags.DEFINE_string("generator_workdir", None, "Work directory of launch/train_base.py.")
flags.DEFINE_string("reward_workdir", None, "Work directory of launch/train_reward.py.")
flags.DEFINE_string("data_dir", None, "HumanML3D-layout dataset (train batches, val held-out, test eval).")
flags.DEFINE_string("evaluator_workdir", None, "Optional evaluator for R-precision / MM-Dist / FID.")
flags.DEFINE_list("memory_steps", None, "Override: T values of the memory sweep (e.g. 10,50,200).")
flags.DEFINE_integer("speed_steps", None, "Override: T of the speed / alignment runs.")
flags.DEFINE_list("memory_variants", None, "Override: e.g. easytune,draft-1,draft-T,draft-T+remat,refl.")
flags.DEFINE_list("speed_variants", None, "Override: e.g. easytune,draft-T.")
flags.DEFINE_float("budget_seconds", None, "Override: training wall-time budget per method (s).")
flags.DEFINE_integer("budget_trajectories", None, "Override: trajectory budget per method.")
flags.DEFINE_integer("curve_points", None, "Override: held-out evaluations between start and end.")
flags.DEFINE_float("target_gain", None, "Override: held-out reward gain whose reaching time is compared "
                   "(default: half the largest final gain).")
flags.DEFINE_integer("speed_seeds", None, "Override: independent budgeted runs (seeds) per method.")
flags.DEFINE_integer("batch_size", None, "Override: captions per trajectory.")
flags.DEFINE_float("learning_rate", None, "Override: AdamW learning rate of every method.")
flags.DEFINE_integer("grad_chunk", None, "Override: C of frozen EasyTune variants without a '+chunk<C>' suffix "
                     "(per-step gradients batched C at a time; 1 = sequential).")
flags.DEFINE_integer("speed_repeats", None, "Override: timed runs per method (median reported).")
flags.DEFINE_bool("floor", None, "Override: also time sampling alone and one one-step gradient (the floor).")
flags.DEFINE_bool("memory", True, "Run the memory sweep.")
flags.DEFINE_bool("speed", True, "Run the speed / alignment runs.")
cli.define_flags()


def config_from_flags() -> benchmark.BenchmarkConfig:
  cfg = benchmark.get_config(FLAGS.config)
  over = {}
  if FLAGS.memory_steps:
    over["memory_steps"] = tuple(int(t) for t in FLAGS.memory_steps)
  for name in ("memory_variants", "speed_variants"):
    if getattr(FLAGS, name):
      over[name] = tuple(getattr(FLAGS, name))
  for name in ("speed_steps", "budget_seconds", "budget_trajectories", "batch_size", "learning_rate",
               "curve_points", "target_gain", "speed_seeds", "grad_chunk", "floor", "speed_repeats"):
    if getattr(FLAGS, name) is not None:
      over[name] = getattr(FLAGS, name)
  return dataclasses.replace(cfg, **over)


def main(argv):
  del argv
  quiet_library_logs()
  cfg = config_from_flags()
  gen, rew, data, ev = FLAGS.generator_workdir, FLAGS.reward_workdir, FLAGS.data_dir, FLAGS.evaluator_workdir
  given = [x is not None for x in (gen, rew, data)]
  if any(given) and not all(given):
    raise app.UsageError("--generator_workdir, --reward_workdir and --data_dir go together")
  if not any(given):
    if FLAGS.config != "tiny":
      raise app.UsageError("--config=paper needs --generator_workdir, --reward_workdir and --data_dir")
    logging.info("no workdirs given: building the tiny pipeline under %s/pipeline", FLAGS.out_dir)
    p = build_tiny_pipeline(f"{FLAGS.out_dir}/pipeline")
    gen, rew, data, ev = p.generator, p.reward, p.data, ev or p.evaluator
  result = benchmark.run_benchmark(cfg, gen, rew, data, ev, memory=FLAGS.memory, speed=FLAGS.speed)
  paths = benchmark.write_outputs(result, FLAGS.out_dir)
  print(json.dumps({"summary": result["summary"], "outputs": paths}, indent=2))


if __name__ == "__main__":
  cli.run(main, outputs=("out_dir",), inputs=("generator_workdir", "reward_workdir", "data_dir", "evaluator_workdir"))
