"""T2M evaluator: torch-free checkpoint reader/converter, Flax == float64 numpy (PyTorch equations), text
inputs (A4.1), evaluator renormalisation with the real T2M stats, contrastive losses."""

import collections
import dataclasses
import functools
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from easytune_jax.data.word_vectors import WordVectorizer, build_word_vocab
from easytune_jax.interop import t2m_convert as tc
from easytune_jax.models import evaluator as ev
from tests.reference_data import path as _data
from tests.torch_zip import write_torch_zip

TINY = ev.EvaluatorConfig(
  dim_pose=263,
  dim_word=16,
  dim_pos_ohot=15,
  dim_text_hidden=8,
  dim_movement_enc_hidden=12,
  dim_movement_latent=10,
  dim_motion_hidden=14,
  dim_coemb=6,
)


def random_state(config, seed=0, dtype=np.float64):
  rng = np.random.default_rng(seed)
  return {
    m: {k: rng.normal(0, 0.4, s).astype(dtype) for k, s in shapes.items()}
    for m, shapes in tc.t2m_expected_shapes(config).items()
  }


# ------------------------------------------------------------------------------------------------
# float64 numpy reference from PyTorch's equations, reading the torch-layout state dict directly
# ------------------------------------------------------------------------------------------------


def np_linear(x, sd, name):
  return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]


def np_conv1d(x, w, b):
  """x [B, C, T]; torch Conv1d(k=4, stride=2, padding=1): cross-correlation."""
  bsz, _, t = x.shape
  o, _, k = w.shape
  xp = np.pad(x, ((0, 0), (0, 0), (1, 1)))
  tout = (t + 2 - k) // 2 + 1
  y = np.zeros((bsz, o, tout))
  for tau in range(tout):
    for kk in range(k):
      y[:, :, tau] += xp[:, :, 2 * tau + kk] @ w[:, :, kk].T
  return y + b[None, :, None]


def np_leaky(x):
  return np.where(x >= 0, x, 0.2 * x)


def np_layernorm(x, g, b):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-5) * g + b


def np_sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def np_gru_cell(x, h, wih, whh, bih, bhh):
  hs = h.shape[-1]
  gi = wih @ x + bih
  gh = whh @ h + bhh
  r = np_sigmoid(gi[:hs] + gh[:hs])
  z = np_sigmoid(gi[hs : 2 * hs] + gh[hs : 2 * hs])
  n = np.tanh(gi[2 * hs :] + r * gh[2 * hs :])
  return (1 - z) * n + z * h


def np_bigru_last(x, lens, sd):
  """Packed bidirectional GRU: forward over steps 0..len-1, backward over len-1..0."""
  out = []
  for i in range(x.shape[0]):
    hf = sd["hidden"][0, 0].copy()
    for t in range(lens[i]):
      hf = np_gru_cell(
        x[i, t], hf, sd["gru.weight_ih_l0"], sd["gru.weight_hh_l0"], sd["gru.bias_ih_l0"], sd["gru.bias_hh_l0"]
      )
    hb = sd["hidden"][1, 0].copy()
    for t in reversed(range(lens[i])):
      hb = np_gru_cell(
        x[i, t],
        hb,
        sd["gru.weight_ih_l0_reverse"],
        sd["gru.weight_hh_l0_reverse"],
        sd["gru.bias_ih_l0_reverse"],
        sd["gru.bias_hh_l0_reverse"],
      )
    out.append(np.concatenate([hf, hb]))
  return np.stack(out)


def np_head(h, sd):
  h = np_linear(h, sd, "output_net.0")
  h = np_leaky(np_layernorm(h, sd["output_net.1.weight"], sd["output_net.1.bias"]))
  return np_linear(h, sd, "output_net.3")


def np_text(word_embs, pos_ohot, lens, sd):
  x = np_linear(word_embs + np_linear(pos_ohot, sd, "pos_emb"), sd, "input_emb")
  return np_head(np_bigru_last(x, lens, sd), sd)


