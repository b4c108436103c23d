"""On-disk bytes of one fine-tuning checkpoint (the TrainState the runner writes to `checkpoints/`: params + AdamW
moments) of the paper-size official MLD denoiser (8,221,184 parameters, random weights), full vs LoRA adapters of
rank 4 / 16 / 64 on every dense and attention kernel, and of the params alone (`best/`, a merged export's
`params/` for the full row). Every floating value is drawn at random first (a trained state: orbax compresses the
zeros of a fresh state's B and AdamW moments, which would understate the sizes).

  PYTHONPATH=. python docs/lora/checkpoint_sizes.py    # writes docs/lora/checkpoint_sizes.json
"""

import json
import pathlib
import tempfile

import jax

from easytune_jax import finetune
from easytune_jax.bundles.adapter import folder_bytes
from easytune_jax.core.checkpoint import Checkpointer
from easytune_jax.core.optim import OptimConfig, create_train_state, make_optimizer
from easytune_jax.models import mld_official as mo

HERE = pathlib.Path(__file__).parent


def randomised(tree):
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  return jax.tree.unflatten(
    treedef,
    [
      jax.random.normal(k, x.shape, x.dtype) if jax.numpy.issubdtype(x.dtype, jax.numpy.floating) else x
      for k, x in zip(keys, leaves)
    ],
  )


def saved_bytes(tree, where: pathlib.Path) -> int:
  ck = Checkpointer(where, max_to_keep=1)
  ck.save(0, tree, {})
  ck.close()
  return folder_bytes(where)


def main():
  params = mo.init_denoiser(mo.OfficialDenoiserConfig(), jax.random.key(0))
  tx = make_optimizer(OptimConfig())
  out = {"denoiser_params": finetune.lora.tree_size(params), "records": []}
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    rows = [("full", params)] + [
      (f"lora{r}", finetune.lora.init_adapter(params, finetune.LoraConfig(rank=r), jax.random.key(1)))
      for r in (4, 16, 64)
    ]
    for name, trained in rows:
      state = randomised(create_train_state(trained, tx))
      out["records"].append(
        {
          "name": name,
          "trainable_params": finetune.lora.tree_size(trained),
          "state_array_bytes": finetune.lora.tree_bytes(state),
          "checkpoint_disk_bytes": saved_bytes(state, tmp / name),
          "params_only_disk_bytes": saved_bytes(state.params, tmp / f"{name}_params"),
        }
      )
  (HERE / "checkpoint_sizes.json").write_text(json.dumps(out, indent=1))
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  main()
