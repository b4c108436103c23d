"""The whole pipeline in one call: data -> base generator -> reward model (SPM + SPL) -> evaluator ->
fine-tuning (EasyTune and a DRaFT-K reference) -> standard evaluation -> report with curves and animations.

Every stage writes into `<workdir>/<stage>` and resumes from its checkpoints (or is skipped when done), so
rerunning the same command continues where it stopped. `launch/quickstart.py` is the command-line front;
notebooks call `run_quickstart` or the stage functions directly. The report, the README's table and the
comparison with the committed summary are `pipelines/quickstart_report.py`.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from collections.abc import Callable

import jax
import numpy as np
from absl import logging

from easytune_jax import finetune, viz
from easytune_jax.bundles import generator
from easytune_jax.bundles.evaluator import load_trained_evaluator
from easytune_jax.bundles.finetuned import RunConfig, load_finetuned_generator
from easytune_jax.bundles.guided import GuidedGenerator
from easytune_jax.bundles.task import load_task
from easytune_jax.core import rerun
from easytune_jax.core.guidance import GuidanceConfig
from easytune_jax.core.metric_writer import read_metrics
from easytune_jax.core.optim import OptimConfig
from easytune_jax.core.sampling import CPU_GUIDANCE_SCALE, CPU_NUM_STEPS
from easytune_jax.data import synthetic
from easytune_jax.data.humanml3d import load_dataset
from easytune_jax.eval import evaluation
from easytune_jax.eval.report import write_results
from easytune_jax.models.generator import GENERATORS
from easytune_jax.pipelines.guidance import run_guidance_comparison
from easytune_jax.pipelines.quickstart_report import summary_record, write_report
from easytune_jax.rewards.spm_objective import RewardTrainConfig
from easytune_jax.train import base
from easytune_jax.train import evaluator as te
from easytune_jax.train import finetune_runner as fr
from easytune_jax.train import reward as R


@dataclasses.dataclass(frozen=True)
class QuickstartConfig:
  """Sizes of each stage. Defaults take about 8-9 minutes on an otherwise idle 2-core CPU (longer on a busy one);
  `scale` multiplies every step count."""

  data_dir: str | None = None  # a HumanML3D-layout folder; None writes the synthetic dataset
  num_motions: int = 1000
  max_frames: int = 64  # longest synthetic motion: the tiny generator's 64-frame window, so a
  # caption never describes frames outside the window it trains on
  seed: int = 0
  generator: str = "mld"  # a row of the generator table (models.generator.GENERATORS): 'mld', 'mdm', 'flow'
  base_overrides: tuple = ("vae_steps=1500", "diffusion_steps=1500")
  reward_steps: int = 1500
  spl_steps: int = 300
  reward_objective: str = "official"  # SPM training objective: 'official' (EasyTune's) or 'ours'
  evaluator_steps: int = 200
  methods: tuple = ("easytune", "draft")
  num_steps: int = CPU_NUM_STEPS  # DDIM steps of fine-tuning and evaluation
  guidance_scale: float = CPU_GUIDANCE_SCALE
  trajectories: int = 24
  draft_k: int = 1  # DRaFT-K reference (K=1 is the cheapest strong baseline)
  finetune_batch: int = 16
  learning_rate: float = 5e-5
  replications: int = 6
  num_animations: int = 3
  scale: float = 1.0
  guidance: GuidanceConfig = GuidanceConfig()  # reward-guided sampling rows (stage 'guidance'); off by default
  guided_rows: tuple = ("base", "easytune")  # rows sampled again with guidance: 'base' and fine-tuned methods

  def __post_init__(self):
    if self.generator not in GENERATORS:
      raise ValueError(f"QuickstartConfig.generator: expected one of {tuple(GENERATORS)}, found {self.generator!r}")
    unknown = [m for m in self.methods if m not in finetune.METHODS]
    if unknown:
      raise ValueError(f"QuickstartConfig.methods: unknown {unknown}; expected some of {list(finetune.METHODS)}")
    bad_rows = [r for r in self.guided_rows if r != "base" and r not in self.methods]
    if bad_rows:
      raise ValueError(
        f"QuickstartConfig.guided_rows: expected 'base' or methods of QuickstartConfig.methods {self.methods}, "
        f"found {bad_rows}"
      )
    if self.reward_objective not in ("official", "ours"):
      raise ValueError(
        f"QuickstartConfig.reward_objective: expected 'official' or 'ours', found {self.reward_objective!r}"
      )

  def steps(self, n: int) -> int:
    return max(1, int(round(n * self.scale)))


def stage_data(cfg: QuickstartConfig, root: pathlib.Path) -> str:
  if cfg.data_dir:
    return cfg.data_dir
  out = root / "data"
  if not (out / "metadata.json").exists():
    synthetic.write_synthetic_dataset(str(out), num_motions=cfg.num_motions, seed=cfg.seed, max_len=cfg.max_frames)
  return str(out)


def base_config(cfg: QuickstartConfig) -> base.BaseConfig:
  """The tiny base config of `cfg.generator` (`BaseConfig(model=...)`, the 'tiny' / 'tiny_<kind>' preset) with
  `cfg.base_overrides`, each stage's steps scaled and its cosine decay stretched over them (the learning rate would
  otherwise reach 0 early)."""
  config = base.apply_overrides(base.BaseConfig(model=cfg.generator), list(cfg.base_overrides) + [f"seed={cfg.seed}"])
  scaled = []
  for stage in ("vae", "diffusion"):
    steps = cfg.steps(getattr(config, f"{stage}_steps"))
    warmup = min(getattr(config, f"{stage}_optim").warmup_steps, steps // 2)
    scaled += [
      f"{stage}_steps={steps}",
      f"{stage}_optim.warmup_steps={warmup}",
      f"{stage}_optim.decay_steps={max(1, steps - warmup)}",
    ]
  return base.apply_overrides(config, scaled)


def stage_base(cfg: QuickstartConfig, root: pathlib.Path, data_dir: str) -> str:
  base.train_and_sample(base_config(cfg), str(root / "base"), data_dir, num_samples=0)
  return str(root / "base")


def stage_reward(cfg: QuickstartConfig, root: pathlib.Path, data_dir: str) -> str:
  train = load_dataset(data_dir, "train")
  test = load_dataset(data_dir, "test")
  # The reward only ever scores the generator's window: train it on crops of that length (3x cheaper than
  # padding to 196 frames, so more steps fit the budget).
  rcfg = RewardTrainConfig(seed=cfg.seed, max_length=base_config(cfg).data.max_length)
  rcfg = rcfg.with_objective(cfg.reward_objective)  # the CPU-size SPM trained with the official objective
  R.train_reward(
    rcfg, root / "reward_pretrain", train, steps=cfg.steps(cfg.reward_steps), eval_dataset=test, eval_timesteps=(0, 300)
  )
  R.train_reward(
    rcfg,
    root / "reward",
    train,
    spl=True,
    init_from=root / "reward_pretrain",
    steps=cfg.steps(cfg.spl_steps),
    eval_dataset=test,
    eval_timesteps=(0, 300),
  )
  return str(root / "reward")


def stage_evaluator(cfg: QuickstartConfig, root: pathlib.Path, data_dir: str) -> str:
  ecfg = te.EvaluatorTrainConfig(steps=cfg.steps(cfg.evaluator_steps))  # the 'tiny' preset's other values
  te.train_evaluator(ecfg, str(root / "evaluator"), data_dir)
  return str(root / "evaluator")


def run_config(cfg: QuickstartConfig, method: str) -> RunConfig:
  ft = finetune.FinetuneConfig(
    method=method,
    num_steps=cfg.num_steps,
    k=cfg.draft_k if method == "draft" else None,
    guidance_scale=cfg.guidance_scale,
    optim=OptimConfig(learning_rate=cfg.learning_rate, warmup_steps=5),
  )
  return RunConfig(
    finetune=ft,
    trajectories=cfg.steps(cfg.trajectories),
    batch_size=cfg.finetune_batch,
    seed=cfg.seed,
    eval_every=max(1, cfg.steps(cfg.trajectories) // 4),
    heldout_size=64,
  )


def stage_finetune(cfg: QuickstartConfig, root: pathlib.Path, data_dir: str, gen_dir: str, reward_dir: str) -> dict:
  out = {}
  for method in cfg.methods:
    out[method] = fr.run_finetune(
      run_config(cfg, method), str(root / f"finetune_{method}"), gen_dir, reward_dir, data_dir
    )
  return out


def reward_fn_for(cfg: QuickstartConfig, task, gen) -> Callable:
  """The protocol's `reward_fn(x, captions, lengths) -> [B]`: the task's reward model on clean motion."""

  def reward_fn(x, captions, lengths):
    lengths = np.minimum(lengths, gen.max_length)
    cond, _ = task.inputs(captions, lengths, rng=jax.random.key(cfg.seed))
    return np.asarray(task.reward(jax.numpy.asarray(x[:, : gen.max_length]), cond, None))

  return reward_fn


def evaluate_row(cfg: QuickstartConfig, gen, name: str, evaluator, test, task) -> dict:
  """The quickstart's evaluation protocol of one row (`gen`: a Generator or a GuidedGenerator)."""
  return evaluation.evaluate(
    generator.generator_fn(gen, cfg.guidance_scale, cfg.num_steps),
    evaluator,
    test,
    replications=cfg.replications,
    mm=True,
    mm_num_samples=min(20, len(test)),
    mm_num_repeats=5,
    mm_num_times=3,
    max_length=min(gen.max_length, evaluator.max_length),
    seed=cfg.seed,
    method=name,
    reward_fn=reward_fn_for(cfg, task, gen),
    progress=True,
  )


