"""Trains the step-aware reward model (SPM): TMR-style pretraining, or SPL fine-tuning with --spl.

  # pretraining (tiny CPU config), then SPL fine-tuning from it:
  python launch/train_reward.py --config=tiny --data_dir=/tmp/synth --workdir=/tmp/spm --config.model.mode=M1T0
  python launch/train_reward.py --config=tiny --data_dir=/tmp/synth --workdir=/tmp/spm_spl --spl \
      --init_from=/tmp/spm
  # EasyTune's sizes and objective: --config=paper

--config: the `RewardTrainConfig` (rewards/spm_objective.py): a preset of easytune_jax/configs/reward.py ('tiny',
'paper' = 'official', 'paper_tmr') or a .py file with get_config(); override any field with --config.<field>=<value>
(e.g. --config.num_steps=1000 --config.batch_size=64 --config.noise_threshold=0.3; the SPL stage's rate is
--config.spl_learning_rate). With --init_from the architecture is the init checkpoint's (--config.model.mode
still applies).

Scale-out: --mesh=data=8 (or data=4,fsdp=2); batch_size is the global batch and the InfoNCE/SPL negatives
span it. Multi-host: --coordinator_address/--num_processes/--process_id or --distributed.

Re-running with the same --workdir resumes from its latest checkpoint. Retrieval metrics on --eval_split
(clean and noised motion) go to <workdir>/retrieval.json.
"""

from __future__ import annotations

import json

from absl import flags, logging

from easytune_jax import cli
from easytune_jax.configs import reward as presets
from easytune_jax.core import parallel
from easytune_jax.core.metric_writer import quiet_library_logs
from easytune_jax.data.humanml3d import load_dataset
from easytune_jax.data.text import TextEmbeddings
from easytune_jax.train.reward import train_reward

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Output folder (checkpoints, metrics, retrieval.json).", required=True)
flags.DEFINE_string("data_dir", None, "HumanML3D-layout dataset folder.", required=True)
flags.DEFINE_bool("spl", False, "Add the SPL preference loss (fine-tuning stage, lr = spl_learning_rate).")
flags.DEFINE_string("init_from", None, "Workdir of a trained SPM to start from (for --spl).")
flags.DEFINE_string("text_embeddings", None, "Precomputed text-embeddings .npz (uses text_input='embeddings').")
flags.DEFINE_string("train_split", "train", "Training split file stem.")
flags.DEFINE_string("eval_split", "test", "Evaluation split ('' to skip retrieval evaluation).")
cli.define_config_flag(presets.PRESETS, "tiny", "The RewardTrainConfig (easytune_jax/configs/reward.py).")
cli.define_flags(dataset=True, progress=True, mesh=True)


def main(argv):
  del argv
  quiet_library_logs()
  config = cli.get_config()
  mesh = parallel.setup_from_flags()
  train = load_dataset(FLAGS.data_dir, FLAGS.train_split)
  evaluation = load_dataset(FLAGS.data_dir, FLAGS.eval_split) if FLAGS.eval_split else None
  emb = TextEmbeddings(FLAGS.text_embeddings) if FLAGS.text_embeddings else None
  # --init_from replaces the architecture by the checkpoint's; an explicit mode still applies on top of it.
  mode = config.model.mode if "model.mode" in cli.config_overrides() else None
  result = train_reward(
    config,
    FLAGS.workdir,
    train,
    mode=mode,
    spl=FLAGS.spl,
    init_from=FLAGS.init_from,
    text_embeddings=emb,
    eval_dataset=evaluation,
    mesh=mesh if mesh.devices.size > 1 else None,
    progress=FLAGS.progress,
  )
  logging.info("trained %d steps in %.1f s -> %s", result["steps"], result["train_seconds"], FLAGS.workdir)
  if result["retrieval"]:
    short = {
      k: {m: round(v, 2) for m, v in d.items() if m in ("t2m/R1", "t2m/R3", "t2m/MedR")}
      for k, d in result["retrieval"].items()
    }
    logging.info("retrieval: %s", json.dumps(short))


if __name__ == "__main__":
  cli.run(main, outputs=("workdir",), inputs=("data_dir", "init_from"), files=("text_embeddings",))
