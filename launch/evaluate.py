"""Standard text-to-motion evaluation (docs/humanml3d_format.md#evaluation-protocol) of one or several generators
side by side.

  python launch/evaluate.py --generator_workdir=/tmp/base,/tmp/finetuned --evaluator_workdir=/tmp/evaluator \\
      --data_dir=/tmp/synthetic_hml --out_dir=/tmp/eval [--config.quick] [--config.replications=20] [--noprogress]

Sampler: by default each generator samples with the DDIM steps and guidance scale it records (a trained workdir:
its BaseConfig.sampler, the CPU setting for 'tiny'; a converted official MLD: 50 steps, w = 7.5; a fine-tuning
run: the FinetuneConfig it was tuned with; a workdir that records none: core/sampling.py's 50 / 7.5, with a
warning), so generators made for different samplers are each evaluated with their own. --config.num_steps=<n> /
--config.guidance_scale=<w> (or --config=paper / --config=tiny) set one sampler for all of them. The values used
are logged and written to eval.json (results[i].settings.sampler) and eval.md.

Reward-guided sampling (core/guidance.py; ReAlign's training-free alignment): --config.guidance.scale=<lambda> > 0
samples every generator with the gradient of --config.reward (default 'spm': the reward model of --reward_workdir)
added at the steps --config.guidance.* chooses; --config=realign is ReAlign's rule and scale with the paper's
sampler. The rule is recorded in eval.json (results[i].settings.guidance) and eval.md.

--config: the `EvaluateConfig` (eval/evaluation.py: split, replications, quick, mm, batch_size, guidance_scale,
num_steps, seed, guidance, reward, reward_text): a preset of easytune_jax/configs/evaluate.py ('default': each generator's own sampler; 'paper':
50 DDIM steps, w = 7.5 for all; 'tiny': the CPU sampler, 10 steps, w = 2.5, for all) or a .py file with
get_config(); override any field with --config.<field>=<value>.

Writes <out_dir>/eval.json and <out_dir>/eval.md (Real row + one row per generator; reward and physical
extras in separate tables). --t2m_dir/--glove_dir/--evaluator_stats_dir select the official T2M evaluator
instead of a trained one.

A rerun with the same flags and config and unchanged inputs (generator, evaluator and dataset folders: file sizes and
modification times) prints the existing eval.md without recomputing it (<out_dir>/manifest.json; --force
recomputes).
"""

import os
import time

from absl import app, flags, logging

from easytune_jax import cli
from easytune_jax.bundles.evaluator import load_official_evaluator, load_trained_evaluator
from easytune_jax.bundles.finetuned import load_any_generator
from easytune_jax.configs import evaluate as presets
from easytune_jax.core import rerun
from easytune_jax.core.config import config_to_dict
from easytune_jax.core.metric_writer import quiet_library_logs
from easytune_jax.data.humanml3d import load_dataset
from easytune_jax.eval import evaluation as E
from easytune_jax.eval.report import write_results

FLAGS = flags.FLAGS
flags.DEFINE_enum(
  "finetune_which",
  "final",
  ["final", "best"],
  "For fine-tuning workdirs in --generator_workdir: the final params or best/.",
)
flags.DEFINE_list(
  "generator_workdir",
  None,
  "Generator work directories (comma-separated): trained, converted "
  "official, or fine-tuning workdirs (launch/finetune.py).",
  required=True,
)
flags.DEFINE_list("names", None, "Row names (default: the work directories' base names).")
flags.DEFINE_string("evaluator_workdir", None, "Work directory of launch/train_evaluator.py.")
flags.DEFINE_string("t2m_dir", None, "Official evaluator: folder with text_mot_match/model/finest.tar.")
flags.DEFINE_string("glove_dir", None, "Official evaluator: GloVe folder (our_vab_*).")
flags.DEFINE_string("evaluator_stats_dir", None, "Official evaluator: meta mean.npy/std.npy folder.")
flags.DEFINE_string(
  "reward_workdir", None, "Reward model folder (launch/train_reward.py) of reward-guided sampling (--config.guidance)."
)
flags.DEFINE_string("data_dir", None, "HumanML3D-layout dataset folder.", required=True)
flags.DEFINE_string("out_dir", None, "Output folder for eval.json / eval.md.", required=True)
flags.DEFINE_bool(
  "force", False, "Recompute even when the inputs, flags and config equal those of the existing results."
)
cli.define_config_flag(
  presets.PRESETS,
  "default",
  "The EvaluateConfig (easytune_jax/configs/evaluate.py); 'default' samples each generator with its own DDIM "
  "steps and guidance scale (--config.num_steps / --config.guidance_scale set them for all).",
)
cli.define_flags(dataset=True, progress=True)