def stage_evaluate(
  cfg: QuickstartConfig, root: pathlib.Path, data_dir: str, gen_dir: str, eval_dir: str, reward_dir: str
) -> dict:
  test = load_dataset(data_dir, "test")
  evaluator = load_trained_evaluator(eval_dir).with_dataset_stats(test.mean, test.std)
  task = load_task(gen_dir, reward_dir)
  rows = {"base": task.gen}
  for method in cfg.methods:
    rows[method] = load_finetuned_generator(str(root / f"finetune_{method}"))
  results = [evaluate_row(cfg, gen, name, evaluator, test, task) for name, gen in rows.items()]
  # eval.json / eval.md name the workdir's evaluator and dataset relative to it (no machine path).
  paths = write_results(rerun.relative_strings(results, root), str(root / "eval"))
  return {"results": results, "paths": paths}


def stage_guidance(
  cfg: QuickstartConfig, root: pathlib.Path, data_dir: str, gen_dir: str, eval_dir: str, reward_dir: str
) -> dict:
  """Plain vs reward-guided sampling (`cfg.guidance`, the task's reward) of `cfg.guided_rows`: the guided rows
  evaluated as the stage 'evaluate' does, every row timed and its memory compiled (pipelines/guidance.py);
  writes `<workdir>/guidance/`."""
  test = load_dataset(data_dir, "test")
  evaluator = load_trained_evaluator(eval_dir).with_dataset_stats(test.mean, test.std)
  task = load_task(gen_dir, reward_dir)
  plain = {
    name: task.gen if name == "base" else load_finetuned_generator(str(root / f"finetune_{name}"))
    for name in cfg.guided_rows
  }
  guided = {
    f"{name}+guidance": GuidedGenerator(dataclasses.replace(task, gen=gen), cfg.guidance) for name, gen in plain.items()
  }
  recorded = json.loads((root / "eval" / "eval.json").read_text())["results"]
  plain_results = {r["method"]: r for r in recorded if r["method"] in plain}
  captions = [e.captions[0][0] for e in test.entries[: evaluation.EvaluateConfig().batch_size]]
  out = run_guidance_comparison(
    plain,
    guided,
    lambda gen, name: evaluate_row(cfg, gen, name, evaluator, test, task),
    root / "guidance",
    captions,
    task.gen.max_length,
    cfg.num_steps,
    cfg.guidance_scale,
    plain_results,
    reward="spm",
    root=root,
  )
  return rerun.relative_strings(out, root)


