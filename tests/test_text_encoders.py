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

from easytune_jax.data.text import TextEmbeddings, precompute_text_embeddings
from easytune_jax.interop.clip import load_clip_text
from easytune_jax.interop.clip_tokenizer import pre_tokenize
from easytune_jax.interop.safetensors import load_safetensors, save_safetensors
from easytune_jax.interop.sentence_t5 import load_sentence_t5
from easytune_jax.interop.torch_zip import load_torch_checkpoint
from easytune_jax.models.t5_encoder import relative_position_buckets

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


# Characters for random captions: ASCII, whitespace kinds, accents and combining marks (NFC), ligatures, full-width
# and non-Latin letters and digits, emoji, apostrophes for the contractions, and the literal special tokens. Not
# U+001C..U+001F: Python's isspace (the reference) calls them whitespace, the Rust regex \s does not.
_POOL = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:!?'-_()[]#%&*/\\\"@")
_POOL += [" ", "  ", "\t", "\n", "\u00a0", "\u3000", "\r\n", "é", "e\u0301", "ß", "ﬁ", "Ａ", "ｂ", "１", "½", "Ⅻ"]
_POOL += ["ж", "Ω", "中", "文", "ا", "४", "😀", "👍🏽", "'s", "'t", "'re", "'ll", "'d", "\ufeff", "\u200b"]
_POOL += ["<|endoftext|>", "<|startoftext|>", " walks", " counter-clockwise", " person", " the", " jumps"]


def _random_texts(n: int, seed: int) -> list[str]:
  rng = np.random.default_rng(seed)
  return ["".join(rng.choice(_POOL, size=rng.integers(0, 40))) for _ in range(n)]


def test_clip_tokenizer_matches_a_pure_python_reference(models, captions):
  """The library's tokenizer (HF tokenizers) and a small independent pure-Python BPE (tests/reference_clip_bpe.py)
  give the same ids on the captions and 400 random strings, padded and truncated (77 and 8 tokens)."""
  from easytune_jax.interop.clip_tokenizer import CLIPTokenizer
  from tests.reference_clip_bpe import ReferenceCLIPTokenizer

  texts = captions + _random_texts(400, seed=0) + ["a " * 100]
  for name in ("clip_bin", "clip_safetensors"):
    files = os.path.join(FIX, name, "vocab.json"), os.path.join(FIX, name, "merges.txt")
    for max_length in (77, 8):
      ref = ReferenceCLIPTokenizer(*files, max_length=max_length)
      tok = CLIPTokenizer.from_files(*files, max_length=max_length)
      ids, mask = tok(texts)
      for t, row, m in zip(texts, ids, mask):
        assert row.tolist() == ref.padded(t), repr(t)
        assert m.sum() == min(len(ref.encode(t)) + 2, max_length)
      assert all(tok.encode(t) == ref.encode(t) for t in texts[:50])


def test_clip_tokenizer_json_as_transformers_writes_it(tmp_path, expected, captions, models):
  """A CLIP folder holding HF's tokenizer.json (written by transformers 5.24's CLIPTokenizer.save_pretrained from
  clip_bin's vocab.json + merges.txt) and no vocab.json / merges.txt: the same ids, features and hidden states. The
  tokenizer the library builds from vocab.json + merges.txt serialises to that very file."""
  from tokenizers import models as tk_models

  from easytune_jax.interop.clip_tokenizer import build_clip_tokenizer

  saved = os.path.join(FIX, "clip_bin.tokenizer.json")
  with open(saved, encoding="utf-8") as f:
    written = json.load(f)
  vocab, merges = tk_models.BPE.read_file(
    os.path.join(FIX, "clip_bin", "vocab.json"), os.path.join(FIX, "clip_bin", "merges.txt")
  )
  assert json.loads(build_clip_tokenizer(vocab, merges).to_str()) == written

  folder = _copy(tmp_path, "clip_bin")
  os.remove(folder / "vocab.json")
  os.remove(folder / "merges.txt")
  shutil.copy(saved, folder / "tokenizer.json")
  clip = load_clip_text(folder)
  feats, hidden, ids = clip.encode(captions, batch_size=4)
  np.testing.assert_array_equal(ids, expected["clip_bin/ids"])
  np.testing.assert_array_equal(clip.tokenizer(captions)[1], expected["clip_bin/mask"])
  np.testing.assert_array_equal(
    clip.tokenizer(json.loads(str(expected["fuzz_texts_json"])))[0], expected["clip_bin/fuzz_ids"]
  )
  ref_feats, ref_hidden, _ = models["clip_bin"].encode(captions, batch_size=4)
  np.testing.assert_array_equal(feats, ref_feats)
  np.testing.assert_array_equal(hidden, ref_hidden)
  (folder / "tokenizer.json").write_text("{not json")
  with pytest.raises(ValueError, match=r"tokenizer.json: not a HF tokenizers file"):
    load_clip_text(folder)


