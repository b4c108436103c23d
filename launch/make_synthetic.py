"""Writes the procedural synthetic text-motion dataset in the HumanML3D layout.

  python launch/make_synthetic.py --out_dir=/tmp/synthetic_hml --num_motions=2000 --seed=0
"""

import os
import time

from absl import flags, logging

from easytune_jax import cli
from easytune_jax.data import synthetic

FLAGS = flags.FLAGS
flags.DEFINE_string("out_dir", None, "Output dataset folder.", required=True)
flags.DEFINE_integer("num_motions", 2000, "Number of base motions.")
flags.DEFINE_integer("seed", 0, "Random seed (same seed -> byte-identical files).")
flags.DEFINE_integer("min_len", 40, "Minimum feature length in frames (20 fps).")
flags.DEFINE_integer("max_len", 196, "Maximum feature length in frames.")
flags.DEFINE_bool("mirror", False, "Also write mirrored M<id> copies.")
flags.DEFINE_float("subclip_fraction", 0.1, "Fraction of multi-action motions given a sub-clip caption line.")
flags.DEFINE_string("preview", None, "If set, write a stick-figure PNG of the first 6 motions here.")
cli.define_flags(dataset=False)


def main(argv):
    del argv
    t0 = time.time()
    meta = synthetic.write_synthetic_dataset(
        FLAGS.out_dir, FLAGS.num_motions, FLAGS.seed, min_len=FLAGS.min_len, max_len=FLAGS.max_len,
        mirror=FLAGS.mirror, subclip_fraction=FLAGS.subclip_fraction)
    logging.info("wrote %d motions to %s in %.1f s; splits %s", len(meta["motions"]), FLAGS.out_dir,
                 time.time() - t0, meta["splits"])
    if FLAGS.preview:
        synthetic.write_preview(FLAGS.out_dir, FLAGS.preview, [f"{i:06d}" for i in range(min(6, FLAGS.num_motions))])
        logging.info("preview: %s", os.path.abspath(FLAGS.preview))


if __name__ == "__main__":
    cli.run(main, outputs=("out_dir",), inputs=())