def main(argv):
  del argv
  quiet_library_logs()

  config = cli.get_config()
  settings = {
    n: FLAGS[n].value
    for n in (
      "generator_workdir",
      "finetune_which",
      "names",
      "evaluator_workdir",
      "t2m_dir",
      "glove_dir",
      "evaluator_stats_dir",
      "data_dir",
      "on_missing",
      "drop_nonfinite",
      "reward_workdir",
    )
  }
  settings["config"] = config_to_dict(config)
  inputs = [*FLAGS.generator_workdir, FLAGS.data_dir] + [
    d
    for d in (FLAGS.evaluator_workdir, FLAGS.t2m_dir, FLAGS.glove_dir, FLAGS.evaluator_stats_dir, FLAGS.reward_workdir)
    if d
  ]
  key = rerun.settings_key(settings=settings, inputs=rerun.fingerprint(inputs))
  outputs = [os.path.join(FLAGS.out_dir, f) for f in ("eval.json", "eval.md")]
  manifest = rerun.Manifest(FLAGS.out_dir)
  entry = None if FLAGS.force else manifest.lookup("evaluate", key, outputs)
  if entry is not None:
    logging.info(
      "inputs and flags unchanged since %s: printing the existing results (--force recomputes)", entry["time"]
    )
    print(open(outputs[1]).read())
    return
  t0 = time.time()
  test = load_dataset(FLAGS.data_dir, config.split)
  if FLAGS.t2m_dir:
    evaluator = load_official_evaluator(
      FLAGS.t2m_dir,
      FLAGS.glove_dir,
      FLAGS.evaluator_stats_dir,
      dataset_mean=test.mean,
      dataset_std=test.std,
      kind="t2m" if test.info.dim == 263 else "kit",
    )
  elif FLAGS.evaluator_workdir:
    evaluator = load_trained_evaluator(FLAGS.evaluator_workdir).with_dataset_stats(test.mean, test.std)
  else:
    raise app.UsageError("pass --evaluator_workdir or --t2m_dir/--glove_dir/--evaluator_stats_dir")
  names = FLAGS.names or [os.path.basename(os.path.normpath(w)) for w in FLAGS.generator_workdir]
  if len(names) != len(FLAGS.generator_workdir):
    raise app.UsageError(f"--names: expected {len(FLAGS.generator_workdir)} names, found {len(names)}")
  results = []
  for name, workdir in zip(names, FLAGS.generator_workdir):
    gen = load_any_generator(workdir, FLAGS.finetune_which)
    evaluator.check_dataset_stats(gen.mean, gen.std, f"generator {workdir}")
    res = E.evaluate_generator(
      gen, evaluator, test, config, method=name, progress=FLAGS.progress, reward_workdir=FLAGS.reward_workdir
    )
    results.append(res)
    logging.info("%s: %s (%.1f s)", name, res["metrics"], res["seconds"])
  paths = write_results(results, FLAGS.out_dir)
  manifest.record("evaluate", key, outputs, paths, time.time() - t0)
  print(open(paths["markdown"]).read())
  logging.info("wrote %s", paths)


if __name__ == "__main__":
  cli.run(
    main,
    outputs=("out_dir",),
    inputs=(
      "generator_workdir",
      "evaluator_workdir",
      "t2m_dir",
      "glove_dir",
      "evaluator_stats_dir",
      "data_dir",
      "reward_workdir",
    ),
  )