# Bumped when the media change (curves, animation size): media recorded by an older version are redone.
MEDIA_VERSION = 4


def reward_curves(root: pathlib.Path, methods) -> tuple[dict, dict]:
  """Held-out reward per method against trajectories and against fine-tuning seconds, each starting at the
  base model (0 trajectories, 0 s; its held-out reward from the run's summary)."""
  by_traj, by_time = {}, {}
  for method in methods:
    run = root / f"finetune_{method}"
    rows = [r for r in read_metrics(run) if "heldout_reward" in r]
    base_reward = (
      json.loads((run / "summary.json").read_text())["base_heldout_reward"] if (run / "summary.json").exists() else None
    )
    steps, values = [r["step"] for r in rows], [r["heldout_reward"] for r in rows]
    if base_reward is not None:
      steps, values = [0] + steps, [base_reward] + values
    if len(values) > 0:
      by_traj[method] = (steps, values)
    timed = [r for r in rows if "wall_seconds" in r]
    if timed and base_reward is not None:
      by_time[method] = (
        [0.0] + [r["wall_seconds"] for r in timed],
        [base_reward] + [r["heldout_reward"] for r in timed],
      )
  return by_traj, by_time


def _compile_seconds(run: pathlib.Path) -> float | None:
  """Seconds the fine-tuning run spent tracing and compiling (its summary), None for runs that predate it."""
  path = run / "summary.json"
  return json.loads(path.read_text()).get("compile_seconds") if path.exists() else None


