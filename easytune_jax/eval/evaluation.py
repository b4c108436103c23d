"""The standard text-to-motion evaluation protocol (docs/humanml3d_format.md#evaluation-protocol; MLD / MotionLCM
/ EasyTune ``t2m_eval``).

:func:`evaluate` runs ``replications`` independent passes over the test split. One pass:

1. every test entry, in dataset (length-sorted) order, gets a random caption and a unit-length crop
   (:func:`easytune_jax.data.batching.make_batch`: coin 2/3 single, 1/3 double, inclusive random start),
   normalised with the dataset Mean/Std and zero-padded in normalised space
   (docs/humanml3d_format.md#dataset-construction);
2. the generator makes ONE motion per caption with exactly the crop length, in dataset-normalised space,
   called on fixed ``[batch_size]`` rows (the last batch is padded by repeating its last row) so a jitted
   generator never retraces;
3. both are renormalised for the evaluator from dataset-space zero padding
   (docs/humanml3d_format.md#evaluator-motion-input, inside :meth:`Evaluator.embed_motion`) and embedded, with
   the text of the caption that conditioned the generator;
4. metrics: R-precision top-1/2/3 and Matching score (MM-Dist) on groups of ``r_precision_group`` after one
   common permutation (docs/humanml3d_format.md#r-precision); FID of generated vs real embeddings of the same
   pass (docs/humanml3d_format.md#fid); Diversity over ``diversity_times`` pairs
   (docs/humanml3d_format.md#diversity); the same R-precision / MM-Dist / Diversity for the real motions
   (``gt_*``, the "Real" row); ``gt_FID``: real embeddings of this pass vs a SECOND independent pass of the
   real loader (T2M's "Real motion" FID, ≈ 0.002 with the official evaluator);
5. MultiModality (docs/humanml3d_format.md#multimodality): ``mm_num_samples`` entries, each with its own
   caption and crop, ``mm_num_repeats`` generations per caption, mean distance over ``mm_num_times`` shared
   index pairs.

Counts are clamped for small test sets (fewer entries than 300 diversity pairs or 100 MM texts), with a warning
recorded in ``results["warnings"]`` and the actual counts in ``results["counts"]``. Each replication has fresh
randomness: numpy ``default_rng([seed, r])`` for captions/crops/permutation/draws and
``fold_in(PRNGKey(seed), r)`` for generator noise. Reported: mean and 95 % CI ``1.96 * std / sqrt(n)``
(:func:`metrics.summarize_replications`).

Kept apart from the evaluator metrics: the reward model's own score (``reward_fn``) on generated and real
motion, and physical plausibility (foot skating, jitter, floor penetration) on joints recovered with
``recover_from_ric`` from de-normalised features.

The test loader's pass and the generator calls are `eval/samples.py`; tables and files of the results
(eval.json / eval.md) are `eval/report.py`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from absl import logging

from easytune_jax import metrics as M
from easytune_jax.bundles.evaluator import Evaluator
from easytune_jax.bundles.generator import Generator, generator_fn, resolve_sampler
from easytune_jax.bundles.guided import GuidedGenerator, with_guidance
from easytune_jax.core.guidance import GuidanceConfig
from easytune_jax.data.humanml3d import MotionDataset
from easytune_jax.eval.samples import GenerateFn, TestSamples, draw_test_samples, physical_metrics, run_generator

EMBEDDING_METRICS = (
  "R_precision_top_1",
  "R_precision_top_2",
  "R_precision_top_3",
  "Matching_score",
  "FID",
  "Diversity",
)


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
  """launch/evaluate.py's settings: the protocol (:func:`evaluate`) and the generators' sampler.

  Attributes:
    split: the dataset split evaluated; replications: independent passes (mean ± 1.96 std / sqrt(n));
    quick: few replications, no MultiModality; mm: run MultiModality; batch_size: generator batch size;
    guidance_scale, num_steps: CFG weight w and DDIM steps of every generator; None (the default): each
      generator's own (`Generator.sampler_defaults`, bundles/generator.py `resolve_sampler`); seed: evaluation seed.
    guidance: reward-guided sampling of every generator (core/guidance.py; the default: off); reward: the guiding
      reward (a `rewards.registry` spec; its 'spm' term needs a reward model folder); reward_text: the text encoder
      of an embedding-input reward (`bundles.task.load_task`).
  """

  split: str = "test"
  replications: int = 20
  quick: bool = False
  mm: bool = True
  batch_size: int = 32
  guidance_scale: float | None = None
  num_steps: int | None = None
  seed: int = 0
  guidance: GuidanceConfig = GuidanceConfig()
  reward: str = "spm"
  reward_text: str = ""

  def __post_init__(self):
    checks = (
      ("replications", self.replications >= 1, ">= 1"),
      ("batch_size", self.batch_size >= 1, ">= 1"),
      ("num_steps", self.num_steps is None or self.num_steps >= 1, ">= 1 or none (each generator's own)"),
      (
        "guidance_scale",
        self.guidance_scale is None or self.guidance_scale >= 0,
        ">= 0 or none (each generator's own)",
      ),
    )
    for name, ok, expected in checks:
      if not ok:
        raise ValueError(f"EvaluateConfig.{name}: expected {expected}, found {getattr(self, name)}")


# --------------------------------------------------------------------------------------------- protocol
def _clamp(name: str, wanted: int, available: int, warnings: list) -> int:
  if available < wanted:
    msg = f"{name}: clamped from {wanted} to {available} (only {available} available)"
    if msg not in warnings:
      warnings.append(msg)
      logging.warning("evaluate: %s; numbers are not comparable to the standard protocol", msg)
    return available
  return wanted


def evaluate(
  generate_fn: GenerateFn,
  evaluator: Evaluator,
  dataset: MotionDataset,
  *,
  replications: int = 20,
  batch_size: int = 32,
  max_length: int | None = None,
  mm: bool = True,
  mm_num_samples: int = 100,
  mm_num_repeats: int = 30,
  mm_num_times: int = 10,
  diversity_times: int = 300,
  r_precision_group: int = 32,
  seed: int = 0,
  quick: bool = False,
  reward_fn: Callable[[np.ndarray, list, np.ndarray], Any] | None = None,
  physical: bool = True,
  quick_replications: int = 2,
  unit_length: int = 4,
  method: str = "generated",
  progress: bool = False,
) -> dict:
  """Runs the protocol of the module docstring.

  Args:
    generate_fn: ``(captions [B] str, pos_tokens [B] lists of 'word/POS', lengths int32 [B], rng key) ->
      x_norm [B, L, D]`` dataset-normalised features, L >= max(lengths) (frames beyond a length ignored).
      Called with B = ``batch_size`` always. May take a keyword ``reference`` (the real crops).
    evaluator: an :class:`Evaluator`; its dataset Mean/Std must equal ``dataset``'s.
    dataset: the TEST split (:func:`load_dataset`), its Mean/Std normalise the real motion.
    replications: independent passes (20 standard). ``quick``: ``min(replications, quick_replications)``
      passes, no MultiModality (validation during training).
    max_length: padded frame window (default ``evaluator.max_length``, 196). Crops longer than it get a
      random window (only for generators trained on shorter windows; then not the standard protocol).
    mm, mm_num_samples, mm_num_repeats, mm_num_times: MultiModality and its counts (100 / 30 / 10).
    diversity_times: diversity pairs (300). r_precision_group: R-precision group (32).
    reward_fn: optional ``(x_norm [B, L, D], captions, lengths) -> [B]`` reward; reported separately.
    physical: foot skating / jitter / floor penetration of generated and real motion (HumanML3D only).
  Returns:
    dict: ``metrics`` {name: [mean, ci95]} (names of docs/humanml3d_format.md#replications plus ``gt_FID``),
    ``replications`` (per-pass values), ``reward`` and ``physical`` (same format, separate), ``counts``,
    ``warnings``, ``settings``, ``seconds``, ``method``.
  """
  t_start = time.time()
  evaluator.check_dataset_stats(dataset.mean, dataset.std, "evaluate")
  max_length = evaluator.max_length if max_length is None else max_length
  if max_length > evaluator.max_length or max_length % unit_length:
    raise ValueError(
      f"evaluate: max_length expected a multiple of {unit_length} <= evaluator.max_length="
      f"{evaluator.max_length}, found {max_length}"
    )
  if max_length < 196:
    logging.warning(
      "evaluate: max_length=%d < 196: longer crops get a random %d-frame window (not the standard protocol)",
      max_length,
      max_length,
    )
  if quick:
    replications, mm = min(replications, quick_replications), False
  n = len(dataset)
  if n < 2:
    raise ValueError(f"evaluate: test split {dataset.root!r}/{dataset.split!r} has {n} entries; expected >= 2")
  if replications < 1:
    raise ValueError(f"evaluate: replications expected >= 1, found {replications}")
  physical = physical and dataset.info.joints_num == 22
  warnings: list = []
  group = _clamp("r_precision_group", r_precision_group, n, warnings)
  div_times = _clamp("diversity_times", diversity_times, n, warnings)
  mm_samples = _clamp("mm_num_samples", mm_num_samples, n, warnings) if mm else 0
  mm_times = _clamp("mm_num_times", mm_num_times, mm_num_repeats, warnings) if mm else 0
  root_key = jax.random.PRNGKey(seed)
  dim = dataset.info.dim
  reps, reward_reps, phys_reps = [], [], []
  for r in range(replications):
    rng = np.random.default_rng([seed, r])
    key = jax.random.fold_in(root_key, r)
    gt = draw_test_samples(dataset, rng, max_length=max_length, unit_length=unit_length)
    gen = run_generator(generate_fn, gt, jax.random.fold_in(key, 0), batch_size, max_length, dim)
    t_emb = evaluator.embed_text(gt.pos_tokens)
    gt_emb = evaluator.embed_motion(gt.x_norm, gt.lengths)
    gen_emb = evaluator.embed_motion(gen, gt.lengths)
    perm = rng.permutation(n)
    vals = {k: float(v) for k, v in M.r_precision(t_emb, gen_emb, perm, group_size=group).items()}
    vals.update({f"gt_{k}": float(v) for k, v in M.r_precision(t_emb, gt_emb, perm, group_size=group).items()})
    vals["FID"] = M.fid(gen_emb, gt_emb)
    vals["Diversity"] = float(M.diversity(gen_emb, M.diversity_indices(n, rng, div_times)))
    vals["gt_Diversity"] = float(M.diversity(gt_emb, M.diversity_indices(n, rng, div_times)))
    second = draw_test_samples(dataset, rng, max_length=max_length, unit_length=unit_length)
    vals["gt_FID"] = M.fid(evaluator.embed_motion(second.x_norm, second.lengths), gt_emb)
    if mm:
      vals["MultiModality"] = _multimodality(
        generate_fn,
        evaluator,
        dataset,
        rng,
        jax.random.fold_in(key, 1),
        mm_samples,
        mm_num_repeats,
        mm_times,
        batch_size,
        max_length,
        unit_length,
      )
    reps.append(vals)
    if reward_fn is not None:
      reward_reps.append(
        {
          "reward": _reward_mean(reward_fn, gen, gt, batch_size),
          "gt_reward": _reward_mean(reward_fn, gt.x_norm, gt, batch_size),
        }
      )
    if physical:
      pg = physical_metrics(gen, gt.lengths, dataset.mean, dataset.std, batch_size)
      pr = physical_metrics(gt.x_norm, gt.lengths, dataset.mean, dataset.std, batch_size)
      phys_reps.append({**pg, **{f"gt_{k}": v for k, v in pr.items()}})
    if progress:  # one short line; every value is in the returned `replications`
      logging.info(
        "evaluate %s: replication %d/%d: R@1 %.3f, R@3 %.3f, MM-Dist %.2f, FID %.2f (%.0f s)",
        method,
        r + 1,
        replications,
        vals["R_precision_top_1"],
        vals["R_precision_top_3"],
        vals["Matching_score"],
        vals["FID"],
        time.time() - t_start,
      )
  lists = lambda d: {k: [float(v[0]), float(v[1])] for k, v in d.items()}
  results = {
    "method": method,
    "metrics": lists(M.summarize_replications(reps)),
    "replications": reps,
    "reward": lists(M.summarize_replications(reward_reps)) if reward_reps else {},
    "reward_replications": reward_reps,
    "physical": lists(M.summarize_replications(phys_reps)) if phys_reps else {},
    "physical_replications": phys_reps,
    "counts": {
      "test_entries": n,
      "replications": replications,
      "r_precision_group": group,
      "r_precision_groups": n // group,
      "diversity_times": div_times,
      "mm_num_samples": mm_samples,
      "mm_num_repeats": mm_num_repeats if mm else 0,
      "mm_num_times": mm_times,
    },
    "warnings": warnings,
    "settings": {
      "batch_size": batch_size,
      "max_length": max_length,
      "seed": seed,
      "quick": quick,
      "evaluator": evaluator.name,
      "dataset": f"{dataset.root}:{dataset.split}",
    },
  }
  results["seconds"] = time.time() - t_start
  return results


def evaluate_generator(
  gen: Generator,
  evaluator: Evaluator,
  dataset: MotionDataset,
  config: EvaluateConfig = EvaluateConfig(),
  method: str = "generated",
  progress: bool = False,
  reward_workdir: str | None = None,
  **kwargs,
) -> dict:
  """:func:`evaluate` of a Generator bundle with `config`'s protocol (what launch/evaluate.py runs per generator).

  The sampler is `config.num_steps` / `config.guidance_scale` where set, else the generator's own
  (bundles/generator.py `resolve_sampler`, logged); the values used and where they come from are recorded in
  ``results["settings"]["sampler"]`` (eval.json) and in eval.md's counts. With `config.guidance` on, the
  generator is sampled with reward guidance by `config.reward` (its 'spm' term: the reward model of
  `reward_workdir`), recorded in ``results["settings"]["guidance"]``; a `GuidedGenerator` brings its own.
  `kwargs` go to :func:`evaluate`.
  """
  if not isinstance(gen, GuidedGenerator):
    gen = with_guidance(gen, config.guidance, reward_workdir, config.reward, config.reward_text, f"generator {method}")
  sampler = resolve_sampler(gen, config.num_steps, config.guidance_scale, name=method)
  res = evaluate(
    generator_fn(gen, sampler.guidance_scale, sampler.num_steps),
    evaluator,
    dataset,
    replications=config.replications,
    batch_size=config.batch_size,
    max_length=min(gen.max_length, evaluator.max_length),
    mm=config.mm,
    seed=config.seed,
    quick=config.quick,
    method=method,
    progress=progress,
    **kwargs,
  )
  res["settings"]["sampler"] = sampler.to_dict()
  if isinstance(gen, GuidedGenerator) and gen.guidance.enabled:
    res["settings"]["guidance"] = {**dataclasses.asdict(gen.guidance), "reward": _reward_spec(gen)}
  return res


def _reward_spec(gen: GuidedGenerator) -> str:
  return ",".join(f"{name}:{weight:g}" for name, weight in zip(gen.task.reward_fn.names, gen.task.reward_fn.weights))


def _multimodality(
  generate_fn, evaluator, dataset, rng, key, num_samples, repeats, times, batch_size, max_length, unit_length
) -> float:
  """MultiModality (docs/humanml3d_format.md#multimodality): ``num_samples`` entries (own caption and crop),
  ``repeats`` generations each, all requests packed into fixed ``batch_size`` generator calls; mean distance
  over ``times`` shared index pairs."""
  chosen = rng.choice(len(dataset), num_samples, replace=False)
  items = draw_test_samples(dataset, rng, indices=chosen, max_length=max_length, unit_length=unit_length)
  rep = np.repeat(np.arange(num_samples), repeats)
  req = TestSamples(
    items.x_norm[rep],
    items.lengths[rep],
    [items.captions[i] for i in rep],
    [items.pos_tokens[i] for i in rep],
    [items.names[i] for i in rep],
  )
  gen = run_generator(generate_fn, req, key, batch_size, max_length, dataset.info.dim)
  emb = evaluator.embed_motion(gen, req.lengths).reshape(num_samples, repeats, -1)
  i1 = rng.choice(repeats, times, replace=False)
  i2 = rng.choice(repeats, times, replace=False)
  return float(M.multimodality(emb, (i1, i2)))


def _reward_mean(reward_fn, x_norm, samples: TestSamples, batch_size: int) -> float:
  total, n = 0.0, x_norm.shape[0]
  for s in range(0, n, batch_size):
    e = min(s + batch_size, n)
    take = np.concatenate([np.arange(s, e), np.full(batch_size - (e - s), e - 1)])
    r = np.asarray(reward_fn(x_norm[take], [samples.captions[i] for i in take], samples.lengths[take]), np.float64)
    if r.shape != (batch_size,) or not np.all(np.isfinite(r)):
      raise ValueError(f"reward_fn: expected finite [{batch_size}] rewards, found shape {r.shape}")
    total += float(r[: e - s].sum())
  return total / n
