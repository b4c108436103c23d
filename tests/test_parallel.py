"""Scale-out: sharded steps on 8 fake CPU devices equal one device; shardings; resharded restore."""

import numpy as np
import pytest

from easytune_jax.core import parallel
from easytune_jax.core.checkpoint import Checkpointer
from easytune_jax.core.optim import OptimConfig, create_train_state, make_optimizer
from tests.multidevice import run_on_8_devices


def test_mesh_spec_parsing_and_errors():
  assert parallel.parse_mesh_spec("data=4,fsdp=2", 8) == {"data": 4, "fsdp": 2}
  assert parallel.parse_mesh_spec("", 8) == {"data": 8, "fsdp": 1}
  assert parallel.parse_mesh_spec("fsdp=2", 8) == {"data": 4, "fsdp": 2}
  with pytest.raises(ValueError, match="'model=2'"):
    parallel.parse_mesh_spec("model=2", 8)
  with pytest.raises(ValueError, match="data x fsdp = 6 devices, but 8"):
    parallel.parse_mesh_spec("data=3,fsdp=2", 8)
  with pytest.raises(ValueError, match="must be an integer"):
    parallel.parse_mesh_spec("data=x", 8)
  with pytest.raises(ValueError, match="num_processes"):
    parallel.initialize_distributed(parallel.DistributedConfig(coordinator_address="h:1"))
  assert parallel.param_spec(np.zeros((64, 128)), 2, min_size=16) == parallel.P(None, "fsdp")
  assert parallel.param_spec(np.zeros((3,)), 2) == parallel.P()


def test_sharded_steps_equal_single_device_and_restore_elsewhere(tmp_path):
  res = run_on_8_devices("check_parallel.py", str(tmp_path / "ck"))
  for key in ("contrastive_data8", "contrastive_data4_fsdp2"):
    assert res[key]["param_diff"] < 1e-5  # float32 reduction order, res[key]
    assert res[key]["loss_diff"] < 1e-5, res[key]
    assert res[key]["batch_spec"] == "P(('data', 'fsdp'),)"
  assert res["contrastive_data8"]["specs"]["params.wt"] == "P()"
  assert res["contrastive_data4_fsdp2"]["specs"] == {"params.wt": "P(None, 'fsdp')", "mu.wt": "P(None, 'fsdp')"}
  assert res["restore_on_4"]["diff"] == 0.0 and res["restore_on_4"]["devices"] == 4
  assert "batch_size=30 must be divisible by the number of devices in the mesh (8" in res["indivisible_error"]
  # The same checkpoint restores on this single-device process.
  ck = Checkpointer(tmp_path / "ck")
  assert ck.metadata()["note"] == "written on 8 devices"
  params = ck.restore(_template())
  assert len(params.params["wt"].sharding.device_set) == 1 and np.all(np.isfinite(params.params["wt"]))


def _template():
  import jax.numpy as jnp

  tx = make_optimizer(OptimConfig(learning_rate=1e-2))
  params = {"wt": jnp.zeros((64, 128)), "wm": jnp.zeros((64, 128))}
  return create_train_state(params, tx)
