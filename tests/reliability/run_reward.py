"""Subprocess driver of tests/test_reliability.py: trains (or resumes) the tiny reward model.

  python tests/reliability/run_reward.py DATA_DIR WORKDIR STEPS CACHE_DIR

Goes through the real trainer (`train.reward.train_reward` -> `train.loop.train_loop` + `Checkpointer`, data from
`batching.batch_at`) with checkpoint_every=1, so a kill at any point leaves a checkpoint to resume from.
On completion writes WORKDIR/final.npz (flattened parameters) and exits 0; on SIGTERM/SIGINT the loop
checkpoints and returns early, and the script exits 3 without writing final.npz.
"""

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")

import jax  # noqa: E402

data_dir, workdir, steps, cache_dir = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
# Shared persistent cache: the first process compiles, the resumed ones load the executable.
jax.config.update("jax_compilation_cache_dir", cache_dir)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

import numpy as np  # noqa: E402

from easytune_jax.data.humanml3d import load_dataset  # noqa: E402
from easytune_jax.models.spm import SPMConfig  # noqa: E402
from easytune_jax.rewards import spm_objective as RO  # noqa: E402
from easytune_jax.train import reward as R  # noqa: E402

# The trainer initialises the SPM eagerly (thousands of tiny dispatches, ~10 s per process on a loaded CPU);
# one jitted init gives the same kind of parameters and is loaded from the shared compilation cache. Every
# run of this test (reference and resumed ones) uses the same patched init, and resumed runs restore their
# parameters from the checkpoint anyway.
R.init_spm = jax.jit(R.init_spm, static_argnums=0, static_argnames="text_emb_dim")

# tests/pipeline.py REWARD, but checkpointing every step.
CONFIG = RO.RewardTrainConfig(
  model=SPMConfig(word_dim=16, latent_dim=16, ff_dim=32, num_layers=1, num_heads=2, patch_size=4),
  batch_size=8,
  max_length=32,
  text_max_length=12,
  log_every=1,
  checkpoint_every=1,
)


def main() -> int:
  out = R.train_reward(CONFIG, workdir, load_dataset(data_dir, "train"), mode="M1T1", steps=steps, progress=False)
  if out["preempted"]:
    print(f"PREEMPTED at step {out['steps']}", flush=True)
    return 3
  flat = {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(out["params"])[0]}
  tmp = os.path.join(workdir, "final.tmp.npz")
  np.savez(tmp, **flat)
  os.replace(tmp, os.path.join(workdir, "final.npz"))  # atomic: a kill never leaves a partial final.npz
  print(f"DONE at step {out['steps']}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
