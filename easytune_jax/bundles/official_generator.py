"""The official MLD checkpoint as a `Generator` bundle (what `generate`, fine-tuning, evaluation and the
benchmark take).

Two ways in:

* `write_official_generator(ckpt, workdir, mean, std, text_embeddings=...)` converts `mld_humanml_v1.ckpt`
  (torch-free, `interop/mld_convert.py`) into a generator work directory; ``load_generator` (bundles/generator.py)(workdir)`
  recognises it by its `official_mld.json`, so every launcher that takes a generator workdir takes it:

      <workdir>/official_mld.json   format, source checkpoint, model configs, BaseConfig, latent scale, report
      <workdir>/params.msgpack      {"vae", "denoiser", "text"} Flax variables (flax.serialization)
      <workdir>/mean.npy, std.npy   the dataset statistics the features are normalised with
      <workdir>/tokenizer.json      a specials-only word tokenizer (the data batcher wants one; unused here)

  The directory is written under a temporary name and renamed at the end; a failure leaves nothing.
* `official_generator_from_checkpoint(...)` builds the same bundle in memory.

Text conditioning: the official denoiser takes a 768-d sentence embedding per caption (sentence-T5-large,
`[B, 1, 768]`). Two sources:

* `sentence_t5=FOLDER` (the `sentence-t5-large` folder sentence-transformers downloads, `interop/sentence_t5.py`):
  captions are encoded on the fly (`SentenceT5.embeddings(texts, "sentence")`, cached per caption). The folder is
  recorded in `official_mld.json` (`sentence_t5`) and reloaded with the bundle; `load_official_generator(...,
  sentence_t5=...)` points it elsewhere. When given, it encodes every caption (a `.npz` given too is then only
  what data batches read).
* a precomputed `.npz` (`data.text.TextEmbeddings`, Lt = 1; `launch/precompute_text_embeddings.py`): captions are
  looked up exactly.

Classifier-free guidance's unconditional input is, as in the official code, the embedding of the empty caption
"": sentence-T5's encoding of "" when the encoder is given, else the `.npz`'s caption "" or `null_text`; it is
stored as the frozen text params `{"params": {"null_text": [768]}}`. The VAE scale factor is 1
(`vae_scale_factor` is unset in the official configs); the schedule is the config default and the sampler
MLD's DDIM (1000 steps, scaled_linear 0.00085..0.012, epsilon, steps_offset 1, 50 steps, w 7.5): the bundle's
`sampler_defaults`, what generation and evaluation use unless told otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from easytune_jax.bundles.generator import Generator, SamplerDefaults, register_workdir_loader
from easytune_jax.core.config import config_from_dict, config_to_dict
from easytune_jax.core.sampling import GUIDANCE_SCALE, NUM_STEPS, SamplerConfig
from easytune_jax.core.schedules import DiffusionConfig
from easytune_jax.data.text import EOS, PAD, SOS, UNK, TextEmbeddings, Tokenizer
from easytune_jax.interop import mld_convert
from easytune_jax.interop.sentence_t5 import SentenceT5, load_sentence_t5
from easytune_jax.models import generator as gm
from easytune_jax.models.mld_official import (
  OfficialDenoiserConfig,
  OfficialMLDDenoiser,
  OfficialMLDVAE,
  OfficialVAEConfig,
)
from easytune_jax.models.text_encoder import TextEncoder, TextEncoderConfig
from easytune_jax.models.vae import VAEConfig

MARKER = "official_mld.json"
FORMAT = "easytune_jax.official_mld/1"
ArrayOrPath = np.ndarray | str | os.PathLike


class SentenceEmbeddingText(TextEncoder):
  """Frozen sentence embeddings passed through unchanged (the official denoiser projects them itself):
  inputs [B, Lt, E], mask [B, Lt] -> {"text": inputs, "text_mask": mask}. `null(B, Lt)` (inherited) puts the
  stored `null_text` [E] (the embedding of "") at position 0."""

  def setup(self):
    self.null_text = self.param("null_text", nn.initializers.zeros, (self.config.width,))

  def __call__(self, inputs, mask, deterministic: bool = True):
    del deterministic
    if inputs.ndim != 3 or inputs.shape[-1] != self.config.width or mask.shape != inputs.shape[:2]:
      raise ValueError(
        f"SentenceEmbeddingText: expected embeddings [B, Lt, {self.config.width}] and mask [B, Lt], "
        f"found {inputs.shape} and {mask.shape}"
      )
    return {"text": inputs.astype(jnp.float32), "text_mask": mask.astype(bool)}


@dataclasses.dataclass(eq=False)
class OfficialMLDGenerator(Generator):
  """`Generator` whose VAE / denoiser are the official MLD modules (`models/mld_official.py`); everything
  else (sampling, guidance, generate) is the base class's. `params` are the denoiser variables,
  `frozen = {"vae": VAE variables, "text": {"params": {"null_text": [E]}}}`."""

  vae_config: OfficialVAEConfig = dataclasses.field(default_factory=OfficialVAEConfig)
  denoiser_config: OfficialDenoiserConfig = dataclasses.field(default_factory=OfficialDenoiserConfig)
  text_model: SentenceT5 | None = None  # captions -> sentence embeddings on the fly (else the .npz)

  def __post_init__(self):
    super().__post_init__()
    self.modules = gm.Modules(
      OfficialMLDVAE(self.vae_config),
      OfficialMLDDenoiser(self.denoiser_config),
      SentenceEmbeddingText(self.config.text),
    )
    self._sentence_cache: dict[str, np.ndarray] = {}

  def text_inputs(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Captions -> (sentence embeddings [B, 1, E], mask [B, 1]): through `text_model` when set (cached per
    caption), else looked up in the precomputed `.npz`."""
    if self.text_model is None:
      return super().text_inputs(texts)
    if isinstance(texts, str):
      raise TypeError("texts: expected a sequence of captions, found a single str")
    texts = list(texts)
    new = list(dict.fromkeys(t for t in texts if t not in self._sentence_cache))
    if new:
      if len(self._sentence_cache) > 100_000:
        self._sentence_cache.clear()
      emb, _ = self.text_model.embeddings(new, "sentence")
      self._sentence_cache.update(zip(new, emb[:, 0]))
    emb = np.stack([self._sentence_cache[t] for t in texts])[:, None, :].astype(np.float32)
    return emb, np.ones(emb.shape[:2], bool)

  @property
  def latent_shape(self) -> tuple:
    return (self.vae_config.latent_size, self.vae_config.latent_dim)

  def decode(self, vae_params, z: jax.Array, mask: jax.Array) -> jax.Array:
    return self.modules.vae.apply(vae_params, z / self.latent_scale, mask, method=OfficialMLDVAE.decode)

  def encode_latents(self, vae_params, motion: jax.Array, mask: jax.Array) -> jax.Array:
    """Posterior mean in diffusion space: mu(motion) * latent_scale, [B, latent_size, latent_dim]."""
    mu, _ = self.modules.vae.apply(vae_params, motion, mask, method=OfficialMLDVAE.encode)
    return mu * self.latent_scale


