"""Writes the tutorial notebooks (`python notebooks/_build.py`) so their source stays reviewable as Python.

Every notebook:
  * opens with a Colab badge, the notebook's estimated run time on a Colab CPU and GPU runtime, and an install
    cell that is skipped when `easytune_jax` is already importable. Both the badge and the install cell are
    generated from ONE setting, the repository location `REPO` below ("owner/name" on GitHub); set it with
    `python notebooks/_build.py --repo owner/name` (or the EASYTUNE_REPO environment variable) to regenerate the
    notebooks for a fork. In the notebook, `EASYTUNE_SOURCE` in the install cell (or the environment variable
    of the same name) may instead name a wheel (`/content/easytune_jax-0.1.0-py3-none-any.whl`) or a local
    checkout (`/content/easytune_jax`);
  * imports the library (no library code is copied into a notebook);
  * reads three environment variables:
      EASYTUNE_NB_SMALL=1        everything tiny (CI);
      EASYTUNE_NB_PIPELINE=<dir> an existing trained pipeline with data/, base/, reward/, evaluator/
                                 (as `tests/pipeline.py` `build(root)` writes it), so nothing is retrained;
                                 without it the notebook trains its own small pipeline with the stage
                                 functions of `easytune_jax.quickstart`;
      EASYTUNE_NB_OUT=<dir>      where figures, GIFs and run folders go (default ./notebook_outputs).
"""

import argparse
import os
import pathlib

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = pathlib.Path(__file__).resolve().parent
# THE repository location (GitHub "owner/name"): the Colab badges and the install cells are generated from it.
# "OWNER" is a placeholder until the repository is published: regenerate with --repo owner/name.
PLACEHOLDER = "OWNER/easytune_jax"
REPO = os.environ.get("EASYTUNE_REPO", PLACEHOLDER)
BRANCH = "main"

# Run time of each notebook from top to bottom without EASYTUNE_NB_PIPELINE (it trains its own small pipeline).
# Estimates, not measured on Colab: scaled from the 2-core CPU runs of this repository (Colab's CPU runtime
# has 2 cores); on a GPU runtime compilation dominates.
RUN_TIME = {
  "01_quickstart": "about 10 minutes on a Colab CPU runtime, about 4 minutes on a GPU runtime",
  "02_step_aware_gradients": "about 3 minutes on a Colab CPU runtime, about 2 minutes on a GPU runtime",
  "03_reward_model_spl": "about 8 minutes on a Colab CPU runtime, about 3 minutes on a GPU runtime",
}


def badge(name: str, title: str, intro: str) -> str:
  url = f"https://colab.research.google.com/github/{REPO}/blob/{BRANCH}/notebooks/{name}.ipynb"
  text = (
    f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})\n\n"
    f"# {title}\n\n{intro}\n\n"
    f"**Run time** (estimate, not measured on Colab): {RUN_TIME[name]}, mostly compilation and the small "
    "training runs."
  )
  if REPO == PLACEHOLDER:
    text += (
      "\n\n_`OWNER` in the badge is a placeholder: the notebooks are regenerated for the published "
      "repository with `python notebooks/_build.py --repo owner/name`; until then set `EASYTUNE_SOURCE` "
      "in the install cell to a wheel or a local checkout._"
    )
  return text


def install_cell() -> str:
  """The install cell: pip-installs EASYTUNE_SOURCE (git URL of REPO, a wheel or a local path) when needed."""
  return f'''\
# Installs easytune_jax when it is not importable yet (Colab); a local checkout is used as is.
# EASYTUNE_SOURCE: the repository ("git+https://github.com/owner/name"), a wheel file or a local checkout folder
# (the environment variable of the same name overrides it).
import os
EASYTUNE_SOURCE = os.environ.get("EASYTUNE_SOURCE", "git+https://github.com/{REPO}@{BRANCH}")
try:
    import easytune_jax  # noqa: F401
except ImportError:
    if "{PLACEHOLDER}" in EASYTUNE_SOURCE:
        raise RuntimeError("EASYTUNE_SOURCE still names the placeholder repository {PLACEHOLDER}: set it to the "
                           "repository's git URL, a wheel (.whl) or a local checkout folder")
    get_ipython().run_line_magic("pip", f"install -q {{EASYTUNE_SOURCE!r}}")
'''


