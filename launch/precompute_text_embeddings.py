"""Precomputes frozen text-encoder embeddings for a caption list or a HumanML3D-layout dataset (``.npz`` read by
``easytune_jax.data.text.TextEmbeddings``), with the official encoders loaded torch-free.

  # the official MLD's condition: sentence-T5-large sentence embeddings [N, 1, 768]
  python launch/precompute_text_embeddings.py --config=sentence_t5 --model_dir=/path/sentence-t5-large \
      --dataset_dir=/data/HumanML3D --splits=train,val,test --out=/data/t5_sentence.npz
  # the SPM's input: token embeddings [N, L, 1024] (large: N x L x 4 KiB)
  python launch/precompute_text_embeddings.py --config=sentence_t5_tokens --model_dir=... \
      --captions_file=captions.txt --out=t5_tokens.npz
  # the original MLD's condition: CLIP ViT-L/14 text features [N, 1, 768] (or --config=clip_hidden: [N, 77, 768])
  python launch/precompute_text_embeddings.py --config=clip --model_dir=/path/clip-vit-large-patch14 \
      --dataset_dir=/data/HumanML3D --out=/data/clip_features.npz

--config (required): the `TextEmbeddingConfig` (data/text.py: encoder, output, batch_size), a preset of
easytune_jax/configs/text_embeddings.py or a .py file with get_config(); --config.batch_size=64 overrides a field.
"""

import functools
import time

from absl import app, flags, logging

from easytune_jax import cli
from easytune_jax.configs import text_embeddings as presets
from easytune_jax.data.humanml3d import parse_text_file, read_split
from easytune_jax.data.text import precompute_text_embeddings

FLAGS = flags.FLAGS
flags.DEFINE_string(
  "model_dir", None, "sentence-transformers folder (sentence-t5-large) or HF CLIP folder.", required=True
)
flags.DEFINE_string("captions_file", None, "Text file with one caption per line.")
flags.DEFINE_string("dataset_dir", None, "HumanML3D-layout folder: captions of texts/<id>.txt for the ids in --splits.")
flags.DEFINE_list("splits", ["train", "val", "test"], "Splits of --dataset_dir.")
flags.DEFINE_string("out", None, "Output .npz.", required=True)
cli.define_config_flag(presets.PRESETS, None, "The TextEmbeddingConfig (easytune_jax/configs/text_embeddings.py).")
cli.define_flags(dataset=False, progress=True)


def _captions() -> list:
  if bool(FLAGS.captions_file) == bool(FLAGS.dataset_dir):
    raise app.UsageError("pass exactly one of --captions_file and --dataset_dir")
  if FLAGS.captions_file:
    with open(FLAGS.captions_file, encoding="utf-8") as f:
      return [line.rstrip("\n") for line in f if line.strip()]
  out = []
  for split in FLAGS.splits:
    for mid in read_split(FLAGS.dataset_dir, split):
      try:
        out.extend(c for c, *_ in parse_text_file(f"{FLAGS.dataset_dir}/texts/{mid}.txt"))
      except FileNotFoundError:
        logging.warning("no texts/%s.txt; skipped", mid)
  return out


def main(argv):
  del argv
  cfg = cli.get_config()
  captions = _captions()
  t0 = time.time()
  if cfg.encoder == "sentence_t5":
    from easytune_jax.interop.sentence_t5 import load_sentence_t5

    model = load_sentence_t5(FLAGS.model_dir)
  else:
    from easytune_jax.interop.clip import load_clip_text

    model = load_clip_text(FLAGS.model_dir)
  encode = functools.partial(model.embeddings, output=cfg.output, batch_size=cfg.batch_size)
  n = precompute_text_embeddings(FLAGS.out, captions, encode, batch_size=cfg.batch_size, progress=FLAGS.progress)
  logging.info(
    "wrote %d unique captions (%s %s) to %s in %.1f s", n, cfg.encoder, cfg.output, FLAGS.out, time.time() - t0
  )


if __name__ == "__main__":
  cli.run(main, inputs=("model_dir", "dataset_dir"), files=("captions_file",))
