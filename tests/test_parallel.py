"""Scale-out: sharded steps on 8 fake CPU devices equal one device; shardings; resharded restore."""

import os

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
  g = res["gathered"]
  assert g["sharded_before"] == 8 and g["devices"] == [1] and g["device"].endswith("0") and g["diff"] == 0.0, g
  assert res["placed"] == {
    "key_equal": True,
    "key_devices": 4,
    "x_spec": "P(('data', 'fsdp'),)",
    "x_equal": True,
    "rep_spec": "P()",
    "rep_devices": 4,
    "unchanged": True,
  }
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


def test_processes_config_and_environment():
  from easytune_jax.core import processes

  with pytest.raises(ValueError, match="num_processes: expected >= 1, found 0"):
    processes.ProcessesConfig(num_processes=0)
  with pytest.raises(ValueError, match="must be >= 0"):
    processes.ProcessesConfig(cpu_devices=-1)
  base = {"XLA_FLAGS": "--xla_backend_optimization_level=0 --xla_force_host_platform_device_count=8", "A": "1"}
  env = processes.process_env(1, processes.ProcessesConfig(num_processes=2, cpu_devices=2), base)
  assert env["XLA_FLAGS"] == "--xla_backend_optimization_level=0 --xla_force_host_platform_device_count=2"
  assert env["A"] == "1" and env["JAX_PLATFORMS"] == "cpu" and "CUDA_VISIBLE_DEVICES" not in env
  gpu = processes.process_env(2, processes.ProcessesConfig(num_processes=4, gpus_per_process=2), {})
  assert gpu == {"CUDA_VISIBLE_DEVICES": "4,5"}
  assert 0 < processes.free_port() < 65536


def test_one_process_is_the_writer_and_decides_alone(tmp_path):
  from easytune_jax.data.safe_io import read_json, write_json

  assert parallel.is_main_process() and not parallel.is_multiprocess()
  assert parallel.any_process(True) is True and parallel.any_process(False) is False
  write_json(tmp_path / "a.json", {"x": [1, 2]})
  assert read_json(tmp_path / "a.json") == {"x": [1, 2]} and sorted(os.listdir(tmp_path)) == ["a.json"]
