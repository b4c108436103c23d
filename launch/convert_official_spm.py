"""Converts an official EasyTune SPM checkpoint (torch-free) into a reward work directory.

  python -m launch.convert_official_spm --checkpoint=checkpoints/spm/<spm>.pth --out=runs/spm_official

The output is accepted wherever a trained reward is (`--reward_workdir` of launch/finetune.py and
launch/benchmark.py, `bundles.reward.load_reward`, `--init_from` of launch/train_reward.py). The official SPM reads
sentence-T5-large token embeddings: give fine-tuning `--config.reward_text=deps/sentence-t5-large` (encoded on the
fly) or a precomputed `.npz` (launch/precompute_text_embeddings.py --config=sentence_t5_tokens). Sizes are read
from the checkpoint's shapes; the number of attention heads is not stored in it (4 in the official configs):
--config.num_heads (`SPMConversion`, bundles/reward.py; preset 'official').
"""

from absl import flags, logging

from easytune_jax import cli
from easytune_jax.bundles import reward
from easytune_jax.configs import convert as presets

FLAGS = flags.FLAGS
cli.define_flags(dataset=False, progress=False)
flags.DEFINE_string(
  "checkpoint",
  None,
  "Official SPM checkpoint (torch.save zip; its state_dict holds the SPM keys; clip.* keys are ignored).",
  required=True,
)
flags.DEFINE_string("out", None, "Reward work directory to create (must not exist).", required=True)
cli.define_config_flag(presets.SPM_PRESETS, "official", "The SPMConversion (easytune_jax/configs/convert.py).")


def main(argv):
  del argv
  out = reward.convert_spm_checkpoint(FLAGS.checkpoint, FLAGS.out, num_heads=cli.get_config().num_heads)
  meta = reward.read_reward_metadata(out)
  logging.info("wrote %s: %s, text embedding width %d", out, meta["train"]["model"]["arch"], meta["text_emb_dim"])


if __name__ == "__main__":
  cli.run(main, outputs=("out",), files=("checkpoint",))
