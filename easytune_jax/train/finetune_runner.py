"""Reward fine-tuning of a trained generator with a trained reward model: the harness behind
`launch/finetune.py`, the benchmark and the quickstart.

`bundles.task.MotionTask` (built by `bundles.task.load_task`) adapts the concrete models to the model-agnostic
builders of `easytune_jax.finetune`:

  cond = {"gen": generator condition (frozen text encoder output), "reward": reward-model text inputs,
          "mask": frame mask [B, L]};  uncond has the same structure with the generator's null condition.
  denoise(params, x_t, t, cond) = generator denoiser on cond["gen"]
  decode(z, cond)               = frozen VAE decoder (MLD) with cond["mask"] -> normalised features [B, L, D]
  reward(x, cond, t)            = SPM cosine(text, motion) [B] on cond["reward"] and cond["mask"]

`run_finetune` drives any method through `finetune.make_update_fn` with `train_loop` (resume, SIGTERM,
non-finite policy), logs the reward per update and per step index, evaluates a held-out reward (fixed val
captions and noise, full sampling with the current parameters: `bundles.task.HeldOut`) at intervals, optionally
the evaluator's quick metrics (test split, monitoring), and keeps the best checkpoint by `RunConfig.best_metric`
(held-out reward, or an evaluator metric on the val split). The run's config (`RunConfig`), its finetune.json
paths and the loaders of its generator live in `bundles/finetuned.py`.
"""

from __future__ import annotations

import pathlib
import time

import jax
import numpy as np
from absl import logging

from easytune_jax import finetune
from easytune_jax.bundles import adapter as adapter_io
from easytune_jax.bundles.evaluator import load_trained_evaluator
from easytune_jax.bundles.finetuned import BEST_METRICS, RunConfig, run_config_from_dict, trainable_mask
from easytune_jax.bundles.finetuned import record_path as _recorded_path
from easytune_jax.bundles.task import HeldOut, generate_fn_for, load_task
from easytune_jax.core import parallel
from easytune_jax.core.checkpoint import Checkpointer
from easytune_jax.core.compile_clock import CompileClock
from easytune_jax.core.config import check_config_matches
from easytune_jax.core.metric_writer import MetricWriter, read_metrics
from easytune_jax.core.optim import create_train_state, make_optimizer
from easytune_jax.data import batching
from easytune_jax.data.humanml3d import load_dataset
from easytune_jax.data.safe_io import read_json, write_json
from easytune_jax.eval import evaluation
from easytune_jax.train.loop import train_loop

_EVAL_METRICS = ("R_precision_top_1", "R_precision_top_3", "Matching_score", "FID", "Diversity")


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


