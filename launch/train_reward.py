"""Trains the step-aware reward model (SPM): TMR-style pretraining, or SPL fine-tuning with --spl.

  # pretraining (tiny CPU config), then SPL fine-tuning from it:
  python launch/train_reward.py --config=tiny --data_dir=/tmp/synth --workdir=/tmp/spm --mode=M1T0
  python launch/train_reward.py --config=tiny --data_dir=/tmp/synth --workdir=/tmp/spm_spl --spl \
      --init_from=/tmp/spm
  # EasyTune's sizes: --config=paper

Scale-out: --mesh=data=8 (or data=4,fsdp=2); --batch_size is the global batch and the InfoNCE/SPL negatives
span it. Multi-host: --coordinator_address/--num_processes/--process_id or --distributed.

Re-running with the same --workdir resumes from its latest checkpoint. Retrieval metrics on --eval_split
(clean and noised motion) go to <workdir>/retrieval.json.
"""

from __future__ import annotations

import dataclasses
import json

from absl import flags, logging

from easytune_jax import cli
from easytune_jax.core import parallel
from easytune_jax.data.humanml3d import load_dataset
from easytune_jax.data.text import TextEmbeddings
from easytune_jax.models.spm import MODES
from easytune_jax.train.reward import RewardTrainConfig, train_reward
from easytune_jax.core.metric_writer import quiet_library_logs

FLAGS = flags.FLAGS
flags.DEFINE_enum("config", "tiny", ["tiny", "paper"], "Named config: tiny (CPU) or paper (EasyTune sizes).")
flags.DEFINE_string("workdir", None, "Output folder (checkpoints, metrics, retrieval.json).", required=True)
flags.DEFINE_string("data_dir", None, "HumanML3D-layout dataset folder.", required=True)
flags.DEFINE_enum("mode", None, list(MODES), "Timestep-token mode (default: the config's).")
flags.DEFINE_float("noise_threshold", None, "Probability that a batch stays clean (default: the config's).")
flags.DEFINE_bool("spl", False, "Add the SPL preference loss (fine-tuning stage, lr = spl_learning_rate).")
flags.DEFINE_string("init_from", None, "Workdir of a trained SPM to start from (for --spl).")
flags.DEFINE_integer("steps", None, "Optimizer steps (default: the config's num_steps).")
flags.DEFINE_integer("batch_size", None, "Override the batch size.")
flags.DEFINE_float("learning_rate", None, "Override the stage's learning rate.")
flags.DEFINE_string("text_embeddings", None, "Precomputed text-embeddings .npz (uses text_input='embeddings').")
flags.DEFINE_string("train_split", "train", "Training split file stem.")
flags.DEFINE_string("eval_split", "test", "Evaluation split ('' to skip retrieval evaluation).")
flags.DEFINE_integer("seed", None, "Override the seed.")
parallel.define_flags()
cli.define_flags()


def main(argv):
  del argv
  quiet_library_logs()
  mesh = parallel.setup_from_flags()
  config = RewardTrainConfig() if FLAGS.config == "tiny" else RewardTrainConfig.paper()
  overrides = {k: v for k, v in (("batch_size", FLAGS.batch_size), ("seed", FLAGS.seed)) if v is not None}
  if overrides:
    config = dataclasses.replace(config, **overrides)
  train = load_dataset(FLAGS.data_dir, FLAGS.train_split)
  evaluation = load_dataset(FLAGS.data_dir, FLAGS.eval_split) if FLAGS.eval_split else None
  emb = TextEmbeddings(FLAGS.text_embeddings) if FLAGS.text_embeddings else None
  result = train_reward(config, FLAGS.workdir, train, mode=FLAGS.mode, noise_threshold=FLAGS.noise_threshold,
                        spl=FLAGS.spl, init_from=FLAGS.init_from, steps=FLAGS.steps, text_embeddings=emb,
                        eval_dataset=evaluation, learning_rate=FLAGS.learning_rate,
                        mesh=mesh if mesh.devices.size > 1 else None)
  logging.info("trained %d steps in %.1f s -> %s", result["steps"], result["train_seconds"], FLAGS.workdir)
  if result["retrieval"]:
    short = {k: {m: round(v, 2) for m, v in d.items() if m in ("t2m/R@1", "t2m/R@3", "t2m/MedR")}
             for k, d in result["retrieval"].items()}
    logging.info("retrieval: %s", json.dumps(short))


if __name__ == "__main__":
  cli.run(main, outputs=("workdir",), inputs=("data_dir", "init_from"), files=("text_embeddings",))
