"""Exports a fine-tuning run's merged denoiser params as a generator folder (issue 30).

  python -m launch.export_merged --run_workdir=runs/ft_lora --out_dir=runs/ft_lora_merged \
      [--config.which=best] [--config.safetensors=true] [--base_workdir=runs/base]

An adapter run (`--config.finetune.lora.rank=...` of launch/finetune.py) keeps only its adapter; this merges it onto
its base (W + alpha/r * A B, bundles/finetuned.py `export_merged`) and writes `<out_dir>/merged.json` +
`<out_dir>/params/` (orbax), which every launcher takes as a generator folder (`--generator_workdir` of
launch/generate.py, launch/evaluate.py, launch/finetune.py). The base is the generator folder the run records
(--base_workdir: another copy of it); loading onto a base whose denoiser params differ is refused, naming both.
A full-parameter run exports its params as they are.

--config: the `ExportConfig` (bundles/finetuned.py): which params ('final' or 'best') and whether to also write
`denoiser.safetensors`.
"""

import json

from absl import flags

from easytune_jax import cli
from easytune_jax.bundles import finetuned
from easytune_jax.configs import export_merged as presets

FLAGS = flags.FLAGS
flags.DEFINE_string("run_workdir", None, "Work directory of launch/finetune.py.", required=True)
flags.DEFINE_string("out_dir", None, "Generator folder to create (must not exist).", required=True)
flags.DEFINE_string("base_workdir", None, "The run's base generator folder, if not where the run records it.")
cli.define_config_flag(presets.PRESETS, "default", "The ExportConfig (easytune_jax/configs/export_merged.py).")
cli.define_flags(dataset=False, progress=False)


def main(argv):
  del argv
  out = finetuned.export_merged(FLAGS.run_workdir, FLAGS.out_dir, cli.get_config(), FLAGS.base_workdir)
  print(json.dumps(out, indent=2))


if __name__ == "__main__":
  cli.run(main, outputs=("out_dir",), inputs=("run_workdir", "base_workdir"))
