"""LoRA and partial-parameter fine-tuning (finetune/lora.py): the adapter on every generator's denoiser (ours: MLD,
MDM, flow; the converted official MLD), zero-init equality, the gradient against the chain rule of the low-rank
reparameterisation (float64), merged weights against the unmerged LoRA forward, every method updating only the
adapter, the update against full fine-tuning of an explicitly reparameterised denoiser, the base fingerprint."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from easytune_jax import finetune
from easytune_jax.bundles import adapter as adapter_io
from easytune_jax.bundles.finetuned import RunConfig
from easytune_jax.core.config import apply_overrides
from easytune_jax.core.optim import OptimConfig, create_train_state, make_optimizer
from easytune_jax.finetune import lora
from easytune_jax.models import generator as gm
from easytune_jax.models import mld_official as mo
from tests.test_finetune import cfg, decode, denoise, reward, setup

B = 2


# --------------------------------------------------------------------------------------------- the generators
def generator_case(name: str):
  """(apply(params, x, t, cond), params, (x, t, cond)) of the denoiser of a GENERATORS row or the official MLD."""
  key = jax.random.key(0)
  if name == "official":
    c = mo.OfficialDenoiserConfig.tiny()
    module = mo.OfficialMLDDenoiser(c)
    x = jax.random.normal(key, (B, c.latent_size, c.latent_dim))
    cond = {"text": jax.random.normal(jax.random.fold_in(key, 1), (B, 1, c.text_dim)), "text_mask": jnp.ones((B, 1))}
  else:
    c = gm.BaseConfig(model=name)
    module = gm.GENERATORS[name].denoiser(c)
    x = jax.random.normal(key, (B,) + gm.model_shape(c))
    cond = {
      "text": jax.random.normal(jax.random.fold_in(key, 1), (B, 3, 12)),
      "text_mask": jnp.array([[1, 1, 0], [1, 1, 1]], bool),
      "frame_mask": jnp.arange(c.data.max_length)[None] < jnp.array([[40], [64]]),
    }
  t = jnp.array([10, 700], jnp.int32)
  params = jax.jit(module.init)(jax.random.fold_in(key, 2), x, t, cond)
  return module.apply, params, (x, t, cond)


GENERATOR_CASES = (*gm.GENERATORS, "official")


def with_random_b(adapter, seed=3, std=0.05):
  """The adapter with every B drawn N(0, std^2) (a trained-looking adapter)."""
  flat = jax.tree_util.tree_flatten_with_path(adapter)[0]
  leaves = [
    std * jax.random.normal(jax.random.key(seed + i), x.shape, x.dtype) if lora._key(p[-1]) == "b" else x
    for i, (p, x) in enumerate(flat)
  ]
  return jax.tree_util.tree_unflatten(jax.tree.structure(adapter), leaves)


@pytest.mark.parametrize("name", GENERATOR_CASES)
def test_every_dense_and_attention_kernel_is_adapted_and_zero_init_equals_base(name):
  apply, params, (x, t, cond) = generator_case(name)
  config = lora.LoraConfig(rank=4, alpha=8.0)
  plan = lora.plan(params, config)
  kernels = [p for p in lora.named_leaves(params) if p.endswith("kernel")]
  assert sorted("/".join(p) for p, v in plan.items() if v[0] == "lora") == sorted(kernels)
  for p, (_, n_in, n_out) in plan.items():  # attention kernels read as [in, out] matrices
    if p[-2] in ("query", "key", "value", "out") or p[-1] == "in_proj_kernel":
      width = n_in if p[-2] != "out" else n_out
      assert (n_in, n_out) == ((width, 3 * width) if p[-1] == "in_proj_kernel" else (width, width)), p
  adapter = lora.init_adapter(params, config, jax.random.key(1))
  assert all(np.all(np.asarray(b) == 0) for _, b in lora._factors(adapter).values())  # B [r, out] = 0
  s = lora.summary(params, adapter)
  assert s["lora_kernels"] == len(kernels) and 0 < s["adapter_params"] < s["base_params"]
  merged = jax.jit(lambda p, a: lora.merge(p, a, config.scale))(params, adapter)
  for m, b in zip(jax.tree.leaves(merged), jax.tree.leaves(params)):  # W + s A 0 = W, bit for bit
    np.testing.assert_array_equal(np.asarray(m), np.asarray(b))
  base_out = jax.jit(lambda p: apply(p, x, t, cond))(params)
  lora_out = jax.jit(lambda p, a: lora.adapt(lambda q, *i: apply(q, *i), p, config.scale)(a, x, t, cond))(
    params, adapter
  )
  np.testing.assert_array_equal(np.asarray(lora_out), np.asarray(base_out))  # B = 0: exactly the base's outputs


@pytest.mark.parametrize("name", ("mld", "official"))
def test_lora_gradient_is_the_chain_rule_of_the_reparameterisation_float64(name):
  """d/dA, d/dB of L(W + s A B) by autodiff through `merge` = s G B^T, s A^T G with G = dL/dW of the full
  params (reshaped [in, out]); a leaf trained whole gets G itself."""
  with jax.enable_x64(True):
    apply, params, (x, t, cond) = generator_case(name)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    x = x.astype(jnp.float64)
    cond = jax.tree.map(lambda a: a.astype(jnp.float64) if a.dtype == jnp.float32 else a, cond)
    config = lora.LoraConfig(rank=3, alpha=6.0, train_whole="bias")
    adapter = with_random_b(lora.init_adapter(params, config, jax.random.key(1)))
    cot = jax.random.normal(jax.random.key(9), jax.eval_shape(apply, params, x, t, cond).shape, jnp.float64)
    loss = lambda p: jnp.sum(apply(p, x, t, cond) * cot)

    @jax.jit
    def grads(adapter):
      return jax.grad(lambda a: loss(lora.merge(params, a, config.scale)))(adapter), jax.grad(loss)(
        lora.merge(params, adapter, config.scale)
      )

    got, full = grads(adapter)
    full, got_lora, ad = lora._flat(full), lora._factors(got), lora._factors(adapter)
    assert got_lora and lora._flat(got.get("whole", {}))
    for p, (a, b) in ad.items():
      g = np.asarray(full[p]).reshape(a.shape[0], b.shape[1])
      np.testing.assert_allclose(got_lora[p][0], config.scale * g @ np.asarray(b).T, rtol=1e-10, atol=1e-13)
      np.testing.assert_allclose(got_lora[p][1], config.scale * np.asarray(a).T @ g, rtol=1e-10, atol=1e-13)
    for p, g in lora._flat(got["whole"]).items():
      np.testing.assert_allclose(g, full[p], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ("mld", "mdm"))
def test_merged_weights_equal_the_unmerged_lora_forward_float64(name):
  """merge(base, adapter) run as one network = the adapted model computed the LoRA way: every Dense /
  DenseGeneral (attention projections included) returns x W + b + s (x A) B with the base W (flax interception)."""
  with jax.enable_x64(True):
    apply, params, (x, t, cond) = generator_case(name)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    x = x.astype(jnp.float64)
    cond = jax.tree.map(lambda a: a.astype(jnp.float64) if a.dtype == jnp.float32 else a, cond)
    config = lora.LoraConfig(rank=2, alpha=3.0)
    adapter = with_random_b(lora.init_adapter(params, config, jax.random.key(1)), std=0.2)
    factors = lora._factors(adapter)
    used = set()

    def lora_layers(next_fun, args, kwargs, context):
      mod = context.module
      y = next_fun(*args, **kwargs)
      if context.method_name != "__call__" or not isinstance(mod, (nn.Dense, nn.DenseGeneral)):
        return y
      path = ("params", *mod.path, "kernel")
      a, b = factors[path]
      used.add(path)
      x_in = args[0]
      n = 1 if a.shape[0] == x_in.shape[-1] else 2  # DenseGeneral over (heads, head_dim): the out projection
      h = x_in.reshape(x_in.shape[: x_in.ndim - n] + (-1,))
      return y + (config.scale * (h @ a) @ b).reshape(y.shape)

    def unmerged(p, a):
      with nn.intercept_methods(lora_layers):
        return apply(p, x, t, cond)

    want = unmerged(params, adapter)
    got = jax.jit(lambda p, a: apply(lora.merge(p, a, config.scale), x, t, cond))(params, adapter)
    assert used == set(factors)  # every factored kernel was met as a layer
    assert float(jnp.max(jnp.abs(want - apply(params, x, t, cond)))) > 1e-3  # the adapter matters
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-11, atol=1e-12)


# --------------------------------------------------------------------------------------------- the update
TOY = lora.LoraConfig(rank=2, alpha=4.0, targets="^w", train_whole="^b1$")  # w1, w2 factored; b1 whole; tw frozen


@pytest.mark.parametrize("method", finetune.METHODS)
def test_every_method_updates_only_the_adapter(method):
  params, sched, x_T, cond, uncond = setup(jnp.float32)
  config = dataclasses.replace(
    cfg(method, k=2 if method in ("draft", "drtune") else None, m=3, p=0.5), lora=TOY, optim=OptimConfig(1e-2)
  )
  tx = make_optimizer(config.optim)
  adapter = lora.init_adapter(params, TOY, jax.random.key(5))
  update = finetune.make_update_fn(config, denoise, reward, sched, tx, decode=decode)
  state, m = update(create_train_state(adapter, tx), x_T, cond, uncond, jax.random.key(2), None, params)
  assert bool(m["finite"]) and float(m["grad_norm"]) > 0 and int(state.step) == config.updates_per_trajectory
  # the state is the adapter and its AdamW moments: no optimizer state for the base
  assert jax.tree.structure(state.params) == jax.tree.structure(adapter)
  assert lora.tree_size(state.opt_state) <= 2 * lora.tree_size(adapter) + 4
  merged = lora.merge(params, state.params, TOY.scale)
  np.testing.assert_array_equal(merged["tw"], params["tw"])  # frozen: exactly unchanged
  for name in ("w1", "w2", "b1"):
    assert (np.asarray(merged[name]) != np.asarray(params[name])).all(), f"{method}: {name} not updated"
  assert (np.asarray(state.params["lora"]["w1"]["b"]) != 0).all()


def reparameterised(params, scale):
  """The low-rank reparameterisation written out: flat params {a1, B1, a2, B2, b1} -> the toy denoiser's."""

  def denoise_r(q, x, t, c):
    full = {
      "w1": params["w1"] + scale * (q["a1"] @ q["B1"]),
      "w2": params["w2"] + scale * (q["a2"] @ q["B2"]),
      "b1": q["b1"],
      "tw": params["tw"],
    }
    return denoise(full, x, t, c)

  return denoise_r


