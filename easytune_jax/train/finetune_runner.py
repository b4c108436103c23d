"""Reward fine-tuning of a trained generator with a trained reward model: the harness behind
`launch/finetune.py`, the benchmark and the quickstart.

`MotionTask` adapts the concrete models to the model-agnostic builders of `easytune_jax.finetune`:

  cond = {"gen": generator condition (frozen text encoder output), "reward": reward-model text inputs,
          "mask": frame mask [B, L]};  uncond has the same structure with the generator's null condition.
  denoise(params, x_t, t, cond) = generator denoiser on cond["gen"]
  decode(z, cond)               = frozen VAE decoder (MLD) with cond["mask"] -> normalised features [B, L, D]
  reward(x, cond, t)            = SPM cosine(text, motion) [B] on cond["reward"] and cond["mask"]

`run_finetune` drives any method through `finetune.make_update_fn` with `train_loop` (resume, SIGTERM,
non-finite policy), logs the reward per update and per step index, evaluates a held-out reward (fixed val
captions and noise, full sampling with the current parameters) at intervals, optionally the evaluator's
quick metrics (test split, monitoring), and keeps the best checkpoint by `RunConfig.best_metric` (held-out
reward, or an evaluator metric on the val split).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import time
from typing import Any, Optional

import jax
import numpy as np
from absl import logging

from easytune_jax import finetune
from easytune_jax.bundles.evaluator import load_trained_evaluator
from easytune_jax.core import parallel
from easytune_jax.core.compile_clock import CompileClock
from easytune_jax.eval import evaluation
from easytune_jax.data import batching
from easytune_jax.data.humanml3d import MotionDataset, load_dataset
from easytune_jax.bundles.generator import Generator, load_generator, recorded_sampler
from easytune_jax.bundles.task import MotionTask, reward_text_encoder
from easytune_jax.data.features import joints_num_for_dim
from easytune_jax.models import spm
from easytune_jax.rewards.registry import RewardContext, build_reward, parse_spec
from easytune_jax.core.checkpoint import Checkpointer
from easytune_jax.core.config import check_config_matches, config_from_dict
from easytune_jax.core.metric_writer import MetricWriter, read_metrics
from easytune_jax.data.safe_io import read_json, write_json
from easytune_jax.core.optim import OptimConfig, create_train_state, make_optimizer
from easytune_jax.train.loop import train_loop
from easytune_jax.train import reward as reward_train
from easytune_jax.core.sampling import CPU_GUIDANCE_SCALE, CPU_NUM_STEPS


# --------------------------------------------------------------------------------------------- task
def load_task(
  generator_workdir: str, reward_workdir: Optional[str], reward: str = "spm", reward_text: str = ""
) -> MotionTask:
  """The generator of `generator_workdir` with the reward `reward` (a `rewards.registry` spec such as
  'spm' or 'spm:1.0,skating:0.2'); the 'spm' term is the trained reward model of `reward_workdir`. A reward
  that reads text embeddings (the official SPM) gets them from `reward_text` (`bundles.task.reward_text_encoder`:
  a `.npz` of precomputed embeddings or a sentence-t5 folder)."""
  gen = load_generator(generator_workdir)
  spm_fn, tokenizer, stochastic = None, None, False
  if reward_workdir:
    spm_fn, _, rcfg = reward_train.load_reward(reward_workdir)
    if rcfg.model.dim_motion != gen.mean.shape[0]:
      raise ValueError(
        f"reward model {reward_workdir}: dim_motion={rcfg.model.dim_motion}, but the generator "
        f"{generator_workdir} produces {gen.mean.shape[0]}-dim features"
      )
    tokenizer = reward_train.load_reward_tokenizer(reward_workdir)
    stochastic = spm.is_stochastic(rcfg.model)
    if rcfg.model.text_input == "embeddings" and not reward_text:
      raise ValueError(
        f"reward model {reward_workdir} reads text embeddings: set RunConfig.reward_text (a "
        "sentence-t5 folder or a precomputed .npz)"
      )
  context = RewardContext(mean=gen.mean, std=gen.std, joints_num=joints_num_for_dim(gen.mean.shape[0]), spm=spm_fn)
  text = reward_text_encoder(reward_text) if reward_text else None
  return MotionTask(gen, build_reward(reward, context), tokenizer, text, stochastic)


def trainable_mask(params: Any, patterns: str) -> Optional[Any]:
  """Bool pytree: leaves whose '/'-joined path matches any comma-separated regex in `patterns` train.
  'all' (or '') trains everything (returns None)."""
  if patterns in ("", "all"):
    return None
  regexes = [re.compile(p.strip()) for p in patterns.split(",") if p.strip()]
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  paths = ["/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in p) for p, _ in flat]
  mask = [any(r.search(path) for r in regexes) for path in paths]
  if not any(mask):
    raise ValueError(f"RunConfig.trainable={patterns!r} matches no parameter; paths look like {paths[:3]}")
  return jax.tree_util.tree_unflatten(jax.tree.structure(params), mask)


# --------------------------------------------------------------------------------------------- run
# Criteria for `best/`: +1 higher is better, -1 lower is better. Evaluator metrics are measured on the VAL
# split (quick evaluation, fixed seed), never on the test split the final numbers are reported on.
BEST_METRICS = {
  "heldout_reward": 1.0,
  "R_precision_top_1": 1.0,
  "R_precision_top_3": 1.0,
  "Matching_score": -1.0,
  "FID": -1.0,
}
_EVAL_METRICS = ("R_precision_top_1", "R_precision_top_3", "Matching_score", "FID", "Diversity")


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """A fine-tuning run: method config, data, schedule of evaluation and checkpoints."""

  finetune: finetune.FinetuneConfig = finetune.FinetuneConfig(
    num_steps=CPU_NUM_STEPS, guidance_scale=CPU_GUIDANCE_SCALE, optim=OptimConfig(learning_rate=2e-4, warmup_steps=10)
  )
  trajectories: int = 20
  batch_size: int = 16
  seed: int = 0
  eval_every: int = 5
  heldout_size: int = 64
  heldout_num_steps: Optional[int] = None  # DDIM steps of held-out sampling (default: finetune.num_steps)
  checkpoint_every: int = 10
  trainable: str = "all"
  ema_decay: float = 0.0
  on_nonfinite: str = "skip"
  best_metric: str = "heldout_reward"
  reward: str = "spm"  # rewards.registry spec, e.g. 'spm:1.0,skating:0.2'
  reward_text: str = ""  # embedding-input rewards: sentence-t5 folder or .npz

  def __post_init__(self):
    parse_spec(self.reward)  # a malformed spec fails here, before anything is loaded
    if self.trajectories < 1 or self.batch_size < 1:
      raise ValueError(
        f"RunConfig: trajectories and batch_size must be >= 1, found {self.trajectories}, {self.batch_size}"
      )
    if self.best_metric not in BEST_METRICS:
      raise ValueError(f"RunConfig.best_metric: expected one of {sorted(BEST_METRICS)}, found {self.best_metric!r}")

  def to_dict(self) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(self)))


def run_config_from_dict(d: dict) -> RunConfig:
  return config_from_dict(RunConfig, d, "RunConfig")


def _flatten_metrics(metrics: dict) -> dict:
  """Scalars pass through; per-step vectors [K] become `name/step_i` scalars."""
  out = {}
  for k, v in metrics.items():
    v = np.asarray(v)
    if v.ndim == 0:
      out[k] = v
    elif v.ndim == 1 and k in ("reward_per_step", "loss_per_step", "grad_norm_per_step"):
      out.update({f"{k}/{i:03d}": v[i] for i in range(v.shape[0])})
  return out


class HeldOut:
  """Fixed held-out captions, lengths and noise; scores full samples of given params with the reward."""

  def __init__(self, task: MotionTask, dataset: MotionDataset, cfg: RunConfig):
    n = min(cfg.heldout_size, len(dataset))
    arrays, host = batching.batch_at(dataset, 0, n, cfg.seed + 1, task.gen.tokenizer, max_length=task.gen.max_length)
    self.captions = list(host["caption"])
    self.lengths = np.asarray(arrays["length"])
    self.cond, self.uncond = task.inputs(self.captions, self.lengths, rng=jax.random.key(cfg.seed + 11))
    self.x_T = task.noise(jax.random.key(cfg.seed + 7), n)
    self.task, self.cfg = task, cfg
    self.num_steps = cfg.heldout_num_steps or cfg.finetune.num_steps

  def reward_terms(self, params) -> dict[str, np.ndarray]:
    """{term: reward [N]} of the task's reward terms on the held-out samples of `params`."""
    terms = self.task.sample_rewards(
      params, self.cond, self.uncond, self.x_T, self.cfg.finetune.guidance_scale, self.num_steps
    )
    return {k: np.asarray(v) for k, v in terms.items()}

  def rewards(self, params) -> np.ndarray:
    """Total (weighted) reward [N] of the held-out samples of `params`."""
    return np.asarray(self.task.reward_fn.combine(self.reward_terms(params)))


