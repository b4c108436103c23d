"""sentence-T5 and CLIP text encoders: parity with torch references stored as fixtures, weight-import errors.

The fixtures (``tests/fixtures/text_encoders/``) are small random-weight models saved by ``transformers`` /
``sentence-transformers`` in the layouts users download, with the reference token ids and outputs in
``expected.npz``; ``tests/fixtures/make_text_encoder_fixtures.py`` regenerates them (with torch, outside the
project). These tests need no torch.
"""

from __future__ import annotations

import json
import os
import shutil
from functools import partial

import numpy as np
import pytest

from easytune_jax.core.safetensors import load_safetensors, save_safetensors
from easytune_jax.core.torch_zip import load_torch_checkpoint
from easytune_jax.data.text import TextEmbeddings, precompute_text_embeddings
from easytune_jax.models.clip_text import load_clip_text, pre_tokenize
from easytune_jax.models.t5_encoder import load_sentence_t5, relative_position_buckets

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "text_encoders")
TOL = dict(rtol=1e-5, atol=2e-5)


@pytest.fixture(scope="module")
def expected():
  with np.load(os.path.join(FIX, "expected.npz")) as z:
    return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def captions(expected):
  return [str(c) for c in expected["captions"]]


@pytest.fixture(scope="module")
def models():
  """Each fixture folder loaded once (their jitted applies compile once per shape for the whole module)."""
  out = {n: load_sentence_t5(os.path.join(FIX, n)) for n in ("st5_safetensors", "st5_bin")}
  out.update({n: load_clip_text(os.path.join(FIX, n)) for n in ("clip_safetensors", "clip_bin")})
  return out


@pytest.mark.parametrize("name", ["st5_safetensors", "st5_bin"])
def test_sentence_t5_matches_sentence_transformers(name, expected, captions, models):
  """Token ids / mask (SentencePiece + </s>, truncation to max_seq_length, padding to the batch's longest), token
  embeddings at every position, and the pooled + Dense + normalised sentence embedding."""
  st5 = models[name]
  ids, mask = st5.tokenizer(captions)
  np.testing.assert_array_equal(ids, expected[f"{name}/ids"])
  np.testing.assert_array_equal(mask, expected[f"{name}/mask"])
  tokens, mask2, sentence = st5.encode(captions, batch_size=4)  # two chunks, the second padded
  np.testing.assert_array_equal(mask2, expected[f"{name}/mask"])
  assert tokens.shape == expected[f"{name}/tokens"].shape and sentence.shape == expected[f"{name}/sentence"].shape
  np.testing.assert_allclose(tokens, expected[f"{name}/tokens"], **TOL)
  np.testing.assert_allclose(sentence, expected[f"{name}/sentence"], **TOL)
  np.testing.assert_allclose(np.linalg.norm(sentence, axis=-1), 1.0, rtol=1e-5)


def test_sentence_t5_layouts_and_configs(models, captions):
  """The two fixture folders exercise both config generations and both FF kinds."""
  new, old = models["st5_safetensors"], models["st5_bin"]
  assert new.config.t5.is_gated_act and new.config.t5.dense_act_fn == "gelu_new"
  assert not old.config.t5.is_gated_act and old.config.t5.dense_act_fn == "relu"
  for m in (new, old):
    assert m.config.pooling == "mean" and m.config.normalize and m.config.dense_bias == (False,)
    assert m.config.dense_features == ((32, 24),) and m.config.max_seq_length == 24
  emb, mask = new.embeddings(captions[:4], output="tokens")
  assert emb.shape[:2] == mask.shape and not np.any(emb[~mask]) and np.all(np.abs(emb[mask]).sum(-1) > 0)
  emb, mask = new.embeddings(captions[:4], output="sentence")
  assert emb.shape == (4, 1, 24) and mask.all()


