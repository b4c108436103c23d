"""Trains the base text-to-motion generator (a kind of models.generator.GENERATORS: MLD, VAE then latent diffusion;
MDM on the features; flow, VAE then latent flow matching) and writes samples.

  python launch/make_synthetic.py --out_dir=/tmp/synth --config.num_motions=2000
  python launch/train_base.py --config=tiny --workdir=/tmp/base --data_dir=/tmp/synth
  python launch/train_base.py --config=tiny_mdm --workdir=/tmp/base_mdm --data_dir=/tmp/synth \
      --config.diffusion_steps=2000 --config.denoiser.width=128

--config: the `BaseConfig` (models/generator.py): a preset of easytune_jax/configs/base.py ('tiny', 'small',
'paper'; '<size>_mdm' for MDM, '<size>_flow' for flow matching) or a .py file with get_config(); override any field with --config.<field>=<value>.
The samples use --config.sampler.num_steps / --config.sampler.guidance_scale (not part of the resume check).

Scale-out: --mesh=data=8 (or data=4,fsdp=2; data.batch_size is the global batch); multi-host with
--coordinator_address/--num_processes/--process_id or --distributed.

Re-running the same command resumes from the latest checkpoints. Samples (features.npy, joints.npy and
GIFs) of held-out captions go to <workdir>/samples/.
"""

from absl import flags, logging

from easytune_jax import cli
from easytune_jax.configs import base as presets
from easytune_jax.core import parallel
from easytune_jax.core.metric_writer import quiet_library_logs
from easytune_jax.train import base

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Output folder (checkpoints, metrics, samples).", required=True)
flags.DEFINE_string("data_dir", None, "HumanML3D-layout dataset folder.", required=True)
flags.DEFINE_integer("num_samples", 4, "Held-out captions to generate after training (0: none).")
flags.DEFINE_bool("gif", True, "Also write stick-figure GIFs of the samples.")
cli.define_config_flag(presets.PRESETS, "tiny", "The BaseConfig (easytune_jax/configs/base.py).")
cli.define_flags(dataset=True, progress=True, mesh=True)


def main(argv):
  del argv
  quiet_library_logs()
  config = cli.get_config()
  mesh = parallel.setup_from_flags()
  if mesh.devices.size > 1:
    # Trains both stages on the mesh; train_and_sample below then restores the finished checkpoints
    # (no further steps) and writes the samples.
    base.train_and_evaluate(config, FLAGS.workdir, FLAGS.data_dir, progress=FLAGS.progress, mesh=mesh)
  out = base.train_and_sample(
    config, FLAGS.workdir, FLAGS.data_dir, FLAGS.num_samples, gif=FLAGS.gif, progress=FLAGS.progress
  )
  logging.info("VAE: %s", out.get("vae"))
  logging.info("diffusion: %s", out["diffusion"])
  logging.info("seconds: %s", out["seconds"])


if __name__ == "__main__":
  cli.run(main, outputs=("workdir",), inputs=("data_dir",))
