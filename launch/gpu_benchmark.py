"""One short accelerator run (issue 20 item 6; `easytune_jax.bench.gpu`): paper-size compiled memory at
T in (10, 50, 200) for EasyTune / DRaFT-1 / DRaFT-T, then the T = 50 speed run (EasyTune sequential and
grad_chunk batched, DRaFT-1, DRaFT-50, ReFL), on the converted official MLD + SPM with random weights.

  PYTHONPATH=. timeout -k 30 480 python launch/gpu_benchmark.py --out_dir=docs/benchmark/gpu
  PYTHONPATH=. python launch/gpu_benchmark.py --out_dir=/tmp/gpu_smoke --config=smoke   # tiny models, CPU

benchmark.json / benchmark.md are rewritten after every measurement; no measurement starts after 450 s.
--config: the `GpuBenchConfig` (bench/gpu.py), a preset of easytune_jax/configs/gpu.py ('paper', default;
'smoke') or a .py file with get_config(); override fields with --config.<field>=<value> (--config.seconds=60).
"""

import json

from absl import flags, logging

from easytune_jax import cli
from easytune_jax.bench import gpu
from easytune_jax.bench.report import write_outputs
from easytune_jax.configs import gpu as presets
from easytune_jax.core.metric_writer import quiet_library_logs

FLAGS = flags.FLAGS
cli.define_flags(dataset=False, progress=False)
flags.DEFINE_string("out_dir", None, "Where benchmark.json / benchmark.md go.", required=True)
cli.define_config_flag(presets.PRESETS, "paper", "The GpuBenchConfig (easytune_jax/configs/gpu.py).")


def main(argv):
  del argv
  quiet_library_logs()
  result = gpu.run_gpu_benchmark(cli.get_config(), FLAGS.out_dir)
  logging.info(
    "gpu benchmark: %.0f s, %d records, skipped %s", result["seconds"], len(result["records"]), result["skipped"]
  )
  print(json.dumps({"summary": result["summary"], "outputs": write_outputs(result, FLAGS.out_dir)}, indent=2))


if __name__ == "__main__":
  cli.run(main, outputs=("out_dir",))
