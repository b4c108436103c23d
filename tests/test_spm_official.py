"""The official SPM architecture, its torch-free checkpoint converter and its reward semantics.

The architecture is checked against an independent numpy forward written from the official state-dict keys (the
converter's mapping and the Flax module are tested together); parity with the official PyTorch module itself was
measured outside the project (see the branch report).
"""

import math
import os
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from easytune_jax.bundles import reward as RB
from easytune_jax.interop import spm_convert
from easytune_jax.interop.torch_zip import save_torch
from easytune_jax.models import spm
from easytune_jax.models.spm import SPMConfig

D, E, C, FF, N, H = 6, 10, 8, 16, 3, 2


def synthetic_state(config=None, e=E, seed=0):
  config = config or SPMConfig.official(dim_motion=D, latent_dim=C, ff_dim=FF, num_layers=N, num_heads=H)
  rng = np.random.default_rng(seed)
  sd = {}
  for k, shape in spm_convert.official_state_shapes(config, e).items():
    sd[k] = (rng.uniform(0, 1, shape) if k.endswith(".pe") else 0.3 * rng.normal(size=shape)).astype(np.float32)
  for k in ("weight", "bias"):  # one shared LayerNorm, stored under both encoders
    sd[f"text_encoder.norm.{k}"] = sd[f"motion_encoder.norm.{k}"]
  return sd


# --------------------------------------------------------------------------------------------- numpy official
def _lin(sd, p, x):
  return x @ sd[p + ".weight"].T + sd[p + ".bias"]


def _ln(sd, p, x):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-5) * sd[p + ".weight"] + sd[p + ".bias"]


