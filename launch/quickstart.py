"""The README's main command: from nothing to a fine-tuned model, numbers and pictures.

  python -m launch.quickstart --workdir runs/quickstart            # ~8-9 min on an idle 2-core CPU
  python -m launch.quickstart --workdir runs/big --config.scale=5 --config.num_motions=4000
  python -m launch.quickstart --workdir runs/hml --data_dir /data/HumanML3D   # real data

--config: the `QuickstartConfig` (pipelines/quickstart.py): the preset 'tiny' (easytune_jax/configs/quickstart.py)
or a .py file with get_config(); override any field with --config.<field>=<value>, e.g.
--config.methods=easytune,draft,refl --config.trajectories=48 --config.reward_objective=ours.

Rerunning the same command resumes every stage from its checkpoints; stages whose inputs and settings have not
changed since they finished are skipped (<workdir>/manifest.json, keyed on file contents, so a copied or moved
workdir is still finished), so a rerun of a finished run takes seconds.

The README's table is the table of docs/quickstart/summary.json. After a change that moves the quickstart's
numbers, regenerate both from a fresh run (default config):

  python -m launch.quickstart --workdir runs/quickstart --export_docs=docs/quickstart --readme=README.md

and CI checks that a fresh run still gives that table digit for digit:

  python -m launch.quickstart --workdir runs/quickstart --check_against=docs/quickstart/summary.json

It fails (exit 1, naming the rows) when the tables differ on the CPU and library versions the summary was
recorded with; on another CPU or other versions (which move the last digits by themselves) it prints both
and warns instead.

Reward-guided sampling rows (off by default; core/guidance.py): --config.guidance.scale=<lambda> adds the stage
'guidance' (<workdir>/guidance/: base and EasyTune sampled with the reward's gradient, evaluated like the other rows,
timed and their compiled memory measured) and a section of report.md; --export_guidance_docs=docs/guidance copies its
table:
  python -m launch.quickstart --workdir runs/quickstart --config.guidance.scale=1 --export_guidance_docs=docs/guidance
"""

import dataclasses
import json
import sys

from absl import flags, logging

from easytune_jax import cli
from easytune_jax.configs import quickstart as presets
from easytune_jax.core.metric_writer import quiet_library_logs
from easytune_jax.pipelines import guidance, quickstart, quickstart_report

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "runs/quickstart", "Output folder (every stage resumes from it).")
flags.DEFINE_string("data_dir", None, "HumanML3D-layout folder; default writes the synthetic dataset.")
flags.DEFINE_string(
  "check_against",
  None,
  "A summary.json (docs/quickstart/summary.json): exit 1 when this run's table differs from its table.",
)
flags.DEFINE_string(
  "export_docs", None, "Copy the finished report (report.md, summary.json, curves, GIFs) into this folder."
)
flags.DEFINE_string("readme", None, "With --export_docs: rewrite this README's quickstart table from the run.")
flags.DEFINE_string(
  "export_guidance_docs",
  None,
  "Copy the stage 'guidance' (--config.guidance.scale > 0: guidance.json, guidance.md) into this folder.",
)
cli.define_config_flag(presets.PRESETS, "tiny", "The QuickstartConfig (easytune_jax/configs/quickstart.py).")
cli.define_flags(dataset=True, progress=False)


def main(argv):
  del argv
  quiet_library_logs()
  cfg = cli.get_config()
  if FLAGS.data_dir:
    cfg = dataclasses.replace(cfg, data_dir=FLAGS.data_dir)
  logging.set_verbosity(logging.INFO)
  summary = quickstart.run_quickstart(cfg, FLAGS.workdir)
  print(quickstart_report.summary_screen(summary))
  if FLAGS.export_docs:
    for path in quickstart_report.export_docs(FLAGS.workdir, FLAGS.export_docs, FLAGS.readme):
      logging.info("wrote %s", path)
  if FLAGS.export_guidance_docs:
    for path in guidance.export_guidance_docs(FLAGS.workdir, FLAGS.export_guidance_docs):
      logging.info("wrote %s", path)
  if FLAGS.check_against:
    with open(f"{FLAGS.workdir}/report/summary.json") as f:
      found = json.load(f)
    with open(FLAGS.check_against) as f:
      reference = json.load(f)
    diff = quickstart_report.table_differences(found, reference)
    machine = quickstart_report.machine_differences(found, reference)
    if diff and machine:
      # Another CPU or library version moves the last digits without any code change: say so, do not fail.
      print("\n".join(diff))
      logging.warning(
        "--check_against=%s: not comparable digit for digit, the run was made on another machine or with other "
        "libraries (%s); this machine's table is above (regenerate the docs on the CI machine to compare)",
        FLAGS.check_against,
        "; ".join(machine),
      )
      return
    if diff:
      print("\n".join(diff))
      sys.exit(
        f"--check_against={FLAGS.check_against}: this run's table differs in {len(diff) // 2} rows (above) on the "
        "machine and libraries it was recorded with: the code changed the quickstart's numbers; regenerate the "
        "docs and the README table with --export_docs=docs/quickstart --readme=README.md from a fresh run"
      )
    print(f"quickstart table equals {FLAGS.check_against} digit for digit")


if __name__ == "__main__":
  cli.run(main, outputs=("workdir",), inputs=("data_dir",), files=("check_against", "readme"))
