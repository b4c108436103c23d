"""Memory / speed / alignment benchmark of EasyTune vs DRaFT-K, ReFL, AlignProp, DRTune (issue 8).

  python -m launch.benchmark --config=tiny --out_dir=docs/benchmark \
      --generator_workdir=runs/base --reward_workdir=runs/reward --data_dir=runs/data \
      [--evaluator_workdir=runs/evaluator]

Without the workdir flags, --config=tiny builds a seconds-long tiny pipeline under <out_dir>/pipeline
(`pipelines.tiny.build_tiny_pipeline`) and benchmarks it. --config=paper is for a GPU with MLD-size models
(train them first with launch/train_base.py --config=paper, train_reward.py, train_evaluator.py): memory at
T in (10, 50, 200) and speed / alignment at T=50 (the paper's DRaFT-50 comparison), 10 minutes of training
per method. Writes benchmark.json, benchmark.md, memory_vs_T.png, reward_vs_time.png to --out_dir.

--config: the `BenchmarkConfig` (bench/config.py): a preset of easytune_jax/configs/benchmark.py ('tiny',
'paper') or a .py file with get_config(); override any field with --config.<field>=<value>, e.g.
--config.memory_steps=10,50 --config.speed_variants=easytune,draft-T --config.budget_seconds=60
--config.target_gain=none --config.learning_rate=1e-4 --config.floor=false.

--readme=README.md also rewrites the README's tables between the markers of --out_dir
(`bench.report.readme_markers`; tests/test_docs.py checks they equal the JSON's). --from_json=<benchmark.json>
measures nothing: it recomputes what is derived from a stored run's measurements (floors, summary;
`bench.benchmark.refresh`) and rewrites its outputs (and the README's tables) in --out_dir.
"""

import json
import pathlib

from absl import app, flags, logging

from easytune_jax import cli
from easytune_jax.bench.benchmark import refresh, run_benchmark
from easytune_jax.bench.report import readme_with_tables, write_outputs
from easytune_jax.configs import benchmark as presets
from easytune_jax.core.metric_writer import quiet_library_logs
from easytune_jax.pipelines.tiny import build_tiny_pipeline

FLAGS = flags.FLAGS
flags.DEFINE_string("out_dir", None, "Where benchmark.json / .md / .png go.", required=True)
flags.DEFINE_string("generator_workdir", None, "Work directory of launch/train_base.py.")
flags.DEFINE_string("reward_workdir", None, "Work directory of launch/train_reward.py.")
flags.DEFINE_string("data_dir", None, "HumanML3D-layout dataset (train batches, val held-out, test eval).")
flags.DEFINE_string("evaluator_workdir", None, "Optional evaluator for R-precision / MM-Dist / FID.")
flags.DEFINE_bool("memory", True, "Run the memory sweep.")
flags.DEFINE_bool("speed", True, "Run the speed / alignment runs.")
flags.DEFINE_string("readme", None, "Rewrite this README's tables of --out_dir (between its markers).")
flags.DEFINE_string("from_json", None, "Re-render a stored benchmark.json (nothing is measured).")
cli.define_config_flag(presets.PRESETS, "tiny", "The BenchmarkConfig (easytune_jax/configs/benchmark.py).")
cli.define_flags(dataset=True, progress=False)


def main(argv):
  del argv
  quiet_library_logs()
  if FLAGS.from_json:
    result = refresh(json.loads(pathlib.Path(FLAGS.from_json).read_text()))
    write(result)
    return
  cfg = cli.get_config()
  gen, rew, data, ev = FLAGS.generator_workdir, FLAGS.reward_workdir, FLAGS.data_dir, FLAGS.evaluator_workdir
  given = [x is not None for x in (gen, rew, data)]
  if any(given) and not all(given):
    raise app.UsageError("--generator_workdir, --reward_workdir and --data_dir go together")
  if not any(given):
    if FLAGS.config != "tiny":
      raise app.UsageError(f"--config={FLAGS.config} needs --generator_workdir, --reward_workdir and --data_dir")
    logging.info("no workdirs given: building the tiny pipeline under %s/pipeline", FLAGS.out_dir)
    p = build_tiny_pipeline(f"{FLAGS.out_dir}/pipeline")
    gen, rew, data, ev = p.generator, p.reward, p.data, ev or p.evaluator
  write(run_benchmark(cfg, gen, rew, data, ev, memory=FLAGS.memory, speed=FLAGS.speed))


def write(result: dict) -> None:
  """The outputs in --out_dir and, with --readme, the README's tables of --out_dir."""
  paths = write_outputs(result, FLAGS.out_dir)
  if FLAGS.readme:
    readme = pathlib.Path(FLAGS.readme)
    saved = json.loads(pathlib.Path(paths["json"]).read_text())  # what tests/test_docs.py reads
    readme.write_text(readme_with_tables(readme.read_text(), saved, FLAGS.out_dir, str(readme)))
  print(json.dumps({"summary": result["summary"], "outputs": {k: str(v) for k, v in paths.items()}}, indent=2))


if __name__ == "__main__":
  cli.run(main, outputs=("out_dir",), inputs=("generator_workdir", "reward_workdir", "data_dir", "evaluator_workdir"))
