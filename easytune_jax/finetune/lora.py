"""Low-rank adapters (LoRA) and partial-parameter fine-tuning as a functional reparameterisation of a parameter
pytree: the builders' `denoise(params, x_t, t, cond)` is kept, only the trainable pytree changes.

The trainable pytree (the *adapter*) mirrors the base params' nesting down to the leaves it touches:

  {"lora":  {... <path of a targeted kernel W> ...: {"a": A [in, r], "b": B [r, out]}},
   "whole": {... <path of a leaf trained in full> ...: leaf}}          (a part is absent when empty)

  merge(base, adapter, scale) = base with  W -> W + scale * (A @ B).reshape(W.shape)  for every targeted kernel
                                and the "whole" leaves replaced by the adapter's;  scale = alpha / r.

A kernel is read as a matrix [in, out]: a 2-D kernel as it is (flax Dense, the packed q|k|v `in_proj_kernel`
[C, 3C] of `TorchMultiheadAttention`, as peft's LoRA treats torch's `in_proj_weight`); a 3-D flax attention
kernel as [in, heads * head_dim] (query / key / value: [in, H, d]) or [heads * head_dim, out] (out: [H, d, out]).
A is drawn as torch's Linear / peft draws it (uniform in +-1/sqrt(in)), B is zero, so the adapted model equals
the base at step 0 exactly (W + scale * A @ 0 = W). The base params are frozen inputs (no optimizer state):
`adapt(denoise, base, scale)` is the denoiser of the adapter; `make_update_fn` does this when
`FinetuneConfig.lora.enabled` and takes the base as the update's `base_params`.

Dropout on the adapter's input (peft's `lora_dropout`, dropout on x before A) is not expressible as a merge of
weights and is not offered: `FinetuneConfig.denoiser_dropout` still drops the denoiser's own activations.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# The flax attention projections whose 3-D kernels are matrices (`_in_dims`): nn.MultiHeadDotProductAttention's.
_HEADS_OUT = ("query", "key", "value")  # [in, H, d]
_HEADS_IN = ("out",)  # [H, d, out]
# Key stream of an adapter's initialisation (`fold_in(run key, ADAPTER_STREAM)`): a large constant, apart from the
# small trajectory indices folded into the same run key.
ADAPTER_STREAM = 0x6C6F7261  # "lora"


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """Adapter fine-tuning (off by default: rank 0 and no `train_whole`, i.e. full fine-tuning).

  rank: r of the low-rank factors (0: no LoRA factors). alpha: scale = alpha / rank (None: alpha = rank,
  scale 1). targets: comma-separated regexes searched in each leaf's '/'-joined path (e.g.
  'params/net/TransformerEncoder_0/EncoderLayer_0/MultiHeadDotProductAttention_0/query/kernel'); matching
  kernels (ndim >= 2) get factors. The default 'kernel' targets every dense and attention projection of the
  generators here; 'attention|self_attn' only the attention ones. train_whole: comma-separated regexes of
  leaves trained in full beside the factors (biases, norms: 'bias,LayerNorm,norm'), stored in the adapter;
  with rank 0 this is partial-parameter fine-tuning with adapter-only checkpoints. A leaf matching both is
  trained whole.
  """

  rank: int = 0
  alpha: float | None = None
  targets: str = "kernel"
  train_whole: str = ""

  def __post_init__(self):
    if self.rank < 0:
      raise ValueError(f"LoraConfig.rank: expected >= 0 (0 = no LoRA factors), found {self.rank}")
    if self.alpha is not None and not self.alpha > 0:
      raise ValueError(f"LoraConfig.alpha: expected > 0 or None (= rank), found {self.alpha}")
    for field in ("targets", "train_whole"):
      for p in _split(getattr(self, field)):
        try:
          re.compile(p)
        except re.error as e:
          raise ValueError(f"LoraConfig.{field}: {p!r} is not a regular expression ({e})") from None
    if self.rank > 0 and not _split(self.targets):
      raise ValueError(f"LoraConfig.targets: rank={self.rank} needs at least one pattern, found {self.targets!r}")

  @property
  def enabled(self) -> bool:
    """Whether fine-tuning trains an adapter (LoRA factors and / or whole leaves) instead of every parameter."""
    return self.rank > 0 or bool(_split(self.train_whole))

  @property
  def scale(self) -> float:
    """alpha / rank (1.0 with alpha None; 0 when rank is 0: no factors)."""
    if self.rank == 0:
      return 0.0
    return float(self.alpha if self.alpha is not None else self.rank) / self.rank


def _split(patterns: str) -> list[str]:
  return [p.strip() for p in patterns.split(",") if p.strip()]


def _key(k) -> str:
  return str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))


def _flat(tree: Any) -> dict[tuple[str, ...], Any]:
  """{path tuple of str keys: leaf}."""
  return {tuple(_key(k) for k in p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def named_leaves(tree: Any) -> dict[str, Any]:
  """{'/'-joined path: leaf} (the names `targets` / `train_whole` are matched against)."""
  return {"/".join(p): x for p, x in _flat(tree).items()}


def _nest(flat: dict[tuple[str, ...], Any]) -> dict:
  out: dict = {}
  for path, x in flat.items():
    d = out
    for k in path[:-1]:
      d = d.setdefault(k, {})
    d[path[-1]] = x
  return out


def _in_dims(path: tuple[str, ...], shape: tuple[int, ...]) -> int:
  """How many leading dims of a kernel are its input (the rest its output); raises for kernels that are no
  matrix of a known layout."""
  if len(shape) == 2:
    return 1
  parent = path[-2] if len(path) >= 2 else ""
  if len(shape) == 3 and parent in _HEADS_OUT:
    return 1
  if len(shape) == 3 and parent in _HEADS_IN:
    return 2
  raise ValueError(
    f"LoraConfig.targets: parameter '{'/'.join(path)}' of shape {shape} matches, but LoRA needs a 2-D kernel "
    "[in, out] or a flax attention kernel (query/key/value [in, H, d], out [H, d, out]); exclude it from targets"
  )


def plan(params: Any, config: LoraConfig) -> dict[tuple[str, ...], tuple]:
  """{path: ('lora', in, out) | ('whole',)} of the leaves `config` adapts, in the params' leaf order.

  Raises a ValueError naming the field when a pattern list matches nothing (with example paths)."""
  flat = _flat(params)
  paths = {p: "/".join(p) for p in flat}
  whole_re = [re.compile(p) for p in _split(config.train_whole)]
  target_re = [re.compile(p) for p in _split(config.targets)] if config.rank > 0 else []
  out: dict = {}
  for p, x in flat.items():
    if any(r.search(paths[p]) for r in whole_re):
      out[p] = ("whole",)
    elif any(r.search(paths[p]) for r in target_re) and len(x.shape) >= 2 and jnp.issubdtype(x.dtype, jnp.floating):
      n = _in_dims(p, tuple(x.shape))
      out[p] = ("lora", math.prod(x.shape[:n]), math.prod(x.shape[n:]))
  examples = list(paths.values())[:3]
  if whole_re and not any(v[0] == "whole" for v in out.values()):
    raise ValueError(f"LoraConfig.train_whole={config.train_whole!r} matches no parameter; paths look like {examples}")
  if target_re and not any(v[0] == "lora" for v in out.values()):
    raise ValueError(
      f"LoraConfig.targets={config.targets!r} matches no kernel (a parameter of >= 2 dims); paths look like {examples}"
    )
  return out


def init_adapter(params: Any, config: LoraConfig, key: jax.Array) -> dict:
  """The adapter of `config` on `params` at step 0: A uniform in +-1/sqrt(in) (torch Linear's / peft's
  kaiming-uniform with a = sqrt(5)), B zero (the adapted model equals the base), whole leaves copied."""
  lora, whole = {}, {}
  flat = _flat(params)
  for i, (p, spec) in enumerate(plan(params, config).items()):
    if spec[0] == "whole":
      whole[p] = jnp.array(flat[p], copy=True)
      continue
    _, n_in, n_out = spec
    dtype = flat[p].dtype
    bound = 1.0 / math.sqrt(n_in)
    a = jax.random.uniform(jax.random.fold_in(key, i), (n_in, config.rank), dtype, -bound, bound)
    lora[p + ("a",)] = a
    lora[p + ("b",)] = jnp.zeros((config.rank, n_out), dtype)
  out = {}
  if lora:
    out["lora"] = _nest(lora)
  if whole:
    out["whole"] = _nest(whole)
  return out


def _factors(adapter: dict) -> dict[tuple[str, ...], tuple[Any, Any]]:
  flat = _flat(adapter.get("lora", {}))
  return {p[:-1]: (flat[p[:-1] + ("a",)], flat[p[:-1] + ("b",)]) for p in flat if p[-1] == "a"}


def check_adapter(base: Any, adapter: dict, where: str = "adapter") -> None:
  """Raises a ValueError naming `where` when `adapter` does not fit `base` (a path it lacks, a shape)."""
  flat = {p: tuple(np.shape(x)) for p, x in _flat(base).items()}
  if set(adapter) - {"lora", "whole"}:
    raise ValueError(f"{where}: expected keys 'lora' / 'whole', found {sorted(adapter)}")
  for p, (a, b) in _factors(adapter).items():
    shape = flat.get(p)
    if shape is None or len(np.shape(a)) != 2 or len(np.shape(b)) != 2 or np.shape(a)[1] != np.shape(b)[0]:
      raise ValueError(f"{where}: factors of '{'/'.join(p)}' ({np.shape(a)}, {np.shape(b)}) fit no kernel of the base")
    splits = {(math.prod(shape[:n]), math.prod(shape[n:])) for n in range(1, len(shape))}
    if (np.shape(a)[0], np.shape(b)[1]) not in splits:
      raise ValueError(
        f"{where}: factors of '{'/'.join(p)}' give [{np.shape(a)[0]}, {np.shape(b)[1]}], the base kernel is {shape}"
      )
  for p, x in _flat(adapter.get("whole", {})).items():
    if flat.get(p) != tuple(np.shape(x)):
      raise ValueError(f"{where}: whole leaf '{'/'.join(p)}' {np.shape(x)} != the base's {flat.get(p)}")


def merge(base: Any, adapter: dict, scale: float) -> Any:
  """Full params: base with W + scale * (A @ B).reshape(W.shape) at every factored kernel (in W's dtype)
  and the adapter's whole leaves. Pure and jit-able; the merged kernels are temporaries of the caller."""
  check_adapter(base, adapter)
  factors = _factors(adapter)
  whole = _flat(adapter.get("whole", {}))

  def leaf(path, w):
    p = tuple(_key(k) for k in path)
    if p in whole:
      return whole[p]
    if p in factors:
      a, b = factors[p]
      return (w + scale * (a @ b).reshape(w.shape)).astype(w.dtype)
    return w

  return jax.tree_util.tree_map_with_path(leaf, base)


def adapt(denoise: Callable, base: Any, scale: float) -> Callable:
  """`denoise_lora(adapter, x_t, t, cond, **kw) = denoise(merge(base, adapter, scale), x_t, t, cond, **kw)`
  (kw: the optional dropout `rng`), the merged params behind an optimization barrier. The base is held constant (stop_gradient); when the adapter arrives in
  another floating dtype (compute_dtype='bfloat16' casts it), the base is cast to it, so the merged network
  runs in that dtype."""
  base = jax.lax.stop_gradient(base)

  def denoise_lora(adapter, x_t, t, cond, **kw):
    leaves = jax.tree.leaves(adapter)
    b = base
    if leaves and leaves[0].dtype != jnp.float32:
      dt = leaves[0].dtype
      b = jax.tree.map(lambda x: x.astype(dt) if jnp.issubdtype(x.dtype, jnp.floating) else x, base)
    # The barrier materialises the merged weights before the network reads them, as parameters are: XLA then
    # compiles the network's products as for the base (fusing W + s A B into them changes their rounding), so
    # B = 0 gives the base's outputs bit for bit.
    return denoise(jax.lax.optimization_barrier(merge(b, adapter, scale)), x_t, t, cond, **kw)

  return denoise_lora


def reference_adapter(adapter: dict, base: Any) -> dict:
  """The adapter that leaves `base` unchanged (B = 0, whole leaves = the base's): what the KL regulariser
  compares the adapted outputs with."""
  out = {}
  if "lora" in adapter:
    out["lora"] = jax.tree_util.tree_map_with_path(
      lambda p, x: jnp.zeros_like(x) if _key(p[-1]) == "b" else x, adapter["lora"]
    )
  if "whole" in adapter:
    flat = _flat(base)
    out["whole"] = _nest({p: flat[p] for p in _flat(adapter["whole"])})
  return out


def tree_bytes(tree: Any) -> int:
  """Bytes of the array leaves of `tree` (shapes and dtypes only)."""
  return int(sum(math.prod(np.shape(x)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def tree_size(tree: Any) -> int:
  """Number of elements of the array leaves of `tree`."""
  return int(sum(math.prod(np.shape(x)) for x in jax.tree.leaves(tree)))


def fingerprint(params: Any) -> str:
  """sha256 (hex) of every leaf's path, dtype, shape and values: identifies the base an adapter was trained on
  (host copy; the same on every process of a multi-process run, which all hold the base whole)."""
  h = hashlib.sha256()
  for p, x in sorted(_flat(params).items()):
    a = np.ascontiguousarray(jax.device_get(x))
    h.update(f"{'/'.join(p)}|{a.dtype.str}|{a.shape}|".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def summary(base: Any, adapter: dict) -> dict:
  """Sizes of the adapter against its base: parameter counts, bytes, factored kernels, whole leaves."""
  return {
    "adapter_params": tree_size(adapter),
    "adapter_bytes": tree_bytes(adapter),
    "base_params": tree_size(base),
    "base_bytes": tree_bytes(base),
    "lora_kernels": len(_factors(adapter)),
    "whole_leaves": len(_flat(adapter.get("whole", {}))),
  }
