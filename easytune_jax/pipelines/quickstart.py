"""The whole pipeline in one call: data -> base generator -> reward model (SPM + SPL) -> evaluator ->
fine-tuning (EasyTune and a DRaFT-K reference) -> standard evaluation -> report with curves and animations.

Every stage writes into `<workdir>/<stage>` and resumes from its checkpoints (or is skipped when done), so
rerunning the same command continues where it stopped. `launch/quickstart.py` is the command-line front;
notebooks call `run_quickstart` or the stage functions directly.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Optional

import jax
import numpy as np
from absl import logging

from easytune_jax import finetune, viz
from easytune_jax.eval import evaluation
from easytune_jax.bundles import generator
from easytune_jax.data import synthetic
from easytune_jax.data.humanml3d import load_dataset
from easytune_jax.train import base
from easytune_jax.core.metric_writer import read_metrics
from easytune_jax.core.optim import OptimConfig
from easytune_jax.bundles.evaluator import load_trained_evaluator
from easytune_jax.train import evaluator as te
from easytune_jax.train import finetune_runner as fr
from easytune_jax.train import reward as R


@dataclasses.dataclass(frozen=True)
class QuickstartConfig:
  """Sizes of each stage. Defaults fit ~10 minutes on a 2-core CPU; `scale` multiplies every step count."""

  data_dir: Optional[str] = None          # a HumanML3D-layout folder; None writes the synthetic dataset
  num_motions: int = 1000
  max_frames: int = 64                    # longest synthetic motion: the tiny generator's 64-frame window, so a
                                          # caption never describes frames outside the window it trains on
  seed: int = 0
  base_overrides: tuple = ("vae_steps=1500", "diffusion_steps=1500")
  reward_steps: int = 1500
  spl_steps: int = 300
  evaluator_steps: int = 200
  methods: tuple = ("easytune", "draft")
  num_steps: int = 10                     # DDIM steps of fine-tuning and evaluation
  guidance_scale: float = 2.5
  trajectories: int = 24
  draft_k: int = 1                        # DRaFT-K reference (K=1 is the cheapest strong baseline)
  finetune_batch: int = 16
  learning_rate: float = 5e-5
  replications: int = 6
  num_animations: int = 3
  scale: float = 1.0

  def steps(self, n: int) -> int:
    return max(1, int(round(n * self.scale)))


def stage_data(cfg: QuickstartConfig, root: pathlib.Path) -> str:
  if cfg.data_dir:
    return cfg.data_dir
  out = root / "data"
  if not (out / "metadata.json").exists():
    synthetic.write_synthetic_dataset(str(out), num_motions=cfg.num_motions, seed=cfg.seed,
                                      max_len=cfg.max_frames)
  return str(out)


def base_config(cfg: QuickstartConfig) -> base.BaseConfig:
  """The tiny base config with `cfg.base_overrides`, each stage's steps scaled and its cosine decay stretched
  over them (the learning rate would otherwise reach 0 early)."""
  config = base.apply_overrides(base.get_config("tiny"), list(cfg.base_overrides) + [f"seed={cfg.seed}"])
  scaled = []
  for stage in ("vae", "diffusion"):
    steps = cfg.steps(getattr(config, f"{stage}_steps"))
    warmup = min(getattr(config, f"{stage}_optim").warmup_steps, steps // 2)
    scaled += [f"{stage}_steps={steps}", f"{stage}_optim.warmup_steps={warmup}",
               f"{stage}_optim.decay_steps={max(1, steps - warmup)}"]
  return base.apply_overrides(config, scaled)


def stage_base(cfg: QuickstartConfig, root: pathlib.Path, data_dir: str) -> str:
  base.train_and_sample(base_config(cfg), str(root / "base"), data_dir, num_samples=0)
  return str(root / "base")


def stage_reward(cfg: QuickstartConfig, root: pathlib.Path, data_dir: str) -> str:
  train = load_dataset(data_dir, "train")
  test = load_dataset(data_dir, "test")
  # The reward only ever scores the generator's window: train it on crops of that length (3x cheaper than
  # padding to 196 frames, so more steps fit the budget).
  rcfg = R.RewardTrainConfig(seed=cfg.seed, max_length=base_config(cfg).data.max_length)
  R.train_reward(rcfg, root / "reward_pretrain", train, steps=cfg.steps(cfg.reward_steps),
                 eval_dataset=test, eval_timesteps=(0, 300))
  R.train_reward(rcfg, root / "reward", train, spl=True, init_from=root / "reward_pretrain",
                 steps=cfg.steps(cfg.spl_steps), eval_dataset=test, eval_timesteps=(0, 300))
  return str(root / "reward")


def stage_evaluator(cfg: QuickstartConfig, root: pathlib.Path, data_dir: str) -> str:
  ecfg = dataclasses.replace(te.get_config("tiny"), steps=cfg.steps(cfg.evaluator_steps))
  te.train_evaluator(ecfg, str(root / "evaluator"), data_dir)
  return str(root / "evaluator")


def run_config(cfg: QuickstartConfig, method: str) -> fr.RunConfig:
  ft = finetune.FinetuneConfig(
      method=method, num_steps=cfg.num_steps, k=cfg.draft_k if method == "draft" else None,
      guidance_scale=cfg.guidance_scale,
      optim=OptimConfig(learning_rate=cfg.learning_rate, warmup_steps=5))
  return fr.RunConfig(finetune=ft, trajectories=cfg.steps(cfg.trajectories), batch_size=cfg.finetune_batch,
                      seed=cfg.seed, eval_every=max(1, cfg.steps(cfg.trajectories) // 4), heldout_size=64)


def stage_finetune(cfg: QuickstartConfig, root: pathlib.Path, data_dir: str, gen_dir: str,
                   reward_dir: str) -> dict:
  out = {}
  for method in cfg.methods:
    out[method] = fr.run_finetune(run_config(cfg, method), str(root / f"finetune_{method}"), gen_dir,
                                  reward_dir, data_dir)
  return out


def stage_evaluate(cfg: QuickstartConfig, root: pathlib.Path, data_dir: str, gen_dir: str,
                   eval_dir: str, reward_dir: str) -> dict:
  test = load_dataset(data_dir, "test")
  evaluator = load_trained_evaluator(eval_dir).with_dataset_stats(test.mean, test.std)
  task = fr.load_task(gen_dir, reward_dir)
  rows = {"base": task.gen}
  for method in cfg.methods:
    rows[method] = fr.load_finetuned_generator(str(root / f"finetune_{method}"))
  results = []
  for name, gen in rows.items():
    def generate_fn(captions, pos_tokens, lengths, rng, gen=gen):
      del pos_tokens
      return gen.generate(captions, lengths, rng, guidance_scale=cfg.guidance_scale,
                          num_steps=cfg.num_steps, normalized=True)[0]

    def reward_fn(x, captions, lengths, gen=gen):
      lengths = np.minimum(lengths, gen.max_length)
      cond, _ = task.inputs(captions, lengths)
      return np.asarray(task.reward(jax.numpy.asarray(x[:, :gen.max_length]), cond, None))

    results.append(evaluation.evaluate(
        generate_fn, evaluator, test, replications=cfg.replications, mm=True,
        mm_num_samples=min(20, len(test)), mm_num_repeats=5, mm_num_times=3,
        max_length=min(gen.max_length, evaluator.max_length), seed=cfg.seed, method=name,
        reward_fn=reward_fn, progress=True))
  paths = evaluation.write_results(results, str(root / "eval"))
  return {"results": results, "paths": paths}


def stage_media(cfg: QuickstartConfig, root: pathlib.Path, data_dir: str, gen_dir: str) -> dict:
  """Reward curves (held-out reward per trajectory, per method) and side-by-side GIFs base vs fine-tuned for
  the same captions and the same noise."""
  media = root / "report"
  media.mkdir(parents=True, exist_ok=True)
  curves = {}
  for method in cfg.methods:
    rows = [r for r in read_metrics(root / f"finetune_{method}") if "heldout_reward" in r]
    if rows:
      curves[method] = ([r["step"] for r in rows], [r["heldout_reward"] for r in rows])
  out = {"curves": viz.plot_curves(curves, str(media / "heldout_reward.png"), title="held-out reward",
                                   xlabel="trajectory", ylabel="SPM reward")}
  base_gen = generator.load_generator(gen_dir)
  tuned = {m: fr.load_finetuned_generator(str(root / f"finetune_{m}")) for m in cfg.methods}
  test = load_dataset(data_dir, "test")
  out["animations"] = []
  for i, entry in enumerate(test.entries[:cfg.num_animations]):
    caption = entry.captions[0][0]
    length = min(base_gen.max_length, 4 * (entry.length // 4))
    rng = jax.random.key(cfg.seed + 100 + i)
    joints = [base_gen.generate([caption], [length], rng, cfg.guidance_scale, cfg.num_steps)[1][0, :length]]
    titles = ["base"]
    for m, gen in tuned.items():
      joints.append(gen.generate([caption], [length], rng, cfg.guidance_scale, cfg.num_steps)[1][0, :length])
      titles.append(m)
    path = viz.side_by_side(joints, titles, str(media / f"sample_{i}.gif"), suptitle=caption)
    out["animations"].append({"caption": caption, "path": path})
  return out


def write_report(root: pathlib.Path, summary: dict) -> str:
  ev = summary["evaluate"]
  lines = ["# easytune_jax quickstart report", "",
           f"Machine: jax {jax.__version__}, backend {jax.default_backend()}, "
           f"{jax.devices()[0].device_kind}; total time {summary['seconds']:.0f} s.", "",
           "## Held-out reward (SPM, fixed val captions and noise)", "",
           "| method | base | fine-tuned | gain | fine-tuning seconds |", "|---|---|---|---|---|"]
  for m, s in summary["finetune"].items():
    lines.append(f"| {m} | {s['base_heldout_reward']:.4f} | {s['final_heldout_reward']:.4f} | "
                 f"{s['final_heldout_reward'] - s['base_heldout_reward']:+.4f} | {s['seconds']:.0f} |")
  lines += ["", "## Standard metrics (separate T2M-style evaluator)", "",
            pathlib.Path(ev["paths"]["markdown"]).read_text(), "",
            "## Curves and animations", "", f"![held-out reward]({pathlib.Path(summary['media']['curves']).name})", ""]
  for a in summary["media"]["animations"]:
    lines.append(f"- {a['caption']}: ![{a['caption']}]({pathlib.Path(a['path']).name})")
  path = root / "report" / "report.md"
  path.write_text("\n".join(lines) + "\n")
  return str(path)


def run_quickstart(cfg: QuickstartConfig, workdir: str) -> dict:
  """Runs (or resumes) every stage; returns a summary and writes `<workdir>/report/report.md`."""
  t0 = time.time()
  root = pathlib.Path(workdir)
  root.mkdir(parents=True, exist_ok=True)
  timings = {}

  def timed(name, fn, *args):
    t = time.time()
    logging.info("quickstart: stage %s", name)
    out = fn(*args)
    timings[name] = time.time() - t
    return out

  data_dir = timed("data", stage_data, cfg, root)
  gen_dir = timed("base", stage_base, cfg, root, data_dir)
  reward_dir = timed("reward", stage_reward, cfg, root, data_dir)
  eval_dir = timed("evaluator", stage_evaluator, cfg, root, data_dir)
  ft = timed("finetune", stage_finetune, cfg, root, data_dir, gen_dir, reward_dir)
  ev = timed("evaluate", stage_evaluate, cfg, root, data_dir, gen_dir, eval_dir, reward_dir)
  media = timed("media", stage_media, cfg, root, data_dir, gen_dir)
  summary = {"finetune": ft, "evaluate": ev, "media": media, "timings": timings,
             "seconds": time.time() - t0, "workdir": str(root)}
  summary["report"] = write_report(root, summary)
  (root / "report" / "summary.json").write_text(json.dumps(
      {k: v for k, v in summary.items() if k != "evaluate"} | {"metrics": [r["metrics"] for r in ev["results"]]},
      indent=2, default=str))
  return summary


def summary_screen(summary: dict) -> str:
  """One screen: per-method rewards, the metric table and the files written."""
  lines = ["", "=" * 78, "easytune_jax quickstart: done in %.0f s" % summary["seconds"],
           "stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in summary["timings"].items()), ""]
  for m, s in summary["finetune"].items():
    lines.append(f"{m:>10}: held-out reward {s['base_heldout_reward']:.4f} -> {s['final_heldout_reward']:.4f}")
  lines += ["", pathlib.Path(summary["evaluate"]["paths"]["markdown"]).read_text().strip(), "",
            "files:", f"  report      {summary['report']}", f"  metrics     {summary['evaluate']['paths']['json']}",
            f"  curves      {summary['media']['curves']}"]
  lines += [f"  animation   {a['path']}" for a in summary["media"]["animations"]]
  lines.append("=" * 78)
  return "\n".join(lines)
