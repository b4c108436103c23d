"""The benchmark (easytune_jax/bench/benchmark.py and its parts) on the shared tiny trained pipeline: JSON schema,
finite and positive figures, outputs on disk, and EasyTune's compiled memory flat in T while DRaFT-T grows."""

import json
import math

import numpy as np
import pytest

from easytune_jax.bench.benchmark import refresh, run_benchmark
from easytune_jax.bench.config import BenchmarkConfig, finetune_config
from easytune_jax.bench.report import write_outputs
from easytune_jax.bench.speed import time_to_gain
from easytune_jax.bench.variants import Variant, parse_variant
from easytune_jax.configs.benchmark import get_config


def _finite(x):
  return isinstance(x, (int, float)) and math.isfinite(x)


@pytest.fixture(scope="module")
def result(tiny_pipeline, tmp_path_factory):
  cfg = BenchmarkConfig(
    memory_variants=("easytune", "draft-1", "draft-T", "draft-T+remat", "draft-10"),
    memory_steps=(4, 8),
    speed_variants=("easytune", "draft-T"),
    speed_steps=4,
    batch_size=4,
    speed_repeats=2,
    budget_seconds=None,
    budget_trajectories=3,
    curve_points=1,
    speed_seeds=2,
    heldout_size=4,
    eval_batch_size=4,
  )
  p = tiny_pipeline
  res = run_benchmark(cfg, p.generator, p.reward, p.data, p.evaluator)
  out = tmp_path_factory.mktemp("bench")
  paths = write_outputs(res, str(out))
  return res, paths


def _rec(res, name, T):
  hits = [r for r in res["records"] if r["variant"] == name and r["T"] == T]
  assert len(hits) == 1, (name, T, [(r["variant"], r["T"]) for r in res["records"]])
  return hits[0]


