"""What the benchmark measures: `BenchmarkConfig` (variants, T values, budgets, seeds; defaults: the tiny CPU
setting, 'paper' in easytune_jax/configs/benchmark.py) and the `FinetuneConfig` of a variant at T
(`finetune_config`)."""

from __future__ import annotations

import dataclasses
import json

from easytune_jax import finetune
from easytune_jax.bench.variants import ALL_MEMORY_VARIANTS, ALL_SPEED_VARIANTS, Variant, parse_variant
from easytune_jax.core import sampling
from easytune_jax.core.optim import OptimConfig

_WHERE = __name__.replace(".", "/") + ".py"


# Val-split metrics a checkpoint can be selected by (higher R@1, lower MM-Dist is better).
SELECT_METRICS = (None, "R_precision_top_1", "MM_Dist")


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig:
  """What to measure. Defaults: the tiny CPU config (a few minutes on 2 cores).

  memory_steps: the T values of the memory sweep; speed_steps: the T of the speed / alignment runs.
  budget_seconds / budget_trajectories: the fixed training budget per method (whichever ends first;
  None = unbounded, at least one must be set). curve_points: held-out evaluations between start and end.
  target_gain: the held-out reward gain whose reaching time is compared across methods (`time_to_gain`);
  None = half the largest final gain among the speed variants (so every good method reaches it).
  speed_seeds: independent budgeted runs per method (training batches and noise of seeds seed, seed + 1,
  ...; the held-out set is fixed): gains are reported as mean and standard deviation over them.
  grad_chunk: C of frozen EasyTune variants without their own '+chunk<C>' (1 = the sequential path).
  floor: also time the primitives of a trajectory update and each method's floor (`measure_floor`).
  floor_iterations: n of the floor's loops (each primitive runs n and 2n times in one compiled loop).
  select_metric: with an evaluator, the equal-time comparison of checkpoints chosen on the val split
  ('R_precision_top_1' or 'MM_Dist'; None = off): in every budgeted run the held-out evaluations (and one at each
  of `select_budgets`) also score the val split with the evaluator; for each budget the checkpoint with the best
  val score among those made within it (the base params included) is kept, and only those are evaluated on the
  test split. select_budgets: training seconds (each <= budget_seconds; () = budget_seconds alone).
  """

  memory_variants: tuple = ALL_MEMORY_VARIANTS
  memory_steps: tuple = (10, 50, 200)
  speed_variants: tuple = ALL_SPEED_VARIANTS
  speed_steps: int = 10
  batch_size: int = 8
  guidance_scale: float = sampling.CPU_GUIDANCE_SCALE
  learning_rate: float = 2e-4
  warmup_steps: int = 0
  speed_repeats: int = 3
  budget_seconds: float | None = 20.0
  budget_trajectories: int | None = None
  curve_points: int = 3
  target_gain: float | None = None
  speed_seeds: int = 1
  heldout_size: int = 16
  eval_batch_size: int = 16
  seed: int = 0
  grad_chunk: int = 1
  floor: bool = True
  floor_iterations: int = 8
  select_metric: str | None = None
  select_budgets: tuple = ()

  def __post_init__(self):
    for v in tuple(self.memory_variants) + tuple(self.speed_variants):
      parse_variant(v)
    if not self.memory_steps or min(self.memory_steps) < 1:
      raise ValueError(f"{_WHERE}: BenchmarkConfig.memory_steps: expected T values >= 1, found {self.memory_steps}")
    counts = {
      k: getattr(self, k)
      for k in (
        "speed_steps",
        "batch_size",
        "speed_repeats",
        "speed_seeds",
        "heldout_size",
        "grad_chunk",
        "floor_iterations",
      )
    }
    if min(counts.values()) < 1:
      raise ValueError(f"{_WHERE}: BenchmarkConfig: expected {', '.join(counts)} >= 1, found {counts}")
    if self.target_gain is not None and not self.target_gain > 0:
      raise ValueError(f"{_WHERE}: BenchmarkConfig.target_gain: expected > 0 or None, found {self.target_gain}")
    if self.budget_seconds is None and self.budget_trajectories is None:
      raise ValueError(f"{_WHERE}: BenchmarkConfig: set budget_seconds or budget_trajectories (found neither)")
    if self.budget_seconds is not None and self.budget_seconds <= 0:
      raise ValueError(f"{_WHERE}: BenchmarkConfig.budget_seconds: expected > 0, found {self.budget_seconds}")
    if self.budget_trajectories is not None and self.budget_trajectories < 1:
      raise ValueError(
        f"{_WHERE}: BenchmarkConfig.budget_trajectories: expected >= 1, found {self.budget_trajectories}"
      )

    if self.select_metric not in SELECT_METRICS:
      raise ValueError(
        f"{_WHERE}: BenchmarkConfig.select_metric: expected one of {SELECT_METRICS}, found {self.select_metric!r}"
      )
    if self.select_metric is not None and self.budget_seconds is None:
      raise ValueError(f"{_WHERE}: BenchmarkConfig.select_metric: the equal-time selection needs budget_seconds")
    if self.select_budgets and (
      self.budget_seconds is None or not all(0 < b <= self.budget_seconds for b in self.select_budgets)
    ):
      raise ValueError(
        f"{_WHERE}: BenchmarkConfig.select_budgets: expected seconds in (0, budget_seconds={self.budget_seconds}], "
        f"found {self.select_budgets}"
      )

  @property
  def budgets(self) -> tuple[float, ...]:
    """The equal-time budgets of the val-selected comparison, ascending (budget_seconds when none are given)."""
    return tuple(sorted(self.select_budgets)) if self.select_budgets else (self.budget_seconds,)

  def to_dict(self) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(self)))


def finetune_config(cfg: BenchmarkConfig, variant: Variant, T: int) -> finetune.FinetuneConfig:
  chunk = 1
  if variant.policy.per_step_updates and not variant.online:
    chunk = variant.grad_chunk or cfg.grad_chunk
  return finetune.FinetuneConfig(
    method=variant.method,
    num_steps=T,
    k=variant.resolve_k(T),
    remat=variant.remat,
    sampler_variant="online" if variant.online else "frozen",
    grad_chunk=chunk,
    guidance_scale=cfg.guidance_scale,
    optim=OptimConfig(learning_rate=variant.learning_rate or cfg.learning_rate, warmup_steps=cfg.warmup_steps),
    lora=finetune.LoraConfig(rank=variant.lora_rank or 0),
  )
