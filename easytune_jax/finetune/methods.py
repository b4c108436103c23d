"""The method table: every fine-tuning method is a row of `METHODS` (name -> `StepPolicy`).

A row says which steps run the denoiser with gradient, where the input is stopped, which output is scored,
and whether each step is its own update (EasyTune) or the trajectory is one (DRaFT-K, ReFL, AlignProp,
DRTune); `choose(rng, config) -> Choice` draws a trajectory's random choices. One executor
(`finetune/executor.py`) runs every row; `FinetuneConfig` (finetune/config.py), the builders, the benchmark
and the launchers read the table. A new method is one row here (tests/test_method_table.py adds one).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class Choice(NamedTuple):
  """A trajectory's choices (drawn by the row's `choose`; traced values may be random).

  start: first step of the differentiated span (int, or int32 [] when random); the steps before it run
    without gradient and store nothing. grad_mask bool [T]: steps whose denoiser runs with gradient.
  loss_index int32 []: the step whose output is scored (rows with scores='step'). offset int32 []: a
    method-specific draw reported in the metrics (DRTune's s; 0 otherwise).
  """

  start: Any
  grad_mask: jax.Array
  loss_index: jax.Array
  offset: jax.Array


@dataclasses.dataclass(frozen=True)
class StepPolicy:
  """One row of the method table `METHODS`: how a method runs the T denoising steps.

  One executor runs every row (`make_trajectory_loss`, `make_per_step_update`): steps before
  `Choice.start` run without gradient; then a differentiated span of `span(config)` steps (static length)
  from a stopped input; the reward scores either the final sample x_0 or the loss step's output.

  label: display name (tables, plots). span: static number of steps in the differentiated span.
  choose: (rng, config) -> Choice (trajectory rows; per-step rows train the last `span` steps).
  masked: span steps outside grad_mask run the denoiser with its output stopped (lax.cond per step; the
    DDIM update still carries gradient); False: every step of the span runs with gradient.
  sg_every_input: stop_gradient on every denoiser input (else only at the span's start).
  scores: 'final' = R(decode(x_0)) (the span must end at step T-1); 'step' = R of the loss step's x0_hat
    (or x_prev, config.reward_input), step-aware; steps after the loss step are skipped.
  per_step_updates: each span step is its own one-step loss and optimizer update (EasyTune); else one
    update per trajectory. default_k: K when config.k is None. uses: the FinetuneConfig hyper-parameters the
    row reads. (The benchmark counts a row's work per trajectory from these fields and `choose`:
    `bench.measure.expected_work`.)
  check: optional config validation raising ValueError.
  """

  label: str
  span: Callable[[Any], int]
  choose: Callable[[jax.Array, Any], Choice] | None = None
  masked: bool = False
  sg_every_input: bool = False
  scores: str = "final"
  per_step_updates: bool = False
  default_k: Callable[[Any], int] = lambda c: 1
  uses: tuple = ()
  check: Callable[[Any], None] | None = None

  def __post_init__(self):
    if self.scores not in ("final", "step"):
      raise ValueError(f"StepPolicy({self.label}).scores: expected 'final' or 'step', found {self.scores!r}")
    if self.per_step_updates == (self.choose is not None):
      raise ValueError(f"StepPolicy({self.label}): a trajectory row needs `choose`, a per-step row none")


def _zero():
  return jnp.zeros((), jnp.int32)


def _draft_choose(rng, c):
  T, K = c.num_steps, c.num_grad_steps
  return Choice(T - K, jnp.arange(T) >= T - K, jnp.asarray(T - 1, jnp.int32), _zero())


def _refl_choose(rng, c):
  T = c.num_steps
  i_stop = jax.random.randint(rng, (), T - c.stop_range, T, dtype=jnp.int32)
  return Choice(i_stop, jnp.arange(T) == i_stop, i_stop, _zero())


def alignprop_mask(rng: jax.Array, p: float, num_steps: int) -> jax.Array:
  """bool [T]: each step True with probability p, redrawn (fold_in(rng, attempt)) until one is True,
  i.e. the Bernoulli mask conditioned on being non-empty, as the official rejection loop."""
  draw = lambda j: jax.random.bernoulli(jax.random.fold_in(rng, j), p, (num_steps,))
  _, mask = jax.lax.while_loop(lambda c: ~jnp.any(c[1]), lambda c: (c[0] + 1, draw(c[0] + 1)), (0, draw(0)))
  return mask


def _alignprop_choose(rng, c):
  return Choice(0, alignprop_mask(rng, c.p, c.num_steps), jnp.asarray(c.num_steps - 1, jnp.int32), _zero())


def drtune_choices(
  rng: jax.Array, num_steps: int, num_train: int, t_train: int, stop_range: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """DRTune's random choices: (grad_mask bool [T], offset s, i_min).

  Training steps s + j * (t_train // K), j < K, with s ~ U{0..t_train - K * (t_train // K)};
  i_min ~ U{T - M..T - 1}."""
  k_s, k_min = jax.random.split(rng)
  stride = t_train // num_train
  s = jax.random.randint(k_s, (), 0, t_train - stride * num_train + 1, dtype=jnp.int32)
  steps = s + stride * jnp.arange(num_train)
  mask = jnp.zeros((num_steps,), bool).at[steps].set(True)
  i_min = jax.random.randint(k_min, (), num_steps - stop_range, num_steps, dtype=jnp.int32)
  return mask, s, i_min


def _drtune_choose(rng, c):
  mask, s, i_min = drtune_choices(rng, c.num_steps, c.num_grad_steps, c.train_span, c.stop_range)
  return Choice(0, mask, i_min, s)


def motionrft_choices(rng: jax.Array, num_steps: int, min_k: int) -> tuple[jax.Array, jax.Array]:
  """MotionRFT's draw: (k, i) with k ~ U{min_k..T} and the gradient step i = min(k, T - 1). k = T is the official
  edge case: every step ran without gradient and the jump to the end has length 0, so the update's gradient is 0."""
  k = jax.random.randint(rng, (), min_k, num_steps + 1, dtype=jnp.int32)
  return k, jnp.minimum(k, num_steps - 1)


def _motionrft_choose(rng, c):
  k, i = motionrft_choices(rng, c.num_steps, c.min_k)
  return Choice(i, jnp.arange(c.num_steps) == k, i, k)


def _drtune_check(c):
  if c.k is not None and c.k > c.train_span:
    raise ValueError(f"FinetuneConfig.k: DRTune needs k <= t_train={c.train_span}, found {c.k}")
  if c.reward_input != "x0_hat":
    raise ValueError(
      f"FinetuneConfig.reward_input: DRTune scores x0_hat at i_min, expected 'x0_hat', found {c.reward_input!r}"
    )


# The methods, one row each. A new method is one row here (plus a FinetuneConfig field if it needs a new
# hyper-parameter); configs, the builders, the benchmark and the launchers read the table.
METHODS: dict[str, StepPolicy] = {
  # EasyTune: each of the last K steps is its own loss at a stopped input, scored step-aware, applied at once.
  "easytune": StepPolicy(
    "EasyTune",
    span=lambda c: c.num_grad_steps,
    sg_every_input=True,
    scores="step",
    per_step_updates=True,
    default_k=lambda c: c.num_steps,
    uses=("k",),
  ),
  # DRaFT-K: backprop through the last K steps into R(x_0).
  "draft": StepPolicy("DRaFT", span=lambda c: c.num_grad_steps, choose=_draft_choose, uses=("k",)),
  # ReFL: one step with gradient at i_stop ~ U{T-M..T-1}, scored at its x0_hat.
  "refl": StepPolicy("ReFL", span=lambda c: 1, choose=_refl_choose, scores="step", uses=("m",)),
  # AlignProp: all T steps, a Bernoulli(p) mask of steps run the denoiser with gradient, R(x_0).
  "alignprop": StepPolicy(
    "AlignProp",
    span=lambda c: c.num_steps,
    choose=_alignprop_choose,
    masked=True,
    uses=("p",),
  ),
  # DRTune: sg at every denoiser input, K evenly spaced training steps, scored at x0_hat of i_min.
  "drtune": StepPolicy(
    "DRTune",
    span=lambda c: c.num_steps,
    choose=_drtune_choose,
    masked=True,
    sg_every_input=True,
    scores="step",
    default_k=lambda c: min(5, c.train_span),
    uses=("k", "m", "t_train"),
    check=_drtune_check,
  ),
  # MotionRFT (its flow-matching fine-tuning): a random k ~ U{min_k..T}, steps before k without gradient, then ONE
  # step with gradient from the stopped x_{t_k} whose clean estimate is scored: on a flow, x0_hat = x_t - t v is the
  # official "one Euler jump to the end". offset reports k (k = T: a zero-gradient update, as the official).
  "motionrft": StepPolicy(
    "MotionRFT",
    span=lambda c: 1,
    choose=_motionrft_choose,
    masked=True,
    scores="step",
    uses=("min_k",),
  ),
}