def settings(name: str) -> str:
  return f'''\
import os, pathlib, time
import numpy as np
import jax
from IPython.display import Image, Markdown, display

SMALL = os.environ.get("EASYTUNE_NB_SMALL", "0") == "1"        # tiny sizes (CI)
PIPELINE = os.environ.get("EASYTUNE_NB_PIPELINE")               # a trained pipeline folder, or None
OUT = pathlib.Path(os.environ.get("EASYTUNE_NB_OUT", "notebook_outputs")).absolute() / "{name}"
OUT.mkdir(parents=True, exist_ok=True)
T0 = time.time()
print(f"jax {{jax.__version__}} on {{jax.default_backend()}}; SMALL={{SMALL}}; PIPELINE={{PIPELINE}}; OUT={{OUT}}")
'''


PIPELINE_DIRS = """\
from easytune_jax.pipelines import quickstart as qs

# Stage sizes when the notebook trains its own pipeline (SMALL: seconds; otherwise a few CPU minutes).
QS = qs.QuickstartConfig(num_motions=96 if SMALL else 300, scale=0.02 if SMALL else 0.2)

if PIPELINE:
    ROOT = pathlib.Path(PIPELINE)
    missing = [d for d in ("data", "base", "reward", "evaluator") if not (ROOT / d).is_dir()]
    if missing:
        raise FileNotFoundError(f"EASYTUNE_NB_PIPELINE={ROOT}: expected the subfolders data/, base/, reward/, "
                                f"evaluator/; missing {missing}")
    stage_dir = lambda name, *_: str(ROOT / name)            # noqa: E731  (already trained)
else:
    ROOT = OUT / "pipeline"
    def stage_dir(name, fn, *args):
        t = time.time()
        out = fn(QS, ROOT, *args)
        print(f"stage {name}: {time.time() - t:.0f} s -> {out}")
        return out
"""


