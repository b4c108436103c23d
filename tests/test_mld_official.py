"""Official MLD architecture (models/mld_official.py), its torch-free checkpoint import (interop/mld_convert.py)
and the converted Generator bundle (official_generator.py).

The reference here is independent of the converter: the official state-dict key names are listed from the
official PyTorch modules (`MldVae`, `MldDenoiser`, `SkipTransformerEncoder/Decoder`, the official
Transformer{Encoder,Decoder}Layer, `TimestepEmbedding`, `PositionEmbeddingLearned1D`), and a float64 numpy
re-statement of the official forward equations reads those torch-named tensors directly.
"""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from easytune_jax.core import sampling
from easytune_jax.interop import mld_convert
from easytune_jax.interop.torch_zip import save_torch
from easytune_jax.models import mld_official as mo

VCFG = mo.OfficialVAEConfig.tiny(nfeats=263, latent_size=2)  # 263: the generator bundle recovers joints
DCFG = mo.OfficialDenoiserConfig.tiny(latent_size=2)


# ----------------------------------------------------------------------------- official names (from the source)
def _layer_keys(p, c, ff, cross):
  keys = {
    f"{p}self_attn.in_proj_weight": (3 * c, c),
    f"{p}self_attn.in_proj_bias": (3 * c,),
    f"{p}self_attn.out_proj.weight": (c, c),
    f"{p}self_attn.out_proj.bias": (c,),
    f"{p}linear1.weight": (ff, c),
    f"{p}linear1.bias": (ff,),
    f"{p}linear2.weight": (c, ff),
    f"{p}linear2.bias": (c,),
  }
  norms = ("norm1", "norm2", "norm3") if cross else ("norm1", "norm2")
  for n in norms:
    keys[f"{p}{n}.weight"] = (c,)
    keys[f"{p}{n}.bias"] = (c,)
  if cross:
    keys.update(
      {
        f"{p}multihead_attn.in_proj_weight": (3 * c, c),
        f"{p}multihead_attn.in_proj_bias": (3 * c,),
        f"{p}multihead_attn.out_proj.weight": (c, c),
        f"{p}multihead_attn.out_proj.bias": (c,),
      }
    )
  return keys


def _skip_keys(p, c, ff, layers, cross):
  keys = {}
  n = (layers - 1) // 2
  for i in range(n):
    keys.update(_layer_keys(f"{p}input_blocks.{i}.", c, ff, cross))
    keys.update(_layer_keys(f"{p}output_blocks.{i}.", c, ff, cross))
    keys[f"{p}linear_blocks.{i}.weight"] = (c, 2 * c)
    keys[f"{p}linear_blocks.{i}.bias"] = (c,)
  keys.update(_layer_keys(f"{p}middle_block.", c, ff, cross))
  keys[f"{p}norm.weight"] = (c,)
  keys[f"{p}norm.bias"] = (c,)
  return keys


def official_keys(v: mo.OfficialVAEConfig, d: mo.OfficialDenoiserConfig) -> dict:
  c = v.latent_dim
  keys = {
    "vae.query_pos_encoder.pe": (v.max_len, 1, c),
    "vae.query_pos_decoder.pe": (v.max_len, 1, c),
    "vae.global_motion_token": (2 * v.latent_size, c),
    "vae.skel_embedding.weight": (c, v.nfeats),
    "vae.skel_embedding.bias": (c,),
    "vae.final_layer.weight": (v.nfeats, c),
    "vae.final_layer.bias": (v.nfeats,),
  }
  keys.update(_skip_keys("vae.encoder.", c, v.ff_size, v.num_layers, False))
  keys.update(_skip_keys("vae.decoder.", c, v.ff_size, v.num_layers, True))
  c = d.latent_dim
  keys.update(
    {
      "denoiser.time_embedding.linear_1.weight": (c, d.time_dim),
      "denoiser.time_embedding.linear_1.bias": (c,),
      "denoiser.time_embedding.linear_2.weight": (c, c),
      "denoiser.time_embedding.linear_2.bias": (c,),
      "denoiser.emb_proj.1.weight": (c, d.text_dim),
      "denoiser.emb_proj.1.bias": (c,),
      "denoiser.query_pos.pe": (d.max_len, 1, c),
    }
  )
  if d.time_cond_proj_dim is not None:
    keys["denoiser.time_embedding.cond_proj.weight"] = (d.time_dim, d.time_cond_proj_dim)
  if d.unused_mem_pos:
    keys["denoiser.mem_pos.pe"] = (d.max_len, 1, c)
  keys.update(_skip_keys("denoiser.encoder.", c, d.ff_size, d.num_layers, False))
  return keys


