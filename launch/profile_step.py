"""Profile of one EasyTune per-step update, part by part (issue 20 item 1; `easytune_jax.bench.profile`).

  PYTHONPATH=. python launch/profile_step.py --out_dir=docs/benchmark/profile --size=tiny
  PYTHONPATH=. python launch/profile_step.py --out_dir=docs/benchmark/profile --size=paper

On the converted official MLD + official SPM with random weights (batch 32, 196 frames): XLA cost analysis
(flops, bytes), compile seconds and wall seconds of the guided denoiser, the VAE decoder, the reward, the
optimizer update and the whole step, each compiled on its own. Writes profile_<size>.json / .md.
"""

from absl import flags, logging

from easytune_jax import cli
from easytune_jax.bench import profile
from easytune_jax.core.metric_writer import quiet_library_logs

FLAGS = flags.FLAGS
cli.define_flags(dataset=False)
flags.DEFINE_string("out_dir", None, "Where profile_<size>.json / .md go.", required=True)
flags.DEFINE_enum("size", "tiny", ["tiny", "paper"], "Model sizes (bench.official_memory.model_configs).")
flags.DEFINE_integer("repeats", profile.ProfileConfig.repeats, "Timed calls per part after one warm-up.")
flags.DEFINE_list("parts", list(profile.PARTS), "Parts to measure.")


def main(argv):
  del argv
  quiet_library_logs()
  config = profile.ProfileConfig(size=FLAGS.size, repeats=FLAGS.repeats, parts=tuple(FLAGS.parts))
  result = profile.run_profile(config, FLAGS.out_dir)
  logging.info("\n%s", profile.table(result))


if __name__ == "__main__":
  cli.run(main, outputs=("out_dir",))