# The official MLD's DDIM sampler: 50 steps, w = 7.5 (the paper's; SamplerConfig's default is the CPU one).
MLD_SAMPLER = SamplerConfig(num_steps=NUM_STEPS, guidance_scale=GUIDANCE_SCALE)


def official_base_config(
  vae_config: OfficialVAEConfig, text_dim: int, text_embeddings: str = "", max_length: int = 196
) -> gm.BaseConfig:
  """The BaseConfig the bundle carries: MLD's schedule and sampler (`MLD_SAMPLER`), 196-frame windows,
  one text token of `text_dim` (precomputed sentence embeddings). Its `vae` field only mirrors the latent
  shape; the official modules' own configs travel beside it."""
  vae = VAEConfig(
    nfeats=vae_config.nfeats,
    latent_size=vae_config.latent_size,
    latent_dim=vae_config.latent_dim,
    width=vae_config.latent_dim,
    num_heads=vae_config.num_heads,
    encoder_layers=vae_config.num_layers,
    decoder_layers=vae_config.num_layers,
    ff_dim=vae_config.ff_size,
    logvar_offset=0.0,
  )
  heads = next(h for h in (4, 2, 1) if text_dim % h == 0)
  return gm.BaseConfig(
    model="mld",
    data=gm.DataConfig(max_length=max_length, text_max_length=1, text_embeddings=text_embeddings),
    vae=vae,
    text=TextEncoderConfig(kind="precomputed", embed_dim=text_dim, width=text_dim, num_layers=0, num_heads=heads),
    diffusion=DiffusionConfig(prediction_type="epsilon"),
    sampler=MLD_SAMPLER,
    cond_drop_prob=0.1,
  )