@pytest.mark.parametrize("method,sampler", (("easytune", "frozen"), ("easytune", "online"), ("draft", "frozen")))
def test_lora_update_equals_full_finetuning_of_the_written_out_reparameterisation_float64(method, sampler):
  with jax.enable_x64(True):
    params, sched, x_T, cond, uncond = setup(jnp.float64)
    config = cfg(method, k=3 if method == "draft" else None, sampler_variant=sampler)
    config = dataclasses.replace(config, lora=TOY, optim=OptimConfig(1e-2))
    tx = make_optimizer(config.optim)
    adapter = lora.init_adapter(params, TOY, jax.random.key(5))
    update = finetune.make_update_fn(config, denoise, reward, sched, tx, decode=decode)
    got, _ = update(create_train_state(adapter, tx), x_T, cond, uncond, jax.random.key(2), None, params)
    la = adapter["lora"]
    q0 = {
      "a1": la["w1"]["a"],
      "B1": la["w1"]["b"],
      "a2": la["w2"]["a"],
      "B2": la["w2"]["b"],
      "b1": adapter["whole"]["b1"],
    }
    plain = dataclasses.replace(config, lora=lora.LoraConfig())
    ref_update = finetune.make_update_fn(plain, reparameterised(params, TOY.scale), reward, sched, tx, decode=decode)
    want, _ = ref_update(create_train_state(q0, tx), x_T, cond, uncond, jax.random.key(2))
    g = got.params["lora"]
    pairs = [
      (g["w1"]["a"], want.params["a1"]),
      (g["w1"]["b"], want.params["B1"]),
      (g["w2"]["a"], want.params["a2"]),
      (g["w2"]["b"], want.params["B2"]),
      (got.params["whole"]["b1"], want.params["b1"]),
    ]
    for a, b in pairs:
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-11, atol=1e-14)
    # dL/dA = s G B^T is 0 while B = 0: A stays through the first trajectory when every gradient is taken at
    # theta_old (the frozen sampler, one-update methods) and moves with the online sampler's later updates.
    moved = not np.array_equal(np.asarray(g["w1"]["a"]), np.asarray(la["w1"]["a"]))
    assert moved == (sampler == "online")