def _gelu(x):
  return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def _mha(sd, p, q, kv, key_valid):
  c = q.shape[-1]
  w, b = sd[p + ".in_proj_weight"], sd[p + ".in_proj_bias"]
  heads = lambda x: x.reshape(x.shape[0], x.shape[1], H, c // H).transpose(0, 2, 1, 3)
  qh = heads(q @ w[:c].T + b[:c]) / math.sqrt(c // H)
  kh, vh = heads(kv @ w[c : 2 * c].T + b[c : 2 * c]), heads(kv @ w[2 * c :].T + b[2 * c :])
  logits = qh @ kh.transpose(0, 1, 3, 2)
  if key_valid is not None:
    logits = np.where(key_valid[:, None, None, :], logits, -np.inf)
  wts = np.exp(logits - logits.max(-1, keepdims=True))
  wts = wts / wts.sum(-1, keepdims=True)
  out = (wts @ vh).transpose(0, 2, 1, 3).reshape(q.shape)
  return _lin(sd, p + ".out_proj", out)


def _layer(sd, p, x, valid, memory):
  x = _ln(sd, p + ".norm1", x + _mha(sd, p + ".self_attn", x, x, valid))
  if memory is not None:
    x = _ln(sd, p + ".norm2", x + _mha(sd, p + ".multihead_attn", x, memory, None))
  last = ".norm3" if memory is not None else ".norm2"
  return _ln(sd, p + last, x + _lin(sd, p + ".linear2", _gelu(_lin(sd, p + ".linear1", x))))


def _skip(sd, p, x, valid, memory=None):
  n = (N - 1) // 2
  skips = []
  for i in range(n):
    x = _layer(sd, f"{p}.input_blocks.{i}", x, valid, memory)
    skips.append(x)
  x = _layer(sd, f"{p}.middle_block", x, valid, memory)
  for i in range(n):
    x = _lin(sd, f"{p}.linear_blocks.{i}", np.concatenate([x, skips.pop()], -1))
    x = _layer(sd, f"{p}.output_blocks.{i}", x, valid, memory)
  return _ln(sd, f"{p}.norm", x)


def np_encode(sd, stream, x, valid, t=None):
  b = x.shape[0]
  h = _lin(sd, "skel_embedding" if stream == "motion" else "text_embedding", x)
  parts, masks = [np.broadcast_to(sd[f"global_{stream}_token"][None], (b, 1, C))], [np.ones((b, 1), bool)]
  if t is not None:
    freqs = np.exp(-math.log(10000.0) * np.arange(C) / C)
    arg = np.asarray(t, np.float64)[:, None] * freqs[None]
    te = np.concatenate([np.cos(arg), np.sin(arg)], -1)  # flip_sin_to_cos
    te = _lin(sd, "time_embedding.linear_2", (lambda u: u / (1 + np.exp(-u)))(_lin(sd, "time_embedding.linear_1", te)))
    parts.append(te[:, None])
    masks.append(np.ones((b, 1), bool))
  seq = np.concatenate(parts + [h], 1)
  seq = seq + sd[f"query_{stream}_pos_encoder.pe"][: seq.shape[1], 0][None]
  out = _skip(sd, f"{stream}_encoder", seq, np.concatenate(masks + [valid], 1))
  dist = _lin(sd, f"dist_{stream}_layer", out[:, 0])
  return dist[:, :C], dist[:, C:]


def np_decode(sd, z, valid):
  length = valid.shape[1]
  q = np.zeros((z.shape[0], length, C)) + sd["query_pos_decoder.pe"][:length, 0][None]
  h = _skip(sd, "decoder", q, valid, memory=z[:, None])
  return _lin(sd, "final_layer", h) * valid[..., None]


def inputs(seed=1, b=3, length=7, lt=5):
  rng = np.random.default_rng(seed)
  motion = rng.normal(size=(b, length, D)).astype(np.float32)
  valid = np.arange(length)[None] < np.array([7, 3, 5])[:, None]
  text = rng.normal(size=(b, lt, E)).astype(np.float32)
  tvalid = np.arange(lt)[None] < np.array([2, 5, 4])[:, None]
  return motion, valid, text, tvalid, np.array([0, 137, 500])


# --------------------------------------------------------------------------------------------- tests
def test_paper_size_parameter_count_is_the_official_one():
  config = SPMConfig.official(dim_motion=263)
  shapes = spm_convert.official_state_shapes(config, 1024)
  assert len(shapes) == 427
  # The state dict lists the shared encoder LayerNorm twice; the module has it once.
  assert sum(int(np.prod(s)) for s in shapes.values()) - 2 * 256 == 26_515_975
  flax_shapes = jax.eval_shape(lambda: spm.init_spm(config, jax.random.key(0), text_emb_dim=1024))
  assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(flax_shapes)) == 26_515_975


@pytest.mark.slow  # a float64 numpy reference and a compiled forward + backward (~18 s alone)
def test_converted_checkpoint_matches_an_independent_numpy_forward(tmp_path):
  sd = synthetic_state()
  path = tmp_path / "SPM_Noisy_T1000_M1T0_E10.pth"
  save_torch(path, {"state_dict": dict(sd, **{"clip.model.shared.weight": np.zeros((3, 2), np.float32)})})
  params, config, e = spm_convert.load_official_spm(path, num_heads=H)
  assert (config.dim_motion, config.latent_dim, config.ff_dim, config.num_layers, e) == (D, C, FF, N, E)
  assert config.arch == "official" and config.num_heads == H
  module = spm.spm_module(config)
  motion, valid, text, tvalid, t = inputs()
  # Our batches are padded beyond the longest clip with anything: the result must not change.
  padded = np.concatenate([motion, np.full((3, 4, D), 9.0, np.float32)], 1)
  pvalid = np.concatenate([valid, np.zeros((3, 4), bool)], 1)
  z = np.random.default_rng(2).normal(size=(3, C)).astype(np.float32)

  # Small-config backward: finite, non-zero gradients of a scalar of every output w.r.t. the params.
  def loss(p):
    mu, lv = module.apply(p, padded, pvalid, t, method="encode_motion")
    tmu, _ = module.apply(p, text, tvalid, None, method="encode_text")
    return jnp.sum(mu * tmu) + jnp.sum(lv) + jnp.sum(module.apply(p, mu, pvalid, method="decode") ** 2)

  @jax.jit  # one program (eagerly, every op of the unrolled layers would compile on its own)
  def flax_side(p):
    encoded = {
      (stream, tt is None): module.apply(p, x, m, tt, method=f"encode_{stream}")
      for stream, x, m in (("motion", padded, pvalid), ("text", text, tvalid))
      for tt in (None, t)
    }
    return encoded, module.apply(p, z, pvalid, method="decode"), jax.grad(loss)(p)

  encoded, rec, grads = flax_side(params)
  for tt in (None, t):
    for stream, x, m in (("motion", motion, valid), ("text", text, tvalid)):
      mu, lv = encoded[(stream, tt is None)]
      ref_mu, ref_lv = np_encode(sd, stream, x.astype(np.float64), m, tt)
      np.testing.assert_allclose(np.asarray(mu), ref_mu, atol=2e-5)
      np.testing.assert_allclose(np.asarray(lv), ref_lv, atol=2e-5)
  np.testing.assert_allclose(np.asarray(rec)[:, :7], np_decode(sd, z.astype(np.float64), valid), atol=2e-5)
  assert np.all(np.asarray(rec)[:, 7:] == 0)
  assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))
  assert float(jnp.abs(grads["params"]["time_embedding"]["linear_1"]["kernel"]).sum()) > 0


