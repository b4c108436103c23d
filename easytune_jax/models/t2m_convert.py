"""Load the official T2M evaluator (``text_mot_match/model/finest.tar``) and GloVe files without torch.

``finest.tar`` is a ``torch.save`` file in PyTorch's zip serialization format (the default since torch 1.6):

* a zip archive whose entries live under one folder ``<archive>/``;
* ``<archive>/data.pkl``: a pickle (protocol 2) of the saved object. Tensors are pickled as
  ``REDUCE(GLOBAL torch._utils._rebuild_tensor_v2, (storage, offset, size, stride, requires_grad, hooks))``
  where ``storage`` is a *persistent id* ``('storage', GLOBAL torch.<Type>Storage, key, location, numel)``;
* ``<archive>/data/<key>``: the raw little-endian bytes of each storage (``<archive>/byteorder`` may say
  otherwise), the element type given by the storage type name (``FloatStorage`` = float32, ...).

:func:`load_torch_checkpoint` reads that format with ``zipfile`` and a restricted ``pickle.Unpickler`` into
nested dicts of numpy arrays; :func:`convert_t2m_evaluator` maps the three state dicts (names per
HUMANML3D.md §A4.4) onto :class:`~easytune_jax.models.evaluator.T2MEvaluator` parameters, validating every
shape against an :class:`EvaluatorConfig`.
"""

from __future__ import annotations

import collections
import os
import pickle
import zipfile
from typing import Any, Mapping

import numpy as np

from easytune_jax.models.evaluator import EvaluatorConfig, WordVectorizer


def _bfloat16():
    import ml_dtypes  # shipped with jax

    return np.dtype(ml_dtypes.bfloat16)


_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_, "BFloat16Storage": "bfloat16",
}


class _StorageType:
    """Stand-in for ``torch.<Name>Storage`` classes referenced by the pickle."""

    def __init__(self, name: str):
        self.name = name
        dt = _STORAGE_DTYPES[name]
        self.dtype = _bfloat16() if dt == "bfloat16" else np.dtype(dt)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    """numpy version of ``torch._utils._rebuild_tensor_v2``: a (copied) strided view of the storage."""
    del requires_grad, backward_hooks, metadata
    size = tuple(int(s) for s in size)
    stride = tuple(int(s) for s in stride)
    if not size:
        return storage[storage_offset].copy()
    needed = storage_offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1 if all(size) else 0
    if needed > storage.size:
        raise ValueError(f"torch checkpoint: tensor of size {size}, stride {stride}, offset {storage_offset} "
                         f"reads past its storage of {storage.size} elements")
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(storage[storage_offset:], shape=size,
                                           strides=tuple(s * item for s in stride), writeable=False)
    return np.array(view)  # own the memory, contiguous


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _rebuild_tensor_v2(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *extra):
    del requires_grad, backward_hooks, extra
    return data


