"""Text -> motion files (features .npy, joints .npy, GIF / MP4, BVH) from a generator.

  # a trained workdir (launch/train_base.py, the quickstart's <out>/base): sampled with its own setting
  python launch/generate.py --generator_workdir=/tmp/quickstart/base --text="a person walks forward and waves" \\
      --out_dir=/tmp/gen
  # the converted official MLD (launch/convert_official_mld.py, its own sampler: 50 DDIM steps, w = 7.5), several
  # prompts, 120 frames
  python launch/generate.py --generator_workdir=/tmp/mld_official --text_file=prompts.txt --config.length=120 \\
      --out_dir=/tmp/gen_mld [--sentence_t5_dir=deps/sentence-t5-large] [--config.mp4]
  # the fine-tuned params of a launch/finetune.py run (its recorded base generator, its fine-tuning sampler)
  python launch/generate.py --finetune_workdir=/tmp/ft_easytune --text="a person jumps" --out_dir=/tmp/gen_ft

Sampler: by default each generator samples with the DDIM steps and guidance scale it records (a trained workdir:
its BaseConfig.sampler, the CPU setting for 'tiny'; a converted official MLD: 50 steps, w = 7.5; a fine-tuning
run: the FinetuneConfig it was tuned with; a workdir that records none: core/sampling.py's 50 / 7.5, with a
warning). --config.num_steps=<n> / --config.guidance_scale=<w> (or --config=paper / --config=tiny) override them.
The values used are logged and written to generated.json ("sampler"). Motion length: --config.length (default
0: the generator's own, its max_length).

--config: the `GenerateConfig` (bundles/export.py: guidance_scale, num_steps, seed, length, batch_size, gif, mp4,
bvh, bvh_scale, animation_size, guidance, reward, reward_text): a preset of easytune_jax/configs/generate.py ('default': the generator's own
sampler; 'paper': 50 DDIM steps, w = 7.5; 'tiny': the CPU sampler, 10 steps, w = 2.5) or a .py file with
get_config(); override any field with --config.<field>=<value>. --config.animation_size=<pixels> sets the GIF / MP4
width and height (default 480).

Reward-guided sampling (core/guidance.py; ReAlign's training-free alignment): --config.guidance.scale=<lambda> > 0
adds the gradient of --config.reward (default 'spm': the reward model of --reward_workdir; any registry spec such as
'spm:1.0,skating:0.2') at the steps --config.guidance.* chooses; --config=realign is ReAlign's rule and scale.
  python launch/generate.py --generator_workdir=/tmp/quickstart/base --reward_workdir=/tmp/quickstart/reward \
      --config.guidance.scale=1 --text="a person jumps" --out_dir=/tmp/gen_guided

Per prompt i, `<out_dir>/<i:03d>_<slug>{_features.npy,_joints.npy,.gif,.mp4,.bvh}` and `<out_dir>/generated.json`
(see easytune_jax/bundles/export.py). MP4 needs ffmpeg on PATH (otherwise generated.json notes that none was written).
BVH: HumanML3D skeleton, Y up, centimetres (--config.bvh_scale=1 for metres), 20 fps.
"""

from absl import app, flags, logging

from easytune_jax import cli
from easytune_jax.bundles import export, official_generator
from easytune_jax.bundles.finetuned import load_finetuned_generator
from easytune_jax.bundles.generator import load_generator
from easytune_jax.configs import generate as presets
from easytune_jax.core.metric_writer import quiet_library_logs

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("text", None, "A caption, not empty (repeat the flag for several).")
flags.DEFINE_string("text_file", None, "UTF-8 text file with one caption per line (blank lines are skipped).")
flags.DEFINE_string(
  "generator_workdir",
  None,
  "Generator workdir: trained (launch/train_base.py) or converted official (launch/convert_official_mld.py).",
)
flags.DEFINE_string("finetune_workdir", None, "A launch/finetune.py run: its base generator with fine-tuned params.")
flags.DEFINE_enum("finetune_which", "final", ["final", "best"], "Which fine-tuned params.")
flags.DEFINE_string(
  "sentence_t5_dir",
  None,
  "Official MLD only: encode captions with this sentence-t5-large folder "
  "(instead of the one recorded at conversion, or the precomputed .npz).",
)
flags.DEFINE_string(
  "reward_workdir", None, "Reward model folder (launch/train_reward.py) of reward-guided sampling (--config.guidance)."
)
flags.DEFINE_string("out_dir", None, "Output folder.", required=True)
cli.define_config_flag(
  presets.PRESETS,
  "default",
  "The GenerateConfig (easytune_jax/configs/generate.py); 'default' samples with the generator's own DDIM steps "
  "and guidance scale (--config.num_steps / --config.guidance_scale override them).",
)
cli.define_flags(dataset=False, progress=True)


def _texts() -> list:
  """The captions of --text and --text_file, each refused with its own one-line error when empty or blank."""
  texts = []
  given = FLAGS.text or []
  for i, t in enumerate(given):
    which = f"--text (#{i + 1} of {len(given)})" if len(given) > 1 else "--text"
    if not t:
      raise app.UsageError(f"{which}: expected a caption, found an empty string")
    if not t.strip():  # the message says how many: one_line would fold the whitespace itself into one space
      raise app.UsageError(f"{which}: expected a caption, found only whitespace ({len(t)} characters)")
    texts.append(t)
  if FLAGS.text_file:
    try:
      texts += export.read_text_file(FLAGS.text_file)
    except ValueError as e:
      raise app.UsageError(f"--text_file={e}") from None
  if not texts:
    raise app.UsageError("give --text (repeatable) and/or --text_file")
  return texts


def main(argv):
  del argv
  quiet_library_logs()
  texts = _texts()
  cfg = cli.get_config()
  if bool(FLAGS.generator_workdir) == bool(FLAGS.finetune_workdir):
    raise app.UsageError("give exactly one of --generator_workdir and --finetune_workdir")
  if FLAGS.finetune_workdir:
    gen = load_finetuned_generator(FLAGS.finetune_workdir, FLAGS.finetune_which)
  else:
    gen = load_generator(FLAGS.generator_workdir)
  if FLAGS.sentence_t5_dir:
    gen = official_generator.with_sentence_t5(gen, FLAGS.sentence_t5_dir)
  if cfg.guidance.enabled:
    logging.info("generate: %s, reward %r", cfg.guidance.describe(), cfg.reward)
  manifest = export.generate_to_files(
    gen, texts, FLAGS.out_dir, cfg, progress=FLAGS.progress, reward_workdir=FLAGS.reward_workdir
  )
  for note in manifest["notes"]:
    logging.warning("%s", note)
  logging.info(
    "wrote %d motions to %s (sampling %s s per batch, writing %.1f s)",
    len(texts),
    FLAGS.out_dir,
    manifest["timing"]["sample_s"],
    manifest["timing"]["write_s"],
  )


if __name__ == "__main__":
  cli.run(
    main,
    outputs=("out_dir",),
    inputs=("generator_workdir", "finetune_workdir", "sentence_t5_dir", "reward_workdir"),
    files=("text_file",),
  )