@pytest.mark.parametrize("name", ["clip_safetensors", "clip_bin"])
def test_clip_text_matches_transformers(name, expected, captions, models):
  """Token ids (normalisation, split, byte-level BPE, specials, truncation, padding to 77), get_text_features and
  last_hidden_state; clip_safetensors is a CLIPModel with the legacy eos_token_id=2 (argmax pooling), clip_bin a
  CLIPTextModelWithProjection with the real EOS id (first-EOS pooling)."""
  clip = models[name]
  assert clip.tokenizer.max_length == int(expected[f"{name}/model_max_length"]) == 77
  feats, hidden, ids = clip.encode(captions, batch_size=4)
  np.testing.assert_array_equal(ids, expected[f"{name}/ids"])
  np.testing.assert_array_equal(clip.tokenizer(captions)[1], expected[f"{name}/mask"])
  np.testing.assert_allclose(feats, expected[f"{name}/features"], **TOL)
  np.testing.assert_allclose(hidden, expected[f"{name}/hidden"], **TOL)
  emb, mask = clip.embeddings(captions[:4], output="features")
  assert emb.shape == (4, 1, 24) and mask.all()


def test_tokenizers_match_hf_on_random_strings(expected, models):
  """200 random strings (whitespace kinds, accents / combining marks, ligatures, full-width and non-Latin letters and
  digits, emoji, control characters, literal <|endoftext|>): the same ids as the HF tokenizers."""
  texts = json.loads(str(expected["fuzz_texts_json"]))
  st5 = models["st5_bin"]
  ref = expected["st5_bin/fuzz_ids"]
  for t, row in zip(texts, ref):
    assert st5.tokenizer.encode(t) == [int(i) for i in row if i >= 0], repr(t)
  clip = models["clip_bin"]
  np.testing.assert_array_equal(clip.tokenizer(texts)[0], expected["clip_bin/fuzz_ids"])


def test_clip_pre_tokenize_and_specials(models):
  assert pre_tokenize("don't stop!!  it's 12") == ["don", "'t", "stop", "!!", "it", "'s", "1", "2"]
  assert pre_tokenize("'abc café") == ["'", "abc", "café"]
  clip = models["clip_bin"]
  assert clip.tokenizer.encode("<|endoftext|>") == [clip.tokenizer.eot_id]


def test_precompute_text_embeddings_roundtrip(tmp_path, models, captions):
  """The .npz written through both encoders reads back with TextEmbeddings and equals direct encoding; chunks of
  different token lengths are zero-padded; duplicates are written once."""
  st5, clip = models["st5_safetensors"], models["clip_bin"]
  path = str(tmp_path / "t5_tokens.npz")
  n = precompute_text_embeddings(
    path, captions + captions[:2], partial(st5.embeddings, output="tokens", batch_size=4), batch_size=4
  )
  assert n == len(captions)
  table = TextEmbeddings(path)
  emb, mask = table.lookup(captions[4:])
  ref_emb, ref_mask = st5.embeddings(captions[4:], output="tokens", batch_size=4)
  length = ref_mask.shape[1]
  assert table.max_length >= length and not mask[:, length:].any() and not emb[:, length:].any()
  np.testing.assert_array_equal(mask[:, :length], ref_mask)
  np.testing.assert_allclose(emb[:, :length], ref_emb, rtol=1e-6, atol=1e-6)
  path = str(tmp_path / "clip_features.npz")
  precompute_text_embeddings(path, captions, partial(clip.embeddings, output="features", batch_size=4), batch_size=4)
  emb, mask = TextEmbeddings(path).lookup(captions[:4])
  assert emb.shape == (4, 1, 24) and mask.all()
  np.testing.assert_allclose(emb[:, 0], clip.encode(captions[:4], batch_size=4)[0], rtol=1e-6, atol=1e-6)


def test_relative_position_buckets_properties():
  b = relative_position_buckets(300, 32, 128)
  assert b.shape == (300, 300) and b.min() == 0 and b.max() == 31
  np.testing.assert_array_equal(np.diag(b), 0)
  assert b[0, 1] == 17 and b[1, 0] == 1 and b[0, 299] == 31 and b[299, 0] == 15  # +1 -> 16+1; far: last buckets


# ---------------------------------------------------------------------------------------------------------------
# Formats and errors


