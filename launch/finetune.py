"""Reward fine-tuning of a trained generator: EasyTune or a baseline, same harness.

  python -m launch.finetune --method=easytune --workdir=runs/ft_easytune \
      --generator_workdir=runs/base --reward_workdir=runs/reward --data_dir=runs/data \
      [--evaluator_workdir=runs/evaluator] [--num_steps=50 --k=50 --guidance_scale=7.5 --lr=1e-5 ...]

Scale-out: --mesh=data=8 (or data=4,fsdp=2) splits --batch_size over the devices; multi-host with
--coordinator_address/--num_processes/--process_id or --distributed (see easytune_jax/parallel.py).

Rerunning the same command resumes from the last checkpoint. Writes metrics.jsonl/csv + TensorBoard events
(reward per update and per step index, held-out reward), checkpoints/, best/ and summary.json.
"""

import json

from absl import flags

from easytune_jax import finetune
from easytune_jax import cli
from easytune_jax.core import parallel
from easytune_jax.train import finetune_runner
from easytune_jax.core.metric_writer import quiet_library_logs
from easytune_jax.core.optim import OptimConfig
from easytune_jax.core.sampling import CPU_GUIDANCE_SCALE, CPU_NUM_STEPS, GUIDANCE_SCALE

FLAGS = flags.FLAGS
flags.DEFINE_enum("method", "easytune", list(finetune.METHODS), "Fine-tuning method.")
flags.DEFINE_string("workdir", None, "Output / resume directory.", required=True)
flags.DEFINE_string("generator_workdir", None, "Work directory of launch/train_base.py.", required=True)
flags.DEFINE_string("reward_workdir", None, "Reward model: a workdir of launch/train_reward.py or a converted "
                    "official SPM (train.reward.convert_spm_checkpoint).")
flags.DEFINE_string("reward", "spm", "Reward terms and weights (rewards/registry.py): 'spm', "
                    "'spm:1.0,skating:0.2', physical terms skating|jitter|penetration, or module:function.")
flags.DEFINE_string("reward_text", "", "Text encoder of an embedding-input reward (the official SPM): a "
                    "sentence-t5-large folder or a precomputed .npz.")
flags.DEFINE_string("data_dir", None, "HumanML3D-layout dataset (train captions, val held-out).", required=True)
flags.DEFINE_string("evaluator_workdir", None, "Optional evaluator: quick R-precision/FID/MM-Dist at evals.")
flags.DEFINE_integer("num_steps", CPU_NUM_STEPS, "DDIM steps T of the sampled trajectories.")
flags.DEFINE_integer("k", None, "EasyTune: train the last k steps (default all); DRaFT: backprop depth; "
                     "DRTune: number of training steps.")
flags.DEFINE_integer("m", None, "ReFL/DRTune: loss step drawn among the last m steps.")
flags.DEFINE_float("p", 0.5, "AlignProp: probability a step carries gradient.")
flags.DEFINE_integer("t_train", None, "DRTune: span of the training steps.")
flags.DEFINE_float("guidance_scale", CPU_GUIDANCE_SCALE, "Classifier-free guidance w (the CPU setting; MLD uses "
                   f"{GUIDANCE_SCALE}).")
flags.DEFINE_float("eta", 0.0, "DDIM eta.")
flags.DEFINE_enum("sampler_variant", "frozen", list(finetune.SAMPLER_VARIANTS),
                  "EasyTune: 'frozen' (official theta_old sampler) or 'online'.")
flags.DEFINE_bool("remat", False, "Baselines: jax.checkpoint each differentiated step.")
flags.DEFINE_integer("grad_chunk", 1, "EasyTune 'frozen': per-step gradients computed C at a time by one vmapped "
                     "value_and_grad, then applied in order (1 = one after the other; same updates, memory grows "
                     "with C).")
flags.DEFINE_enum("compute_dtype", "float32", list(finetune.COMPUTE_DTYPES), "Denoiser/decoder/reward compute "
                  "dtype ('bfloat16' for accelerators; params and optimizer state stay float32).")
