"""Runs a launcher as N JAX processes on this machine, joined by `jax.distributed` (the multi-controller runtime).

  python -m launch.multiprocess --config=cpu -- \
      python -m launch.finetune --mesh=data=4 --workdir=runs/ft --generator_workdir=runs/base ...
  python -m launch.multiprocess --config.num_processes=8 --config.gpus_per_process=1 -- \
      python -m launch.train_base --mesh=data=8 ...

--config: the `ProcessesConfig` (core/processes.py: num_processes, cpu_devices, gpus_per_process, grace_seconds):
'default' (2 processes on the platform's devices), 'cpu' (2 processes x 2 CPU devices) or a .py file with
get_config(); override any field with --config.<field>=<value>. Everything after '--' is the command; each process
gets it plus --coordinator_address=localhost:<port> --num_processes=N --process_id=i. --logs_dir keeps each
process's output in process_<i>.log (default: process 0 writes here, the others nowhere).

When one process fails the others stop (JAX stops them within the command's --heartbeat_timeout; they are killed
grace_seconds after the failure at the latest) and the exit status is the failure's. Rerunning the same command
resumes from the last complete checkpoint.
"""

import sys

from absl import app, flags

from easytune_jax import cli
from easytune_jax.configs import multiprocess as presets
from easytune_jax.core import processes

FLAGS = flags.FLAGS
flags.DEFINE_string("logs_dir", None, "Folder for process_<i>.log (default: process 0 to this terminal).")
cli.define_config_flag(presets.PRESETS, "default", "The ProcessesConfig (easytune_jax/configs/multiprocess.py).")
cli.define_flags(dataset=False, progress=False)


def main(argv):
  command = argv[1:]
  if not command:
    raise app.UsageError("expected the command after '--', e.g. -- python -m launch.finetune --mesh=data=4 ...")
  sys.exit(processes.run_processes(command, cli.get_config(), FLAGS.logs_dir))


if __name__ == "__main__":
  cli.run(main, outputs=("logs_dir",))