def test_safetensors_roundtrip_and_dtypes(tmp_path):
  """core/safetensors.py (the `safetensors` package underneath): dtypes (bfloat16 too), empty, transposed
  (non-contiguous) and big-endian arrays round-trip; `names=` reads a subset; the arrays are writeable copies."""
  import ml_dtypes

  arrs = {
    "a": np.arange(6, dtype=np.float32).reshape(2, 3),
    "b": np.array([1, -2], np.int64),
    "c": np.ones((2, 2), ml_dtypes.bfloat16),
    "d": np.zeros((0, 4), np.float16),
    "t": np.arange(12, dtype=np.float32).reshape(3, 4).T,  # non-contiguous: written in its logical order
    "e": np.array([1, 258], ">i4"),
    "m": np.array([True, False]),
  }
  path = tmp_path / "x.safetensors"
  save_safetensors(path, arrs, metadata={"format": "pt", "step": 3})
  back = load_safetensors(path)
  assert set(back) == set(arrs)
  for k, v in arrs.items():
    assert back[k].dtype == v.dtype.newbyteorder("=") and back[k].shape == v.shape, k
    np.testing.assert_array_equal(back[k].astype(np.float32), v.astype(np.float32))
    assert back[k].flags.writeable and back[k].flags.owndata
  assert set(load_safetensors(path, names={"a", "t"})) == {"a", "t"}
  (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
  with pytest.raises(ValueError, match="bad.safetensors: not a safetensors file"):
    load_safetensors(tmp_path / "bad.safetensors")


def _write_by_hand(path, header: dict, data: bytes) -> None:
  """The format written from its specification: u64 header length, JSON header, raw little-endian bytes."""
  import struct

  text = json.dumps(header).encode("utf-8")
  path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def test_safetensors_reads_a_hand_written_file_and_names_errors(tmp_path):
  """A file laid out by hand from the format's specification reads back; a missing file, a tensor whose byte
  range does not hold its shape, a truncated file and an unstorable dtype are errors naming the file / tensor."""
  w = np.array([[1.5, -2.0], [3.0, 0.25]], "<f4")
  ids = np.array([7, -1, 2], "<i8")
  header = {
    "__metadata__": {"format": "pt"},
    "ids": {"dtype": "I64", "shape": [3], "data_offsets": [0, 24]},
    "w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [24, 40]},
  }
  _write_by_hand(tmp_path / "hand.safetensors", header, ids.tobytes() + w.tobytes())
  got = load_safetensors(tmp_path / "hand.safetensors")
  np.testing.assert_array_equal(got["w"], w)
  np.testing.assert_array_equal(got["ids"], ids)
  assert got["ids"].dtype == np.int64 and got["w"].dtype == np.float32

  with pytest.raises(FileNotFoundError, match=r"safetensors file .*nothing.safetensors' does not exist"):
    load_safetensors(tmp_path / "nothing.safetensors")
  header["w"]["shape"] = [2, 3]
  _write_by_hand(tmp_path / "shape.safetensors", header, ids.tobytes() + w.tobytes())
  with pytest.raises(ValueError, match=r"shape.safetensors: tensor 'w' of shape \(2, 3\) \(F32\) expects 24 bytes"):
    load_safetensors(tmp_path / "shape.safetensors")
  (tmp_path / "short.safetensors").write_bytes(b"\x01\x02")
  with pytest.raises(ValueError, match=r"short.safetensors: not a safetensors file"):
    load_safetensors(tmp_path / "short.safetensors")
  with pytest.raises(ValueError, match=r"tensor 'z' \(complex128\) has a dtype the format cannot store"):
    save_safetensors(tmp_path / "z.safetensors", {"a": w, "z": np.zeros(2, np.complex128)})


def test_fixture_weights_same_through_both_readers():
  """The .bin (torch zip) and .safetensors fixture files are read into the same key sets HF writes."""
  sd = load_torch_checkpoint(os.path.join(FIX, "st5_bin", "pytorch_model.bin"))
  assert "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight" in sd
  st = load_safetensors(os.path.join(FIX, "st5_safetensors", "model.safetensors"))
  assert "encoder.final_layer_norm.weight" in st


def _copy(tmp_path, name):
  dst = tmp_path / name
  shutil.copytree(os.path.join(FIX, name), dst)
  return dst


def test_missing_and_misshaped_weights_are_named(tmp_path):
  folder = _copy(tmp_path, "st5_safetensors")
  path = folder / "model.safetensors"
  tensors = load_safetensors(path)
  key = "encoder.block.1.layer.1.DenseReluDense.wi_0.weight"
  save_safetensors(path, {k: v for k, v in tensors.items() if k != key})
  with pytest.raises(KeyError, match=rf"model.safetensors.*missing weight '{key}'.*expected shape \(48, 32\)"):
    load_sentence_t5(folder)
  save_safetensors(path, {**tensors, key: np.zeros((48, 31), np.float32)})
  with pytest.raises(
    ValueError,
    match=rf"model.safetensors: weight '{key}': expected shape \(48, 32\), found "
    r"\(48, 31\)",
  ):
    load_sentence_t5(folder)

  folder = _copy(tmp_path, "clip_safetensors")
  path = folder / "model.safetensors"
  tensors = load_safetensors(path)
  save_safetensors(path, {k: v for k, v in tensors.items() if k != "text_projection.weight"})
  with pytest.raises(KeyError, match=r"missing weight 'text_projection.weight' \(expected shape \(24, 32\)\)"):
    load_clip_text(folder)


def test_dense_head_errors(tmp_path):
  folder = _copy(tmp_path, "st5_bin")
  os.remove(folder / "2_Dense" / "pytorch_model.bin")
  with pytest.raises(FileNotFoundError, match=r"2_Dense: no weight file found"):
    load_sentence_t5(folder)
  folder = _copy(tmp_path, "st5_safetensors")
  cfg = json.loads((folder / "2_Dense" / "config.json").read_text())
  (folder / "2_Dense" / "config.json").write_text(json.dumps({**cfg, "in_features": 16}))
  with pytest.raises(ValueError, match=r"2_Dense/config.json: field 'in_features': expected 32"):
    load_sentence_t5(folder)


@pytest.mark.parametrize(
  "name,remove,pattern",
  [
    ("st5_safetensors", "spiece.model", r"SentencePiece model not found"),
    ("st5_safetensors", "config.json", r"config.json: config file not found"),
    ("st5_bin", "pytorch_model.bin", r"no weight file found \(expected one of"),
    ("st5_bin", "1_Pooling/config.json", r"1_Pooling/config.json: pooling config file not found"),
    ("clip_safetensors", "merges.txt", r"merges.txt not found"),
    ("clip_bin", "vocab.json", r"vocab.json not found"),
  ],
)
def test_missing_files_are_named(tmp_path, name, remove, pattern):
  folder = _copy(tmp_path, name)
  os.remove(folder / remove)
  loader = load_sentence_t5 if name.startswith("st5") else load_clip_text
  with pytest.raises(FileNotFoundError, match=pattern):
    loader(folder)


def test_config_errors(tmp_path):
  folder = _copy(tmp_path, "clip_bin")
  cfg = json.loads((folder / "config.json").read_text())
  del cfg["hidden_size"]
  (folder / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(ValueError, match=r"config.json: missing field 'hidden_size'"):
    load_clip_text(folder)
  folder = _copy(tmp_path, "st5_bin")
  (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "weightedmean"}))
  with pytest.raises(ValueError, match=r"expected exactly one pooling mode"):
    load_sentence_t5(folder)


def test_sharded_safetensors_and_default_layout(tmp_path, models):
  """A ``model.safetensors.index.json`` shard set loads the same params; a folder without ``modules.json`` is read as
  sentence-t5's default layout (Transformer at the root, 1_Pooling, 2_Dense, Normalize)."""
  import jax

  folder = _copy(tmp_path, "st5_safetensors")
  tensors = load_safetensors(folder / "model.safetensors")
  os.remove(folder / "model.safetensors")
  keys = sorted(tensors)
  shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
  for shard, ks in shards.items():
    save_safetensors(folder / shard, {k: tensors[k] for k in ks})
  (folder / "model.safetensors.index.json").write_text(
    json.dumps({"metadata": {}, "weight_map": {k: shard for shard, ks in shards.items() for k in ks}})
  )
  sharded = load_sentence_t5(folder)
  ref = models["st5_safetensors"]
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a, b: bool((a == b).all()), sharded.params, ref.params))

  folder = _copy(tmp_path, "st5_bin")
  os.remove(folder / "modules.json")
  plain = load_sentence_t5(folder)
  assert plain.config == models["st5_bin"].config