def _official_sampler(cfg: gm.BaseConfig, where: str) -> SamplerDefaults:
  return SamplerDefaults(
    cfg.sampler.num_steps, cfg.sampler.guidance_scale, f"{where}: the official MLD's sampler (the paper's)"
  )


def _array(x: ArrayOrPath | None, name: str) -> np.ndarray | None:
  if x is None:
    return None
  if isinstance(x, (str, os.PathLike)):
    if not os.path.exists(x):
      raise FileNotFoundError(f"{name}: file {os.fspath(x)!r} does not exist")
    return np.asarray(np.load(x, allow_pickle=False), np.float32)
  return np.asarray(x, np.float32)


def _null_text(null_text, embeddings: TextEmbeddings | None, text_dim: int) -> np.ndarray:
  if null_text is None and embeddings is not None and "" in embeddings.captions:
    emb, _ = embeddings.lookup([""])
    null_text = emb[0, 0]
  if null_text is None:
    raise ValueError(
      "official generator: classifier-free guidance needs the sentence embedding of the empty "
      "caption ''; give the sentence-T5 folder, add '' to the text-embeddings .npz or pass "
      "null_text"
    )
  arr = _array(null_text, "null_text").reshape(-1)
  if arr.shape != (text_dim,) or not np.all(np.isfinite(arr)):
    raise ValueError(f"null_text: expected {text_dim} finite values (the denoiser's text_dim), found shape {arr.shape}")
  return arr


def _stats(mean, std, nfeats):
  mean, std = _array(mean, "mean"), _array(std, "std")
  for name, a in (("mean", mean), ("std", std)):
    if a is None or a.shape != (nfeats,):
      raise ValueError(
        f"{name}: expected shape ({nfeats},) (the checkpoint's nfeats), found {None if a is None else a.shape}"
      )
    if not np.all(np.isfinite(a)):
      raise ValueError(f"{name}: holds non-finite values")
  if np.any(std <= 0):
    raise ValueError("std: expected positive values")
  return mean, std


def _embeddings(text_embeddings, text_dim) -> TextEmbeddings | None:
  if text_embeddings is None:
    return None
  emb = text_embeddings if isinstance(text_embeddings, TextEmbeddings) else TextEmbeddings(os.fspath(text_embeddings))
  if emb.dim != text_dim or emb.max_length != 1:
    raise ValueError(
      f"{emb.path}: expected sentence embeddings [N, 1, {text_dim}] for the official denoiser, "
      f"found [N, {emb.max_length}, {emb.dim}]"
    )
  return emb


def _sentence_t5(sentence_t5, text_dim: int) -> SentenceT5 | None:
  if sentence_t5 is None or isinstance(sentence_t5, SentenceT5):
    model = sentence_t5
  else:
    model = load_sentence_t5(os.fspath(sentence_t5))
    model.folder = os.path.abspath(os.fspath(sentence_t5))
  if model is not None and model.config.sentence_dim != text_dim:
    raise ValueError(
      f"sentence_t5 {getattr(model, 'folder', '')!s}: sentence embeddings have "
      f"{model.config.sentence_dim} dims, the denoiser's text_dim is {text_dim}"
    )
  return model


def _encoded_null(model: SentenceT5) -> np.ndarray:
  emb, _ = model.embeddings([""], "sentence")
  return emb[0, 0]


def _null_params(model: SentenceT5) -> dict:
  return {"params": {"null_text": _encoded_null(model)}}


def with_sentence_t5(gen: OfficialMLDGenerator, sentence_t5) -> OfficialMLDGenerator:
  """`gen` (e.g. a fine-tuned one from `bundles.finetuned.load_finetuned_generator`) with captions encoded by
  `sentence_t5` (folder or `SentenceT5`) and the unconditional input set to its encoding of ""."""
  if not isinstance(gen, OfficialMLDGenerator):
    raise TypeError(
      f"with_sentence_t5: expected an OfficialMLDGenerator, found {type(gen).__name__} (only the "
      "official MLD reads sentence-T5 embeddings)"
    )
  model = _sentence_t5(sentence_t5, gen.denoiser_config.text_dim)
  return dataclasses.replace(gen, text_model=model, frozen={**gen.frozen, "text": _null_params(model)})


