"""Rewards by name, and weighted sums of them, behind the contract `reward(x, cond, t) -> [B]`.

`x` is dataset-normalised motion features [B, L, D]; `cond` holds the reward's text inputs and the frame
`mask` bool [B, L]; `t` is None (clean) or int32 [B] (step-aware). Higher is better.

A spec names the terms and their weights: ``"spm"``, ``"spm:1.0,skating:0.2"``, ``"spm,mypkg.rewards:fn:0.5"``.
Each term is one of

- a registered name: ``spm`` (the trained step-aware reward model of the task), ``skating``, ``jitter``,
  ``penetration`` (`rewards.physical`, scored on the joints recovered from x: the reward is minus the penalty);
- ``module:function``: your own reward with the contract above; if it takes a keyword ``context`` it receives
  the :class:`RewardContext` (dataset statistics, joint count, the trained SPM).

`build_reward(spec, context)` returns a :class:`WeightedReward`: call it for the weighted sum, or
`term_values` for each term (unweighted) so that logs can show every term separately. Terms are named as in the
spec, except that a ``module:function`` term is named ``module.function`` (the name is a metric tag of the logs,
e.g. ``heldout_reward_terms/mypkg.rewards.fn``, and TensorBoard tags take no ':').
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from easytune_jax.data.features import recover_from_ric
from easytune_jax.rewards import physical

RewardFn = Callable[..., jax.Array]


@dataclasses.dataclass(frozen=True, eq=False)
class RewardContext:
  """What reward builders may use.

  Attributes:
    mean, std: float32 [D] dataset statistics the motions x are normalised with.
    joints_num: skeleton joints (22 for HumanML3D, 21 for KIT).
    spm: the trained step-aware reward `spm(x, cond, t) -> [B]`, when the task has one.
    fps: frame rate of the motions.
  """

  mean: np.ndarray
  std: np.ndarray
  joints_num: int
  spm: RewardFn | None = None
  fps: float = 20.0


def _spm(ctx: RewardContext) -> RewardFn:
  if ctx.spm is None:
    raise ValueError("reward term 'spm': this task has no trained reward model (pass a reward workdir)")
  return ctx.spm


def _physical(name: str) -> Callable[[RewardContext], RewardFn]:
  penalty = physical.PENALTIES[name]

  def build(ctx: RewardContext) -> RewardFn:
    mean, std = jnp.asarray(ctx.mean, jnp.float32), jnp.asarray(ctx.std, jnp.float32)
    kw = {} if name == "penetration" else {"fps": ctx.fps}

    def reward(x, cond, t=None):
      del t  # physical plausibility does not depend on the noise level
      joints = recover_from_ric(x * std + mean, ctx.joints_num)
      mask = cond.get("mask")
      mask = jnp.ones(x.shape[:2], bool) if mask is None else mask
      return -penalty(joints, mask, **kw)

    return reward

  return build


REGISTRY: dict[str, Callable[[RewardContext], RewardFn]] = {
  "spm": _spm,
  **{name: _physical(name) for name in physical.PENALTIES},
}


def register(name: str, builder: Callable[[RewardContext], RewardFn]) -> None:
  """Adds `builder(context) -> reward` under `name` (usable in specs and `--reward`)."""
  if not name.isidentifier():
    raise ValueError(f"reward name {name!r}: expected an identifier (letters, digits, '_')")
  REGISTRY[name] = builder


def parse_spec(spec: str) -> tuple[tuple[str, float], ...]:
  """'spm:1.0,skating:0.2' -> (('spm', 1.0), ('skating', 0.2)); a term without a weight has weight 1."""
  terms = []
  for item in (s.strip() for s in spec.split(",")):
    if not item:
      continue
    name, weight = item, 1.0
    head, sep, tail = item.rpartition(":")
    if sep:
      try:
        name, weight = head, float(tail)
      except ValueError:
        name = item  # 'module:function' without a weight
    terms.append((name.strip(), weight))
  if not terms:
    raise ValueError(f"--reward {spec!r}: expected terms like 'spm' or 'spm:1.0,skating:0.2'")
  names = [n for n, _ in terms]
  if len(set(names)) != len(names):
    raise ValueError(f"--reward {spec!r}: a term appears twice ({names})")
  return tuple(terms)


def _user_reward(name: str, ctx: RewardContext) -> RewardFn:
  module_name, _, fn_name = name.partition(":")
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise ValueError(f"reward term {name!r}: cannot import module {module_name!r} ({e})") from None
  fn = getattr(module, fn_name, None)
  if not callable(fn):
    raise ValueError(f"reward term {name!r}: module {module_name!r} has no function {fn_name!r}")
  if "context" in inspect.signature(fn).parameters:
    return lambda x, cond, t=None: fn(x, cond, t, context=ctx)
  return fn


@dataclasses.dataclass(frozen=True, eq=False)
class WeightedReward:
  """sum_k w_k * r_k(x, cond, t), each term kept by name for logging."""

  names: tuple[str, ...]
  weights: tuple[float, ...]
  fns: tuple[RewardFn, ...]

  def term_values(self, x, cond, t=None) -> dict[str, jax.Array]:
    """{name: r_k(x, cond, t) [B]} (unweighted)."""
    out = {}
    for name, fn in zip(self.names, self.fns):
      r = fn(x, cond, t)
      if r.shape != x.shape[:1]:
        raise ValueError(f"reward term {name!r}: expected shape [B]={x.shape[:1]}, found {r.shape}")
      out[name] = r
    return out

  def combine(self, values: Mapping[str, jax.Array]) -> jax.Array:
    """The weighted sum [B] of `term_values`' output."""
    return sum(w * values[n] for n, w in zip(self.names, self.weights))

  def __call__(self, x, cond, t=None) -> jax.Array:
    return self.combine(self.term_values(x, cond, t))


def build_reward(spec: str, context: RewardContext) -> WeightedReward:
  """The reward of `spec` (module docstring) for `context`."""
  names, weights, fns = [], [], []
  for name, weight in parse_spec(spec):
    if ":" in name:
      fn = _user_reward(name, context)
    elif name in REGISTRY:
      fn = REGISTRY[name](context)
    else:
      raise ValueError(f"reward term {name!r}: not registered (known: {sorted(REGISTRY)}) and not 'module:function'")
    names.append(name.replace(":", "."))  # a valid metric tag (core/metric_writer.check_tag)
    weights.append(weight)
    fns.append(fn)
  return WeightedReward(tuple(names), tuple(weights), tuple(fns))