def stage_media(cfg: QuickstartConfig, root: pathlib.Path, data_dir: str, gen_dir: str) -> dict:
  """Reward curves (held-out reward per trajectory and per second, per method, from the base model at 0) and
  side-by-side GIFs base vs fine-tuned for the same captions and the same noise (960 px wide for three
  panels, thick limbs, root path and hand/foot trails)."""
  media = root / "report"
  media.mkdir(parents=True, exist_ok=True)
  by_traj, by_time = reward_curves(root, cfg.methods)
  panels = [(by_traj, "trajectories (base model at 0)")]
  if by_time:
    compile_s = {m: _compile_seconds(root / f"finetune_{m}") for m in by_time}
    spent = ", ".join(f"{m} {s:.0f} s" for m, s in compile_s.items() if s is not None)
    panels.append(
      (by_time, f"fine-tuning seconds, wall clock, without held-out evaluations\nand compilation ({spent})")
    )
  out = {
    "curves": viz.plot_curve_panels(
      panels,
      str(media / "heldout_reward.png"),
      title="held-out reward (SPM, fixed val captions and noise)",
      ylabel="held-out reward",
    )
  }
  base_gen = generator.load_generator(gen_dir)
  tuned = {m: load_finetuned_generator(str(root / f"finetune_{m}")) for m in cfg.methods}
  test = load_dataset(data_dir, "test")
  out["animations"] = []
  panel_px = 960 / (1 + len(tuned))
  for i, entry in enumerate(test.entries[: cfg.num_animations]):
    caption = entry.captions[0][0]
    length = min(base_gen.max_length, 4 * (entry.length // 4))
    rng = jax.random.key(cfg.seed + 100 + i)
    joints = [base_gen.generate([caption], [length], rng, cfg.guidance_scale, cfg.num_steps)[1][0, :length]]
    titles = ["base"]
    for m, gen in tuned.items():
      joints.append(gen.generate([caption], [length], rng, cfg.guidance_scale, cfg.num_steps)[1][0, :length])
      titles.append(m)
    path = viz.side_by_side(
      joints,
      titles,
      str(media / f"sample_{i}.gif"),
      suptitle=caption,
      panel_size=panel_px / 100,
      dpi=100,
      linewidth=3.5,
      trail=12,
    )
    out["animations"].append({"caption": caption, "path": path})
  return out


def _stage_plan(cfg: QuickstartConfig, root: pathlib.Path) -> dict:
  """Per stage: (settings that change its result, the stage folders it reads, the outputs it writes)."""
  data = cfg.data_dir or str(root / "data")
  ft_dirs = [str(root / f"finetune_{m}") for m in cfg.methods]
  base, reward, ev = str(root / "base"), [str(root / "reward_pretrain"), str(root / "reward")], str(root / "evaluator")
  gen = {"num_steps": cfg.num_steps, "guidance_scale": cfg.guidance_scale, "seed": cfg.seed, "methods": cfg.methods}
  return {
    "data": (
      {"data_dir": cfg.data_dir, "num_motions": cfg.num_motions, "max_frames": cfg.max_frames, "seed": cfg.seed},
      [],
      [data],
    ),
    "base": ({"config": dataclasses.asdict(base_config(cfg))}, [data], [base]),
    "reward": (
      {
        "seed": cfg.seed,
        "steps": [cfg.steps(cfg.reward_steps), cfg.steps(cfg.spl_steps)],
        "max_length": base_config(cfg).data.max_length,
        "objective": cfg.reward_objective,
      },
      [data],
      reward,
    ),
    "evaluator": ({"steps": cfg.steps(cfg.evaluator_steps)}, [data], [ev]),
    "finetune": ({m: run_config(cfg, m).to_dict() for m in cfg.methods}, [data, base, *reward], ft_dirs),
    "evaluate": ({**gen, "replications": cfg.replications}, [data, base, *reward, ev, *ft_dirs], [str(root / "eval")]),
    "guidance": (
      {
        **gen,
        "replications": cfg.replications,
        "guidance": dataclasses.asdict(cfg.guidance),
        "guided_rows": cfg.guided_rows,
      },
      [
        data,
        base,
        *reward,
        ev,
        str(root / "eval"),
        *[str(root / f"finetune_{m}") for m in cfg.guided_rows if m != "base"],
      ],
      [str(root / "guidance")],
    ),
    "media": (
      {**gen, "num_animations": cfg.num_animations, "media_version": MEDIA_VERSION},
      [data, base, *ft_dirs],
      None,
    ),  # outputs: the files it returned (report/ also holds the report itself)
  }


def _media_files(result: dict) -> list:
  return [result["curves"]] + [a["path"] for a in result["animations"]]


def run_quickstart(cfg: QuickstartConfig, workdir: str) -> dict:
  """Runs (or resumes) every stage; returns a summary and writes `<workdir>/report/report.md`.

  A stage whose settings and input folders are unchanged since it last finished, and whose outputs are still
  as it wrote them, is skipped (`<workdir>/manifest.json`, see `easytune_jax.core.rerun`): a rerun of a finished
  quickstart re-reads the recorded results and rewrites the same report in seconds. The summary's `timings`
  and `seconds` are those of the runs that computed the results; `wall_seconds` is this call's wall time.
  """
  t0 = time.time()
  root = pathlib.Path(workdir)
  root.mkdir(parents=True, exist_ok=True)
  manifest = rerun.Manifest(root)
  plan = _stage_plan(cfg, root)
  timings, skipped = {}, []

  def stage(name, fn, *args):
    if name == "data" and cfg.data_dir:  # the user's folder: nothing to compute (and nothing written on failure)
      timings[name] = 0.0
      return fn(*args)
    settings, inputs, outputs = plan[name]
    key = rerun.settings_key(settings=settings, inputs=rerun.fingerprint(inputs))
    if outputs is None:  # media: the files the recorded run returned
      try:
        outputs = [root / f for f in _media_files(manifest.entries[name]["result"])]
      except (KeyError, TypeError):
        outputs = []
    entry = manifest.lookup(name, key, outputs)
    if entry is not None:
      logging.info("quickstart: stage %s: inputs unchanged since %s: skipped", name, entry["time"])
      timings[name] = entry["seconds"]
      skipped.append(name)
      return entry["result"]
    t = time.time()
    logging.info("quickstart: stage %s", name)
    # As a rerun reads it back: JSON, paths inside the workdir relative to it (a moved workdir stays done).
    out = rerun.relative_strings(json.loads(json.dumps(fn(*args), default=str)), root)
    timings[name] = time.time() - t
    manifest.record(
      name, key, [root / f for f in _media_files(out)] if name == "media" else outputs, out, timings[name]
    )
    return out

  # The stages' folders (their recorded results name them relative to the workdir).
  data_dir, gen_dir = cfg.data_dir or str(root / "data"), str(root / "base")
  reward_dir, eval_dir = str(root / "reward"), str(root / "evaluator")
  stage("data", stage_data, cfg, root)
  stage("base", stage_base, cfg, root, data_dir)
  stage("reward", stage_reward, cfg, root, data_dir)
  stage("evaluator", stage_evaluator, cfg, root, data_dir)
  ft = stage("finetune", stage_finetune, cfg, root, data_dir, gen_dir, reward_dir)
  ev = stage("evaluate", stage_evaluate, cfg, root, data_dir, gen_dir, eval_dir, reward_dir)
  guided = None
  if cfg.guidance.enabled:  # off by default: the default quickstart (and its checked table) has no guided rows
    guided = stage("guidance", stage_guidance, cfg, root, data_dir, gen_dir, eval_dir, reward_dir)
  media = stage("media", stage_media, cfg, root, data_dir, gen_dir)
  summary = {
    "generator": cfg.generator,
    "finetune": ft,
    "evaluate": ev,
    **({"guidance": guided} if guided else {}),
    "media": media,
    "timings": timings,
    "seconds": sum(timings.values()),
    "workdir": str(root),
  }
  summary["report"] = write_report(root, summary)
  (root / "report" / "summary.json").write_text(json.dumps(summary_record(summary, root), indent=2))
  summary["wall_seconds"] = time.time() - t0
  summary["skipped"] = skipped
  return summary
