"""A trained base generator as one bundle: text -> guided sampling (its kind's process) -> decoded motion -> joints.

`load_generator(workdir)` rebuilds everything from the checkpoints written by `train/gm.py` (config,
tokenizer, dataset Mean/Std and latent scale come from the checkpoint metadata). The bundle also exposes
what the fine-tuning builders take (WORKSPACE.md contracts):

  gen.denoise(params, x_t, t, cond)   pure denoiser; `params` = gen.params (the TRAINABLE denoiser params)
  gen.decode(vae_params, z, mask)     diffusion-space sample -> normalised features [B, L, D] (0 at padding);
                                      `vae_params` = gen.frozen["vae"] (None for MDM: identity + masking)
  gen.encode_text(texts, lengths)     cond pytree through the FROZEN text encoder (gen.frozen["text"])
  gen.uncond(batch)                   the unconditional pytree of the same structure
  gen.latent_shape                    the per-example shape of x_t
  gen.process                         the sampling process (DDIM / DDPM schedule, flow; core/sampling_process.py)

The sampler a generator was made for (DDIM steps, guidance scale) travels with it as `gen.sampler_defaults`
(read from the workdir: `BaseConfig.sampler` of a trained one, MLD's 50 steps / w 7.5 for a converted official
one, the `FinetuneConfig` of a fine-tuning run; None when the workdir records none). `resolve_sampler(gen,
num_steps, guidance_scale)` is the one place that turns "the generator's own unless overridden" into numbers
(launch/generate.py and launch/evaluate.py both use it).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from easytune_jax import viz
from easytune_jax.core import sampling
from easytune_jax.core.checkpoint import Checkpointer
from easytune_jax.core.config import config_from_dict
from easytune_jax.core.optim import create_train_state
from easytune_jax.data.text import TextEmbeddings, Tokenizer
from easytune_jax.models import generator as gm
from easytune_jax.models.text_encoder import TextEncoder
from easytune_jax.models.vae import MotionVAE, features_to_joints


@dataclasses.dataclass(frozen=True)
class SamplerDefaults:
  """The sampler a generator was made for: DDIM steps, guidance scale w, and where they are recorded."""

  num_steps: int
  guidance_scale: float
  source: str


@dataclasses.dataclass(frozen=True)
class SamplerChoice:
  """The sampler settings a run uses (:func:`resolve_sampler`) and where each value comes from."""

  num_steps: int
  guidance_scale: float
  num_steps_from: str
  guidance_scale_from: str

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  def describe(self) -> str:
    if self.num_steps_from == self.guidance_scale_from:
      return f"{self.num_steps} DDIM steps, guidance scale {self.guidance_scale:g} ({self.num_steps_from})"
    return (
      f"{self.num_steps} DDIM steps ({self.num_steps_from}), guidance scale {self.guidance_scale:g} "
      f"({self.guidance_scale_from})"
    )


OVERRIDE_SOURCE = "set in the config"
DEFAULT_SOURCE = "the default of core/sampling.py (NUM_STEPS / GUIDANCE_SCALE): the generator records no sampler"


def recorded_sampler(saved: Any, num_steps: int, guidance_scale: float, source: str) -> SamplerDefaults | None:
  """SamplerDefaults(num_steps, guidance_scale, source) when the saved config dict `saved` (e.g. the JSON of a
  BaseConfig.sampler or a FinetuneConfig) records both values, else None (an older workdir)."""
  if isinstance(saved, dict) and "num_steps" in saved and "guidance_scale" in saved:
    return SamplerDefaults(int(num_steps), float(guidance_scale), source)
  return None


def resolve_sampler(
  gen: Generator, num_steps: int | None = None, guidance_scale: float | None = None, name: str = ""
) -> SamplerChoice:
  """The DDIM steps and guidance scale to sample `gen` with: `num_steps` / `guidance_scale` when given (not
  None), else the generator's own (`gen.sampler_defaults`), else core/sampling.py's NUM_STEPS / GUIDANCE_SCALE
  (a warning says so). Logs the choice (`name` labels the line)."""
  own = gen.sampler_defaults
  label = f"{name}: " if name else ""
  if own is None:
    own = SamplerDefaults(sampling.NUM_STEPS, sampling.GUIDANCE_SCALE, DEFAULT_SOURCE)
    if num_steps is None or guidance_scale is None:
      logging.warning(
        "%sthe generator records no sampler settings (an older workdir?): using the default %d DDIM steps, "
        "guidance scale %g where the config sets none",
        label,
        own.num_steps,
        own.guidance_scale,
      )
  choice = SamplerChoice(
    num_steps=own.num_steps if num_steps is None else int(num_steps),
    guidance_scale=own.guidance_scale if guidance_scale is None else float(guidance_scale),
    num_steps_from=own.source if num_steps is None else OVERRIDE_SOURCE,
    guidance_scale_from=own.source if guidance_scale is None else OVERRIDE_SOURCE,
  )
  logging.info("%ssampler: %s", label, choice.describe())
  return choice


@dataclasses.dataclass(eq=False)
class Generator:
  """Trained generator. `params`: trainable denoiser params; `frozen`: {"vae": VAE params or None (MDM),
  "text": text-encoder params}; `mean`, `std` [D]: dataset statistics; `latent_scale`: diffusion-space
  latents are `z_vae * latent_scale` (MLD; 1.0 for MDM); `sampler_defaults`: the sampler it was made for
  (None: its workdir records none; see :func:`resolve_sampler`)."""

  config: gm.BaseConfig
  tokenizer: Tokenizer
  mean: np.ndarray
  std: np.ndarray
  params: Any
  frozen: dict
  latent_scale: float = 1.0
  text_embeddings: TextEmbeddings | None = None
  sampler_defaults: SamplerDefaults | None = None

  def __post_init__(self):
    self.modules = gm.build_modules(self.config)
    self.process = gm.make_process(self.config)
    self._samplers = {}
    self._encode = jax.jit(self._encode_impl)

  # -------------------------------------------------------------- contract pieces
  @property
  def max_length(self) -> int:
    """Padded frame count of generated motion (the training window)."""
    return self.config.data.max_length

  @property
  def latent_shape(self) -> tuple:
    """Per-example shape of x_t: (latent_size, latent_dim) in a VAE latent (MLD, flow), (max_length, D) for MDM."""
    return gm.model_shape(self.config)

  def denoise(self, params, x_t: jax.Array, t: jax.Array, cond: dict, rng: jax.Array | None = None) -> jax.Array:
    """Pure denoiser: x_t [B, *latent_shape], t [B] (the process's model_time), cond -> prediction (eps / sample /
    v / velocity, as the process says).
    `rng` None: deterministic (eval mode); a key: training mode, dropout masks drawn from it (the official
    fine-tuning keeps the denoiser in train mode; `FinetuneConfig.denoiser_dropout`)."""
    if rng is None:
      return self.modules.denoiser.apply(params, x_t, t, cond)
    return self.modules.denoiser.apply(params, x_t, t, cond, False, rngs={"dropout": rng})

  def decode(self, vae_params, z: jax.Array, mask: jax.Array) -> jax.Array:
    """Model-space sample -> normalised features [B, L, D] with padded frames exactly 0; mask [B, L]."""
    if self.modules.vae is None:
      return jnp.where(mask[..., None], z, 0.0)
    return self.modules.vae.apply(vae_params, z / self.latent_scale, mask, method=MotionVAE.decode)

  def to_joints(self, features: jax.Array) -> jax.Array:
    """Normalised features [..., L, D] -> joint positions [..., L, J, 3] in metres."""
    return features_to_joints(features, jnp.asarray(self.mean), jnp.asarray(self.std))

  def denormalize(self, features):
    return features * self.std + self.mean

  def frame_mask(self, lengths: Sequence[int]) -> np.ndarray:
    lengths = np.asarray(lengths, np.int64)
    if lengths.ndim != 1 or np.any(lengths < 1) or np.any(lengths > self.max_length):
      raise ValueError(
        f"lengths: expected 1..{self.max_length} frames (the model's max_length) per text, found {lengths.tolist()}"
      )
    return np.arange(self.max_length)[None] < lengths[:, None]

  def text_inputs(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Host-side text -> (token ids [B, Lt] or precomputed embeddings [B, Lt, E], mask [B, Lt])."""
    if isinstance(texts, str):
      raise TypeError("texts: expected a sequence of captions, found a single str")
    if self.config.text.kind == "learned":
      return self.tokenizer.encode_batch(list(texts))
    if self.text_embeddings is None:
      raise ValueError("Generator: text.kind='precomputed' needs the text_embeddings file")
    return self.text_embeddings.lookup(list(texts))

  def _encode_impl(self, text_params, inputs, mask, frame_mask):
    return gm.make_cond(self.config, self.modules.text, text_params, inputs, mask, frame_mask)

  def encode_text(self, texts: Sequence[str], lengths: Sequence[int] | None = None) -> dict:
    """cond {"text": [B, Lt, C], "text_mask": [B, Lt]} (+ "frame_mask" [B, L] for frame-conditioned kinds (MDM),
    which need `lengths`) from the frozen text encoder."""
    inputs, mask = self.text_inputs(texts)
    fm = self._frame_mask_for(len(texts), lengths)
    return self._encode(self.frozen["text"], inputs, mask, fm)[0]

  def encode_batch(self, batch: dict) -> tuple[dict, dict]:
    """(cond, uncond) from a data batch's arrays (tokens or text_emb; mask for a frame_mask)."""
    inputs, mask = gm.text_inputs(self.config, batch)
    return self._encode(self.frozen["text"], jnp.asarray(inputs), jnp.asarray(mask), jnp.asarray(batch["mask"]))

  def uncond(self, batch) -> dict:
    """Unconditional pytree: `batch` is a batch size B or a cond pytree (its frame_mask is copied for
    frame-conditioned kinds)."""
    if isinstance(batch, dict):
      b, lt = batch["text_mask"].shape
      fm = batch.get("frame_mask")
    else:
      b, lt, fm = int(batch), self.config.data.text_max_length, None
    u = self.modules.text.apply(self.frozen["text"], b, lt, method=TextEncoder.null)
    if gm.kind_of(self.config).frame_cond:
      u["frame_mask"] = jnp.ones((b, self.max_length), bool) if fm is None else fm
    return u

  def _frame_mask_for(self, b, lengths):
    if lengths is None:
      if gm.kind_of(self.config).frame_cond:
        raise ValueError(f"encode_text: model={self.config.model!r} needs `lengths` (the frame mask is part of cond)")
      return jnp.ones((b, self.max_length), bool)
    if len(lengths) != b:
      raise ValueError(f"lengths: expected {b} values (one per text), found {len(lengths)}")
    return jnp.asarray(self.frame_mask(lengths))

  # -------------------------------------------------------------- sampling
  def sampler(self, num_steps: int):
    """Jitted `(params, frozen, text_inputs, text_mask, frame_mask, x_T, guidance_scale, rng) ->
    (normalised features [B, L, D], joints [B, L, J, 3])`, cached per num_steps."""
    if num_steps in self._samplers:
      return self._samplers[num_steps]
    scfg = dataclasses.replace(self.config.sampler, num_steps=num_steps)
    timesteps = sampling.make_timesteps(self.process, scfg)

    def run(params, frozen, inputs, mask, frame_mask, x_T, w, rng):
      cond, uncond = gm.make_cond(self.config, self.modules.text, frozen["text"], inputs, mask, frame_mask)
      out = sampling.sample(self.denoise, params, self.process, timesteps, x_T, cond, uncond, w, eta=scfg.eta, rng=rng)
      feats = self.decode(frozen["vae"], out.x0, frame_mask)
      return feats, self.to_joints(feats)

    self._samplers[num_steps] = jax.jit(run)
    return self._samplers[num_steps]

  def generate(
    self,
    texts: Sequence[str],
    lengths: Sequence[int],
    rng: jax.Array,
    guidance_scale: float | None = None,
    num_steps: int | None = None,
    params: Any = None,
    normalized: bool = False,
  ) -> tuple[np.ndarray, np.ndarray]:
    """Samples one motion per text.

    Args:
      texts: B captions; lengths: B frame counts (<= max_length); rng: noise key.
      guidance_scale: CFG weight w (1 = conditional model); num_steps: DDIM steps. None: the generator's own
        (`sampler_defaults`; core/sampling.py's NUM_STEPS / GUIDANCE_SCALE when it records none).
      params: denoiser params to use instead of `self.params` (e.g. fine-tuned ones).
      normalized: return dataset-normalised features instead of de-normalised ones.
    Returns:
      (features [B, L, D], joints [B, L, J, 3] in metres), numpy float32 with L = max_length and padded
      frames zero. Features are DE-NORMALISED (dataset units) unless `normalized`.
    """
    num_steps, guidance_scale = self.sampler_settings(num_steps, guidance_scale)
    inputs, mask = self.text_inputs(texts)
    fm = self.frame_mask(lengths)
    if fm.shape[0] != inputs.shape[0]:
      raise ValueError(f"lengths: expected {inputs.shape[0]} values (one per text), found {fm.shape[0]}")
    x_T, k_eta = self.initial_noise(rng, len(texts))
    feats, joints = self.sampler(num_steps)(
      self.params if params is None else params,
      self.frozen,
      jnp.asarray(inputs),
      jnp.asarray(mask),
      jnp.asarray(fm),
      x_T,
      jnp.float32(guidance_scale),
      k_eta,
    )
    return self.finish_samples(feats, joints, fm, normalized)

  def sampler_settings(self, num_steps: int | None, guidance_scale: float | None) -> tuple[int, float]:
    """(DDIM steps, guidance scale): the given values, else the generator's own, else core/sampling.py's."""
    own = self.sampler_defaults
    if num_steps is None:
      num_steps = own.num_steps if own is not None else sampling.NUM_STEPS
    if guidance_scale is None:
      guidance_scale = own.guidance_scale if own is not None else sampling.GUIDANCE_SCALE
    return num_steps, guidance_scale

  def initial_noise(self, rng: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """(x_T [B, *latent_shape], the key of the sampler's own noise) that `generate` draws from `rng`."""
    k_noise, k_eta = jax.random.split(rng)
    return jax.random.normal(k_noise, (batch_size,) + self.latent_shape), k_eta

  def finish_samples(self, feats, joints, frame_mask: np.ndarray, normalized: bool) -> tuple[np.ndarray, np.ndarray]:
    """numpy float32 (features, joints) with padded frames zero; features de-normalised unless `normalized`."""
    feats, joints = np.asarray(feats), np.asarray(joints)
    joints = np.where(frame_mask[..., None, None], joints, 0.0).astype(np.float32)
    if not normalized:
      feats = np.where(frame_mask[..., None], self.denormalize(feats), 0.0).astype(np.float32)
    return feats, joints


def generator_fn(gen: Generator, guidance_scale: float, num_steps: int, params: Any = None):
  """`gen` as the evaluation protocol's `generate_fn(captions, pos_tokens, lengths, rng) -> x_norm`
  (dataset-normalised features [B, L, D]; `eval.evaluation.evaluate`), sampled with `params` (None: `gen.params`)."""

  def generate(captions, pos_tokens, lengths, rng):
    del pos_tokens
    feats, _ = gen.generate(
      captions, lengths, rng, guidance_scale=guidance_scale, num_steps=num_steps, params=params, normalized=True
    )
    return feats

  return generate


def _restore_state(directory: pathlib.Path, init_fn, tx, use_ema: bool):
  ckpt = Checkpointer(directory)
  try:
    template = jax.eval_shape(lambda: create_train_state(init_fn(), tx, use_ema=use_ema))
    state = ckpt.restore(template)
    meta = ckpt.metadata()
  finally:
    ckpt.close()
  return state, meta


_WORKDIR_LOADERS: dict[str, Any] = {}


def register_workdir_loader(marker: str, loader) -> None:
  """`load_generator(workdir)` returns `loader(workdir)` when `<workdir>/<marker>` exists: how other bundle kinds
  (e.g. `official_generator`, marker `official_mld.json`) share the one loading entry point."""
  _WORKDIR_LOADERS[marker] = loader


def load_generator(workdir: str, use_ema: bool = True) -> Generator:
  """Rebuilds the generator from `<workdir>/{vae,diffusion}/checkpoints` (latest steps). EMA params are
  used when the run kept them and `use_ema`. A directory written by
  `official_generator.write_official_generator` (an official MLD checkpoint) loads as that bundle."""
  workdir = pathlib.Path(workdir)
  for marker, loader in _WORKDIR_LOADERS.items():  # converted official checkpoints (bundles/__init__.py)
    if (workdir / marker).is_file():
      return loader(workdir)
  ddir = workdir / "diffusion" / "checkpoints"
  if not ddir.is_dir():
    raise FileNotFoundError(f"{ddir}: no diffusion checkpoints (run launch/train_base.py first)")
  meta_ck = Checkpointer(ddir)
  try:
    meta = meta_ck.metadata()
  finally:
    meta_ck.close()
  config = config_from_dict(gm.BaseConfig, meta["config"])
  ema = config.ema_decay > 0
  key = jax.random.PRNGKey(0)
  dstate, _ = _restore_state(ddir, lambda: gm.init_diffusion_params(config, key), gm.diffusion_tx(config), ema)
  dparams = dstate.ema_params if (use_ema and ema) else dstate.params
  vae_params = None
  if gm.kind_of(config).latent:
    vstate, _ = _restore_state(
      workdir / "vae" / "checkpoints", lambda: gm.init_vae_params(config, key), gm.vae_tx(config), ema
    )
    vae_params = vstate.ema_params if (use_ema and ema) else vstate.params
  tok_path = workdir / meta["tokenizer"]
  emb = TextEmbeddings(config.data.text_embeddings) if config.text.kind == "precomputed" else None
  return Generator(
    config=config,
    tokenizer=Tokenizer.load(str(tok_path)),
    mean=np.asarray(meta["mean"], np.float32),
    std=np.asarray(meta["std"], np.float32),
    params=dparams["denoiser"],
    frozen={"vae": vae_params, "text": dparams["text"]},
    latent_scale=float(meta["latent_scale"]),
    text_embeddings=emb,
    sampler_defaults=recorded_sampler(
      meta["config"].get("sampler"),
      config.sampler.num_steps,
      config.sampler.guidance_scale,
      f"{workdir} (BaseConfig.sampler, the setting it was trained for)",
    ),
  )


def save_samples(
  generator: Generator,
  texts: Sequence[str],
  lengths: Sequence[int],
  out_dir: str,
  rng: jax.Array,
  guidance_scale: float | None = None,
  num_steps: int | None = None,
  gif: bool = True,
) -> dict:
  """Generates one motion per text and writes `features.npy` (de-normalised [B, L, D]), `joints.npy`
  ([B, L, J, 3], metres), `lengths.npy`, `captions.txt` and, when `gif`, one stick-figure GIF per motion; sampled
  with `guidance_scale` / `num_steps` (None: the generator's own). Returns {"features", "joints", "files"}."""
  os.makedirs(out_dir, exist_ok=True)
  feats, joints = generator.generate(texts, lengths, rng, guidance_scale, num_steps)
  np.save(os.path.join(out_dir, "features.npy"), feats)
  np.save(os.path.join(out_dir, "joints.npy"), joints)
  np.save(os.path.join(out_dir, "lengths.npy"), np.asarray(lengths, np.int32))
  with open(os.path.join(out_dir, "captions.txt"), "w") as f:
    f.write("".join(f"{t}\n" for t in texts))
  files = ["features.npy", "joints.npy", "lengths.npy", "captions.txt"]
  if gif:
    for i, (t, n) in enumerate(zip(texts, lengths)):
      path = viz.animate_motion(joints[i, :n], os.path.join(out_dir, f"sample_{i:02d}.gif"), title=t[:60])
      files.append(os.path.basename(path))
  return {"features": feats, "joints": joints, "files": files}