def run_finetune(
  cfg: RunConfig,
  workdir: str,
  generator_workdir: str,
  reward_workdir: Optional[str],
  data_dir: str,
  evaluator_workdir: Optional[str] = None,
  progress: bool = True,
  mesh=None,
) -> dict:
  """Fine-tunes the generator of `generator_workdir` with the reward of `reward_workdir`.

  Writes `<workdir>/finetune.json` (configs and sources), `checkpoints/` (resumable state), `best/` (params
  best by `cfg.best_metric`: held-out reward, or an evaluator metric on the val split; starts as the base),
  `metrics.*` (reward per update and per step index, held-out reward, val/ and eval/ metrics) and
  returns a summary dict with the base and final held-out reward and the wall time. `mesh`
  (`parallel.make_mesh`): the update runs data-parallel / FSDP (cfg.batch_size is the GLOBAL batch and must
  divide the device count; same result as one device).
  """
  t0 = time.time()
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  task = load_task(generator_workdir, reward_workdir, cfg.reward, cfg.reward_text)
  train = load_dataset(data_dir, "train")
  val = load_dataset(data_dir, "val")
  meta = {
    "run": cfg.to_dict(),
    **_recorded_path("generator_workdir", generator_workdir, workdir),
    **_recorded_path("reward_workdir", reward_workdir, workdir),
    **_recorded_path("data_dir", data_dir, workdir),
  }
  info_path = workdir / "finetune.json"
  if info_path.exists():
    # A rerun may extend the run or change its logging cadence, nothing else.
    # Read through RunConfig, so a field added since the run was written takes its default (the behaviour the
    # run had: new options default to the old behaviour).
    saved = run_config_from_dict(read_json(info_path, "fine-tuning run info")["run"]).to_dict()
    # grad_chunk changes how the same updates are computed (batched or one by one), not the run.
    check_config_matches(
      saved,
      meta["run"],
      str(info_path),
      ignore=("trajectories", "eval_every", "checkpoint_every", "finetune.grad_chunk"),
    )
  write_json(info_path, meta, indent=2)

  ft = cfg.finetune
  mask = trainable_mask(task.gen.params, cfg.trainable)
  tx = make_optimizer(ft.optim, mask)
  update = finetune.make_update_fn(
    ft, task.denoise, task.reward, task.gen.schedule, tx, decode=task.decode, ema_decay=cfg.ema_decay, jit=mesh is None
  )
  if mesh is not None:
    # x_T, cond, uncond and the regulariser's data batch are split over the mesh; the state is FSDP-sharded,
    # the key and the base params (KL regulariser) replicated. The random parts (dropout masks, per-step
    # reward keys from the replicated key; the per-batch reward key carried per row in cond) are drawn for
    # the global shapes, so a mesh run draws the numbers of the one-device run.
    update = parallel.jit_sharded(update, mesh, batch_argnums=(1, 2, 3, 5), donate_state=True)
  base_params = task.gen.params if ft.regularizer == "kl" else None
  per_traj = ft.updates_per_trajectory
  state = create_train_state(task.gen.params, tx, use_ema=cfg.ema_decay > 0)
  heldout = HeldOut(task, val, cfg)
  base_rewards = heldout.rewards(task.gen.params)
  evaluator = None
  if evaluator_workdir:
    evaluator = load_trained_evaluator(evaluator_workdir).with_dataset_stats(task.gen.mean, task.gen.std)
    test = load_dataset(data_dir, "test")
  elif cfg.best_metric != "heldout_reward":
    raise ValueError(
      f"run_finetune: best_metric={cfg.best_metric!r} is an evaluator metric: pass "
      "evaluator_workdir (or use best_metric='heldout_reward')"
    )

  def quick_eval(params, dataset, seed):
    res = evaluation.evaluate(
      generate_fn_for(task, params, ft),
      evaluator,
      dataset,
      quick=True,
      batch_size=32,
      max_length=min(task.gen.max_length, evaluator.max_length),
      seed=seed,
    )
    return {k: v[0] for k, v in res["metrics"].items() if k in _EVAL_METRICS}

  def criterion(params, heldout_reward):
    """(value of cfg.best_metric, val-split evaluator metrics {'val/...'} or {})."""
    if cfg.best_metric == "heldout_reward":
      return heldout_reward, {}
    vm = quick_eval(params, val, cfg.seed)  # same seed every time: differences come from the params
    return vm[cfg.best_metric], {f"val/{k}": v for k, v in vm.items()}

  # `best/` starts as the base model (trajectory 0): a run that never improves keeps the base params.
  best_ck = Checkpointer(workdir / "best", max_to_keep=1)
  if best_ck.latest_step() is not None:
    best = best_ck.metadata()["best"]
  else:
    value, _ = criterion(task.gen.params, float(np.mean(base_rewards)))
    best = {
      "metric": cfg.best_metric,
      "value": float(value),
      "trajectory": 0,
      "heldout_reward": float(np.mean(base_rewards)),
    }
    # Every process saves (orbax writes collectively); on a mesh the base params, whole on every process, are
    # saved as one array replicated over it.
    best_ck.save(0, task.gen.params if mesh is None else parallel.replicate(task.gen.params, mesh), {"best": best})
  sign = BEST_METRICS[cfg.best_metric]
  key = jax.random.key(cfg.seed)

  def batch_fn(it):
    arrays, host = batching.batch_at(
      train, it, cfg.batch_size, cfg.seed, task.gen.tokenizer, max_length=task.gen.max_length
    )
    rng = jax.random.fold_in(key, it)
    cond, uncond = task.inputs(host["caption"], arrays["length"], rng=jax.random.fold_in(rng, 3))
    x_T = task.noise(jax.random.fold_in(rng, 1), cfg.batch_size)
    data = task.data_batch(arrays, cond) if ft.regularizer == "diffusion" else None
    if mesh is not None:  # each process keeps its rows of the global batch
      x_T, cond, uncond, data = parallel.local_rows((x_T, cond, uncond, data))
    return x_T, cond, uncond, jax.random.fold_in(rng, 2), data

  # Fine-tuning wall clock for the curves against seconds: from the loop's start, without the held-out
  # evaluations and without JAX's tracing and compilation (reported apart as `compile_seconds`), continued
  # across resumes.
  prior = [r for r in read_metrics(workdir) if "wall_seconds" in r]
  clock = {
    "offset": max((r["wall_seconds"] for r in prior), default=0.0),
    "compile_offset": max((r.get("compile_seconds", 0.0) for r in prior), default=0.0),
    "start": time.time(),
    "evals": 0.0,
    "eval_compile": 0.0,
  }
  compile_clock = CompileClock()

  def loop_compile_seconds():
    return compile_clock.seconds - clock["eval_compile"]

  def eval_fn(state, it):
    t_eval, c_eval = time.time(), compile_clock.seconds
    wall = clock["offset"] + (t_eval - clock["start"] - clock["evals"] - loop_compile_seconds())
    # Held-out sampling and evaluation run on one device per process with a whole copy of the params (on a mesh
    # they are split or replicated over it): the same numbers as a one-device run.
    params = parallel.gathered(state.params)
    terms = heldout.reward_terms(params)
    out = {"heldout_reward": float(np.mean(task.reward_fn.combine(terms)))}
    if len(terms) > 1:  # a composite reward: every term on its own
      out.update({f"heldout_reward_terms/{k}": float(np.mean(v)) for k, v in terms.items()})
    value, val_metrics = criterion(params, out["heldout_reward"])
    out.update(val_metrics)
    if sign * value > sign * best["value"]:
      best.update(value=float(value), trajectory=it, heldout_reward=out["heldout_reward"])
      best_ck.save(it, state.params, {"best": best})
    if evaluator is not None:  # test-split monitoring (not used for any choice)
      out.update({f"eval/{k}": v for k, v in quick_eval(params, test, it).items()})
    logging.info("finetune %s: trajectory %d held-out reward %.4f", ft.method, it, out["heldout_reward"])
    out["wall_seconds"] = wall
    out["compile_seconds"] = clock["compile_offset"] + loop_compile_seconds()
    clock["evals"] += time.time() - t_eval
    clock["eval_compile"] += compile_clock.seconds - c_eval
    return out

  writer = MetricWriter(workdir)
  ck = Checkpointer(workdir / "checkpoints")
  clock["start"] = time.time()
  try:
    with compile_clock:
      loop = train_loop(
        state=state,
        step_fn=lambda s, b: _step_with_flat_metrics(update, s, b, base_params),
        batch_fn=batch_fn,
        num_steps=cfg.trajectories,
        checkpointer=ck,
        writer=writer,
        metadata={"run": meta["run"]},
        log_every=1,
        checkpoint_every=cfg.checkpoint_every,
        eval_fn=eval_fn,
        eval_every=cfg.eval_every,
        on_nonfinite=cfg.on_nonfinite,
        desc=f"finetune[{ft.method}]",
        progress=progress,
        state_step=lambda s: int(s.step) // per_traj,
      )
  finally:
    writer.close()
    ck.close()
  final_rewards = heldout.rewards(parallel.gathered(loop.state.params))
  summary = {
    "method": ft.method,
    "trajectories": loop.last_step,
    "updates": int(loop.state.step),
    "base_heldout_reward": float(np.mean(base_rewards)),
    "final_heldout_reward": float(np.mean(final_rewards)),
    "best": best,
    "seconds": time.time() - t0,
    "compile_seconds": clock["compile_offset"] + loop_compile_seconds(),
    "preempted": loop.preempted,
    "nonfinite_steps": loop.nonfinite_steps,
  }
  write_json(workdir / "summary.json", summary, indent=2)
  best_ck.close()
  return summary


