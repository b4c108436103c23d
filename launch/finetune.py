"""Reward fine-tuning of a trained generator: EasyTune or a baseline, same harness.

  python -m launch.finetune --workdir=runs/ft_easytune \
      --generator_workdir=runs/base --reward_workdir=runs/reward --data_dir=runs/data \
      [--evaluator_workdir=runs/evaluator] [--config=paper] [--config.finetune.method=draft \
      --config.finetune.k=1 --config.finetune.optim.learning_rate=1e-5 --config.trajectories=100 ...]

--config: the run's `RunConfig` (bundles/finetuned.py): a preset of easytune_jax/configs/finetune.py ('tiny',
the default: the CPU setting; 'paper': T = 50, w = 7.5, lr 1e-5) or a .py file with get_config(); any field is
overridden with --config.<field>=<value>, e.g. --config.finetune.sampler_variant=online,
--config.finetune.reward_timestep=t (step-aware reward), --config.reward=spm:1.0,skating:0.2,
--config.best_metric=R_precision_top_1 (needs --evaluator_workdir).

LoRA: --config.finetune.lora.rank=8 [--config.finetune.lora.alpha=16 --config.finetune.lora.targets=query,value
--config.finetune.lora.train_whole=bias] trains an adapter on the frozen base (any method, any generator); the
checkpoints hold the adapter only (sizes in the log and summary.json); launch/generate.py and launch/evaluate.py
merge it onto its base, launch/export_merged.py writes the merged params as a generator folder.

Scale-out: --mesh=data=8 (or data=4,fsdp=2) splits the batch over the devices; multi-host with
--coordinator_address/--num_processes/--process_id or --distributed (see easytune_jax/core/parallel.py).

Rerunning the same command resumes from the last checkpoint (a changed config is refused, naming the field).
Writes metrics.jsonl/csv + TensorBoard events (reward per update and per step index, held-out reward),
checkpoints/, best/ and summary.json.
"""

import json

from absl import flags

from easytune_jax import cli
from easytune_jax.configs import finetune as presets
from easytune_jax.core import parallel
from easytune_jax.core.metric_writer import quiet_library_logs
from easytune_jax.train import finetune_runner

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Output / resume directory.", required=True)
flags.DEFINE_string("generator_workdir", None, "Work directory of launch/train_base.py.", required=True)
flags.DEFINE_string(
  "reward_workdir",
  None,
  "Reward model: a workdir of launch/train_reward.py or a converted "
  "official SPM (bundles.reward.convert_spm_checkpoint).",
)
flags.DEFINE_string("data_dir", None, "HumanML3D-layout dataset (train captions, val held-out).", required=True)
flags.DEFINE_string("evaluator_workdir", None, "Optional evaluator: quick R-precision/FID/MM-Dist at evals.")
cli.define_config_flag(presets.PRESETS, "tiny", "The run's RunConfig (easytune_jax/configs/finetune.py).")
cli.define_flags(dataset=True, progress=True, mesh=True)


def main(argv):
  del argv
  quiet_library_logs()
  config = cli.get_config()
  mesh = parallel.setup_from_flags()
  summary = finetune_runner.run_finetune(
    config,
    FLAGS.workdir,
    FLAGS.generator_workdir,
    FLAGS.reward_workdir,
    FLAGS.data_dir,
    FLAGS.evaluator_workdir,
    mesh=mesh if mesh.devices.size > 1 else None,
    progress=FLAGS.progress,
  )
  if parallel.is_main_process():
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
  cli.run(main, outputs=("workdir",), inputs=("generator_workdir", "reward_workdir", "data_dir", "evaluator_workdir"))