class _TorchUnpickler(pickle.Unpickler):
    """Only the globals a state-dict checkpoint needs; anything else is refused by name."""

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, byteorder: str, path: str):
        super().__init__(file)
        self._zip, self._prefix, self._byteorder, self._path = archive, prefix, byteorder, path
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch._utils" and name == "_rebuild_tensor":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "scalar":
            core = getattr(np, "_core", None) or __import__("numpy.core.multiarray").core
            return core.multiarray.scalar
        if module == "numpy" and name == "dtype":
            return np.dtype
        if module == "builtins" and name in ("set", "frozenset", "complex", "slice"):
            return getattr(__import__("builtins"), name)
        raise pickle.UnpicklingError(f"{self._path}: the checkpoint references {module}.{name}, which this "
                                     "torch-free reader does not support (state dicts of tensors only)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"{self._path}: unexpected persistent id {pid!r}")
        _, stype, key, _location, numel = pid[:5]
        if not isinstance(stype, _StorageType):
            raise pickle.UnpicklingError(f"{self._path}: storage {key!r} has unsupported type {stype!r}")
        key = str(key)
        if key not in self._storages:
            name = f"{self._prefix}data/{key}"
            try:
                raw = self._zip.read(name)
            except KeyError:
                raise ValueError(f"{self._path}: storage record {name!r} is missing from the archive") from None
            dtype = stype.dtype.newbyteorder("<" if self._byteorder == "little" else ">")
            if len(raw) != int(numel) * dtype.itemsize:
                raise ValueError(f"{self._path}: storage {name!r} expected {numel} x {dtype.itemsize} bytes "
                                 f"({stype.name}), found {len(raw)} bytes")
            arr = np.frombuffer(raw, dtype=dtype)
            self._storages[key] = arr.astype(stype.dtype, copy=False)
        return self._storages[key]


def load_torch_checkpoint(path: str | os.PathLike) -> Any:
    """Reads a ``torch.save`` zip file into plain Python containers with numpy arrays for tensors."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"torch checkpoint {path!r} does not exist")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: expected a torch.save zip archive (torch >= 1.6 format), found a file that "
                         "is not a zip; legacy torch files must be re-saved with torch first")
    with zipfile.ZipFile(path) as zf:
        pkls = [n for n in zf.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise ValueError(f"{path}: expected exactly one '<archive>/data.pkl' record, found {pkls}")
        prefix = pkls[0][: -len("data.pkl")]
        byteorder = "little"
        if f"{prefix}byteorder" in zf.namelist():
            byteorder = zf.read(f"{prefix}byteorder").decode().strip()
            if byteorder not in ("little", "big"):
                raise ValueError(f"{path}: byteorder record expected 'little' or 'big', found {byteorder!r}")
        with zf.open(pkls[0]) as f:
            return _TorchUnpickler(f, zf, prefix, byteorder, path).load()


# --------------------------------------------------------------------------------------------------
# T2M state dicts -> Flax params
# --------------------------------------------------------------------------------------------------


def t2m_expected_shapes(config: EvaluatorConfig) -> dict[str, dict[str, tuple[int, ...]]]:
    """PyTorch parameter names and shapes of the three T2M state dicts for ``config`` (HUMANML3D.md §A4.4)."""
    c = config

    def gru(prefix_in, h):
        out = {}
        for sfx in ("", "_reverse"):
            out[f"gru.weight_ih_l0{sfx}"] = (3 * h, prefix_in)
            out[f"gru.weight_hh_l0{sfx}"] = (3 * h, h)
            out[f"gru.bias_ih_l0{sfx}"] = (3 * h,)
            out[f"gru.bias_hh_l0{sfx}"] = (3 * h,)
        return out

    def head(h, e):
        return {"output_net.0.weight": (h, 2 * h), "output_net.0.bias": (h,),
                "output_net.1.weight": (h,), "output_net.1.bias": (h,),
                "output_net.3.weight": (e, h), "output_net.3.bias": (e,), "hidden": (2, 1, h)}

    mov = {"main.0.weight": (c.dim_movement_enc_hidden, c.motion_input_dim, 4),
           "main.0.bias": (c.dim_movement_enc_hidden,),
           "main.3.weight": (c.dim_movement_latent, c.dim_movement_enc_hidden, 4),
           "main.3.bias": (c.dim_movement_latent,),
           "out_net.weight": (c.dim_movement_latent, c.dim_movement_latent),
           "out_net.bias": (c.dim_movement_latent,)}
    mot = {"input_emb.weight": (c.dim_motion_hidden, c.dim_movement_latent), "input_emb.bias": (c.dim_motion_hidden,),
           **gru(c.dim_motion_hidden, c.dim_motion_hidden), **head(c.dim_motion_hidden, c.dim_coemb)}
    txt = {"pos_emb.weight": (c.dim_word, c.dim_pos_ohot), "pos_emb.bias": (c.dim_word,),
           "input_emb.weight": (c.dim_text_hidden, c.dim_word), "input_emb.bias": (c.dim_text_hidden,),
           **gru(c.dim_text_hidden, c.dim_text_hidden), **head(c.dim_text_hidden, c.dim_coemb)}
    return {"movement_encoder": mov, "motion_encoder": mot, "text_encoder": txt}


def _validated(state: Mapping[str, Any], config: EvaluatorConfig, source: str) -> dict[str, dict[str, np.ndarray]]:
    expected = t2m_expected_shapes(config)
    out = {}
    for module, shapes in expected.items():
        if module not in state:
            raise KeyError(f"{source}: missing state dict {module!r} (found keys {sorted(map(str, state))})")
        sd = state[module]
        out[module] = {}
        for key, shape in shapes.items():
            if key not in sd:
                raise KeyError(f"{source}: missing parameter '{module}.{key}' (expected shape {shape})")
            arr = np.asarray(sd[key])
            if arr.shape != shape:
                raise ValueError(f"{source}: parameter '{module}.{key}' expected shape {shape} from {config}, "
                                 f"found {arr.shape}")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{source}: parameter '{module}.{key}' holds non-finite values")
            out[module][key] = arr
    return out


def convert_t2m_state(state: Mapping[str, Any], config: EvaluatorConfig, dtype=np.float32,
                      source: str = "T2M state") -> dict:
    """T2M state dicts (``{'text_encoder', 'movement_encoder', 'motion_encoder'}`` -> numpy) -> Flax params.

    Linear ``W (out, in)`` becomes a Dense kernel ``W^T``; Conv1d ``W (out, in, k)`` becomes a Conv kernel
    ``(k, in, out)``; GRU ``W_ih (3H, in)`` becomes ``kernel_ih (in, 3H)`` keeping PyTorch's gate order; the
    learned initial state ``hidden (2, 1, H)`` becomes ``initial_hidden (2, H)``.
    """
    if config.vocab_size is not None:
        raise ValueError("convert_t2m_state: the official checkpoint uses GloVe inputs; expected "
                         f"EvaluatorConfig.vocab_size None, found {config.vocab_size}")
    sd = _validated(state, config, source)

    def a(x):
        return np.ascontiguousarray(x, dtype=dtype)

    def dense(s, name):
        return {"kernel": a(s[f"{name}.weight"].T), "bias": a(s[f"{name}.bias"])}

    def gru(s):
        out = {"initial_hidden": a(s["hidden"][:, 0, :])}
        for flax_name, sfx in (("fwd", ""), ("bwd", "_reverse")):
            out[flax_name] = {"kernel_ih": a(s[f"gru.weight_ih_l0{sfx}"].T), "bias_ih": a(s[f"gru.bias_ih_l0{sfx}"]),
                              "kernel_hh": a(s[f"gru.weight_hh_l0{sfx}"].T), "bias_hh": a(s[f"gru.bias_hh_l0{sfx}"])}
        return out

    def head(s):
        return {"linear0": dense(s, "output_net.0"),
                "norm1": {"scale": a(s["output_net.1.weight"]), "bias": a(s["output_net.1.bias"])},
                "linear3": dense(s, "output_net.3")}

    mv, mo, tx = sd["movement_encoder"], sd["motion_encoder"], sd["text_encoder"]
    params = {
        "movement_encoder": {
            "conv0": {"kernel": a(mv["main.0.weight"].transpose(2, 1, 0)), "bias": a(mv["main.0.bias"])},
            "conv3": {"kernel": a(mv["main.3.weight"].transpose(2, 1, 0)), "bias": a(mv["main.3.bias"])},
            "out_net": dense(mv, "out_net"),
        },
        "motion_encoder": {"input_emb": dense(mo, "input_emb"), "gru": gru(mo), "output_net": head(mo)},
        "text_encoder": {"pos_emb": dense(tx, "pos_emb"), "input_emb": dense(tx, "input_emb"), "gru": gru(tx),
                         "output_net": head(tx)},
    }
    return {"params": params}


def load_t2m_evaluator(checkpoint_path: str | os.PathLike, config: EvaluatorConfig | None = None,
                       dtype=np.float32) -> dict:
    """``finest.tar`` -> Flax params for :class:`T2MEvaluator` (``config`` defaults to ``paper()``)."""
    config = EvaluatorConfig.paper() if config is None else config
    state = load_torch_checkpoint(checkpoint_path)
    if not isinstance(state, Mapping):
        raise ValueError(f"{checkpoint_path}: expected a dict with text_encoder/movement_encoder/motion_encoder, "
                         f"found {type(state).__name__}")
    return convert_t2m_state(state, config, dtype=dtype, source=os.fspath(checkpoint_path))


# --------------------------------------------------------------------------------------------------
# GloVe vocabulary (our_vab_data.npy, our_vab_words.pkl, our_vab_idx.pkl)
# --------------------------------------------------------------------------------------------------


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module, name):  # word lists / dicts need no globals
        raise pickle.UnpicklingError(f"{self._path}: refusing to load global {module}.{name}")


def _load_plain_pickle(path: str):
    with open(path, "rb") as f:
        u = _PlainUnpickler(f)
        u._path = path
        return u.load()


def load_glove(glove_dir: str | os.PathLike, prefix: str = "our_vab", dim_word: int = 300):
    """Reads T2M's GloVe files -> ``(vectors float32 [V, dim_word], words list, word_to_idx dict)``."""
    glove_dir = os.fspath(glove_dir)
    paths = {k: os.path.join(glove_dir, f"{prefix}_{k}") for k in ("data.npy", "words.pkl", "idx.pkl")}
    for p in paths.values():
        if not os.path.exists(p):
            raise FileNotFoundError(f"GloVe file {p!r} does not exist")
    vectors = np.load(paths["data.npy"], allow_pickle=False).astype(np.float32)
    words = _load_plain_pickle(paths["words.pkl"])
    idx = _load_plain_pickle(paths["idx.pkl"])
    if vectors.ndim != 2 or vectors.shape[1] != dim_word:
        raise ValueError(f"{paths['data.npy']}: expected shape (V, {dim_word}), found {vectors.shape}")
    if not isinstance(words, list) or len(words) != vectors.shape[0]:
        raise ValueError(f"{paths['words.pkl']}: expected a list of {vectors.shape[0]} words (one per row of "
                         f"{prefix}_data.npy), found {type(words).__name__} of length {len(words)}")
    if not isinstance(idx, dict):
        raise ValueError(f"{paths['idx.pkl']}: expected a dict word -> row, found {type(idx).__name__}")
    for i, w in enumerate(words):
        if idx.get(w) != i:
            raise ValueError(f"{paths['idx.pkl']}: word {w!r} expected index {i} (its position in "
                             f"{prefix}_words.pkl), found {idx.get(w)}")
    return vectors, words, {str(k): int(v) for k, v in idx.items()}


def load_glove_vectorizer(glove_dir: str | os.PathLike, prefix: str = "our_vab") -> WordVectorizer:
    """A :class:`WordVectorizer` returning GloVe vectors (the official evaluator's text input)."""
    vectors, _, idx = load_glove(glove_dir, prefix)
    return WordVectorizer(idx, vectors)
