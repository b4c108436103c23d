"""Compiled memory of the EasyTune update (and the baselines) on the converted official MLD with the converted
official SPM, at the paper size (issue 18; `easytune_jax.bench.official_memory`).

  PYTHONPATH=. python launch/official_memory.py --out_dir=docs/benchmark/official_paper_memory

Random official-layout checkpoints are written, converted and loaded as fine-tuning loads them; each update is
lowered and compiled (XLA memory_analysis), never run. Rerunning with the same --out_dir and setup keeps the
records already there, so slow variants can be added later (e.g. --variants=draft-T).
"""

from absl import flags, logging

from easytune_jax import cli
from easytune_jax.bench import official_memory as om

FLAGS = flags.FLAGS
cli.define_flags(dataset=False)
flags.DEFINE_string("out_dir", None, "Where benchmark.json and README.md go.", required=True)
flags.DEFINE_enum("size", "paper", list(om.SIZES), "Model sizes: 'paper' (the official checkpoints') or 'tiny'.")
flags.DEFINE_list("variants", list(om.OfficialMemoryConfig.variants),
                  "Variants in measuring order (bench.benchmark.parse_variant specs, e.g. easytune,draft-1,draft-T).")
flags.DEFINE_list("steps", [str(t) for t in om.OfficialMemoryConfig.steps], "DDIM steps T (K = T).")
flags.DEFINE_integer("batch_size", om.OfficialMemoryConfig.batch_size, "Captions per update.")
flags.DEFINE_integer("max_length", om.OfficialMemoryConfig.max_length, "Frames per motion.")
flags.DEFINE_integer("reward_text_length", om.OfficialMemoryConfig.reward_text_length,
                     "Token embeddings per caption for the SPM.")
flags.DEFINE_string("previous", om.PREVIOUS, "Earlier benchmark.json whose memory records are shown beside "
                    "('' for none).")
flags.DEFINE_string("work_dir", None, "Where the random checkpoints and converted workdirs go (must not hold "
                    "them yet); default a temporary folder removed at the end.")


def main(argv):
  del argv
  config = om.OfficialMemoryConfig(size=FLAGS.size, variants=tuple(FLAGS.variants),
                                   steps=tuple(int(t) for t in FLAGS.steps), batch_size=FLAGS.batch_size,
                                   max_length=FLAGS.max_length, reward_text_length=FLAGS.reward_text_length)
  result = om.run_official_memory(config, FLAGS.out_dir, FLAGS.previous or None, FLAGS.work_dir)
  logging.info("wrote %s (%d records)", FLAGS.out_dir, len(result["records"]))


if __name__ == "__main__":
  cli.run(main, outputs=("out_dir",))