def test_kl_regulariser_compares_with_the_base_and_the_base_is_required():
  params, sched, x_T, cond, uncond = setup(jnp.float32)
  config = dataclasses.replace(cfg("draft", k=2), lora=TOY, regularizer="kl", reg_weight=1.0)
  tx = make_optimizer(config.optim)
  update = finetune.make_update_fn(config, denoise, reward, sched, tx, decode=decode)
  state = create_train_state(lora.init_adapter(params, TOY, jax.random.key(5)), tx)
  # B = 0 and the whole leaf = the base's: the adapted outputs are the base's, KL exactly 0
  _, m = update(jax.tree.map(jnp.copy, state), x_T, cond, uncond, jax.random.key(2), None, params)
  assert float(m["kl"]) == 0.0
  with pytest.raises(ValueError, match="lora.*needs `base_params`"):
    update(state, x_T, cond, uncond, jax.random.key(2))


def test_bfloat16_compute_runs_the_merged_network_in_bfloat16():
  params, sched, x_T, cond, uncond = setup(jnp.float32)
  seen = []

  def denoise_spy(p, x, t, c):
    seen.append(p["w1"].dtype)
    return denoise(p, x, t, c)

  config = dataclasses.replace(cfg("refl", m=2), lora=TOY, compute_dtype="bfloat16")
  tx = make_optimizer(config.optim)
  update = finetune.make_update_fn(config, denoise_spy, reward, sched, tx, decode=decode, jit=False)
  state = create_train_state(lora.init_adapter(params, TOY, jax.random.key(5)), tx)
  state, m = jax.jit(update)(state, x_T, cond, uncond, jax.random.key(2), None, params)
  assert bool(m["finite"]) and set(seen) == {jnp.dtype(jnp.bfloat16)}
  assert jax.tree.leaves(state.params)[0].dtype == jnp.float32  # master adapter stays float32