def _tokenizer() -> Tokenizer:
  return Tokenizer([PAD, UNK, SOS, EOS], max_length=3)


def official_generator_from_checkpoint(
  ckpt_path: str | os.PathLike,
  mean: ArrayOrPath,
  std: ArrayOrPath,
  text_embeddings=None,
  null_text: ArrayOrPath | None = None,
  num_heads: int = 4,
  vae_config: OfficialVAEConfig | None = None,
  denoiser_config: OfficialDenoiserConfig | None = None,
  max_length: int = 196,
  sentence_t5=None,
) -> OfficialMLDGenerator:
  """Official `.ckpt` -> an in-memory `OfficialMLDGenerator` (see the module docstring for the arguments).
  `text_embeddings`: a `.npz` path or `TextEmbeddings` of [N, 1, text_dim] sentence embeddings; `sentence_t5`: a
  sentence-transformers folder or a loaded `SentenceT5` whose sentence dim is the denoiser's text_dim. At least
  one of them (or `null_text`, for a bundle fed embeddings directly) is needed."""
  vae_vars, den_vars, report = mld_convert.load_official_mld(ckpt_path, vae_config, denoiser_config, num_heads)
  vcfg, dcfg = report["vae_config"], report["denoiser_config"]
  emb = _embeddings(text_embeddings, dcfg.text_dim)
  text_model = _sentence_t5(sentence_t5, dcfg.text_dim)
  if null_text is None and text_model is not None:
    null_text = _encoded_null(text_model)
  null = _null_text(null_text, emb, dcfg.text_dim)
  m, s = _stats(mean, std, vcfg.nfeats)
  cfg = official_base_config(vcfg, dcfg.text_dim, emb.path if emb is not None else "", max_length)
  gen = OfficialMLDGenerator(
    config=cfg,
    tokenizer=_tokenizer(),
    mean=m,
    std=s,
    params=den_vars,
    frozen={"vae": vae_vars, "text": {"params": {"null_text": null}}},
    latent_scale=1.0,
    text_embeddings=emb,
    vae_config=vcfg,
    denoiser_config=dcfg,
    text_model=text_model,
    sampler_defaults=_official_sampler(cfg, f"{os.fspath(ckpt_path)}"),
  )
  gen.conversion_report = {"ignored": report["ignored"], "converted": report["converted"]}
  return gen


@dataclasses.dataclass(frozen=True)
class OfficialMLDConversion:
  """launch/convert_official_mld.py's settings the checkpoint does not hold: attention heads (4 in the official
  configs) and the padded frame window of generation."""

  num_heads: int = 4
  max_length: int = 196


