"""Profile of one EasyTune per-step update, part by part (issue 20 item 1; `easytune_jax.bench.profile`).

  PYTHONPATH=. python launch/profile_step.py --out_dir=docs/benchmark/profile --config=tiny
  PYTHONPATH=. python launch/profile_step.py --out_dir=docs/benchmark/profile --config=paper

On the converted official MLD + official SPM with random weights (batch 32, 196 frames): XLA cost analysis
(flops, bytes), compile seconds and wall seconds of the guided denoiser, the VAE decoder, the reward, the
optimizer update and the whole step, each compiled on its own. Writes profile_<size>.json / .md.
--config: the `ProfileConfig` (bench/profile.py), a preset of easytune_jax/configs/profile.py ('tiny', default;
'paper') or a .py file; override fields with --config.<field>=<value> (--config.repeats=5, --config.parts=reward).
"""

from absl import flags, logging

from easytune_jax import cli
from easytune_jax.bench import profile
from easytune_jax.configs import profile as presets
from easytune_jax.core.metric_writer import quiet_library_logs

FLAGS = flags.FLAGS
cli.define_flags(dataset=False, progress=False)
flags.DEFINE_string("out_dir", None, "Where profile_<size>.json / .md go.", required=True)
cli.define_config_flag(presets.PRESETS, "tiny", "The ProfileConfig (easytune_jax/configs/profile.py).")


def main(argv):
  del argv
  quiet_library_logs()
  result = profile.run_profile(cli.get_config(), FLAGS.out_dir)
  logging.info("\n%s", profile.table(result))


if __name__ == "__main__":
  cli.run(main, outputs=("out_dir",))