def random_state(v=VCFG, d=DCFG, seed=0) -> dict:
  rng = np.random.default_rng(seed)
  out = {}
  for k, shape in official_keys(v, d).items():
    if k.endswith(".pe"):
      a = rng.uniform(size=shape)
    elif "norm" in k and k.endswith("weight"):
      a = 1.0 + 0.1 * rng.standard_normal(shape)
    elif k.endswith("bias"):
      a = 0.1 * rng.standard_normal(shape)
    else:
      a = rng.standard_normal(shape) / math.sqrt(shape[-1])
    out[k] = a.astype(np.float32)
  return out


# ----------------------------------------------------------------------------- float64 numpy re-statement
_erf = np.vectorize(math.erf)


def _ln(x, sd, p, eps=1e-5):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * sd[p + "weight"] + sd[p + "bias"]


def _lin(x, sd, p):
  return x @ sd[p + "weight"].T + sd[p + "bias"]


def _mha(q_in, kv_in, sd, p, heads, key_mask=None):
  w, b = sd[p + "in_proj_weight"], sd[p + "in_proj_bias"]
  c = q_in.shape[-1]
  hd = c // heads
  q, k, v = (x @ w[i * c : (i + 1) * c].T + b[i * c : (i + 1) * c] for i, x in enumerate((q_in, kv_in, kv_in)))
  split = lambda x: x.reshape(x.shape[0], x.shape[1], heads, hd).transpose(0, 2, 1, 3)
  logits = split(q) @ split(k).transpose(0, 1, 3, 2) / math.sqrt(hd)
  if key_mask is not None:
    logits = np.where(key_mask[:, None, None, :], logits, -np.inf)
  att = np.exp(logits - logits.max(-1, keepdims=True))
  att /= att.sum(-1, keepdims=True)
  out = (att @ split(v)).transpose(0, 2, 1, 3).reshape(q_in.shape)
  return _lin(out, sd, p + "out_proj.")


def _ff(x, sd, p):
  h = _lin(x, sd, p + "linear1.")
  return _lin(0.5 * h * (1.0 + _erf(h / math.sqrt(2.0))), sd, p + "linear2.")


def _enc_layer(x, sd, p, heads, mask):
  x = _ln(x + _mha(x, x, sd, p + "self_attn.", heads, mask), sd, p + "norm1.")
  return _ln(x + _ff(x, sd, p), sd, p + "norm2.")


def _dec_layer(x, mem, sd, p, heads, mask):
  x = _ln(x + _mha(x, x, sd, p + "self_attn.", heads, mask), sd, p + "norm1.")
  x = _ln(x + _mha(x, mem, sd, p + "multihead_attn.", heads), sd, p + "norm2.")
  return _ln(x + _ff(x, sd, p), sd, p + "norm3.")