def _step_with_flat_metrics(update, state, batch, base_params=None):
  x_T, cond, uncond, rng, data = batch
  state, metrics = update(state, x_T, cond, uncond, rng, data, base_params)
  return state, _flatten_metrics(metrics)


def generate_fn_for(task: MotionTask, params, ft: finetune.FinetuneConfig):
  def generate(captions, pos_tokens, lengths, rng):
    del pos_tokens
    feats, _ = task.gen.generate(
      captions, lengths, rng, guidance_scale=ft.guidance_scale, num_steps=ft.num_steps, params=params, normalized=True
    )
    return feats

  return generate


def _recorded_path(name: str, path: Optional[str], workdir: pathlib.Path) -> dict:
  """`{name: path relative to workdir, name_absolute: absolute path}` for finetune.json (None stays None):
  the relative form keeps a run loadable when it is moved or copied together with its inputs, the absolute
  one when only the run folder moves."""
  if path is None:
    return {name: None, f"{name}_absolute": None}
  absolute = pathlib.Path(path).absolute()
  return {name: os.path.relpath(absolute, pathlib.Path(workdir).absolute()), f"{name}_absolute": str(absolute)}


def recorded_path(info: dict, name: str, workdir: str | os.PathLike) -> str:
  """The folder a run's finetune.json records under `name`: relative to the run folder if it exists there,
  else the recorded absolute path (runs written before relative paths were recorded hold only that)."""
  candidates = [pathlib.Path(os.path.normpath(pathlib.Path(workdir) / info[name]))] if info.get(name) else []
  candidates += [pathlib.Path(info[f"{name}_absolute"])] if info.get(f"{name}_absolute") else []
  for c in candidates:
    if c.exists():
      return str(c)
  raise FileNotFoundError(
    f"{pathlib.Path(workdir) / 'finetune.json'}: field {name!r}: the recorded folder is missing "
    f"(tried {[str(c) for c in candidates]}); expected it beside the run as when it was written, or at its "
    "recorded absolute path"
  )