# --------------------------------------------------------------------------------------------- config, records
def test_config_errors_and_overrides():
  with pytest.raises(ValueError, match="LoraConfig.rank"):
    lora.LoraConfig(rank=-1)
  with pytest.raises(ValueError, match="LoraConfig.alpha"):
    lora.LoraConfig(rank=4, alpha=0.0)
  with pytest.raises(ValueError, match="LoraConfig.targets: '\\(' is not a regular expression"):
    lora.LoraConfig(rank=4, targets="(")
  assert not lora.LoraConfig().enabled and lora.LoraConfig(train_whole="bias").enabled
  assert lora.LoraConfig(rank=8).scale == 1.0 and lora.LoraConfig(rank=8, alpha=32).scale == 4.0
  run = apply_overrides(
    RunConfig(), ["finetune.lora.rank=16", "finetune.lora.alpha=32", "finetune.lora.targets=query,value"]
  )
  assert run.finetune.lora == lora.LoraConfig(rank=16, alpha=32.0, targets="query,value")
  with pytest.raises(ValueError, match="RunConfig.trainable.*finetune.lora.train_whole"):
    apply_overrides(RunConfig(), ["finetune.lora.rank=4", "trainable=denoiser"])
  params = setup(jnp.float32)[0]
  with pytest.raises(ValueError, match="LoraConfig.targets='kernel' matches no kernel.*paths look like"):
    lora.plan(params, lora.LoraConfig(rank=2))
  with pytest.raises(ValueError, match="LoraConfig.train_whole='nothing' matches no parameter"):
    lora.plan(params, lora.LoraConfig(train_whole="nothing"))
  with pytest.raises(ValueError, match="parameter 'c' of shape \\(2, 3, 4\\).*2-D kernel"):
    lora.plan({"c": jnp.zeros((2, 3, 4))}, lora.LoraConfig(rank=2, targets="c"))


def test_merge_refuses_an_adapter_of_another_model():
  params = setup(jnp.float32)[0]
  adapter = lora.init_adapter(params, TOY, jax.random.key(0))
  other = {**params, "w1": jnp.zeros((6, 7))}
  with pytest.raises(ValueError, match="factors of 'w1' give \\[5, 7\\], the base kernel is \\(6, 7\\)"):
    lora.merge(other, adapter, 1.0)
  with pytest.raises(ValueError, match="factors of 'w1'.*fit no kernel"):
    lora.merge({k: v for k, v in params.items() if k != "w1"}, adapter, 1.0)


def test_fingerprint_and_the_refusal_name_both_bases():
  params = setup(jnp.float32)[0]
  adapter = lora.init_adapter(params, TOY, jax.random.key(0))
  record = adapter_io.adapter_record(params, "runs/base_a", TOY, adapter)
  assert record["base_fingerprint"] == lora.fingerprint(jax.tree.map(jnp.copy, params))
  adapter_io.check_base(record, params, "runs/base_a", "run/finetune.json")  # its own base: accepted
  moved = {**params, "tw": params["tw"].at[0].add(1e-6)}
  with pytest.raises(adapter_io.AdapterBaseMismatch, match="run/finetune.json.*runs/base_a.*runs/base_b"):
    adapter_io.check_base(record, moved, "runs/base_b", "run/finetune.json")
  assert record["adapter_params"] == lora.tree_size(adapter) == 2 * (5 * 2 + 2 * 7) + 7


# --------------------------------------------------------------------------------------------- mesh
@pytest.mark.slow  # a subprocess on 8 fake devices
def test_lora_updates_on_a_mesh_equal_one_device():
  from tests.multidevice import run_on_8_devices

  results = run_on_8_devices("check_lora.py")
  for method in ("easytune", "draft"):
    for spec, r in results[method].items():
      assert r["same_structure"] and r["param_change"] > 1e-4, (method, spec, r)
      assert r["param_diff"] < 1e-5 and r["opt_diff"] < 1e-5 and r["loss_diff"] < 1e-5, (method, spec, r)


def test_quickstart_preset_is_the_quickstart_easytune_run():
  from easytune_jax.configs import finetune as presets
  from easytune_jax.pipelines import quickstart as qs

  assert presets.get_config("quickstart") == qs.run_config(qs.QuickstartConfig(), "easytune")