def _skip(x, sd, p, layers, block):
  xs = []
  for i in range((layers - 1) // 2):
    x = block(x, f"{p}input_blocks.{i}.")
    xs.append(x)
  x = block(x, f"{p}middle_block.")
  for i in range((layers - 1) // 2):
    x = _lin(np.concatenate([x, xs.pop()], -1), sd, f"{p}linear_blocks.{i}.")
    x = block(x, f"{p}output_blocks.{i}.")
  return _ln(x, sd, p + "norm.")


def np_encode(sd, v, feats, mask):
  b = feats.shape[0]
  tok = np.broadcast_to(sd["vae.global_motion_token"], (b, 2 * v.latent_size, v.latent_dim))
  seq = np.concatenate([tok, _lin(feats, sd, "vae.skel_embedding.")], 1)
  seq = seq + sd["vae.query_pos_encoder.pe"][: seq.shape[1], 0][None]
  m = np.concatenate([np.ones((b, 2 * v.latent_size), bool), mask], 1)
  out = _skip(seq, sd, "vae.encoder.", v.num_layers, lambda x, p: _enc_layer(x, sd, p, v.num_heads, m))
  return out[:, : v.latent_size], out[:, v.latent_size : 2 * v.latent_size]


def np_decode(sd, v, z, mask):
  b, length = mask.shape
  q = np.broadcast_to(sd["vae.query_pos_decoder.pe"][:length, 0][None], (b, length, v.latent_dim))
  h = _skip(q, sd, "vae.decoder.", v.num_layers, lambda x, p: _dec_layer(x, z, sd, p, v.num_heads, mask))
  return np.where(mask[..., None], _lin(h, sd, "vae.final_layer."), 0.0)


def np_denoise(sd, d, x, t, text):
  half = d.time_dim // 2
  freqs = np.exp(-math.log(10000.0) * np.arange(half) / (half - d.freq_shift))
  arg = t[:, None].astype(np.float64) * freqs[None]
  feats = np.concatenate([np.cos(arg), np.sin(arg)], -1)  # flip_sin_to_cos: cos first
  h = _lin(feats, sd, "denoiser.time_embedding.linear_1.")
  time = _lin(h / (1.0 + np.exp(-h)), sd, "denoiser.time_embedding.linear_2.")
  txt = _lin(np.maximum(text, 0.0), sd, "denoiser.emb_proj.1.")
  seq = np.concatenate([x, time[:, None], txt], 1)
  seq = seq + sd["denoiser.query_pos.pe"][: seq.shape[1], 0][None]
  out = _skip(seq, sd, "denoiser.encoder.", d.num_layers, lambda y, p: _enc_layer(y, sd, p, d.num_heads, None))
  return out[:, : x.shape[1]]


# ----------------------------------------------------------------------------- tests
def test_paper_parameter_counts_equal_the_official_modules():
  # Official figures: sum(p.numel()) of MldVae(nfeats=263) / MldDenoiser() built from configs/modules/*.yaml.
  shapes = mld_convert.flax_param_shapes(mo.OfficialVAEConfig(), mo.OfficialDenoiserConfig())  # jax.eval_shape
  assert mo.param_count(shapes["vae"]) == 18_032_135
  assert mo.param_count(shapes["denoiser"]) == 8_221_184
  # the original CLIP MLD's denoiser also holds an (unused) learned mem_pos table of 500 x 256
  d2 = jax.eval_shape(lambda: mo.init_denoiser(mo.OfficialDenoiserConfig(unused_mem_pos=True), jax.random.PRNGKey(0)))
  assert mo.param_count(d2) == 8_221_184 + 500 * 256
  # key counts of the official state dicts (len(module.state_dict()))
  shapes = mld_convert.expected_state_shapes(mo.OfficialVAEConfig(), mo.OfficialDenoiserConfig())
  assert sum(k.startswith("vae.") for k in shapes) == 297
  assert sum(k.startswith("denoiser.") for k in shapes) == 125


@pytest.mark.parametrize("dcfg", [DCFG, mo.OfficialDenoiserConfig.tiny(time_cond_proj_dim=6, unused_mem_pos=True)])
def test_expected_keys_are_the_official_names_and_shapes(dcfg):
  assert mld_convert.expected_state_shapes(VCFG, dcfg) == official_keys(VCFG, dcfg)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  sd = random_state()
  path = tmp_path_factory.mktemp("mld") / "mld_humanml_v1.ckpt"
  extra = {
    "text_encoder.text_model.0.auto_model.shared.weight": np.ones((3, 2), np.float32),
    "t2m_moveencoder.main.0.weight": np.ones((2, 2, 4), np.float32),
  }
  save_torch(path, {"state_dict": {**sd, **extra}, "epoch": 3, "metrics": {"fid": 0.5}})
  return path, sd


def test_convert_matches_numpy_reference_and_round_trips(ckpt):
  path, sd = ckpt
  vae_vars, den_vars, report = mld_convert.load_official_mld(path, num_heads=2)
  assert report["vae_config"] == dataclass_replace(VCFG, dropout=0.1)
  assert report["denoiser_config"] == dataclass_replace(DCFG, dropout=0.1)
  assert report["ignored"] == {"t2m_moveencoder": 1, "text_encoder": 1}
  assert mo.param_count(vae_vars) == sum(np.prod(s) for k, s in official_keys(VCFG, DCFG).items() if k[0] == "v")
  back = mld_convert.to_official_state(vae_vars, den_vars)
  assert back.keys() == sd.keys()
  for k in sd:
    np.testing.assert_array_equal(back[k], sd[k], err_msg=k)

  sd64 = {k: v.astype(np.float64) for k, v in sd.items()}
  rng = np.random.default_rng(1)
  b, length = 3, 11
  feats = rng.standard_normal((b, length, VCFG.nfeats)).astype(np.float32)
  mask = np.arange(length)[None] < np.array([11, 6, 1])[:, None]
  z = rng.standard_normal((b, VCFG.latent_size, VCFG.latent_dim)).astype(np.float32)
  t = np.array([999, 500, 1])
  text = rng.standard_normal((b, 1, DCFG.text_dim)).astype(np.float32)
  vae, den = mo.OfficialMLDVAE(VCFG), mo.OfficialMLDDenoiser(DCFG)

  def run(vv, dv, feats, mask, z, t, text):
    # the second half of the encoder batch has different values at padded frames
    both = jnp.concatenate([feats, jnp.where(mask[..., None], feats, 9.0)])
    mu, logvar = vae.apply(vv, both, jnp.concatenate([mask, mask]), method=mo.OfficialMLDVAE.encode)
    rec = vae.apply(vv, z, mask, method=mo.OfficialMLDVAE.decode)
    eps = den.apply(dv, z, t, {"text": text, "text_mask": jnp.ones(text.shape[:2], bool)})
    return mu[:b], logvar[:b], mu[b:], rec, eps

  # one compile for everything, without XLA's expensive CPU optimisations (compile time dominates here)
  args = (vae_vars, den_vars, feats, mask, z, jnp.asarray(t, jnp.int32), text)
  compiled = (
    jax.jit(run).lower(*args).compile({"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True})
  )
  mu, logvar, mu_padded, rec, eps = compiled(*args)
  mu_ref, lv_ref = np_encode(sd64, VCFG, feats.astype(np.float64), mask)
  np.testing.assert_allclose(mu, mu_ref, atol=2e-5)
  np.testing.assert_allclose(logvar, lv_ref, atol=2e-5)
  np.testing.assert_allclose(mu_padded, mu, atol=1e-6)  # padded frames never change the latent
  np.testing.assert_allclose(rec, np_decode(sd64, VCFG, z.astype(np.float64), mask), atol=2e-5)
  assert np.all(np.asarray(rec)[~mask] == 0.0)
  np.testing.assert_allclose(eps, np_denoise(sd64, DCFG, z.astype(np.float64), t, text.astype(np.float64)), atol=2e-5)


def dataclass_replace(cfg, **kw):
  import dataclasses

  return dataclasses.replace(cfg, **kw)


def _expect_error(tmp_path, state, match, **kw):
  path = tmp_path / "bad.ckpt"
  save_torch(path, {"state_dict": state})
  with pytest.raises(mld_convert.OfficialCheckpointError, match=match) as e:
    mld_convert.load_official_mld(path, **kw)
  assert str(path) in str(e.value)
  return str(e.value)


def test_errors_name_file_key_and_shapes(tmp_path):
  sd = random_state()
  cfgs = dict(vae_config=VCFG, denoiser_config=DCFG)
  missing = {k: v for k, v in sd.items() if k != "vae.decoder.middle_block.norm3.bias"}
  _expect_error(
    tmp_path, missing, r"missing key 'vae\.decoder\.middle_block\.norm3\.bias' \(expected shape \(16,\)\)", **cfgs
  )
  bad = {**sd, "denoiser.emb_proj.1.weight": np.zeros((16, 13), np.float32)}
  _expect_error(tmp_path, bad, r"'denoiser\.emb_proj\.1\.weight': expected shape \(16, 12\).*found \(16, 13\)", **cfgs)
  extra = {**sd, "vae.decoder.extra_layer.weight": np.zeros((2,), np.float32)}
  _expect_error(tmp_path, extra, r"unexpected key 'vae\.decoder\.extra_layer\.weight' \(shape \(2,\)\)", **cfgs)
  nan = {**sd, "vae.final_layer.bias": np.full((263,), np.nan, np.float32)}
  _expect_error(tmp_path, nan, r"'vae\.final_layer\.bias': holds non-finite", **cfgs)
  # paper-size config against a tiny file: every mismatch is listed, with the count
  msg = _expect_error(
    tmp_path, sd, r"problem\(s\)", vae_config=mo.OfficialVAEConfig(), denoiser_config=mo.OfficialDenoiserConfig()
  )
  assert "421 problem(s)" in msg and "more" in msg
  assert "expected shape (256,) (from OfficialVAEConfig), found (16,)" in msg
  # no MLD keys at all
  _expect_error(tmp_path, {"model.weight": np.zeros(2, np.float32)}, r"vae\.\* and denoiser\.\*")


def test_unreadable_files(tmp_path, ckpt):
  not_zip = tmp_path / "x.ckpt"
  not_zip.write_bytes(b"\x80\x02}q\x00.")  # a legacy (non-zip) pickle
  with pytest.raises(ValueError, match="not a zip"):
    mld_convert.load_official_mld(not_zip)
  data = ckpt[0].read_bytes()
  for n in (len(data) // 2, len(data) - 300):
    cut = tmp_path / f"cut{n}.ckpt"
    cut.write_bytes(data[:n])
    with pytest.raises(ValueError, match=str(cut)):
      mld_convert.load_official_mld(cut)
  with pytest.raises(FileNotFoundError):
    mld_convert.load_official_mld(tmp_path / "nope.ckpt")


def test_generator_bundle(tmp_path, ckpt):
  from easytune_jax.bundles import generator
  from easytune_jax.bundles import official_generator as og
  from easytune_jax.data.text import save_text_embeddings

  path, _ = ckpt
  rng = np.random.default_rng(2)
  emb_path = str(tmp_path / "emb.npz")
  save_text_embeddings(
    emb_path,
    ["", "a person walks", "a person jumps"],
    rng.standard_normal((3, 1, DCFG.text_dim)).astype(np.float32),
    np.ones((3, 1), bool),
  )
  mean, std = rng.standard_normal(263).astype(np.float32), rng.uniform(0.5, 1.5, 263).astype(np.float32)

  # failures write nothing: no null text ('' missing), a broken checkpoint
  no_null = str(tmp_path / "emb_nonull.npz")
  save_text_embeddings(no_null, ["a person walks"], np.ones((1, 1, DCFG.text_dim), np.float32), np.ones((1, 1), bool))
  with pytest.raises(ValueError, match="empty caption"):
    og.write_official_generator(path, tmp_path / "gen", mean, std, text_embeddings=no_null, num_heads=2)
  bad = tmp_path / "bad.ckpt"
  save_torch(bad, {"state_dict": {k: v for k, v in random_state().items() if "norm3" not in k}})
  with pytest.raises(mld_convert.OfficialCheckpointError):
    og.write_official_generator(bad, tmp_path / "gen", mean, std, text_embeddings=emb_path, num_heads=2)
  assert sorted(os.listdir(tmp_path)) == ["bad.ckpt", "emb.npz", "emb_nonull.npz"]

  meta = og.write_official_generator(
    path, tmp_path / "gen", mean, std, text_embeddings=emb_path, num_heads=2, max_length=16
  )
  assert meta["vae"]["latent_dim"] == 16 and meta["denoiser"]["num_heads"] == 2
  with pytest.raises(FileExistsError):
    og.write_official_generator(path, tmp_path / "gen", mean, std, text_embeddings=emb_path)
  gen = generator.load_generator(str(tmp_path / "gen"))
  assert isinstance(gen, og.OfficialMLDGenerator) and gen.latent_shape == (2, 16) and gen.max_length == 16
  np.testing.assert_array_equal(gen.mean, mean)
  # its own sampler is MLD's (the paper's 50 steps, w = 7.5), also for a workdir converted before it was recorded
  own = gen.sampler_defaults
  assert (own.num_steps, own.guidance_scale) == (50, 7.5) and "official MLD" in own.source
  choice = generator.resolve_sampler(gen, guidance_scale=3.0)
  assert (choice.num_steps, choice.guidance_scale, choice.guidance_scale_from) == (50, 3.0, "set in the config")
  marker = tmp_path / "gen" / og.MARKER
  old = json.loads(marker.read_text())
  del old["config"]["sampler"]
  marker.write_text(json.dumps(old))
  older = generator.load_generator(str(tmp_path / "gen"))
  assert (older.sampler_defaults.num_steps, older.sampler_defaults.guidance_scale) == (50, 7.5)
  assert older.config.sampler == sampling.SamplerConfig(
    num_steps=sampling.NUM_STEPS, guidance_scale=sampling.GUIDANCE_SCALE
  )

  cond = gen.encode_text(["a person jumps", "a person walks"])
  assert cond["text"].shape == (2, 1, DCFG.text_dim)
  unc = gen.uncond(cond)
  np.testing.assert_allclose(unc["text"][:, 0], np.broadcast_to(gen.text_embeddings.lookup([""])[0][0, 0], (2, 12)))
  feats, joints = gen.generate(["a person walks", "a person jumps"], [16, 8], jax.random.PRNGKey(0), num_steps=2)
  assert feats.shape == (2, 16, 263) and joints.shape == (2, 16, 22, 3)
  assert np.all(np.isfinite(feats)) and np.all(feats[1, 8:] == 0.0) and np.all(joints[1, 8:] == 0.0)
  assert gen.denoise.__func__ is generator.Generator.denoise  # the bundle's denoiser contract is the base class's


ST5_DIR = os.path.join(os.path.dirname(__file__), "fixtures", "text_encoders", "st5_safetensors")


@pytest.mark.slow  # compiles sentence-T5 + the official MLD; test_generator_bundle stays fast
def test_generator_bundle_with_sentence_t5(tmp_path):
  """Captions encoded on the fly by the sentence-T5 fixture (sentence dim 24): cond = its sentence embedding,
  uncond = its embedding of ''; the folder is recorded in the workdir and reloaded."""
  from easytune_jax.bundles import generator
  from easytune_jax.bundles import official_generator as og
  from easytune_jax.interop.sentence_t5 import load_sentence_t5

  st5 = load_sentence_t5(ST5_DIR)
  dcfg = dataclass_replace(DCFG, text_dim=st5.config.sentence_dim)
  path = tmp_path / "mld24.ckpt"
  save_torch(path, {"state_dict": random_state(VCFG, dcfg, seed=3)})
  rng = np.random.default_rng(4)
  mean, std = rng.standard_normal(263).astype(np.float32), rng.uniform(0.5, 1.5, 263).astype(np.float32)

  # a denoiser whose text_dim is not the encoder's: named error, nothing written
  with pytest.raises(ValueError, match="24 dims, the denoiser's text_dim is 12"):
    og.write_official_generator(ckpt_path_12(tmp_path), tmp_path / "bad", mean, std, sentence_t5=ST5_DIR, num_heads=2)
  assert not (tmp_path / "bad").exists()

  meta = og.write_official_generator(path, tmp_path / "gen", mean, std, sentence_t5=ST5_DIR, num_heads=2, max_length=16)
  assert meta["sentence_t5"] == os.path.abspath(ST5_DIR)
  gen = generator.load_generator(str(tmp_path / "gen"))
  assert isinstance(gen, og.OfficialMLDGenerator) and gen.text_model is not None and gen.text_embeddings is None
  texts = ["a person walks forward and waves", "a person jumps", "a person walks forward and waves"]
  cond = gen.encode_text(texts)
  _, _, want = st5.encode(texts)
  np.testing.assert_allclose(cond["text"][:, 0], want, atol=1e-6)
  assert cond["text"].shape == (3, 1, 24) and bool(np.all(cond["text_mask"]))
  _, _, empty = st5.encode([""])
  np.testing.assert_allclose(gen.uncond(cond)["text"][:, 0], np.broadcast_to(empty, (3, 24)), atol=1e-6)
  feats, joints = gen.generate(texts[:2], [16, 9], jax.random.PRNGKey(0), num_steps=2)
  assert feats.shape == (2, 16, 263) and joints.shape == (2, 16, 22, 3) and np.all(np.isfinite(joints))

  # the same bundle from an in-memory SentenceT5, and a recorded folder that has moved
  mem = og.official_generator_from_checkpoint(path, mean, std, sentence_t5=st5, num_heads=2, max_length=16)
  feats2, _ = mem.generate(texts[:2], [16, 9], jax.random.PRNGKey(0), num_steps=2)
  np.testing.assert_allclose(feats2, feats, atol=1e-5)
  marker = tmp_path / "gen" / og.MARKER
  m = json.loads(marker.read_text())
  m["sentence_t5"] = str(tmp_path / "moved")
  marker.write_text(json.dumps(m))
  with pytest.raises(FileNotFoundError, match="sentence_t5_dir"):
    generator.load_generator(str(tmp_path / "gen"))
  assert og.load_official_generator(tmp_path / "gen", sentence_t5=ST5_DIR).text_model is not None


def ckpt_path_12(tmp_path):
  path = tmp_path / "mld12.ckpt"
  save_torch(path, {"state_dict": random_state()})
  return path