def load_finetuned_generator(workdir: str, which: str = "final") -> Generator:
  """The base generator of a fine-tuning run with its fine-tuned denoiser params ('final' = latest
  checkpoint, 'best' = best by the run's `best_metric`, the base params if nothing beat them). Its
  `sampler_defaults` are the sampler it was fine-tuned with (`FinetuneConfig.num_steps` / `guidance_scale`; the
  base generator's when the run records none)."""
  workdir = pathlib.Path(workdir)
  info = read_json(workdir / "finetune.json", "fine-tuning run info")
  gen = load_generator(recorded_path(info, "generator_workdir", workdir))
  run = run_config_from_dict(info["run"])
  if which == "best" and (workdir / "best").is_dir():
    ck = Checkpointer(workdir / "best", max_to_keep=1)
    params = ck.restore(gen.params)
  else:
    mask = trainable_mask(gen.params, run.trainable)
    tx = make_optimizer(run.finetune.optim, mask)
    ck = Checkpointer(workdir / "checkpoints")
    template = jax.eval_shape(lambda: create_train_state(gen.params, tx, use_ema=run.ema_decay > 0))
    params = ck.restore(template).params
  ck.close()
  own = recorded_sampler(
    info["run"].get("finetune"),
    run.finetune.num_steps,
    run.finetune.guidance_scale,
    f"{workdir} (FinetuneConfig, the sampler it was fine-tuned with)",
  )
  return dataclasses.replace(gen, params=params, sampler_defaults=own or gen.sampler_defaults)


def load_any_generator(workdir: str, which: str = "final") -> Generator:
  """A generator workdir (trained or converted) or a fine-tuning workdir (its `which` params): what the
  command-line evaluation and generation accept as `--generator_workdir`."""
  if (pathlib.Path(workdir) / "finetune.json").is_file():
    return load_finetuned_generator(workdir, which)
  return load_generator(workdir)
