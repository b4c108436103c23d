"""Writes the procedural synthetic text-motion dataset in the HumanML3D layout.

  python launch/make_synthetic.py --out_dir=/tmp/synthetic_hml --config.num_motions=2000 --config.seed=0

--config: the `SyntheticConfig` (data/synthetic.py: num_motions, seed, min_len, max_len, mirror, subclip_fraction):
the preset 'default' (easytune_jax/configs/synthetic.py) or a .py file with get_config(); override any field with
--config.<field>=<value>.
"""

import os
import time

from absl import flags, logging

from easytune_jax import cli
from easytune_jax.configs import synthetic as presets
from easytune_jax.data import synthetic

FLAGS = flags.FLAGS
flags.DEFINE_string("out_dir", None, "Output dataset folder.", required=True)
flags.DEFINE_string("preview", None, "If set, write a stick-figure PNG of the first 6 motions here.")
cli.define_config_flag(presets.PRESETS, "default", "The SyntheticConfig (easytune_jax/configs/synthetic.py).")
cli.define_flags(dataset=False, progress=False)


def main(argv):
  del argv
  t0 = time.time()
  cfg = cli.get_config()
  meta = synthetic.write_synthetic_dataset(
    FLAGS.out_dir,
    cfg.num_motions,
    cfg.seed,
    min_len=cfg.min_len,
    max_len=cfg.max_len,
    mirror=cfg.mirror,
    subclip_fraction=cfg.subclip_fraction,
  )
  logging.info(
    "wrote %d motions to %s in %.1f s; splits %s", len(meta["motions"]), FLAGS.out_dir, time.time() - t0, meta["splits"]
  )
  if FLAGS.preview:
    synthetic.write_preview(FLAGS.out_dir, FLAGS.preview, [f"{i:06d}" for i in range(min(6, cfg.num_motions))])
    logging.info("preview: %s", os.path.abspath(FLAGS.preview))


if __name__ == "__main__":
  cli.run(main, outputs=("out_dir",), inputs=())
