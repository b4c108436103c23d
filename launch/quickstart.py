"""The README's main command: from nothing to a fine-tuned model, numbers and pictures.

  python -m launch.quickstart --workdir runs/quickstart            # ~8-9 min on an idle 2-core CPU
  python -m launch.quickstart --workdir runs/big --scale 5 --num_motions 4000
  python -m launch.quickstart --workdir runs/hml --data_dir /data/HumanML3D   # real data

Rerunning the same command resumes every stage from its checkpoints; stages whose inputs and settings have not
changed since they finished are skipped (<workdir>/manifest.json), so a rerun of a finished run takes seconds.
"""

from absl import app, flags, logging

from easytune_jax import finetune
from easytune_jax import cli
from easytune_jax.pipelines import quickstart
from easytune_jax.core.metric_writer import quiet_library_logs

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "runs/quickstart", "Output folder (every stage resumes from it).")
flags.DEFINE_string("data_dir", None, "HumanML3D-layout folder; default writes the synthetic dataset.")
flags.DEFINE_integer("num_motions", quickstart.QuickstartConfig.num_motions, "Synthetic dataset size.")
flags.DEFINE_integer("max_frames", quickstart.QuickstartConfig.max_frames,
                     "Longest synthetic motion in frames (longer ones are cropped to the tiny generator's "
                     "64-frame window in training).")
flags.DEFINE_float("scale", 1.0, "Multiplies every stage's step count.")
flags.DEFINE_list("methods", list(quickstart.QuickstartConfig.methods),
                  f"Fine-tuning methods, from {list(finetune.METHODS)}.")
flags.DEFINE_integer("num_steps", quickstart.QuickstartConfig.num_steps, "DDIM steps.")
flags.DEFINE_integer("trajectories", quickstart.QuickstartConfig.trajectories, "Fine-tuning trajectories.")
flags.DEFINE_integer("replications", quickstart.QuickstartConfig.replications, "Evaluation replications.")
flags.DEFINE_integer("seed", 0, "Seed.")
flags.DEFINE_enum("reward_objective", quickstart.QuickstartConfig.reward_objective, ["official", "ours"],
                  "SPM training objective (train/reward.py OFFICIAL_OBJECTIVE / OUR_OBJECTIVE).")
cli.define_flags()


def main(argv):
  del argv
  quiet_library_logs()
  unknown = [m for m in FLAGS.methods if m not in finetune.METHODS]
  if unknown:
    raise app.UsageError(f"--methods: unknown {unknown}; expected some of {list(finetune.METHODS)}")
  logging.set_verbosity(logging.INFO)
  cfg = quickstart.QuickstartConfig(
      data_dir=FLAGS.data_dir, num_motions=FLAGS.num_motions, max_frames=FLAGS.max_frames, scale=FLAGS.scale, methods=tuple(FLAGS.methods),
      num_steps=FLAGS.num_steps, trajectories=FLAGS.trajectories, replications=FLAGS.replications,
      seed=FLAGS.seed, reward_objective=FLAGS.reward_objective)
  summary = quickstart.run_quickstart(cfg, FLAGS.workdir)
  print(quickstart.summary_screen(summary))


if __name__ == "__main__":
  cli.run(main, outputs=("workdir",), inputs=("data_dir",))