def np_motion(motion, lens, state):
  mv, mo = state["movement_encoder"], state["motion_encoder"]
  x = np.transpose(motion, (0, 2, 1))
  x = np_leaky(np_conv1d(x, mv["main.0.weight"], mv["main.0.bias"]))
  x = np_leaky(np_conv1d(x, mv["main.3.weight"], mv["main.3.bias"]))
  x = np_linear(np.transpose(x, (0, 2, 1)), mv, "out_net")
  x = np_linear(x, mo, "input_emb")
  return np_head(np_bigru_last(x, [l // 4 for l in lens], mo), mo)


@functools.cache
def _jitted(config):
  """Jitted embed functions (eager Flax dispatch is slow on a shared 2-core CPU)."""
  text = jax.jit(functools.partial(ev.evaluator_embed_text, config=config))
  motion = jax.jit(functools.partial(ev.evaluator_embed_motion, config=config), static_argnames="deterministic")
  return text, motion


def _params(config, seed=0, dtype=np.float32):
  """Random evaluator params through the converter (no jax.random: its compile is slow on CPU)."""
  params = tc.convert_t2m_state(
    random_state(dataclasses.replace(config, vocab_size=None), seed),
    dataclasses.replace(config, vocab_size=None),
    dtype=dtype,
  )
  if config.vocab_size is not None:
    table = np.random.default_rng(seed).normal(size=(config.vocab_size, config.dim_word)).astype(dtype)
    params["params"]["word_emb"] = {"embedding": table}
  return params


def _inputs(config, seed=1):
  rng = np.random.default_rng(seed)
  words = rng.normal(size=(4, 22, config.dim_word))
  pos = np.eye(15)[rng.integers(0, 15, size=(4, 22))]
  tlens = np.array([22, 5, 3, 12], np.int32)
  # padding frames hold arbitrary values: the conv encoder sees them, the GRU must not.
  motion = rng.normal(size=(4, 24, config.motion_input_dim))
  mlens = np.array([24, 20, 8, 16], np.int32)
  return words, pos, tlens, motion, mlens


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
  path = tmp_path_factory.mktemp("t2m") / "finest.tar"
  state = random_state(TINY)
  write_torch_zip(path, state, transpose_keys=("motion_encoder.output_net.0.weight", "text_encoder.input_emb.weight"))
  return path, state


def test_torch_zip_reader_roundtrip(tiny_ckpt):
  path, state = tiny_ckpt
  loaded = tc.load_torch_checkpoint(path)
  assert loaded["epoch"] == 7
  assert isinstance(loaded["text_encoder"], collections.OrderedDict)
  assert loaded["text_encoder"]._metadata[""] == {"version": 1}
  for m, sd in state.items():
    assert list(loaded[m]) == list(sd)
    for k, v in sd.items():
      assert loaded[m][k].dtype == np.float64 and loaded[m][k].shape == v.shape
      np.testing.assert_array_equal(loaded[m][k], v, err_msg=f"{m}.{k}")


def test_flax_evaluator_equals_float64_numpy_torch_equations(tiny_ckpt):
  path, state = tiny_ckpt
  words, pos, tlens, motion, mlens = _inputs(TINY)
  ref_t = np_text(words, pos, tlens, state["text_encoder"])
  ref_m = np_motion(motion, mlens, state)
  embed_t = jax.jit(functools.partial(ev.evaluator_embed_text, config=TINY))
  embed_m = jax.jit(functools.partial(ev.evaluator_embed_motion, config=TINY))
  with jax.enable_x64(True):
    params = tc.load_t2m_evaluator(path, TINY, dtype=np.float64)
    t = embed_t(params, jnp.asarray(words), jnp.asarray(pos), jnp.asarray(tlens))
    m = embed_m(params, jnp.asarray(motion), jnp.asarray(mlens))
    assert t.dtype == jnp.float64 and m.dtype == jnp.float64
    err64 = (np.abs(np.asarray(t) - ref_t).max(), np.abs(np.asarray(m) - ref_m).max())
  print("float64 max abs err text/motion", err64)
  assert max(err64) < 1e-10
  params32 = tc.load_t2m_evaluator(path, TINY)
  t32 = embed_t(params32, jnp.asarray(words, jnp.float32), jnp.asarray(pos, jnp.float32), jnp.asarray(tlens))
  m32 = embed_m(params32, jnp.asarray(motion, jnp.float32), jnp.asarray(mlens))
  err32 = (np.abs(np.asarray(t32) - ref_t).max(), np.abs(np.asarray(m32) - ref_m).max())
  print("float32 max abs err text/motion", err32)
  assert max(err32) < 1e-4
  # the reference is sensitive to the lengths (a masking bug could not pass)
  assert np.abs(np_text(words, pos, tlens - 1, state["text_encoder"]) - ref_t).max() > 1e-3


def test_padding_beyond_receptive_field_is_ignored():
  _, embed_m = _jitted(TINY)
  params = _params(TINY)
  _, _, _, motion, mlens = _inputs(TINY)
  m = jnp.asarray(motion, jnp.float32)
  base = embed_m(params, m, jnp.asarray(mlens))
  # frames at or beyond len + 4 feed only conv outputs past len//4: the packed GRU never sees them
  junk = m.at[2, 12:].set(100.0)
  np.testing.assert_allclose(embed_m(params, junk, jnp.asarray(mlens))[2], base[2], atol=1e-6)
  # dropout is off by default and on in training mode
  d1 = embed_m(params, m, jnp.asarray(mlens), deterministic=False, rng=jax.random.key(1))
  assert np.abs(np.asarray(d1 - base)).max() > 1e-4


def test_converter_validates_shapes_and_keys(tmp_path):
  state = random_state(TINY, dtype=np.float32)
  state["motion_encoder"]["gru.weight_hh_l0"] = np.zeros((14, 42), np.float32)
  bad = tmp_path / "bad.tar"
  write_torch_zip(bad, state)
  with pytest.raises(ValueError, match=r"motion_encoder\.gru\.weight_hh_l0' expected shape \(42, 14\)") as e:
    tc.load_t2m_evaluator(bad, TINY)
  assert "found (14, 42)" in str(e.value) and "bad.tar" in str(e.value)
  # the real key names and the paper shapes: a tiny checkpoint is refused by the paper config, naming the key
  with pytest.raises(ValueError, match=r"movement_encoder\.main\.0\.weight' expected shape \(512, 259, 4\)"):
    tc.convert_t2m_state(random_state(TINY, dtype=np.float32), ev.EvaluatorConfig.official())
  state = random_state(TINY, dtype=np.float32)
  del state["text_encoder"]["hidden"]
  with pytest.raises(KeyError, match=r"missing parameter 'text_encoder\.hidden' \(expected shape \(2, 1, 8\)\)"):
    tc.convert_t2m_state(state, TINY)
  notzip = tmp_path / "legacy.tar"
  notzip.write_bytes(b"\x80\x02not a zip")
  with pytest.raises(ValueError, match="legacy.tar: expected a torch.save zip archive"):
    tc.load_torch_checkpoint(notzip)


def test_paper_shapes_match_documented_checkpoint():
  s = tc.t2m_expected_shapes(ev.EvaluatorConfig.official())
  assert s["movement_encoder"]["main.0.weight"] == (512, 259, 4)
  assert s["motion_encoder"]["gru.weight_ih_l0_reverse"] == (3072, 1024)
  assert s["motion_encoder"]["output_net.0.weight"] == (1024, 2048)
  assert s["motion_encoder"]["hidden"] == (2, 1, 1024)
  assert s["text_encoder"]["pos_emb.weight"] == (300, 15)
  assert s["text_encoder"]["gru.weight_hh_l0"] == (1536, 512)
  assert s["text_encoder"]["output_net.3.weight"] == (512, 512)
  assert tc.t2m_expected_shapes(ev.EvaluatorConfig.official(251))["movement_encoder"]["main.0.weight"] == (512, 247, 4)
  # the Flax tree built from the paper config accepts a converted paper-shaped state (abstractly)
  shapes = jax.eval_shape(lambda: ev.init_evaluator(jax.random.key(0), ev.EvaluatorConfig.official()))
  flat = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(shapes)}
  assert flat["['params']['motion_encoder']['gru']['fwd']['kernel_ih']"] == (1024, 3072)
  assert flat["['params']['movement_encoder']['conv0']['kernel']"] == (4, 259, 512)


def test_converted_tree_matches_init_tree(tiny_ckpt):
  path, _ = tiny_ckpt
  conv = tc.load_t2m_evaluator(path, TINY)
  # eval_shape: the tree of a from-scratch init, without compiling the random initialisers
  init = jax.eval_shape(lambda: ev.init_evaluator(jax.random.key(0), TINY))
  assert jax.tree.structure(conv) == jax.tree.structure(init)
  jax.tree.map(lambda a, b: np.testing.assert_equal(a.shape, b.shape), conv, init)


# ------------------------------------------------------------------------------------------------
# Text inputs (A4.1) and the learned-word-vector path
# ------------------------------------------------------------------------------------------------


def test_word_vectorizer_rules_and_glove_files(tmp_path):
  words = ["sos", "eos", "unk", "a", "man", "walk", "left", "forward", "the", "slowly"]
  vectors = np.random.default_rng(0).normal(size=(len(words), 300)).astype(np.float32)
  np.save(tmp_path / "our_vab_data.npy", vectors)
  with open(tmp_path / "our_vab_words.pkl", "wb") as f:
    pickle.dump(words, f)
  with open(tmp_path / "our_vab_idx.pkl", "wb") as f:
    pickle.dump({w: i for i, w in enumerate(words)}, f)
  wv = tc.load_glove_vectorizer(tmp_path)
  toks = ["a/DET", "man/NOUN", "walk/VERB", "left/ADV", "zebra/NOUN", "slowly/ADV", "the/DET"]
  emb, pos, lens = wv([toks])
  assert emb.shape == (1, 22, 300) and pos.shape == (1, 22, 15) and lens.tolist() == [9]
  ids = [0, 3, 4, 5, 6, 2, 9, 8, 1] + [2] * 13
  np.testing.assert_array_equal(emb[0], vectors[ids])
  expect_pos = [14, 2, 1, 12, 9, 14, 13, 2, 14] + [14] * 13  # walk->Act_VIP, left->Loc_VIP, zebra OOV->OTHER
  np.testing.assert_array_equal(pos[0].argmax(-1), expect_pos)
  np.testing.assert_array_equal(pos[0].sum(-1), np.ones(22))
  # 25 tokens are cut to 20: sent_len 22, last item eos
  emb, pos, lens = wv([["man/NOUN"] * 25])
  assert lens.tolist() == [22] and np.array_equal(emb[0, -1], vectors[1]) and np.array_equal(emb[0, 20], vectors[4])
  # inconsistent index file is reported with the file and the word
  with open(tmp_path / "our_vab_idx.pkl", "wb") as f:
    pickle.dump({w: (i if w != "man" else 7) for i, w in enumerate(words)}, f)
  with pytest.raises(ValueError, match=r"our_vab_idx.pkl: word 'man' expected index 4 .* found 7"):
    tc.load_glove(tmp_path)
  with pytest.raises(ValueError, match="expected 'word/POS'"):
    wv([["man"]])


def test_learned_word_path_equals_vector_path():
  toks = [["a/DET", "person/NOUN", "jump/VERB"], ["someone/PRON", "kick/VERB", "high/ADV", "left/ADV"]]
  vocab = build_word_vocab(toks)
  assert vocab["sos"] == 0 and vocab["eos"] == 1 and vocab["unk"] == 2 and len(vocab) == 10
  cfg_l = ev.EvaluatorConfig(vocab_size=len(vocab))
  embed_l, _ = _jitted(cfg_l)
  params = _params(cfg_l, seed=3)
  ids, pos, lens = WordVectorizer(vocab).encode(toks)
  out_ids = embed_l(params, jnp.asarray(ids), jnp.asarray(pos), jnp.asarray(lens))
  table = params["params"]["word_emb"]["embedding"]
  p_vec = {"params": {k: v for k, v in params["params"].items() if k != "word_emb"}}
  cfg_v = ev.EvaluatorConfig()
  out_vec = _jitted(cfg_v)[0](p_vec, table[ids], jnp.asarray(pos), jnp.asarray(lens))
  np.testing.assert_allclose(out_ids, out_vec, atol=1e-6)
  with pytest.raises(ValueError, match="vocab_size is None"):
    _jitted(cfg_v)[0](p_vec, jnp.asarray(ids), jnp.asarray(pos), jnp.asarray(lens))


# ------------------------------------------------------------------------------------------------
# Evaluator-space renormalisation with the real T2M stats (B.1)
# ------------------------------------------------------------------------------------------------


def test_renorm_for_evaluator_real_stats():
  mean_e = np.load(_data("evaluator_stats/t2m_mean.npy"))
  std_e = np.load(_data("evaluator_stats/t2m_std.npy"))
  mean_d = np.load(_data("humanml3d_sample/Mean.npy"))
  std_d = np.load(_data("humanml3d_sample/Std.npy"))
  feats = np.load(_data("humanml3d_sample/new_joint_vecs/012314.npy"))
  assert mean_e.dtype == np.float64 and mean_e.shape == (263,)
  x = np.zeros((2, 172, 263), np.float32)
  x[0, :168] = (feats[:168] - mean_d) / std_d
  x[1] = 5.0  # garbage in padding, cleared by the mask
  mask = np.zeros((2, 172), bool)
  mask[0, :168] = True
  out = np.asarray(ev.renorm_for_evaluator(jnp.asarray(x), mean_d, std_d, mean_e, std_e, mask=jnp.asarray(mask)))
  assert out.shape == (2, 172, 259) and out.dtype == np.float32
  ref = ((feats[:168].astype(np.float64) - mean_e) / std_e)[:, :259]
  err = np.abs(out[0, :168] - ref).max()
  print("renorm max abs err vs float64", err)
  assert err < 1e-3 * max(1.0, np.abs(ref).max())
  pad = ((mean_d.astype(np.float64) - mean_e) / std_e)[:259]
  np.testing.assert_allclose(out[0, 168:], np.broadcast_to(pad, (4, 259)), atol=1e-5)
  np.testing.assert_allclose(out[1], np.broadcast_to(pad, (172, 259)), atol=1e-5)
  # docs/humanml3d_format.md#evaluator-motion-input: the padded frame's largest component is the root height, about 3.44
  assert np.argmax(np.abs(pad)) == 3 and abs(abs(pad[3]) - 3.44) < 0.01
  assert np.abs(np.delete(pad, 3)).max() < 0.23
  with pytest.raises(ValueError, match=r"std_e expected shape \(263,\), found \(251,\)"):
    ev.renorm_for_evaluator(jnp.asarray(x), mean_d, std_d, mean_e, std_e[:251])


# ------------------------------------------------------------------------------------------------
# Contrastive losses
# ------------------------------------------------------------------------------------------------


def _np_log_softmax(z, axis):
  z = z - z.max(axis=axis, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def test_contrastive_losses_match_numpy():
  loss_fn = jax.jit(  # one program per variant instead of every op compiled on its own
    ev.evaluator_contrastive_loss, static_argnames=("kind", "temperature", "similarity", "margin", "shift")
  )
  rng = np.random.default_rng(0)
  t, m = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
  with jax.enable_x64(True):
    d = np.sqrt(((t[:, None] - m[None]) ** 2).sum(-1))
    for sim, s, tau in (
      ("euclidean", -d, 0.7),
      (
        "cosine",
        (t / np.linalg.norm(t, axis=1, keepdims=True)) @ (m / np.linalg.norm(m, axis=1, keepdims=True)).T,
        0.1,
      ),
    ):
      z = s / tau
      ref = -0.5 * (np.mean(np.diag(_np_log_softmax(z, 1))) + np.mean(np.diag(_np_log_softmax(z, 0))))
      got = loss_fn(jnp.asarray(t), jnp.asarray(m), similarity=sim, temperature=tau)
      assert abs(float(got) - ref) < 1e-9, sim
    shift = 2
    neg = m[(np.arange(6) + shift) % 6]
    ref_h = np.mean(((t - m) ** 2).sum(-1)) + np.mean(np.maximum(3.0 - np.linalg.norm(t - neg, axis=1), 0) ** 2)
    got_h = loss_fn(jnp.asarray(t), jnp.asarray(m), kind="hinge", margin=3.0, shift=shift)
    assert abs(float(got_h) - ref_h) < 1e-9
    g = jax.grad(lambda a: loss_fn(a, a))(jnp.asarray(t))  # coincident pairs: finite
    assert np.all(np.isfinite(np.asarray(g)))
  with pytest.raises(ValueError, match="kind must be 'infonce' or 'hinge', found 'nce'"):
    ev.evaluator_contrastive_loss(jnp.asarray(t), jnp.asarray(m), kind="nce")


def test_train_step_reduces_loss_and_freezes_movement_encoder():
  cfg = ev.EvaluatorConfig(
    dim_pose=12,
    dim_word=8,
    dim_text_hidden=8,
    dim_movement_enc_hidden=8,
    dim_movement_latent=8,
    dim_motion_hidden=8,
    dim_coemb=8,
  )
  rng = np.random.default_rng(0)
  b = 6
  batch = {
    "words": jnp.asarray(rng.normal(size=(b, 22, 8)), jnp.float32),
    "pos_ohot": jnp.asarray(np.eye(15)[rng.integers(0, 15, (b, 22))], jnp.float32),
    "text_lengths": jnp.asarray([22, 9, 5, 12, 3, 7]),
    "motion": jnp.asarray(rng.normal(size=(b, 16, 8)), jnp.float32),
    "motion_lengths": jnp.asarray([16, 12, 8, 16, 4, 12]),
  }
  params = jax.device_put(_params(cfg))
  opt = optax.adamw(3e-3, weight_decay=0.1)
  step = jax.jit(ev.make_evaluator_train_step(cfg, opt, train_movement_encoder=False, kind="hinge", margin=3.0))
  opt_state = jax.jit(opt.init)(params)
  p = params
  losses = []
  for i in range(25):
    p, opt_state, m = step(p, opt_state, batch, jax.random.fold_in(jax.random.key(0), i))
    losses.append(float(m["loss"]))
  assert np.all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0], losses
  assert step._cache_size() == 1  # no retracing across steps
  jax.tree.map(np.testing.assert_array_equal, p["params"]["movement_encoder"], params["params"]["movement_encoder"])
  assert (
    np.abs(
      p["params"]["text_encoder"]["input_emb"]["kernel"] - params["params"]["text_encoder"]["input_emb"]["kernel"]
    ).max()
    > 0
  )
