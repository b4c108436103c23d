"""Batching (shapes, masks, crop rule, determinism by (seed, step)), tokenizer, embeddings file."""

import numpy as np
import pytest

from easytune_jax.data import batching as B
from easytune_jax.data import humanml3d as H
from easytune_jax.data import synthetic as S
from easytune_jax.data.text import TextEmbeddings, Tokenizer, save_text_embeddings, split_words


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("syn"))
  S.write_synthetic_dataset(root, 24, seed=0, min_len=40, max_len=120)
  ds = H.load_dataset(root, "all")
  tok = Tokenizer.build([c for e in ds.entries for c, _ in e.captions], max_length=16)
  return ds, tok


def test_unit_length_crop_rule():
  counts = {}
  for s in range(600):
    rng = np.random.default_rng(s)
    start, n = B.unit_length_crop(103, rng)
    assert n in (100, 96) and 0 <= start <= 103 - n
    counts[n] = counts.get(n, 0) + 1
  assert 0.25 < counts[96] / 600 < 0.42  # P(double) = 1/3
  starts = {B.unit_length_crop(103, np.random.default_rng(s))[0] for s in range(600)}
  assert 0 in starts and 7 in starts  # both ends of 0..L-L' reachable (double: 0..7)


def test_batch_shapes_masks_normalisation(data):
  ds, tok = data
  arrays, host = B.batch_at(ds, 0, 8, seed=1, tokenizer=tok, max_length=196)
  assert arrays["motion"].shape == (8, 196, 263) and arrays["motion"].dtype == np.float32
  assert arrays["mask"].dtype == bool and arrays["length"].dtype == np.int32
  assert arrays["tokens"].shape == arrays["token_mask"].shape == (8, 16) and arrays["tokens"].dtype == np.int32
  for b in range(8):
    n = arrays["length"][b]
    assert n % 4 == 0 and 36 <= n <= 196
    assert arrays["mask"][b].sum() == n and arrays["mask"][b, :n].all()
    assert np.all(arrays["motion"][b, n:] == 0)
    e = [x for x in ds.entries if x.name == host["name"][b]][0]
    raw = arrays["motion"][b, :n] * ds.std + ds.mean
    # the crop is a contiguous window of the entry's motion
    windows = [np.abs(raw - e.motion[s : s + n]).max() for s in range(e.length - n + 1)]
    assert min(windows) < 1e-4
    assert host["caption"][b] in [c for c, _ in e.captions]
    assert host["pos_tokens"][b] == dict(e.captions)[host["caption"][b]]
    ids = tok.encode(host["caption"][b])
    assert list(arrays["tokens"][b, : len(ids)]) == ids and arrays["token_mask"][b].sum() == len(ids)
  # small fixed max_length (tiny configs): crop further, still a multiple of 4
  a2, _ = B.batch_at(ds, 3, 8, seed=1, tokenizer=tok, max_length=30)
  assert a2["motion"].shape == (8, 30, 263) and set(a2["length"].tolist()) == {28}


def test_determinism_by_seed_and_step(data):
  ds, tok = data
  a, h = B.batch_at(ds, 5, 8, seed=2, tokenizer=tok)
  b, g = B.batch_at(ds, 5, 8, seed=2, tokenizer=tok)
  assert h == g and all(np.array_equal(a[k], b[k]) for k in a)
  c, _ = B.batch_at(ds, 6, 8, seed=2, tokenizer=tok)
  d, _ = B.batch_at(ds, 5, 8, seed=3, tokenizer=tok)
  assert not np.array_equal(a["motion"], c["motion"]) and not np.array_equal(a["motion"], d["motion"])
  # epoch iteration == batch_at of the corresponding global steps (resume sees identical data)
  spe = B.steps_per_epoch(ds, 8)
  assert spe == len(ds) // 8
  for k, (x, hx) in enumerate(B.iterate_batches(ds, 8, seed=2, epoch=1, tokenizer=tok)):
    y, hy = B.batch_at(ds, spe + k, 8, seed=2, tokenizer=tok)
    assert hx == hy and all(np.array_equal(x[key], y[key]) for key in x)
  # one epoch visits each entry at most once; without drop_last every entry exactly once
  names = [n for _, h in B.iterate_batches(ds, 5, 0, 0, tok, drop_last=False) for n in h["name"]]
  assert sorted(names) == sorted(e.name for e in ds.entries)
  with pytest.raises(ValueError, match="batch_size=100"):
    B.batch_at(ds, 0, 100, seed=0, tokenizer=tok)