def run_finetune(
  cfg: RunConfig,
  workdir: str,
  generator_workdir: str,
  reward_workdir: str | None,
  data_dir: str,
  evaluator_workdir: str | None = None,
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
  saved_info: dict = {}
  if info_path.exists():
    # A rerun may extend the run or change its logging cadence, nothing else.
    # Read through RunConfig, so a field added since the run was written takes its default (the behaviour the
    # run had: new options default to the old behaviour).
    saved_info = read_json(info_path, "fine-tuning run info")
    saved = run_config_from_dict(saved_info["run"]).to_dict()
    # grad_chunk changes how the same updates are computed (batched or one by one), not the run.
    check_config_matches(
      saved,
      meta["run"],
      str(info_path),
      ignore=("trajectories", "eval_every", "checkpoint_every", "finetune.grad_chunk"),
    )

  ft = cfg.finetune
  # Adapter fine-tuning (finetune.lora): the state holds the adapter only (B = 0: the base at trajectory 0), the
  # frozen base params go to every update as `base_params`, and the held-out / evaluator measures see the merge.
  adapted = ft.lora.enabled
  if adapted:
    trained = finetune.lora.init_adapter(task.gen.params, ft.lora, adapter_key(cfg.seed))
    record = adapter_io.adapter_record(task.gen.params, generator_workdir, ft.lora, trained)
    if "adapter" in saved_info:  # a resumed adapter run continues on the base it was trained on
      adapter_io.check_base(saved_info["adapter"], task.gen.params, generator_workdir, str(info_path))
    meta["adapter"] = record
    logging.info(
      "finetune: adapter of %d parameters (%.2f MB: %d LoRA kernels rank %d, %d leaves whole) on a base of %d "
      "(%.2f MB); optimizer state and checkpoints hold the adapter only",
      record["adapter_params"],
      record["adapter_bytes"] / 1e6,
      record["lora_kernels"],
      ft.lora.rank,
      record["whole_leaves"],
      record["base_params"],
      record["base_bytes"] / 1e6,
    )
    merge = jax.jit(lambda base, a: finetune.lora.merge(base, a, ft.lora.scale))

    def full_params(p):
      return merge(task.gen.params, p)

    mask = None
  else:
    trained, full_params = task.gen.params, lambda p: p
    mask = trainable_mask(task.gen.params, cfg.trainable)
  write_json(info_path, meta, indent=2)
  tx = make_optimizer(ft.optim, mask)
  update = finetune.make_update_fn(
    ft, task.denoise, task.reward, task.gen.process, tx, decode=task.decode, ema_decay=cfg.ema_decay, jit=mesh is None
  )
  if mesh is not None:
    # x_T, cond, uncond and the regulariser's data batch are split over the mesh; the state is FSDP-sharded,
    # the key and the base params (KL regulariser) replicated. The random parts (dropout masks, per-step
    # reward keys from the replicated key; the per-batch reward key carried per row in cond) are drawn for
    # the global shapes, so a mesh run draws the numbers of the one-device run.
    update = parallel.jit_sharded(update, mesh, batch_argnums=(1, 2, 3, 5), donate_state=True)
  base_params = task.gen.params if ft.regularizer == "kl" or adapted else None
  per_traj = ft.updates_per_trajectory
  state = create_train_state(trained, tx, use_ema=cfg.ema_decay > 0)
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
      generate_fn_for(task, full_params(params), ft),
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
  ckpt_meta = {"adapter": meta["adapter"]} if adapted else {}  # an adapter checkpoint names its base
  best_ck = Checkpointer(workdir / "best", max_to_keep=1)
  if best_ck.latest_step() is not None:
    best = best_ck.metadata()["best"]
  else:
    value, _ = criterion(trained, float(np.mean(base_rewards)))
    best = {
      "metric": cfg.best_metric,
      "value": float(value),
      "trajectory": 0,
      "heldout_reward": float(np.mean(base_rewards)),
    }
    # Every process saves (orbax writes collectively); on a mesh the base params, whole on every process, are
    # saved as one array replicated over it.
    best_ck.save(0, trained if mesh is None else parallel.replicate(trained, mesh), {"best": best, **ckpt_meta})
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
    terms = heldout.reward_terms(full_params(params))
    out = {"heldout_reward": float(np.mean(task.reward_fn.combine(terms)))}
    if len(terms) > 1:  # a composite reward: every term on its own
      out.update({f"heldout_reward_terms/{k}": float(np.mean(v)) for k, v in terms.items()})
    value, val_metrics = criterion(params, out["heldout_reward"])
    out.update(val_metrics)
    if sign * value > sign * best["value"]:
      best.update(value=float(value), trajectory=it, heldout_reward=out["heldout_reward"])
      best_ck.save(it, state.params, {"best": best, **ckpt_meta})
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
        metadata={"run": meta["run"], **ckpt_meta},
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
  final_rewards = heldout.rewards(full_params(parallel.gathered(loop.state.params)))
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
  if adapted:  # what the adapter costs on disk against its base (sizes also logged at the start)
    summary["adapter"] = {
      **{k: meta["adapter"][k] for k in ("adapter_params", "adapter_bytes", "base_params", "base_bytes")},
      "checkpoint_bytes": adapter_io.folder_bytes(workdir / "checkpoints"),
      "best_bytes": adapter_io.folder_bytes(workdir / "best"),
    }
    logging.info("finetune: adapter checkpoints %s", summary["adapter"])
  write_json(workdir / "summary.json", summary, indent=2)
  best_ck.close()
  return summary


def adapter_key(seed: int) -> jax.Array:
  """The key of a run's adapter initialisation (A): a stream of its own, apart from the trajectories' keys
  (`fold_in(key(seed), trajectory)`)."""
  return jax.random.fold_in(jax.random.key(seed), finetune.lora.ADAPTER_STREAM)


def _step_with_flat_metrics(update, state, batch, base_params=None):
  x_T, cond, uncond, rng, data = batch
  state, metrics = update(state, x_T, cond, uncond, rng, data, base_params)
  return state, _flatten_metrics(metrics)