flags.DEFINE_enum("reward_input", "x0_hat", list(finetune.REWARD_INPUTS), "What the reward scores per step.")
flags.DEFINE_bool("step_aware_reward", False, "Pass the scored sample's timestep to the reward (SPM modes "
                  "M1T0/M0T1/M1T1).")
flags.DEFINE_enum("regularizer", "none", list(finetune.REGULARIZERS), "Anti-reward-hacking regulariser.")
flags.DEFINE_float("reg_weight", 0.0, "Regulariser weight.")
flags.DEFINE_float("lr", 2e-4, "Learning rate (the paper uses 1e-5 with 1000 warm-up steps at full size).")
flags.DEFINE_integer("warmup_steps", 10, "Warm-up optimizer updates.")
flags.DEFINE_float("grad_clip", 1.0, "Global-norm gradient clipping (0 disables).")
flags.DEFINE_integer("trajectories", 20, "Number of sampled trajectories (EasyTune makes k updates each).")
flags.DEFINE_integer("batch_size", 16, "Captions per trajectory.")
flags.DEFINE_integer("seed", 0, "Seed.")
flags.DEFINE_integer("eval_every", 5, "Held-out evaluation every this many trajectories.")
flags.DEFINE_integer("heldout_size", 64, "Held-out val captions.")
flags.DEFINE_integer("checkpoint_every", 10, "Checkpoint every this many trajectories.")
flags.DEFINE_string("trainable", "all", "Comma-separated regexes of trainable parameter paths ('all').")
flags.DEFINE_enum("best_metric", "heldout_reward", sorted(finetune_runner.BEST_METRICS),
                  "Criterion of best/: held-out reward, or an evaluator metric on the val split (needs "
                  "--evaluator_workdir; guards against reward over-optimisation).")
flags.DEFINE_enum("on_nonfinite", "skip", ["skip", "stop"], "Non-finite loss/gradient policy.")
parallel.define_flags()
cli.define_flags()


def config_from_flags() -> finetune_runner.RunConfig:
  ft = finetune.FinetuneConfig(
      method=FLAGS.method, num_steps=FLAGS.num_steps, k=FLAGS.k, m=FLAGS.m, p=FLAGS.p, t_train=FLAGS.t_train,
      guidance_scale=FLAGS.guidance_scale, eta=FLAGS.eta, sampler_variant=FLAGS.sampler_variant,
      remat=FLAGS.remat, grad_chunk=FLAGS.grad_chunk, compute_dtype=FLAGS.compute_dtype,
      reward_input=FLAGS.reward_input,
      reward_timestep="t" if FLAGS.step_aware_reward else None, regularizer=FLAGS.regularizer,
      reg_weight=FLAGS.reg_weight,
      optim=OptimConfig(learning_rate=FLAGS.lr, warmup_steps=FLAGS.warmup_steps,
                               grad_clip_norm=FLAGS.grad_clip))
  return finetune_runner.RunConfig(
      finetune=ft, trajectories=FLAGS.trajectories, batch_size=FLAGS.batch_size, seed=FLAGS.seed,
      eval_every=FLAGS.eval_every, heldout_size=FLAGS.heldout_size, checkpoint_every=FLAGS.checkpoint_every,
      trainable=FLAGS.trainable, on_nonfinite=FLAGS.on_nonfinite, best_metric=FLAGS.best_metric,
      reward=FLAGS.reward, reward_text=FLAGS.reward_text)


def main(argv):
  del argv
  quiet_library_logs()
  mesh = parallel.setup_from_flags()
  summary = finetune_runner.run_finetune(config_from_flags(), FLAGS.workdir, FLAGS.generator_workdir,
                                         FLAGS.reward_workdir, FLAGS.data_dir, FLAGS.evaluator_workdir,
                                         mesh=mesh if mesh.devices.size > 1 else None)
  print(json.dumps(summary, indent=2))


if __name__ == "__main__":
  cli.run(main, outputs=("workdir",), inputs=("generator_workdir", "reward_workdir", "data_dir", "evaluator_workdir"))