def test_rows_of_a_batch_equal_the_same_rows_of_the_whole_batch(data):
  """What each process of a multi-process run builds: its rows only, equal to slicing the global batch."""
  ds, tok = data
  whole, host = B.batch_at(ds, 3, 8, seed=4, tokenizer=tok, max_length=48)
  for rows in (slice(0, 4), slice(4, 8), slice(2, 3)):
    part, hpart = B.batch_at(ds, 3, 8, seed=4, tokenizer=tok, max_length=48, rows=rows)
    assert set(part) == set(whole)
    for k in whole:
      np.testing.assert_array_equal(part[k], whole[k][rows], err_msg=k)
    assert all(hpart[k] == host[k][rows] for k in host)


def test_tokenizer_roundtrip(tmp_path):
  caps = ["A man walks forward.", "a man waves the left hand", "someone jumps-up twice!"]
  tok = Tokenizer.build(caps, max_length=8)
  assert tok.vocab[:4] == ["<pad>", "<unk>", "<sos>", "<eos>"] and tok.vocab[4:6] == ["a", "man"]
  assert split_words("someone jumps-up twice!") == ["someone", "jumps", "up", "twice"]
  ids = tok.encode("A man walks forward.")
  assert ids[0] == tok.sos_id and ids[-1] == tok.eos_id
  assert tok.decode(ids) == "a man walks forward"
  assert tok.encode("a dog")[2] == tok.unk_id
  long = tok.encode("a " * 20)
  assert len(long) == 8 and long[-1] == tok.eos_id
  path = str(tmp_path / "tok.json")
  tok.save(path)
  tok2 = Tokenizer.load(path)
  assert tok2.vocab == tok.vocab and tok2.vocab_size == tok.vocab_size
  t, m = tok2.encode_batch(caps)
  assert t.shape == (3, 8) and m.sum(1).tolist() == [6, 8, 6] and np.all(t[~m] == 0)


def test_text_embeddings_file(tmp_path, data):
  ds, tok = data
  caps = sorted({c for e in ds.entries for c, _ in e.captions})
  rng = np.random.default_rng(0)
  emb = rng.normal(size=(len(caps), 6, 5)).astype(np.float32)
  mask = np.zeros((len(caps), 6), bool)
  mask[:, :3] = True
  path = str(tmp_path / "emb.npz")
  save_text_embeddings(path, caps, emb, mask)
  te = TextEmbeddings(path)
  assert te.dim == 5 and te.max_length == 6
  e, m = te.lookup([caps[3], caps[0]])
  np.testing.assert_array_equal(e, emb[[3, 0]])
  with pytest.raises(KeyError, match=r"emb\.npz.*1 caption.*'a purple elephant dances'"):
    te.lookup([caps[0], "a purple elephant dances"])
  arrays, host = B.batch_at(ds, 0, 4, seed=0, tokenizer=tok, text_embeddings=te)
  assert arrays["text_emb"].shape == (4, 6, 5) and arrays["text_emb_mask"].shape == (4, 6)
  np.testing.assert_array_equal(arrays["text_emb"][0], emb[caps.index(host["caption"][0])])
  with pytest.raises(ValueError, match="unique"):
    save_text_embeddings(path, [caps[0], caps[0]], emb[:2], mask[:2])
