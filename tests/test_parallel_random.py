"""The paper setting's randomness on a mesh (issue 33): every method with the denoiser's dropout and per-step
reward noise (and EasyTune with the per-batch reward key carried per row) gives on 8 fake CPU devices (data=8,
data=4,fsdp=2) the update of one device with the same keys (tests/multidevice/check_random.py)."""

import pytest

from tests.multidevice import run_on_8_devices

CASES = ("easytune", "easytune_batched", "draft", "refl", "alignprop", "drtune", "easytune_per_batch")
MESHES = ("data=8", "data=4,fsdp=2")


@pytest.fixture(scope="module")
def results():
  return run_on_8_devices("check_random.py")


def test_random_bits_do_not_depend_on_sharding(results):
  assert results["threefry_partitionable"], "jax_threefry_partitionable is off: masks would depend on the mesh"


@pytest.mark.parametrize("name", CASES)
def test_random_update_on_mesh_equals_one_device(results, name):
  r = results[name]
  # The random parts change the update by far more than the tolerance (a shard-dependent draw would show).
  assert r["dropout_effect"] > 1e-3, (name, r)
  for spec in MESHES:
    m = r[spec]
    assert m["param_diff"] < 1e-5 and m["loss_diff"] < 1e-5, (name, spec, m)
    assert m["step"] == m["ref_step"] > 0 and m["param_change"] > 1e-4, (name, spec, m)