def nb01() -> nbformat.NotebookNode:
  cells = [
    new_markdown_cell(
      badge(
        "01_quickstart",
        "easytune_jax quickstart: data, base model, reward, EasyTune, metrics",
        "The whole pipeline on a CPU in a few minutes: a synthetic HumanML3D-format dataset, a tiny latent "
        "diffusion text-to-motion generator, the step-aware reward model (SPM), EasyTune fine-tuning, the "
        "standard T2M metrics and side-by-side animations of the base and the fine-tuned generator.",
      )
    ),
    new_code_cell(install_cell()),
    new_code_cell(settings("01_quickstart")),
    new_markdown_cell(
      "## 1. Data\n\nA synthetic dataset in the HumanML3D layout (263-d features, 22 joints, "
      "captions with POS tags). Set `QS = qs.QuickstartConfig(data_dir=...)` to use the real "
      "HumanML3D folder instead."
    ),
    new_code_cell(
      PIPELINE_DIRS
      + """
data_dir = stage_dir("data", qs.stage_data)
"""
    ),
    new_code_cell("""\
from easytune_jax.data.humanml3d import load_dataset
from easytune_jax.data import features
from easytune_jax.data.preview import plot_motion_strips

train = load_dataset(data_dir, "train")
test = load_dataset(data_dir, "test")
print(f"{len(train)} train / {len(test)} test clips, feature dim {train.info.dim}, {train.info.joints_num} joints")
for e in train.entries[:5]:
    print(f"  {e.name:>10} ({e.length:3d} frames): {e.captions[0][0]}")

# Joint positions from the features (root from velocities + root-relative joints), then a strip per clip.
shown = train.entries[:3]
joints = [np.asarray(features.recover_from_ric(e.motion, train.info.joints_num)) for e in shown]
strip_png = str(OUT / "motion_strips.png")
plot_motion_strips(joints, [e.captions[0][0] for e in shown], strip_png, num_poses=6)
display(Image(filename=strip_png))
"""),
    new_markdown_cell(
      "## 2. Base generator\n\nA VAE (motion -> latent) and a latent denoiser with a small "
      "text encoder, trained with the standard diffusion loss (`easytune_jax.train.base`)."
    ),
    new_code_cell("""\
from easytune_jax.bundles import generator

gen_dir = stage_dir("base", qs.stage_base, data_dir)
base_gen = generator.load_generator(gen_dir)
n_params = sum(x.size for x in jax.tree.leaves(base_gen.params))
print(f"denoiser + text encoder parameters: {n_params:,}; max_length {base_gen.max_length} frames")
"""),
    new_markdown_cell(
      "## 3. Reward model (SPM) and evaluator\n\nThe step-aware reward model scores a "
      "(possibly noisy) motion against its caption; it was pretrained contrastively and "
      "refined with self-refinement preference learning (SPL, see notebook 03). The "
      "evaluator is a separate T2M-style text/motion encoder used only for the metrics."
    ),
    new_code_cell("""\
import json
from easytune_jax.bundles.reward import read_reward_metadata

reward_dir = stage_dir("reward", qs.stage_reward, data_dir)
eval_dir = stage_dir("evaluator", qs.stage_evaluator, data_dir)
meta = read_reward_metadata(reward_dir)
print("reward model:", meta["stage"], "stage,", meta["train"]["model"]["mode"], "mode")
if (pathlib.Path(reward_dir) / "retrieval.json").exists():
    print(json.dumps(json.loads((pathlib.Path(reward_dir) / "retrieval.json").read_text()), indent=1)[:600])
"""),
    new_markdown_cell(
      "## 4. EasyTune fine-tuning\n\nEach trajectory of T DDIM steps gives T optimizer "
      "updates: at step i the loss is minus the reward of the one-step clean estimate "
      "x0_hat_i, differentiated through that step only (the chain continues without "
      "gradient), so memory does not grow with T."
    ),
    new_code_cell("""\
from easytune_jax import finetune
from easytune_jax.core.metric_writer import read_metrics
from easytune_jax.core.optim import OptimConfig, create_train_state, make_optimizer
from easytune_jax.core import sampling
from easytune_jax.bundles.finetuned import RunConfig
from easytune_jax.train import finetune_runner as fr

# The CPU sampler setting (core/sampling.py, the 'tiny' presets'); fewer steps in CI.
NUM_STEPS = 4 if SMALL else sampling.CPU_NUM_STEPS
GUIDANCE = sampling.CPU_GUIDANCE_SCALE
ft_cfg = finetune.FinetuneConfig(method="easytune", num_steps=NUM_STEPS, guidance_scale=GUIDANCE,
                                 optim=OptimConfig(learning_rate=1e-3 if SMALL else 2e-4, warmup_steps=0))
run = RunConfig(finetune=ft_cfg, trajectories=2 if SMALL else 12, batch_size=4 if SMALL else 16,
                eval_every=1 if SMALL else 3, heldout_size=8 if SMALL else 64, checkpoint_every=100)
ft_dir = str(OUT / "finetune_easytune")
summary = fr.run_finetune(run, ft_dir, gen_dir, reward_dir, data_dir, progress=False)
print(f"{summary['updates']} updates in {summary['seconds']:.0f} s; held-out reward "
      f"{summary['base_heldout_reward']:.4f} -> {summary['final_heldout_reward']:.4f}")
"""),
    new_code_cell("""\
from easytune_jax import viz

rows = read_metrics(ft_dir)
train_rows = [r for r in rows if "reward" in r]
held = [r for r in rows if "heldout_reward" in r]
curves = {"train reward (mean over the T steps)": ([r["step"] for r in train_rows], [r["reward"] for r in train_rows])}
if held:
    curves["held-out reward"] = ([r["step"] for r in held], [r["heldout_reward"] for r in held])
curve_png = viz.plot_curves(curves, str(OUT / "reward_curve.png"), title="EasyTune", xlabel="trajectory",
                            ylabel="SPM reward")
display(Image(filename=curve_png))
"""),
    new_markdown_cell(
      "## 5. Metrics\n\nR-precision, FID, matching score and diversity with the separate "
      "evaluator (`quick=True`: 2 replications, no multimodality; the full protocol is "
      "`evaluate(..., replications=20)`), base vs fine-tuned, plus the mean SPM reward."
    ),
    new_code_cell("""\
from easytune_jax.eval import evaluation
from easytune_jax.eval.report import write_results
from easytune_jax.bundles.evaluator import load_trained_evaluator
from easytune_jax.bundles.finetuned import load_finetuned_generator
from easytune_jax.bundles.generator import generator_fn
from easytune_jax.bundles.task import load_task
evaluator = load_trained_evaluator(eval_dir).with_dataset_stats(test.mean, test.std)
task = load_task(gen_dir, reward_dir)
tuned_gen = load_finetuned_generator(ft_dir)
max_len = min(base_gen.max_length, evaluator.max_length)

def make_fns(gen):
    def reward_fn(x, captions, lengths):
        cond, _ = task.inputs(captions, np.minimum(lengths, gen.max_length), rng=jax.random.key(0))
        return np.asarray(task.reward(jax.numpy.asarray(x[:, :gen.max_length]), cond, None))
    return generator_fn(gen, GUIDANCE, NUM_STEPS), reward_fn

results = []
for name, gen in [("base", base_gen), ("easytune", tuned_gen)]:
    g, r = make_fns(gen)
    results.append(evaluation.evaluate(g, evaluator, test, quick=True, batch_size=8 if SMALL else 32,
                                       max_length=max_len, method=name, reward_fn=r))
paths = write_results(results, str(OUT / "eval"))
display(Markdown(pathlib.Path(paths["markdown"]).read_text()))
"""),
    new_markdown_cell(
      "## 6. Animations\n\nThe same caption and the same initial noise through the base and the fine-tuned generator."
    ),
    new_code_cell("""\
gifs = []
for i, entry in enumerate(test.entries[:1 if SMALL else 2]):
    caption = entry.captions[0][0]
    length = min(base_gen.max_length, 4 * (entry.length // 4))
    rng = jax.random.key(100 + i)
    motions = [g.generate([caption], [length], rng, GUIDANCE, NUM_STEPS)[1][0, :length] for g in (base_gen, tuned_gen)]
    gifs.append(viz.side_by_side(motions, ["base", "EasyTune"], str(OUT / f"sample_{i}.gif"), suptitle=caption))
for path in gifs:
    display(Image(filename=path))
print(f"notebook time {time.time() - T0:.0f} s")
"""),
  ]
  return new_notebook(cells=cells, metadata=META)