@pytest.mark.slow
def test_convert_checkpoint_writes_a_reward_workdir_with_the_official_reward(tmp_path):
  sd = synthetic_state(seed=3)
  path = tmp_path / "spm.pth"
  save_torch(path, {"state_dict": sd})
  wd = RB.convert_spm_checkpoint(path, tmp_path / "reward", num_heads=H)
  assert sorted(os.listdir(tmp_path)) == ["reward", "spm.pth"]  # no temporary folder left behind
  meta = RB.read_reward_metadata(wd)
  assert meta["stage"] == "converted" and meta["text_emb_dim"] == E and len(meta["source"]["sha256"]) == 64
  reward, params, cfg = RB.load_reward(wd)
  assert cfg.model.arch == "official" and cfg.timestep_routing == "official" and RB.load_reward_tokenizer(wd) is None
  motion, valid, text, tvalid, t = inputs()
  cond = {"text_emb": jnp.asarray(text), "text_emb_mask": jnp.asarray(tvalid), "mask": jnp.asarray(valid)}
  x = jnp.asarray(motion)
  # The official reward is stochastic (sampled latents, dropout on): it needs a key and ignores t.
  with pytest.raises(ValueError, match="reward_rng"):
    reward(x, cond, None)
  k1 = dict(cond, reward_rng=jax.random.key(1))

  @jax.jit  # one program instead of every op compiled on its own
  def rewards(x):
    r2 = reward(x, dict(cond, reward_rng=jax.random.key(2)), None)
    g = jax.grad(lambda x: jnp.sum(reward(x, k1, None)))(x)
    det = spm.reward_fn(params, cfg.model, reward_latent="mean", reward_dropout=False)(x, cond, None)
    samp = spm.reward_fn(params, cfg.model, reward_dropout=False)(x, k1, None)
    return reward(x, k1, None), reward(x, k1, jnp.asarray(t)), r2, g, det, samp

  r1, r1t, r2, g, det, samp = rewards(x)
  np.testing.assert_array_equal(np.asarray(r1), np.asarray(r1t))
  assert r1.shape == (3,) and np.all(np.abs(np.asarray(r1)) <= 1) and not np.allclose(r1, r2)
  assert np.all(np.isfinite(np.asarray(g))) and float(jnp.abs(g).sum()) > 0
  # Named option: our deterministic mean-latent scoring = cos(mu_text, mu_motion) of the numpy forward.
  tm, _ = np_encode(sd, "text", text.astype(np.float64), tvalid)
  mm, _ = np_encode(sd, "motion", motion.astype(np.float64), valid)
  cos = np.sum(tm * mm, -1) / (np.linalg.norm(tm, axis=-1) * np.linalg.norm(mm, axis=-1))
  np.testing.assert_allclose(np.asarray(det), cos, atol=1e-5)
  # Sampling only (no dropout): reproduces mu + exp(lv / 2) * eps with the reward's own eps draws.
  assert not np.allclose(np.asarray(samp), np.asarray(det))
  with pytest.raises(FileExistsError):
    RB.convert_spm_checkpoint(path, wd, num_heads=H)


