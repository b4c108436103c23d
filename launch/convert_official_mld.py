"""Converts the official MLD checkpoint (torch-free) into a generator work directory.

  python launch/convert_official_mld.py --checkpoint=checkpoints/mld_humanml/mld_humanml_v1.ckpt \
      --mean=datasets/humanml3d/Mean.npy --std=datasets/humanml3d/Std.npy \
      --sentence_t5_dir=deps/sentence-t5-large --out=/tmp/mld_official

The output directory is accepted wherever a generator workdir is (`--generator_workdir` of launch/finetune.py,
launch/evaluate.py, launch/benchmark.py; `load_generator` in bundles/generator.py). --text_embeddings: a `.npz` of 768-d
sentence-T5-large embeddings per caption ([N, 1, 768], `data.text.save_text_embeddings`) that includes the
empty caption '' (the unconditional input of classifier-free guidance), or pass --null_text=PATH.npy.
--sentence_t5_dir: the sentence-transformers `sentence-t5-large` folder; captions are then encoded on the fly (JAX,
torch-free) and the unconditional input is its encoding of ''. The folder is recorded in the output directory.
--config: the `OfficialMLDConversion` (bundles/official_generator.py: num_heads, max_length, which the checkpoint does
not hold), the preset 'official' or a .py file; e.g. --config.max_length=200.
"""

from absl import flags, logging

from easytune_jax import cli
from easytune_jax.bundles import official_generator
from easytune_jax.configs import convert as presets

FLAGS = flags.FLAGS
cli.define_flags(dataset=False, progress=False)
flags.DEFINE_string(
  "checkpoint", None, "Official MLD .ckpt (torch.save zip with state_dict vae.* / denoiser.*).", required=True
)
flags.DEFINE_string("out", None, "Generator work directory to create.", required=True)
flags.DEFINE_string("mean", None, "Dataset Mean.npy the features are normalised with.", required=True)
flags.DEFINE_string("std", None, "Dataset Std.npy.", required=True)
flags.DEFINE_string("text_embeddings", None, "Sentence-embeddings .npz ([N, 1, text_dim], with caption '').")
flags.DEFINE_string(
  "sentence_t5_dir", None, "sentence-transformers sentence-t5-large folder (encode captions on the fly)."
)
flags.DEFINE_string("null_text", None, ".npy [text_dim]: embedding of '' (when the .npz lacks it).")
flags.DEFINE_bool("overwrite", False, "Replace an existing --out.")
cli.define_config_flag(presets.MLD_PRESETS, "official", "The OfficialMLDConversion (easytune_jax/configs/convert.py).")


def main(argv):
  del argv
  cfg = cli.get_config()
  meta = official_generator.write_official_generator(
    FLAGS.checkpoint,
    FLAGS.out,
    FLAGS.mean,
    FLAGS.std,
    text_embeddings=FLAGS.text_embeddings,
    null_text=FLAGS.null_text,
    num_heads=cfg.num_heads,
    overwrite=FLAGS.overwrite,
    max_length=cfg.max_length,
    sentence_t5=FLAGS.sentence_t5_dir,
  )
  logging.info(
    "wrote %s: VAE %d parameters, denoiser %d parameters, ignored groups %s",
    FLAGS.out,
    meta["param_counts"]["vae"],
    meta["param_counts"]["denoiser"],
    meta["ignored"],
  )


if __name__ == "__main__":
  cli.run(main, outputs=("out",), files=("checkpoint", "mean", "std"))
