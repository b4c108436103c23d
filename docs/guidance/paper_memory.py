"""Compiled memory of plain vs ReAlign-guided sampling on the official paper-size models with random weights
(`bench.official_memory.build_task`: converted official MLD + official SPM; batch 32, 196 frames). Compiled for
the CPU, never run.

  python docs/guidance/paper_memory.py 50 docs/guidance/paper_memory_cpu.json
"""

import json
import sys
import tempfile
import time

import jax

from easytune_jax.bench import official_memory as om
from easytune_jax.bundles.guided import GuidedGenerator, sampler_memory
from easytune_jax.configs.generate import realign_guidance
from easytune_jax.pipelines.guidance import cpu_description


def main(steps: int, out: str):
  cfg = om.OfficialMemoryConfig(size="paper")
  record = {
    "size": "paper",
    "batch_size": cfg.batch_size,
    "max_length": cfg.max_length,
    "num_steps": steps,
    "cpu": cpu_description()["model"],
    "jax": jax.__version__,
  }
  with tempfile.TemporaryDirectory() as d:
    task, info = om.build_task(d, cfg)
    record["param_counts"] = info["param_counts"]
    caps = om.captions(cfg.batch_size)
    for name, gen in (("plain", task.gen), ("realign", GuidedGenerator(task, realign_guidance()))):
      t0 = time.time()
      record[name] = sampler_memory(gen, cfg.batch_size, steps, cfg.max_length, captions=caps)
      record[name]["compile_s"] = round(time.time() - t0, 1)
      print(name, f"{record[name]['total'] / 2**30:.3f} GiB", f"compile {record[name]['compile_s']} s", flush=True)
  with open(out, "w") as f:
    json.dump(record, f, indent=1)


if __name__ == "__main__":
  main(int(sys.argv[1]), sys.argv[2])
