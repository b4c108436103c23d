"""Compiled memory of the EasyTune update (and the baselines) on the converted official MLD with the converted
official SPM, at the paper size (issue 18; `easytune_jax.bench.official_memory`).

  PYTHONPATH=. python launch/official_memory.py --out_dir=docs/benchmark/official_paper_memory

Random official-layout checkpoints are written, converted and loaded as fine-tuning loads them; each update is
lowered and compiled (XLA memory_analysis), never run. Rerunning with the same --out_dir and setup keeps the
records already there, so slow variants can be added later (e.g. --config.variants=draft-T).

--config: the `OfficialMemoryConfig` (bench/official_memory.py): a preset of easytune_jax/configs/official_memory.py
('paper', the default: the official checkpoints' sizes; 'tiny': seconds on a CPU) or a .py file with get_config();
override any field with --config.<field>=<value> (--config.steps=50,10 --config.batch_size=16).
"""

from absl import flags, logging

from easytune_jax import cli
from easytune_jax.bench import official_memory as om
from easytune_jax.configs import official_memory as presets

FLAGS = flags.FLAGS
flags.DEFINE_string("out_dir", None, "Where benchmark.json and README.md go.", required=True)
flags.DEFINE_string(
  "previous", om.PREVIOUS, "Earlier benchmark.json whose memory records are shown beside ('' for none)."
)
flags.DEFINE_string(
  "work_dir",
  None,
  "Where the random checkpoints and converted workdirs go (must not hold "
  "them yet); default a temporary folder removed at the end.",
)
cli.define_config_flag(presets.PRESETS, "paper", "The OfficialMemoryConfig (easytune_jax/configs/official_memory.py).")
cli.define_flags(dataset=False, progress=False)


def main(argv):
  del argv
  config = cli.get_config()
  result = om.run_official_memory(config, FLAGS.out_dir, FLAGS.previous or None, FLAGS.work_dir)
  logging.info("wrote %s (%d records)", FLAGS.out_dir, len(result["records"]))


if __name__ == "__main__":
  cli.run(main, outputs=("out_dir",))
