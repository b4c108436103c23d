"""Trains the T2M-architecture evaluator from scratch on the TRAIN split (its own seed and statistics).

  python launch/train_evaluator.py --workdir=/tmp/evaluator --data_dir=/tmp/synthetic_hml --config=tiny \
      [--config.steps=600 --config.batch_size=64 --config.seed=7]

--config: the `EvaluatorTrainConfig` (train/evaluator.py): a preset of easytune_jax/configs/evaluator.py ('tiny',
'paper') or a .py file with get_config(); override any field with --config.<field>=<value>.

Scale-out: --mesh=data=8 (multi-host flags as in launch/finetune.py).

Re-running with the same --workdir resumes (or just reports a finished run).
"""

import json

from absl import flags, logging

from easytune_jax import cli
from easytune_jax.configs import evaluator as presets
from easytune_jax.core import parallel
from easytune_jax.core.metric_writer import quiet_library_logs
from easytune_jax.train import evaluator as te

FLAGS = flags.FLAGS
flags.DEFINE_string(
  "workdir", None, "Output folder (checkpoints, vocab.json, mean.npy/std.npy, metrics).", required=True
)
flags.DEFINE_string("data_dir", None, "HumanML3D-layout dataset folder.", required=True)
cli.define_config_flag(presets.PRESETS, "tiny", "The EvaluatorTrainConfig (easytune_jax/configs/evaluator.py).")
cli.define_flags(dataset=True, progress=True, mesh=True)


def main(argv):
  del argv
  quiet_library_logs()
  config = cli.get_config()
  mesh = parallel.setup_from_flags()
  out = te.train_evaluator(
    config, FLAGS.workdir, FLAGS.data_dir, mesh=mesh if mesh.devices.size > 1 else None, progress=FLAGS.progress
  )
  logging.info(
    "evaluator trained: %d steps in %.1f s; validation %s", out["steps"], out["seconds"], json.dumps(out["val"])
  )


if __name__ == "__main__":
  cli.run(main, outputs=("workdir",), inputs=("data_dir",))