def nb02() -> nbformat.NotebookNode:
  cells = [
    new_markdown_cell(
      badge(
        "02_step_aware_gradients",
        "Step-aware gradients: why EasyTune's memory does not grow with T",
        "DRaFT-style fine-tuning backpropagates the reward through the whole denoising chain: step i's "
        "gradient depends recursively on every later step, and autodiff stores the residuals of all of "
        "them. EasyTune optimises each step on its own (the reward of the step's clean estimate, the "
        "step's input detached). This notebook makes both visible with the model-agnostic builders of "
        "`easytune_jax.finetune`, a small MLP denoiser and a quadratic reward (seconds on a CPU).",
      )
    ),
    new_code_cell(install_cell()),
    new_code_cell(settings("02_step_aware_gradients")),
    new_code_cell('''\
import jax.numpy as jnp
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from easytune_jax import finetune
from easytune_jax.core import sampling
from easytune_jax.core import schedules
from easytune_jax.core.metric_writer import read_metrics
from easytune_jax.core.optim import OptimConfig, create_train_state, make_optimizer

D, H, B = 8, 32, 8          # data dim, hidden width, batch
T = 10                      # DDIM steps for the gradient and reward comparisons
schedule = schedules.make_schedule()

def init_params(key):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    return {"w1": jax.random.normal(k1, (D, H)) / np.sqrt(D), "wc": jax.random.normal(k2, (D, H)) / np.sqrt(D),
            "wt": jax.random.normal(k3, (H,)), "b1": jnp.zeros(H),
            "w2": jax.random.normal(k4, (H, D)) / (4 * np.sqrt(H)), "skip": jnp.ones(())}

def mlp_denoise(p, x, t, cond):
    """eps prediction [B, D] from x_t [B, D], t int32 [B], cond {'c': [B, D]}.

    The skip term (eps ~ x_t, "the input is mostly noise") keeps the untrained sampler's x0_hat bounded."""
    h = jnp.tanh(x @ p["w1"] + cond["c"] @ p["wc"] + jnp.sin(t[:, None] / 1000.0 * p["wt"]) + p["b1"])
    return p["skip"] * x + h @ p["w2"]

def reward(x, cond, t):
    """Quadratic reward [B]: closeness of the sample to the caption's target point."""
    return -jnp.mean((x - cond["c"]) ** 2, axis=-1)

params = init_params(jax.random.key(0))
key_c, key_x = jax.random.split(jax.random.key(1))
cond = {"c": jax.random.normal(key_c, (B, D))}
uncond = {"c": jnp.zeros((B, D))}
x_T = jax.random.normal(key_x, (B, D))
'''),
    new_markdown_cell(
      "## 1. Gradient norm per step index\n\n**DRaFT-T** (gradient through all T steps): "
      "we give every step its own copy of the parameters (`stacked[i]` is used at step i, all "
      "copies equal), run the library's DRaFT loss with `k=T` and take one `jax.grad` w.r.t. "
      "the stack: row i is step i's contribution to the full-backprop gradient, which "
      "carries the product of the Jacobians of all later steps.\n\n**EasyTune**: the "
      "`grad_norm_per_step` metric of one update (frozen sampler: every step's gradient is "
      "taken at the same parameters, so the rows are comparable)."
    ),
    new_code_cell('''\
def per_step_denoise(timesteps):
    """A denoiser whose params are stacked per step: step i (found from its timestep) uses stack[i]."""
    def denoise(stack, x, t, cond):
        i = jnp.argmin(jnp.abs(timesteps.t - jnp.ravel(t)[0]))
        return mlp_denoise(jax.tree.map(lambda a: a[i], stack), x, t, cond)
    return denoise

def draft_full_cfg(T):
    return finetune.FinetuneConfig(method="draft", num_steps=T, k=T, guidance_scale=2.0,
                                   optim=OptimConfig(learning_rate=1e-2, warmup_steps=0))

def easytune_cfg(T):
    return finetune.FinetuneConfig(method="easytune", num_steps=T, guidance_scale=2.0,
                                   optim=OptimConfig(learning_rate=1e-2 / T, warmup_steps=0))

cfg = draft_full_cfg(T)
timesteps = sampling.make_timesteps(schedule, cfg.sampler_config())
draft_loss = finetune.make_trajectory_loss(cfg, per_step_denoise(timesteps), reward, schedule)
stack = jax.tree.map(lambda a: jnp.broadcast_to(a, (T,) + a.shape), params)
g_stack = jax.jit(jax.grad(lambda s: draft_loss(s, x_T, cond, uncond, jax.random.key(2))[0]))(stack)
draft_norms = np.sqrt(sum(np.sum(np.asarray(g) ** 2, axis=tuple(range(1, g.ndim))) for g in jax.tree.leaves(g_stack)))

tx = make_optimizer(easytune_cfg(T).optim)
et_update = finetune.make_update_fn(easytune_cfg(T), mlp_denoise, reward, schedule, tx)
_, et_metrics = et_update(create_train_state(params, tx), x_T, cond, uncond, jax.random.key(2))
easytune_norms = np.asarray(et_metrics["grad_norm_per_step"])

fig, ax = plt.subplots(figsize=(6, 3.5), dpi=80)
ax.semilogy(np.arange(T), draft_norms, "o-", label="DRaFT-T (full backprop), step i's share")
ax.semilogy(np.arange(T), easytune_norms, "s-", label="EasyTune, step i's own gradient")
ax.set_xlabel("step index i (0 = pure noise, T-1 = last step)"); ax.set_ylabel("gradient norm")
ax.set_xticks(np.arange(T), [f"{i}\\nt={int(t)}" for i, t in enumerate(np.asarray(timesteps.t))], fontsize=7)
ax.legend(fontsize=8); fig.tight_layout()
grad_png = str(OUT / "grad_norm_per_step.png"); fig.savefig(grad_png); plt.close(fig)
display(Image(filename=grad_png))
print("DRaFT-T per-step norms:", np.round(draft_norms, 5))
print("EasyTune per-step norms:", np.round(easytune_norms, 5))
'''),
    new_markdown_cell(
      "## 2. Compiled memory vs T\n\nXLA's memory analysis of one jitted update "
      "(`finetune.compiled_memory`): deterministic and available on CPU. DRaFT-T stores every "
      "step's residuals for the backward pass, so its temporaries grow linearly with T; "
      "EasyTune's update is one `lax.scan` whose body differentiates a single step, so they "
      "stay flat."
    ),
    new_code_cell("""\
TS = [5, 20] if SMALL else [5, 10, 20, 40]
memory = {"EasyTune": [], "DRaFT-T": []}
for t_steps in TS:
    for name, c in (("EasyTune", easytune_cfg(t_steps)), ("DRaFT-T", draft_full_cfg(t_steps))):
        tx_t = make_optimizer(c.optim)
        upd = finetune.make_update_fn(c, mlp_denoise, reward, schedule, tx_t, jit=False)
        m = finetune.compiled_memory(upd, create_train_state(params, tx_t), x_T, cond, uncond,
                                     jax.random.key(0))
        memory[name].append(m["temp"])
for name, v in memory.items():
    print(f"{name:>9} temp bytes per T {dict(zip(TS, v))}")

fig, ax = plt.subplots(figsize=(5, 3.5), dpi=80)
for name, v in memory.items():
    ax.plot(TS, np.asarray(v) / 1024, "o-", label=name)
ax.set_xlabel("DDIM steps T"); ax.set_ylabel("compiled temporaries (KiB)"); ax.legend(); fig.tight_layout()
mem_png = str(OUT / "memory_vs_T.png"); fig.savefig(mem_png); plt.close(fig)
display(Image(filename=mem_png))
"""),
    new_markdown_cell(
      "## 3. Reward per update\n\nBoth methods from the same start; after each trajectory "
      "the held-out reward is the reward of x_0 sampled (no gradient) from fixed noise. "
      "EasyTune makes T optimizer updates per trajectory (learning rate / T), DRaFT-T one."
    ),
    new_code_cell("""\
TRAJ = 6 if SMALL else 40
x_held = jax.random.normal(jax.random.key(7), (B, D))

@jax.jit
def heldout_reward(p):
    x0 = sampling.sample(mlp_denoise, p, schedule, timesteps, x_held, cond, uncond, 2.0).x0
    return jnp.mean(reward(x0, cond, None))

curves = {}
for name, c in (("EasyTune", easytune_cfg(T)), ("DRaFT-T", draft_full_cfg(T))):
    tx_m = make_optimizer(c.optim)
    upd = finetune.make_update_fn(c, mlp_denoise, reward, schedule, tx_m)
    state = create_train_state(params, tx_m)
    updates, values = [0], [float(heldout_reward(state.params))]
    for it in range(TRAJ):
        rng = jax.random.fold_in(jax.random.key(3), it)
        state, _ = upd(state, jax.random.normal(rng, (B, D)), cond, uncond, rng)
        updates.append(int(state.step)); values.append(float(heldout_reward(state.params)))
    curves[name] = (updates, values)
    print(f"{name:>9}: held-out reward {values[0]:.4f} -> {values[-1]:.4f} after {updates[-1]} updates")

fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), dpi=80)
for name, (u, v) in curves.items():
    axes[0].plot(u, v, "o-", ms=3, label=name)
    axes[1].plot(np.arange(len(v)), v, "o-", ms=3, label=name)
axes[0].set_xlabel("optimizer updates"); axes[1].set_xlabel("trajectories (sampling cost)")
for ax in axes:
    ax.set_ylabel("held-out reward"); ax.legend(fontsize=8)
fig.tight_layout()
reward_png = str(OUT / "reward_per_update.png"); fig.savefig(reward_png); plt.close(fig)
display(Image(filename=reward_png))
print(f"notebook time {time.time() - T0:.0f} s")
"""),
  ]
  return new_notebook(cells=cells, metadata=META)