def _expect_error(tmp_path, obj_or_bytes, match, name="bad.pth"):
  path = tmp_path / name
  if isinstance(obj_or_bytes, bytes):
    path.write_bytes(obj_or_bytes)
  else:
    save_torch(path, obj_or_bytes)
  out = tmp_path / f"out_{name}"
  with pytest.raises(ValueError, match=match) as err:
    RB.convert_spm_checkpoint(path, out, num_heads=H)
  assert str(path) in str(err.value)
  assert not out.exists() and not any(p.name.startswith(f".out_{name}") for p in tmp_path.iterdir())
  return str(err.value)


def test_converter_errors_name_the_file_key_and_shapes(tmp_path):
  sd = synthetic_state()
  missing = {k: v for k, v in sd.items() if k != "decoder.middle_block.norm3.bias"}
  msg = _expect_error(tmp_path, {"state_dict": missing}, "missing keys", "missing.pth")
  assert "decoder.middle_block.norm3.bias" in msg
  msg = _expect_error(
    tmp_path, {"state_dict": dict(sd, extra_head=np.zeros(3, np.float32))}, "unexpected keys", "extra.pth"
  )
  assert "extra_head" in msg
  wrong = dict(sd, **{"decoder.linear_blocks.0.weight": np.zeros((C, C), np.float32)})
  msg = _expect_error(tmp_path, {"state_dict": wrong}, "decoder.linear_blocks.0.weight", "shape.pth")
  assert f"expected shape ({C}, {2 * C}), found ({C}, {C})" in msg
  unshared = dict(sd, **{"text_encoder.norm.weight": sd["motion_encoder.norm.weight"] + 1})
  _expect_error(tmp_path, {"state_dict": unshared}, "shares one final LayerNorm", "unshared.pth")
  _expect_error(tmp_path, {"model": 3}, "state_dict", "layout.pth")
  _expect_error(tmp_path, b"not a zip at all", "not a zip", "text.pth")
  good = tmp_path / "good.pth"
  save_torch(good, {"state_dict": sd})
  raw = good.read_bytes()
  _expect_error(tmp_path, raw[: len(raw) // 2], "truncated|not a zip", "truncated.pth")
  # A zip whose storage records are cut: still a clear error naming the file.
  cut = tmp_path / "cut.pth"
  with zipfile.ZipFile(good) as zin, zipfile.ZipFile(cut, "w") as zout:
    for item in zin.infolist():
      data = zin.read(item)
      zout.writestr(item, data[: len(data) // 2] if "/data/" in item.filename else data)
  _expect_error(tmp_path, cut.read_bytes(), "cut.pth|truncated|expected", "cut2.pth")
  with pytest.raises(FileNotFoundError):
    RB.convert_spm_checkpoint(tmp_path / "absent.pth", tmp_path / "never", num_heads=H)
  assert not (tmp_path / "never").exists()


def test_official_config_validation():
  with pytest.raises(ValueError, match="text_input"):
    SPMConfig.official(text_input="tokens")
  with pytest.raises(ValueError, match="odd"):
    SPMConfig.official(num_layers=4)
  with pytest.raises(ValueError, match="reward_latent"):
    SPMConfig.official(reward_latent="median")
  old = SPMConfig().to_dict()
  for k in ("arch", "reward_latent", "reward_timestep", "reward_dropout"):
    old.pop(k)
  assert SPMConfig.from_dict(old) == SPMConfig()  # configs saved before these fields read back unchanged