def spiece_to_tokenizer_json(spm_path: str) -> str:
  """The ``tokenizer.json`` transformers (5.x) writes for a T5 ``spiece.model``: the SentencePiece model's pieces and
  scores as a ``tokenizers`` Unigram model, its normalisation table (``precompiled_charsmap``), whitespace split +
  metaspace pre-tokeniser, ``$A </s>`` post-processor, the control and unknown pieces as added tokens. (Checked
  when written: equal, as JSON, to what transformers 5.24.0's T5Tokenizer.save_pretrained writes for the fixture.)"""
  from sentencepiece import sentencepiece_model_pb2
  from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

  proto = sentencepiece_model_pb2.ModelProto()
  with open(spm_path, "rb") as f:
    proto.ParseFromString(f.read())
  tok = Tokenizer(models.Unigram([(p.piece, p.score) for p in proto.pieces], proto.trainer_spec.unk_id, False))
  tok.normalizer = normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap)
  metaspace = dict(replacement="\u2581", prepend_scheme="always", split=True)
  tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(**metaspace)])
  tok.decoder = decoders.Metaspace(**metaspace)
  eos = proto.pieces[proto.trainer_spec.eos_id].piece
  tok.post_processor = processors.TemplateProcessing(
    single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, proto.trainer_spec.eos_id)]
  )
  specials = [p.piece for p in proto.pieces if p.type in (p.UNKNOWN, p.CONTROL)]
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
  return tok.to_str()


@pytest.mark.parametrize("name", ["st5_safetensors", "st5_bin"])
def test_sentence_t5_from_tokenizer_json_only(tmp_path, name, expected, captions, models):
  """A sentence-T5 folder as transformers >= 5 saves it (tokenizer.json, no spiece.model) loads with HF tokenizers
  and encodes the same as the spiece.model folder: ids of the captions, of the 200 fuzz strings and of 400 random
  strings, token embeddings and sentence embeddings, bit for bit."""
  folder = _copy(tmp_path, name)
  (folder / "tokenizer.json").write_text(spiece_to_tokenizer_json(str(folder / "spiece.model")), encoding="utf-8")
  os.remove(folder / "spiece.model")
  st5, ref = load_sentence_t5(folder), models[name]
  assert st5.tokenizer.sp is None and st5.tokenizer.tokenizer is not None and ref.tokenizer.sp is not None
  assert (st5.tokenizer.eos_id, st5.tokenizer.pad_id, st5.tokenizer.vocab_size) == (
    ref.tokenizer.eos_id,
    ref.tokenizer.pad_id,
    ref.tokenizer.vocab_size,
  )
  texts = captions + json.loads(str(expected["fuzz_texts_json"])) + _random_texts(400, seed=1)
  for t in texts:
    assert st5.tokenizer.encode(t) == ref.tokenizer.encode(t), repr(t)
  ids, mask = st5.tokenizer(captions)
  np.testing.assert_array_equal(ids, expected[f"{name}/ids"])
  np.testing.assert_array_equal(mask, expected[f"{name}/mask"])
  tokens, mask2, sentence = st5.encode(captions, batch_size=4)
  ref_tokens, ref_mask, ref_sentence = ref.encode(captions, batch_size=4)
  np.testing.assert_array_equal(mask2, ref_mask)
  np.testing.assert_array_equal(tokens, ref_tokens)
  np.testing.assert_array_equal(sentence, ref_sentence)
  (folder / "tokenizer.json").write_text("{not json")
  with pytest.raises(ValueError, match=r"tokenizer.json: not a HF tokenizers file"):
    load_sentence_t5(folder)


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
  """interop/safetensors.py (the `safetensors` package underneath): dtypes (bfloat16 too), empty, transposed
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
    (
      "st5_safetensors",
      "spiece.model",
      r"tokenizer \(SentencePiece model or HF tokenizer.json\) not found \(expected one of \['spiece.model', 'tok",
    ),
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