def nb03() -> nbformat.NotebookNode:
  cells = [
    new_markdown_cell(
      badge(
        "03_reward_model_spl",
        "The step-aware reward model and self-refinement preference learning (SPL)",
        "The SPM encodes captions and (possibly noisy) motions into one latent space; its reward is the "
        "text/motion similarity. It is pretrained contrastively, then refined with SPL: in each batch the "
        "model retrieves a motion for every caption; where the ground truth is not in its top-k the pair "
        "(retrieved, ground truth) becomes a preference the model is trained on.",
      )
    ),
    new_code_cell(install_cell()),
    new_code_cell(settings("03_reward_model_spl")),
    new_code_cell(
      PIPELINE_DIRS
      + """
from easytune_jax.data.humanml3d import load_dataset
from easytune_jax.bundles.reward import load_reward, load_reward_tokenizer
from easytune_jax.eval.retrieval import encode_dataset, evaluate_retrieval
from easytune_jax.rewards.spm_objective import RewardTrainConfig
from easytune_jax.train import reward as R

data_dir = stage_dir("data", qs.stage_data)
train = load_dataset(data_dir, "train")
test = load_dataset(data_dir, "test")
print(f"{len(train)} train / {len(test)} test clips")
"""
    ),
    new_markdown_cell(
      "## 1. SPM pretraining\n\nWith `EASYTUNE_NB_PIPELINE` the pipeline's trained SPM is the "
      "pretrained model; otherwise a small SPM is trained here (contrastive text/motion "
      "alignment, reconstruction and KL terms, on clean and noised motion)."
    ),
    new_code_cell("""\
if PIPELINE:
    pre_dir = str(ROOT / "reward")
else:
    rcfg = RewardTrainConfig(batch_size=16, max_length=64, log_every=10) if SMALL else RewardTrainConfig()
    pre = R.train_reward(rcfg, OUT / "spm_pretrain", train, steps=10 if SMALL else 150, progress=False)
    pre_dir = pre["workdir"]
    print(f"pretrained {pre['steps']} steps in {pre['train_seconds']:.0f} s")
_, pre_params, pre_cfg = load_reward(pre_dir)
tokenizer = load_reward_tokenizer(pre_dir)
print("SPM:", pre_cfg.model.mode, "mode, latent", pre_cfg.model.latent_dim, "| batch", pre_cfg.batch_size,
      "| max_length", pre_cfg.max_length)
"""),
    new_markdown_cell(
      "## 2. SPL mined pairs\n\nOne batch of train captions and motions (clean, t = 0), their "
      "cosine-similarity matrix and `spl.mine_preference_pairs`: for each caption the top-1 "
      "retrieved motion and whether the ground truth is within the top-k (or any similarity "
      "exceeds `high_sim`). Rows marked `pair` are the preferences SPL trains on: the "
      "ground-truth motion should beat the retrieved one."
    ),
    new_code_cell("""\
from easytune_jax.rewards import spl
from easytune_jax.data.batching import iterate_batches

BATCH = min(8 if SMALL else 32, len(train))
K = 2 if SMALL else pre_cfg.spl_k
lat = encode_dataset(pre_params, pre_cfg, train, tokenizer, timesteps=(0,), batch_size=BATCH)
text_mu, motion_mu = lat[0]
# encode_dataset visits the entries in the order of iterate_batches with the same seed (1234): its captions.
arrays, host = next(iterate_batches(train, BATCH, 1234, 0, tokenizer, drop_last=False,
                                    max_length=pre_cfg.max_length))
captions = host["caption"]
sim = spl.cosine_similarity_matrix(text_mu[:BATCH], motion_mu[:BATCH])
pairs = spl.mine_preference_pairs(sim, k=K, high_sim=pre_cfg.spl_high_sim)
lines = ["| caption | retrieved motion's caption | ground-truth caption | GT in top-k | SPL pair |",
         "|---|---|---|---|---|"]
for i in range(BATCH):
    r, g = int(pairs.retrieved[i]), int(pairs.target[i])
    ok = bool(pairs.correct[i])
    lines.append(f"| {captions[i]} | {captions[r]} (#{r}) | {captions[g]} (#{g}) | {'yes' if ok else 'no'} | "
                 f"{'-' if ok else 'pair'} |")
display(Markdown("\\n".join(lines)))
print(f"{int(np.sum(~np.asarray(pairs.correct)))} of {BATCH} captions give a preference pair (k={K})")
"""),
    new_markdown_cell(
      "## 3. SPL fine-tuning and retrieval before/after\n\nText-to-motion retrieval on the "
      "test split (`evaluate_retrieval`: R@k in % as `R<k>`, median rank as `MedR`), with the motion clean "
      "(t = 0) and noised to t = 300 of 1000: the step-aware SPM has to score noisy "
      "intermediate motions during EasyTune."
    ),
    new_code_cell("""\
TIMESTEPS = (0, 300)
before = evaluate_retrieval(pre_params, pre_cfg, test, tokenizer, timesteps=TIMESTEPS)
spl_run = R.train_reward(pre_cfg, OUT / "spm_spl", train, spl=True, init_from=pre_dir,
                         steps=4 if SMALL else 60, eval_dataset=test, eval_timesteps=TIMESTEPS, progress=False)
after = spl_run["retrieval"]
print(f"SPL: {spl_run['steps']} steps in {spl_run['train_seconds']:.0f} s")

lines = ["| motion | protocol | metric | before SPL | after SPL |", "|---|---|---|---|---|"]
for key in sorted(before):
    for name in ("t2m/R1", "t2m/R3", "t2m/MedR", "m2t/R1"):
        lines.append(f"| t={key.split('/')[0][1:]} | {key.split('/')[1]} | {name} | {before[key][name]:.2f} | "
                     f"{after[key][name]:.2f} |")
display(Markdown("\\n".join(lines)))
"""),
    new_markdown_cell(
      "## 4. Clean vs noisy motion\n\nThe similarity matrices of the same captions and "
      "motions, motion clean (t = 0) and noised (t = 300), after SPL. A sharp diagonal "
      "means the caption retrieves its own motion."
    ),
    new_code_cell("""\
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

spl_params, spl_cfg = spl_run["params"], spl_run["config"]
lat = encode_dataset(spl_params, spl_cfg, train, tokenizer, timesteps=TIMESTEPS, batch_size=BATCH)
fig, axes = plt.subplots(1, len(TIMESTEPS), figsize=(4 * len(TIMESTEPS), 3.6), dpi=80)
for ax, t in zip(axes, TIMESTEPS):
    text_mu, motion_mu = lat[t]
    s = np.asarray(spl.cosine_similarity_matrix(text_mu[:BATCH], motion_mu[:BATCH]))
    im = ax.imshow(s, vmin=-1, vmax=1, cmap="RdBu_r")
    acc = float(np.mean(np.argmax(s, axis=1) == np.arange(BATCH)))
    ax.set_title(f"motion at t={t}: top-1 {100 * acc:.0f}%"); ax.set_xlabel("motion"); ax.set_ylabel("caption")
fig.colorbar(im, ax=list(axes), shrink=0.8)
sim_png = str(OUT / "similarity_clean_vs_noisy.png"); fig.savefig(sim_png); plt.close(fig)
display(Image(filename=sim_png))
print(f"notebook time {time.time() - T0:.0f} s")
"""),
  ]
  return new_notebook(cells=cells, metadata=META)


META = {
  "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
  "language_info": {"name": "python"},
  "colab": {"provenance": []},
  "accelerator": "GPU",
}

NOTEBOOKS = {"01_quickstart": nb01, "02_step_aware_gradients": nb02, "03_reward_model_spl": nb03}


def main():
  global REPO
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repo", default=REPO, help=f"GitHub owner/name of the repository (default {REPO})")
  REPO = parser.parse_args().repo
  for name, fn in NOTEBOOKS.items():
    nb = fn()
    for i, cell in enumerate(nb.cells):  # stable ids: a rebuild without changes gives the same file
      cell.id = f"{name[:2]}-{i:02d}"
    nbformat.validate(nb)
    path = HERE / f"{name}.ipynb"
    nbformat.write(nb, str(path))
    print("wrote", path)


if __name__ == "__main__":
  main()