def write_official_generator(
  ckpt_path: str | os.PathLike,
  workdir: str | os.PathLike,
  mean: ArrayOrPath,
  std: ArrayOrPath,
  text_embeddings=None,
  null_text: ArrayOrPath | None = None,
  num_heads: int = 4,
  overwrite: bool = False,
  sentence_t5=None,
  **kw,
) -> dict:
  """Converts the official checkpoint into a generator work directory (atomically; nothing is written when the
  conversion or a check fails). `sentence_t5`: a sentence-transformers folder (recorded as an absolute path and
  reloaded with the bundle). Returns the metadata written to `official_mld.json`."""
  if sentence_t5 is not None and not isinstance(sentence_t5, (str, os.PathLike)):
    raise TypeError("write_official_generator: sentence_t5 must be a folder path (it is recorded in the workdir)")
  workdir = pathlib.Path(workdir)
  if workdir.exists() and not overwrite:
    raise FileExistsError(f"{workdir}: already exists (pass overwrite=True to replace it)")
  gen = official_generator_from_checkpoint(
    ckpt_path, mean, std, text_embeddings, null_text, num_heads, sentence_t5=sentence_t5, **kw
  )
  meta = {
    "format": FORMAT,
    "source": os.path.abspath(os.fspath(ckpt_path)),
    "vae": dataclasses.asdict(gen.vae_config),
    "denoiser": dataclasses.asdict(gen.denoiser_config),
    "config": config_to_dict(gen.config),
    "latent_scale": gen.latent_scale,
    "sentence_t5": os.path.abspath(os.fspath(sentence_t5)) if sentence_t5 is not None else None,
    "param_counts": {"vae": _count(gen.frozen["vae"]), "denoiser": _count(gen.params)},
    "ignored": gen.conversion_report["ignored"],  # top-level state-dict groups not converted (text encoder, ...)
  }
  workdir.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{workdir.name}.tmp-", dir=workdir.parent))
  try:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the workdir should look like any other
    tree = {"vae": gen.frozen["vae"], "denoiser": gen.params, "text": gen.frozen["text"]}
    (tmp / "params.msgpack").write_bytes(serialization.msgpack_serialize(jax.tree.map(np.asarray, tree)))
    np.save(tmp / "mean.npy", gen.mean)
    np.save(tmp / "std.npy", gen.std)
    gen.tokenizer.save(str(tmp / "tokenizer.json"))
    (tmp / MARKER).write_text(json.dumps(meta, indent=1))
    if workdir.exists():
      old = workdir.parent / f".{workdir.name}.old-{os.getpid()}"
      os.rename(workdir, old)
      os.rename(tmp, workdir)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.rename(tmp, workdir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return meta


def _count(tree) -> int:
  return int(sum(np.size(x) for x in jax.tree.leaves(tree)))


def load_official_generator(workdir: str | os.PathLike, text_embeddings=None, sentence_t5=None) -> OfficialMLDGenerator:
  """Reads a work directory written by `write_official_generator`. `text_embeddings` (path or
  TextEmbeddings) replaces the `.npz` recorded at conversion time; `sentence_t5` (folder or `SentenceT5`) replaces
  the recorded sentence-T5 folder, or adds one (the unconditional input is then its encoding of "")."""
  workdir = pathlib.Path(workdir)
  marker = workdir / MARKER
  if not marker.is_file():
    raise FileNotFoundError(f"{workdir}: no {MARKER} (not an official-MLD generator directory)")
  meta = json.loads(marker.read_text())
  if meta.get("format") != FORMAT:
    raise ValueError(f"{marker}: expected format {FORMAT!r}, found {meta.get('format')!r}")
  vcfg = config_from_dict(OfficialVAEConfig, meta["vae"], f"{marker}:vae")
  dcfg = config_from_dict(OfficialDenoiserConfig, meta["denoiser"], f"{marker}:denoiser")
  cfg = config_from_dict(gm.BaseConfig, meta["config"], f"{marker}:config")
  if "sampler" not in meta["config"]:  # not recorded: MLD's own sampler, not BaseConfig's (CPU) default
    cfg = dataclasses.replace(cfg, sampler=MLD_SAMPLER)
  if text_embeddings is not None:
    path = text_embeddings.path if isinstance(text_embeddings, TextEmbeddings) else os.fspath(text_embeddings)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, text_embeddings=path))
  emb = _embeddings(
    text_embeddings if text_embeddings is not None else (cfg.data.text_embeddings or None), dcfg.text_dim
  )
  st5 = sentence_t5 if sentence_t5 is not None else meta.get("sentence_t5")
  if isinstance(st5, (str, os.PathLike)) and not os.path.isdir(st5):
    raise FileNotFoundError(
      f"{marker}: sentence-T5 folder {os.fspath(st5)!r} not found (pass sentence_t5= / "
      "--sentence_t5_dir to point at it)"
    )
  text_model = _sentence_t5(st5, dcfg.text_dim)
  tree = serialization.msgpack_restore((workdir / "params.msgpack").read_bytes())
  if text_model is not None:
    tree["text"] = _null_params(text_model)
  want = mld_convert.flax_param_shapes(vcfg, dcfg)
  for k in ("vae", "denoiser"):
    got = jax.tree.map(np.shape, tree.get(k, {}).get("params", {}))
    exp = jax.tree.map(lambda s: tuple(s.shape), want[k])
    if got != exp:
      raise ValueError(f"{workdir / 'params.msgpack'}: {k} parameters do not match {MARKER}'s config")
  return OfficialMLDGenerator(
    config=cfg,
    tokenizer=Tokenizer.load(str(workdir / "tokenizer.json")),
    mean=np.load(workdir / "mean.npy"),
    std=np.load(workdir / "std.npy"),
    params=tree["denoiser"],
    frozen={"vae": tree["vae"], "text": tree["text"]},
    latent_scale=float(meta["latent_scale"]),
    text_embeddings=emb,
    vae_config=vcfg,
    denoiser_config=dcfg,
    text_model=text_model,
    sampler_defaults=_official_sampler(cfg, str(workdir)),
  )


register_workdir_loader(MARKER, load_official_generator)
