"""Scale-out of the real training steps: EasyTune, DRaFT-K, SPM+SPL and the base VAE step on 8 fake CPU
devices (meshes data=8 and data=4,fsdp=2) equal the single-device step on the same global batch."""

import jax
import numpy as np
import pytest

from easytune_jax.core import parallel
from tests.multidevice import run_on_8_devices

STEPS = ("easytune", "draft", "spm_spl", "vae", "easytune_batched")
MESHES = ("data=8", "data=4,fsdp=2")


@pytest.fixture(scope="module")
def results():
  return run_on_8_devices("check_methods.py")


@pytest.mark.parametrize("name", STEPS)
def test_sharded_step_equals_single_device(results, name):
  for spec in MESHES:
    r = results[name][spec]
    # float32 all-reduce order differs from one device's sum: 1e-5 after one (or K=2) Adam steps.
    assert r["param_diff"] < 1e-5, (name, spec, r)
    assert r["opt_diff"] < 1e-5, (name, spec, r)
    assert r["loss_diff"] < 1e-5, (name, spec, r)  # relative to max(|loss|, 1)
    assert r["step"] == r["ref_step"] > 0, (name, spec, r)
    # The step really moved the parameters (so equality above is not trivially true).
    assert r["param_change"] > 1e-4, (name, spec, r)


@pytest.mark.parametrize("name", STEPS)
def test_fsdp_shards_params_and_adam_moments(results, name):
  replicated = results[name]["data=8"]["specs"]
  assert replicated["param"] == "P()" and replicated["mu"] == ["P()"], replicated
  s = results[name]["data=4,fsdp=2"]["specs"]
  # The largest leaf is split over 'fsdp' on its largest even dimension, and Adam's mu follows it.
  shape = s["shape"]
  dim = max((d for d in range(len(shape)) if shape[d] % 2 == 0), key=lambda d: shape[d])
  expected = "P(" + ", ".join("'fsdp'" if d == dim else "None" for d in range(len(shape))) + ")"
  if len(shape) == 1:
    expected = "P('fsdp',)"
  assert s["param"] == expected and s["mu"] == [expected], s


def test_spl_negatives_span_the_global_batch(results):
  # SPL and InfoNCE were active (non-zero) in the compared step: a per-device similarity matrix (2 or 4
  # rows) would give a different loss, so the equality above shows the negatives are global.
  m = results["spm_spl_metrics"]
  assert m["spl"] > 0 and m["contrastive"] > 0, m


def test_indivisible_global_batch_is_a_clear_error(results):
  assert (
    "batch_size=12 must be divisible by the number of devices in the mesh (8: {'data': 8, 'fsdp': 1})"
    in results["indivisible_error"]
  ), results["indivisible_error"]


def test_jit_sharded_on_one_device_mesh_equals_plain_jit():
  # In-process (1 CPU device): the wrapper is the identity on a 1-device mesh and keeps the state layout.
  mesh = parallel.make_mesh("data=1", devices=jax.devices()[:1])
  w = np.arange(6.0, dtype=np.float32).reshape(2, 3)

  def step(state, batch, scale):
    return state + scale * batch.sum(0), {"loss": batch.mean()}

  state, m = parallel.jit_sharded(step, mesh)(w, np.ones((4, 2, 3), np.float32), np.float32(0.5))
  ref, ref_m = jax.jit(step)(w, np.ones((4, 2, 3), np.float32), np.float32(0.5))
  np.testing.assert_array_equal(np.asarray(state), np.asarray(ref))
  assert float(m["loss"]) == float(ref_m["loss"]) == 1.0
  assert state.sharding.spec == parallel.P()
