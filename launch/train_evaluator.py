"""Trains the T2M-architecture evaluator from scratch on the TRAIN split (its own seed and statistics).

  python launch/train_evaluator.py --workdir=/tmp/evaluator --data_dir=/tmp/synthetic_hml --config=tiny

Scale-out: --mesh=data=8 (multi-host flags as in launch/finetune.py).

Re-running with the same --workdir resumes (or just reports a finished run).
"""

import json

from absl import flags, logging

from easytune_jax import cli
from easytune_jax.core import parallel
from easytune_jax.train import evaluator as te
from easytune_jax.core.metric_writer import quiet_library_logs

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Output folder (checkpoints, vocab.json, mean.npy/std.npy, metrics).",
                    required=True)
flags.DEFINE_string("data_dir", None, "HumanML3D-layout dataset folder.", required=True)
flags.DEFINE_enum("config", "tiny", ["tiny", "paper"], "Named config (tiny = the CPU one).")
flags.DEFINE_integer("steps", None, "Override the number of steps.")
flags.DEFINE_integer("batch_size", None, "Override the batch size.")
flags.DEFINE_integer("seed", None, "Override the evaluator's own seed.")
parallel.define_flags()
cli.define_flags()


def main(argv):
    del argv
    quiet_library_logs()
    mesh = parallel.setup_from_flags()
    out = te.train_evaluator(te.get_config(FLAGS.config), FLAGS.workdir, FLAGS.data_dir, steps=FLAGS.steps,
                             batch_size=FLAGS.batch_size, seed=FLAGS.seed,
                             mesh=mesh if mesh.devices.size > 1 else None)
    logging.info("evaluator trained: %d steps in %.1f s; validation %s", out["steps"], out["seconds"],
                 json.dumps(out["val"]))


if __name__ == "__main__":
    cli.run(main, outputs=("workdir",), inputs=("data_dir",))