def test_schema_and_figures(result):
  res, paths = result
  m = res["machine"]
  for k in ("jax_version", "backend", "device_kind", "cpu_count"):
    assert m[k], k
  # draft-10 does not apply at T <= 8: skipped, every other variant x T present once.
  names = {(r["variant"], r["T"]) for r in res["records"]}
  assert names == {(n, T) for n in ("EasyTune", "DRaFT-1", "DRaFT-T", "DRaFT-T+remat") for T in (4, 8)}
  for r in res["records"]:
    assert r["K"] == {"EasyTune": r["T"], "DRaFT-1": 1, "DRaFT-T": r["T"], "DRaFT-T+remat": r["T"]}[r["variant"]]
    for part in ("memory", "sampling_memory"):
      for k in ("temp", "argument", "output", "total"):
        assert isinstance(r[part][k], int) and r[part][k] > 0, (r["variant"], part, k)
    assert r["additional_memory"]["total"] == r["memory"]["total"] - r["sampling_memory"]["total"]
    assert r["additional_memory"]["temp"] == r["memory"]["temp"] - r["sampling_memory"]["temp"]
    assert r["peak_rss_bytes"] > 0
    assert r["device_peak_bytes"] is None or r["device_peak_bytes"] > 0
  for name in ("EasyTune", "DRaFT-T"):
    r = _rec(res, name, 4)
    s = r["speed"]
    for k in ("seconds_per_trajectory", "seconds_per_update", "train_seconds", "compile_seconds"):
      assert _finite(s[k]) and s[k] > 0, (name, k)
    assert s["trajectories"] == 3 and all(run["trajectories"] == 3 for run in s["runs"])  # a trajectory budget
    assert s["updates"] == s["trajectories"] * s["updates_per_trajectory"]
    assert s["updates_per_trajectory"] == (4 if name == "EasyTune" else 1)
    assert math.isclose(s["seconds_per_update"] * s["updates_per_trajectory"], s["seconds_per_trajectory"])
    for k in ("base_reward", "final_reward", "reward_gain", "reward_gain_per_second"):
      assert _finite(s[k]), (name, k)
    assert math.isclose(s["reward_gain"], s["final_reward"] - s["base_reward"], abs_tol=1e-9)
    assert s["base_reward"] == res["base"]["heldout_reward"]
    # Two budgeted runs (seeds 0, 1); the record holds their means and standard deviations.
    assert [run["seed"] for run in s["runs"]] == [0, 1] and s["curve"] == s["runs"][0]["curve"]
    for k in ("final_reward", "reward_gain", "reward_gain_per_second", "peak_gain_per_second"):
      vals = [run[k] for run in s["runs"]]
      assert math.isclose(s[k], np.mean(vals), rel_tol=1e-9, abs_tol=1e-12), (name, k)
    assert math.isclose(
      s["reward_gain_per_second_std"],
      np.std([run["reward_gain_per_second"] for run in s["runs"]], ddof=1),
      abs_tol=1e-12,
    )
    for run in s["runs"]:
      c = run["curve"]
      assert len(c["seconds"]) == len(c["reward"]) >= 2 and c["seconds"][0] == 0.0
      assert c["seconds"] == sorted(c["seconds"]) and c["reward"][-1] == run["final_reward"]
      assert math.isclose(run["reward_gain_per_second"], run["reward_gain"] / run["train_seconds"])
      assert math.isclose(
        run["peak_gain_per_second"], max((r - c["reward"][0]) / t for t, r in zip(c["seconds"], c["reward"]) if t > 0)
      )
      assert run["peak_gain_per_second"] >= run["reward_gain_per_second"] - 1e-12
    a = r["alignment"]
    for k in ("R_precision_top_1", "R_precision_top_3", "MM_Dist", "FID", "Diversity", "MM_Dist_relative_improvement"):
      assert _finite(a[k]), (name, k)
    assert a["MM_Dist"] > 0 and a["FID"] >= 0 and 0 <= a["R_precision_top_1"] <= a["R_precision_top_3"] <= 1
    base_mm = res["base"]["eval"]["MM_Dist"]
    assert math.isclose(a["MM_Dist_relative_improvement"], (base_mm - a["MM_Dist"]) / base_mm)
  summ = res["summary"]
  # Fine-tuning raises the held-out reward within the budget, so a target (half the best mean gain) exists and
  # the method with that gain reaches it in at least one run.
  gains = {n: _rec(res, n, 4)["speed"]["reward_gain"] for n in ("EasyTune", "DRaFT-T")}
  assert max(gains.values()) > 0, gains
  assert math.isclose(summ["target_gain"], 0.5 * max(gains.values()))
  for n in ("EasyTune", "DRaFT-T"):
    ts = [
      time_to_gain(run["curve"]["seconds"], run["curve"]["reward"], summ["target_gain"])
      for run in _rec(res, n, 4)["speed"]["runs"]
    ]
    assert summ["seconds_to_target_gain_per_run"][n] == ts
    assert summ["seconds_to_target_gain"][n] == (None if None in ts else pytest.approx(np.mean(ts)))
  leader = max(gains, key=gains.get)
  assert any(t is not None and t > 0 for t in summ["seconds_to_target_gain_per_run"][leader]), summ
  # The file on disk is the same result, strictly JSON (no NaN), with the markdown and both plots.
  on_disk = json.loads(open(paths["json"]).read(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
  assert on_disk["summary"] == json.loads(json.dumps(res["summary"]))
  md = open(paths["md"]).read()
  assert "| EasyTune | 8 | 8 |" in md and "DRaFT-T+remat" in md and "MM-Dist" in md
  for k in ("memory_png", "reward_png"):
    assert open(paths[k], "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_memory_scaling(result):
  """XLA memory_analysis is deterministic: EasyTune's temp memory does not grow with T (one scan with the
  gradient inside the body), DRaFT-T's stores residuals per differentiated step, remat shrinks them."""
  res, _ = result
  e4, e8 = _rec(res, "EasyTune", 4)["memory"], _rec(res, "EasyTune", 8)["memory"]
  d4, d8 = _rec(res, "DRaFT-T", 4)["memory"], _rec(res, "DRaFT-T", 8)["memory"]
  r8 = _rec(res, "DRaFT-T+remat", 8)["memory"]
  assert abs(e8["temp"] - e4["temp"]) <= 0.1 * e4["temp"], (e4, e8)
  assert d8["temp"] - d4["temp"] > 0.5 * (d4["temp"] - _rec(res, "DRaFT-1", 4)["memory"]["temp"]), (d4, d8)
  assert d8["temp"] > 1.2 * d4["temp"], (d4, d8)
  assert r8["temp"] < d8["temp"]
  s = res["summary"]
  assert s["easytune_memory_largest_over_smallest_T"]["T"] == [4, 8]
  assert math.isclose(
    s["easytune_over_draft_T_additional"]["8"],
    _rec(res, "EasyTune", 8)["additional_memory"]["total"] / _rec(res, "DRaFT-T", 8)["additional_memory"]["total"],
  )


def test_time_to_gain_interpolates_the_first_crossing():
  secs, rew = [0.0, 2.0, 4.0, 6.0], [0.5, 0.6, 0.8, 0.7]
  # level 0.7 is crossed between 2 s (0.6) and 4 s (0.8): halfway -> 3 s; the later dip does not matter.
  assert math.isclose(time_to_gain(secs, rew, 0.2), 3.0)
  assert math.isclose(time_to_gain(secs, rew, 0.05), 1.0)
  assert math.isclose(time_to_gain(secs, rew, 0.25), 3.5)
  assert time_to_gain(secs, rew, 0.31) is None
  with pytest.raises(ValueError, match="target_gain: expected > 0 or None, found -0.1"):
    BenchmarkConfig(target_gain=-0.1)


def test_variant_parsing_and_config_errors():
  assert parse_variant("draft-10+remat") == Variant("draft", 10, True)
  assert parse_variant("draft-T").name == "DRaFT-T"
  assert parse_variant("alignprop+remat").name == "AlignProp+remat"
  v = parse_variant("draft-1+remat@1e-4")
  assert v == Variant("draft", 1, True, 1e-4) and v.family == "DRaFT-1+remat"
  assert finetune_config(BenchmarkConfig(), v, 10).optim.learning_rate == 1e-4
  assert finetune_config(BenchmarkConfig(learning_rate=3e-5), parse_variant("refl"), 10).optim.learning_rate == 3e-5
  v = parse_variant("easytune-10+online")
  assert v.name == "EasyTune-10+online" and not v.applies(8) and v.applies(10)
  assert finetune_config(BenchmarkConfig(), v, 50).num_grad_steps == 10
  k_of = lambda spec: finetune_config(BenchmarkConfig(), parse_variant(spec), 50).num_grad_steps
  assert k_of("easytune-T") == k_of("easytune") == 50 and k_of("drtune") == 5 and k_of("drtune-3") == 3
  with pytest.raises(ValueError, match="expected 'easytune-<K>' with K >= 1 or 'easytune-T', found K='0'"):
    parse_variant("easytune-0")
  v = parse_variant("easytune+online@2e-5")
  assert v.name == "EasyTune+online@2e-05" and v.family == "EasyTune+online"
  assert finetune_config(BenchmarkConfig(), v, 10).sampler_variant == "online"
  with pytest.raises(ValueError, match="'\\+online' is a per-step method's sampler variant, not for 'refl'"):
    parse_variant("refl+online")
  with pytest.raises(ValueError, match="'easytune@fast'.*rate > 0, found 'fast'"):
    parse_variant("easytune@fast")
  with pytest.raises(ValueError, match="easytune_jax/bench/variants.py.*'draft-x'.*K='x'"):
    parse_variant("draft-x")
  with pytest.raises(ValueError, match="expected a method in"):
    parse_variant("dpo")
  with pytest.raises(ValueError, match="'\\+remat' does not apply"):
    parse_variant("easytune+remat")
  with pytest.raises(ValueError, match="'refl' takes no k"):
    parse_variant("refl-3")
  v = parse_variant("draft")  # the row's default depth (K = 1)
  assert v.name == "DRaFT" and finetune_config(BenchmarkConfig(), v, 10).num_grad_steps == 1
  assert parse_variant("draft-T").resolve_k(7) == 7
  with pytest.raises(ValueError, match="budget_seconds or budget_trajectories"):
    BenchmarkConfig(budget_seconds=None, budget_trajectories=None)
  with pytest.raises(ValueError, match="expected 'tiny' or 'paper', found 'huge'"):
    get_config("huge")
  assert get_config("paper").speed_steps == 50


def test_every_method_gets_a_floor_that_bounds_it(tiny_pipeline):
  """Every method gets a floor (one dispatch + its expected work, counted from its row of the method table, times
  primitives timed inside a compiled loop) and its trajectories take at least that long on average. The
  tolerance (0.8) is for timer noise on a 2-core CI machine; a floor from primitives timed one jitted call each
  sat at 0.57 x EasyTune's measured time (fresh-clone CI, 2026-12-03) and fails this test."""
  from easytune_jax import finetune

  cfg = BenchmarkConfig(
    speed_variants=tuple(finetune.METHODS) + ("draft-T",),
    speed_steps=4,
    batch_size=4,
    speed_repeats=3,
    budget_seconds=None,
    budget_trajectories=12,  # the mean over 12 draws of a random method against its expected work
    curve_points=1,
    heldout_size=4,
    eval_batch_size=4,
  )
  p = tiny_pipeline
  res = run_benchmark(cfg, p.generator, p.reward, p.data, memory=False)
  floor = res["base"]["floor"]
  for prim in ("nograd_step", "grad_step", "reward_grad", "reward_eval", "optimizer_update"):
    assert _finite(floor[f"{prim}_seconds"]) and floor[f"{prim}_seconds"] >= 0, prim
  assert floor["grad_step_seconds"] > floor["nograd_step_seconds"] > 0
  ratios = {r["variant"]: r["speed"]["floor"]["over_floor_with_optimizer"] for r in res["records"]}
  assert set(ratios) == {finetune.METHODS[m].label for m in finetune.METHODS} | {"DRaFT-T"}, ratios
  assert all(_finite(v) and v >= 0.8 for v in ratios.values()), ratios
  # A stored result re-rendered (`refresh`, launch/benchmark.py --from_json) derives the same floors and summary.
  stored = json.loads(json.dumps(res))
  again = refresh(json.loads(json.dumps(res)))
  assert [r["speed"]["floor"] for r in again["records"]] == [r["speed"]["floor"] for r in stored["records"]]
  assert again["summary"] == stored["summary"]


def test_selection_keeps_the_best_checkpoint_made_within_each_budget():
  """Selection: the best val score among the checkpoints offered up to a budget (the base included), fixed when the
  run's clock reaches it; later, better checkpoints do not change an earlier budget's choice."""
  import jax.numpy as jnp

  from easytune_jax.bench.speed import Selection

  score = lambda p: (float(p["s"]), {"R_precision_top_1": float(p["s"])})  # noqa: E731
  sel = Selection(score, (3.0, 5.0, 8.0), {"s": jnp.float32(0.1)}, 0.70)
  for t, s, reward in [(2.0, 0.5, 0.72), (3.1, 0.3, 0.75), (5.2, 0.4, 0.76), (7.0, 0.9, 0.8)]:
    sel.offer({"s": jnp.float32(s)}, t, reward)
    sel.close(t)
  sel.close(float("inf"))
  got = [(c["budget"], c["seconds"], c["val_score"], c["heldout_reward"], c["base"]) for c, _ in sel.chosen]
  assert got == [(3.0, 2.0, 0.5, 0.72, False), (5.0, 2.0, 0.5, 0.72, False), (8.0, 7.0, pytest.approx(0.9), 0.8, False)]
  assert [float(p["s"]) for _, p in sel.chosen] == [0.5, 0.5, pytest.approx(0.9)]
  worse = Selection(score, (1.0,), {"s": jnp.float32(0.6)}, 0.70)
  worse.offer({"s": jnp.float32(0.2)}, 1.5, 0.9)
  worse.close(1.5)
  assert worse.chosen[0][0]["base"] and worse.chosen[0][0]["seconds"] == 0.0  # the base was better on val
  with pytest.raises(ValueError, match=r"select_budgets: expected seconds in \(0, budget_seconds=2.0\]"):
    BenchmarkConfig(budget_seconds=2.0, select_budgets=(1.0, 3.0))
  with pytest.raises(ValueError, match="select_metric: expected one of"):
    BenchmarkConfig(select_metric="FID")


def test_equal_time_val_selected_alignment(tiny_pipeline, tmp_path):
  cfg = BenchmarkConfig(
    speed_variants=("easytune", "draft-1@1e-4", "draft-1@4e-4"),
    speed_steps=4,
    batch_size=4,
    speed_repeats=1,
    budget_seconds=2.0,
    select_budgets=(1.0, 2.0),
    select_metric="MM_Dist",
    curve_points=1,
    speed_seeds=2,
    heldout_size=4,
    eval_batch_size=4,
    floor=False,
  )
  p = tiny_pipeline
  res = run_benchmark(cfg, p.generator, p.reward, p.data, p.evaluator, memory=False)
  for r in res["records"]:
    s = r["speed"]
    assert [c["budget"] for c in s["selected"]] == [1.0, 2.0]
    per_traj = max(s["timing_runs"])
    for run in s["runs"]:
      for c in run["selected"]:
        assert c["seconds"] <= c["budget"] + 3 * per_traj  # kept within the budget (+ the crossing trajectory)
        assert c["val_score"] == -c["val"]["MM_Dist"] and _finite(c["test"]["MM_Dist"])
        assert c["seconds"] in run["curve"]["seconds"]  # one of the run's held-out evaluations
      assert run["selected"][1]["val_score"] >= run["selected"][0]["val_score"]  # more time, more candidates
    for c in s["selected"]:
      vals = [run["selected"][[1.0, 2.0].index(c["budget"])]["test"]["MM_Dist"] for run in s["runs"]]
      assert math.isclose(c["test"]["MM_Dist"], np.mean(vals)) and c["runs"] == 2
  chosen = res["summary"]["selected_variant_per_method"]
  assert set(chosen) == {"1.0", "2.0"} and set(chosen["1.0"]) == {"EasyTune", "DRaFT-1"}
  md = open(write_outputs(res, str(tmp_path))["md"]).read()
  assert "## Equal-time alignment, checkpoints chosen on the val split by MM_Dist" in md
