"""The README's main command: from nothing to a fine-tuned model, numbers and pictures.

  python -m launch.quickstart --workdir runs/quickstart            # ~8-9 min on an idle 2-core CPU
  python -m launch.quickstart --workdir runs/big --config.scale=5 --config.num_motions=4000
  python -m launch.quickstart --workdir runs/hml --data_dir /data/HumanML3D   # real data

--config: the `QuickstartConfig` (pipelines/quickstart.py): the preset 'tiny' (easytune_jax/configs/quickstart.py)
or a .py file with get_config(); override any field with --config.<field>=<value>, e.g.
--config.methods=easytune,draft,refl --config.trajectories=48 --config.reward_objective=ours.

Rerunning the same command resumes every stage from its checkpoints; stages whose inputs and settings have not
changed since they finished are skipped (<workdir>/manifest.json), so a rerun of a finished run takes seconds.
"""

import dataclasses

from absl import flags, logging

from easytune_jax import cli
from easytune_jax.configs import quickstart as presets
from easytune_jax.core.metric_writer import quiet_library_logs
from easytune_jax.pipelines import quickstart

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "runs/quickstart", "Output folder (every stage resumes from it).")
flags.DEFINE_string("data_dir", None, "HumanML3D-layout folder; default writes the synthetic dataset.")
cli.define_config_flag(presets.PRESETS, "tiny", "The QuickstartConfig (easytune_jax/configs/quickstart.py).")
cli.define_flags(dataset=True, progress=False)


def main(argv):
  del argv
  quiet_library_logs()
  cfg = cli.get_config()
  if FLAGS.data_dir:
    cfg = dataclasses.replace(cfg, data_dir=FLAGS.data_dir)
  logging.set_verbosity(logging.INFO)
  summary = quickstart.run_quickstart(cfg, FLAGS.workdir)
  print(quickstart.summary_screen(summary))


if __name__ == "__main__":
  cli.run(main, outputs=("workdir",), inputs=("data_dir",))
