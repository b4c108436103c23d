"""Step-aware reward model (SPM): TMR-style text/motion encoders with a timestep token (EasyTune).

Architecture (TMR, Petrovich et al., ICCV 2023; EasyTune, arXiv 2602.07967):

* text encoder: word ids -> `nn.Embed` (or precomputed token embeddings [B, Lt, E]) -> a
  :class:`DistributionTokenEncoder` (input projection, learned mu/logvar tokens, sinusoidal positions,
  post-norm transformer) -> (mu, logvar) [B, latent];
* motion encoder: dataset-normalised features [B, L, D] (optionally grouped into patches of `patch_size`
  frames, see SPMConfig) -> the same kind of encoder -> (mu, logvar);
* shared motion decoder (ACTOR style): sinusoidal time queries [L, latent] cross-attend to one latent through
  a :class:`TransformerDecoder`, then Linear(latent -> D); it reconstructs motion from either latent;
* timestep token: `TimestepMLP` (sinusoidal + Linear-SiLU-Linear) of t, inserted as an extra token into
  the motion stream (M1), the text stream (T1), both (M1T1) or neither (M0T0). Clean inputs use t = 0.

Reward (the project's reward contract): cos(mu_text, mu_motion) in [-1, 1], higher is better,
differentiable in the motion. Inputs are dataset-normalised features, so Mean/Std are not part of the model.

`SPMConfig(arch='official')` (:meth:`SPMConfig.official`) selects the official EasyTune architecture instead
(:mod:`easytune_jax.models.spm_official`, loadable from official checkpoints by
:mod:`easytune_jax.interop.spm_convert`); the helpers below (`init_spm`, `encode_*`, `reward_apply`, `reward_fn`)
dispatch on it. The `reward_*` fields choose how the reward scores (see :func:`reward_apply`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from easytune_jax.models.layers import DistributionTokenEncoder, TimestepMLP, TransformerDecoder, sinusoidal_positions

MODES = ("M0T0", "M1T0", "M0T1", "M1T1")
TEXT_INPUTS = ("tokens", "embeddings")
ARCHS = ("tmr", "official")
REWARD_LATENTS = ("mean", "sample")
REWARD_TIMESTEPS = ("mode", "none")
_WHERE = __name__.replace(".", "/") + ".py"


@dataclasses.dataclass(frozen=True)
class SPMConfig:
  """SPM sizes and inputs. Defaults are tiny CPU sizes; EasyTune's (TMR's) sizes are the 'paper_tmr' preset of
  configs/reward.py; :meth:`official` is the layout of the official EasyTune checkpoint (what the converter reads;
  not a preset: the 'official' preset of configs/reward.py uses it).

  Attributes:
    dim_motion: D, motion feature size (263 HumanML3D, 251 KIT).
    text_input: 'tokens' (int32 word ids embedded here, needs `vocab_size`) or 'embeddings'
      (precomputed float [B, Lt, E] projected to the latent width by the encoder's input layer).
    vocab_size: word vocabulary size for 'tokens' (the Tokenizer's, specials included); 0 = not set yet
      (the trainer fills it in; building the model with 0 raises).
    word_dim: width of the learned word embeddings.
    latent_dim: latent size = transformer width (256 paper).
    ff_dim: feed-forward width (1024 paper).
    num_layers: layers of each encoder and of the decoder (9 paper).
    num_heads: attention heads (4).
    dropout: dropout rate (0.1), active only when `deterministic=False`.
    mode: which encoder receives the timestep token: M0T0 | M1T0 | M0T1 | M1T1.
    num_special_tokens: word ids below this (pad/unk/sos/eos) are ignored by the bag-of-words caption
      features used for near-duplicate filtering.
    patch_size: frames per motion token (1 = TMR: one token per frame). The tiny CPU config groups 4 frames
      into one token (encoder input Linear(4D -> latent), decoder output Linear(latent -> 4D)) so that whole
      clips fit the CPU budget; a token is valid when any of its frames is.
    arch: 'tmr' (this module's SPM) or 'official' (EasyTune's released architecture,
      :mod:`easytune_jax.models.spm_official`; needs text_input='embeddings', patch_size=1, odd num_layers).
    reward_latent: what the reward compares: 'mean' (the latent means, deterministic; ours) or 'sample'
      (a reparameterised sample of each latent, as the official `get_reward_t2m` reads `encode_*()[0]`).
    reward_timestep: 'mode' (the scored sample's t goes to the encoders the mode selects; ours) or 'none'
      (no timestep to either encoder, as the official `get_reward_t2m`).
    reward_dropout: dropout active while scoring (the official fine-tuning scripts never switch the reward
      model to eval mode, so its dropout stays on); False = deterministic network (ours).
  """

  dim_motion: int = 263
  text_input: str = "tokens"
  vocab_size: int = 0
  word_dim: int = 64
  latent_dim: int = 64
  ff_dim: int = 128
  num_layers: int = 2
  num_heads: int = 4
  dropout: float = 0.1
  mode: str = "M1T0"
  num_special_tokens: int = 4
  patch_size: int = 4
  arch: str = "tmr"
  reward_latent: str = "mean"
  reward_timestep: str = "mode"
  reward_dropout: bool = False

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"{_WHERE}: SPMConfig.mode: expected one of {MODES}, found {self.mode!r}")
    if self.text_input not in TEXT_INPUTS:
      raise ValueError(f"{_WHERE}: SPMConfig.text_input: expected one of {TEXT_INPUTS}, found {self.text_input!r}")
    if self.vocab_size < 0:
      raise ValueError(f"{_WHERE}: SPMConfig.vocab_size: expected >= 0, found {self.vocab_size}")
    for name in ("dim_motion", "word_dim", "latent_dim", "ff_dim", "num_layers", "num_heads", "patch_size"):
      if getattr(self, name) < 1:
        raise ValueError(f"{_WHERE}: SPMConfig.{name}: expected >= 1, found {getattr(self, name)}")
    if self.latent_dim % self.num_heads:
      raise ValueError(
        f"{_WHERE}: SPMConfig.latent_dim: expected a multiple of num_heads={self.num_heads}, found {self.latent_dim}"
      )
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"{_WHERE}: SPMConfig.dropout: expected in [0, 1), found {self.dropout}")
    for name, allowed in (("arch", ARCHS), ("reward_latent", REWARD_LATENTS), ("reward_timestep", REWARD_TIMESTEPS)):
      if getattr(self, name) not in allowed:
        raise ValueError(f"{_WHERE}: SPMConfig.{name}: expected one of {allowed}, found {getattr(self, name)!r}")
    if self.arch == "official":
      if self.text_input != "embeddings":
        raise ValueError(
          f"{_WHERE}: SPMConfig.text_input: arch='official' reads precomputed sentence-T5 token "
          f"embeddings: expected 'embeddings', found {self.text_input!r}"
        )
      if self.patch_size != 1:
        raise ValueError(
          f"{_WHERE}: SPMConfig.patch_size: arch='official' has one token per frame: expected 1, "
          f"found {self.patch_size}"
        )
      if self.num_layers % 2 != 1:
        raise ValueError(
          f"{_WHERE}: SPMConfig.num_layers: arch='official' (skip transformers) needs an odd "
          f"number, found {self.num_layers}"
        )

  @classmethod
  def official(cls, **overrides) -> SPMConfig:
    """The official EasyTune SPM (HumanML3D: D = 263, 1024-d sentence-T5-large token embeddings, latent 256,
    ff 1024, 9 layers, 4 heads, dropout 0.1, mode M1T0 as the official README's example) with the official
    reward semantics: sampled latents, no timestep, dropout on. 26,515,975 parameters."""
    base = dict(
      arch="official",
      text_input="embeddings",
      latent_dim=256,
      ff_dim=1024,
      num_layers=9,
      num_heads=4,
      dropout=0.1,
      patch_size=1,
      mode="M1T0",
      reward_latent="sample",
      reward_timestep="none",
      reward_dropout=True,
    )
    base.update(overrides)
    return cls(**base)

  @property
  def motion_sees_t(self) -> bool:
    return self.mode[1] == "1"

  @property
  def text_sees_t(self) -> bool:
    return self.mode[3] == "1"

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> SPMConfig:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f"{_WHERE}: SPMConfig.from_dict: unknown fields {unknown}")
    return cls(**d)


class SPM(nn.Module):
  """The step-aware reward model. Use through `apply(..., method=...)` with the methods below."""

  config: SPMConfig

  def setup(self):
    c = self.config
    enc = lambda: DistributionTokenEncoder(
      latent_dim=c.latent_dim,
      num_tokens=1,
      num_layers=c.num_layers,
      num_heads=c.num_heads,
      ff_dim=c.ff_dim,
      dropout=c.dropout,
    )
    if c.text_input == "tokens":
      if c.vocab_size < 1:
        raise ValueError(
          f"{_WHERE}: SPMConfig.vocab_size: expected >= 1 with text_input='tokens' (set it to "
          f"the Tokenizer's vocab_size; 0 means unset), found {c.vocab_size}"
        )
      self.word_embed = nn.Embed(c.vocab_size, c.word_dim, embedding_init=nn.initializers.normal(1.0))
    self.text_encoder = enc()
    self.motion_encoder = enc()
    if c.text_sees_t:
      self.text_time = TimestepMLP(c.latent_dim)
    if c.motion_sees_t:
      self.motion_time = TimestepMLP(c.latent_dim)
    self.decoder = TransformerDecoder(c.num_layers, c.num_heads, c.ff_dim, c.dropout)
    self.decoder_out = nn.Dense(c.dim_motion * c.patch_size)

  def _time_token(self, embed: Callable, t: jax.Array | None, b: int) -> jax.Array:
    t = jnp.zeros((b,), jnp.int32) if t is None else jnp.broadcast_to(jnp.asarray(t, jnp.int32), (b,))
    return embed(t)[:, None, :]

  def encode_text(
    self, text: jax.Array, text_mask: jax.Array, t: jax.Array | None = None, deterministic: bool = True
  ) -> tuple[jax.Array, jax.Array]:
    """text: int32 [B, Lt] ids ('tokens') or float [B, Lt, E] ('embeddings'); text_mask bool [B, Lt];
    t: int32 [B] or None (clean, t = 0); used only in T1 modes. -> (mu, logvar) [B, latent]."""
    if self.config.text_input == "tokens":
      if text.ndim != 2 or not jnp.issubdtype(text.dtype, jnp.integer):
        raise ValueError(
          f"{_WHERE}: text input: expected int token ids [B, Lt] (text_input='tokens'), found {text.dtype} {text.shape}"
        )
      x = self.word_embed(text)
    else:
      if text.ndim != 3:
        raise ValueError(
          f"{_WHERE}: text input: expected float embeddings [B, Lt, E] "
          f"(text_input='embeddings'), found {text.dtype} {text.shape}"
        )
      x = text.astype(jnp.float32)
    extra = self._time_token(self.text_time, t, x.shape[0]) if self.config.text_sees_t else None
    mu, logvar = self.text_encoder(x, text_mask.astype(bool), extra, deterministic)
    return mu[:, 0], logvar[:, 0]

  def encode_motion(
    self, motion: jax.Array, mask: jax.Array, t: jax.Array | None = None, deterministic: bool = True
  ) -> tuple[jax.Array, jax.Array]:
    """motion [B, L, D] normalised features, mask bool [B, L], t int32 [B] or None (used in M1 modes)."""
    if motion.ndim != 3 or motion.shape[-1] != self.config.dim_motion:
      raise ValueError(f"{_WHERE}: motion input: expected [B, L, D={self.config.dim_motion}], found {motion.shape}")
    extra = self._time_token(self.motion_time, t, motion.shape[0]) if self.config.motion_sees_t else None
    mask = mask.astype(bool)
    x, mask = _patchify(motion * mask[..., None].astype(motion.dtype), mask, self.config.patch_size)
    mu, logvar = self.motion_encoder(x, mask, extra, deterministic)
    return mu[:, 0], logvar[:, 0]

  def decode(self, z: jax.Array, mask: jax.Array, deterministic: bool = True) -> jax.Array:
    """z [B, latent], mask bool [B, L] -> motion features [B, L, D], zero on padded frames."""
    b, length = mask.shape
    p = self.config.patch_size
    _, pmask = _patchify(None, mask.astype(bool), p)
    n = pmask.shape[1]
    queries = jnp.broadcast_to(sinusoidal_positions(n, self.config.latent_dim)[None], (b, n, self.config.latent_dim))
    h = self.decoder(queries, pmask, z[:, None, :], None, deterministic)
    out = self.decoder_out(h).reshape(b, n * p, self.config.dim_motion)[:, :length]
    return out * mask[..., None].astype(out.dtype)

  def __call__(self, text, text_mask, motion, mask, t=None, deterministic: bool = True):
    """Runs every submodule (used by `init`): returns (text (mu, logvar), motion (mu, logvar), recon)."""
    tm = self.encode_text(text, text_mask, t, deterministic)
    mm = self.encode_motion(motion, mask, t, deterministic)
    return tm, mm, self.decode(mm[0], mask, deterministic)


def _patchify(x: jax.Array | None, mask: jax.Array, p: int):
  """[B, L, D], [B, L] -> [B, ceil(L/p), p*D], [B, ceil(L/p)] (zero-padded; a patch is valid if any frame is)."""
  if p == 1:
    return x, mask
  b, length = mask.shape
  pad = (-length) % p
  mask = jnp.pad(mask, ((0, 0), (0, pad))).reshape(b, -1, p).any(-1)
  if x is not None:
    x = jnp.pad(x, ((0, 0), (0, pad), (0, 0))).reshape(b, (length + pad) // p, p * x.shape[-1])
  return x, mask


# --------------------------------------------------------------------------------------------- helpers
def spm_module(config: SPMConfig) -> nn.Module:
  """The Flax module of `config.arch`: :class:`SPM` ('tmr') or `spm_official.OfficialSPM` ('official').
  Both have `encode_text`, `encode_motion`, `decode` and `__call__` with the same signatures."""
  if config.arch == "official":
    from easytune_jax.models.spm_official import OfficialSPM  # pylint: disable=import-outside-toplevel

    return OfficialSPM(config)
  return SPM(config)


def route_timestep(config: SPMConfig, t: jax.Array | None, stream: str) -> jax.Array | None:
  """The timestep one stream ('text' | 'motion') gets under `config.mode`: t when the mode gives that stream
  a timestep token, else None. (Our SPM ignores t for streams the mode excludes anyway; the official module
  adds a token whenever t is not None, so the caller gates.)"""
  sees = config.text_sees_t if stream == "text" else config.motion_sees_t
  return t if sees else None


def text_inputs(config: SPMConfig, cond: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
  """Picks (text, text_mask) out of a cond/batch dict: `tokens`/`token_mask` or `text_emb`/`text_emb_mask`."""
  keys = ("tokens", "token_mask") if config.text_input == "tokens" else ("text_emb", "text_emb_mask")
  missing = [k for k in keys if k not in cond]
  if missing:
    raise KeyError(f"{_WHERE}: cond: missing {missing} for text_input={config.text_input!r}; found keys {sorted(cond)}")
  return cond[keys[0]], cond[keys[1]]


def init_spm(
  config: SPMConfig, rng: jax.Array, batch_size: int = 2, length: int = 16, text_length: int = 8, text_emb_dim: int = 32
) -> Any:
  """Initial parameters of SPM(config) (shapes do not depend on the lengths used here); one compiled program."""
  if config.text_input == "tokens":
    text = jnp.ones((batch_size, text_length), jnp.int32)
  else:
    text = jnp.zeros((batch_size, text_length, text_emb_dim), jnp.float32)
  tmask = jnp.ones((batch_size, text_length), bool)
  motion = jnp.zeros((batch_size, length, config.dim_motion), jnp.float32)
  mask = jnp.ones((batch_size, length), bool)
  t = jnp.zeros((batch_size,), jnp.int32)
  return jax.jit(lambda r: spm_module(config).init({"params": r}, text, tmask, motion, mask, t))(rng)


def encode_text(params, config: SPMConfig, cond, t=None):
  """mu of the text latent [B, latent] (inference; t reaches the text encoder only if the mode says so)."""
  text, tmask = text_inputs(config, cond)
  return spm_module(config).apply(params, text, tmask, route_timestep(config, t, "text"), method="encode_text")[0]


def encode_motion(params, config: SPMConfig, motion, mask, t=None):
  """mu of the motion latent [B, latent] (inference; t reaches the motion encoder only if the mode says so)."""
  return spm_module(config).apply(params, motion, mask, route_timestep(config, t, "motion"), method="encode_motion")[0]


def reward_apply(
  params,
  config: SPMConfig,
  x: jax.Array,
  cond: Mapping[str, jax.Array],
  t: jax.Array | None = None,
  rng: jax.Array | None = None,
) -> jax.Array:
  """Pure reward: cos(z_text, z_motion) [B] float32.

  x: motion features [B, L, D] (dataset-normalised); cond: dict with the text inputs (see
  :func:`text_inputs`), optionally `mask` bool [B, L] (all frames valid when absent) and `reward_rng`;
  t: None (clean) or int32 [B] (step-aware: the noisy x is scored at timestep t by the encoders the mode gives
  t to; ignored in M0T0 and with reward_timestep='none').

  The config's reward fields choose the semantics: z = the latent means ('mean', deterministic) or
  reparameterised samples ('sample', the official reward), dropout off or on (`reward_dropout`). The stochastic
  variants need a PRNG key: `rng`, else `cond['reward_rng']` (one key, typed or raw uint32[2]; pass a fresh one
  per call, as the official reward draws new noise every call). Missing key -> ValueError.
  """
  mask = cond.get("mask")
  if mask is None:
    mask = jnp.ones(x.shape[:2], bool)
  if config.reward_timestep == "none":
    t = None
  stochastic = is_stochastic(config)
  if not stochastic:
    text_z = encode_text(params, config, cond, t)
    motion_z = encode_motion(params, config, x, mask, t)
  else:
    rng = cond.get("reward_rng") if rng is None else rng
    if rng is None:
      raise ValueError(
        f"{_WHERE}: reward_apply: this reward is stochastic (reward_latent={config.reward_latent!r}, "
        f"reward_dropout={config.reward_dropout}) and needs a PRNG key: pass rng= or "
        f"cond['reward_rng'], or use reward_latent='mean', reward_dropout=False"
      )
    if not jax.dtypes.issubdtype(jnp.asarray(rng).dtype, jax.dtypes.prng_key):
      rng = jax.random.wrap_key_data(jnp.asarray(rng, jnp.uint32))
    k_dt, k_dm, k_zt, k_zm = jax.random.split(rng, 4)
    module = spm_module(config)
    det = not config.reward_dropout
    text, tmask = text_inputs(config, cond)
    t_mu, t_lv = module.apply(
      params, text, tmask, route_timestep(config, t, "text"), det, method="encode_text", rngs={"dropout": k_dt}
    )
    m_mu, m_lv = module.apply(
      params, x, mask, route_timestep(config, t, "motion"), det, method="encode_motion", rngs={"dropout": k_dm}
    )
    if config.reward_latent == "sample":
      text_z = t_mu + jnp.exp(0.5 * t_lv) * jax.random.normal(k_zt, t_mu.shape, t_mu.dtype)
      motion_z = m_mu + jnp.exp(0.5 * m_lv) * jax.random.normal(k_zm, m_mu.shape, m_mu.dtype)
    else:
      text_z, motion_z = t_mu, m_mu
  num = jnp.sum(text_z * motion_z, axis=-1)
  den = jnp.maximum(jnp.linalg.norm(text_z, axis=-1) * jnp.linalg.norm(motion_z, axis=-1), 1e-8)
  return (num / den).astype(jnp.float32)


def is_stochastic(config: SPMConfig) -> bool:
  """Whether the reward draws noise (sampled latents or active dropout) and so needs a PRNG key."""
  return config.reward_latent == "sample" or (config.reward_dropout and config.dropout > 0)


def reward_fn(params, config: SPMConfig, **reward_overrides) -> Callable[..., jax.Array]:
  """The reward contract `reward(x, cond, t=None) -> [B]` with `params` bound (frozen reward).

  `reward_overrides` (reward_latent=, reward_timestep=, reward_dropout=) replace the config's scoring
  semantics, e.g. `reward_fn(p, SPMConfig.official(), reward_latent='mean', reward_dropout=False)` for a
  deterministic official-architecture reward. Stochastic rewards read `cond['reward_rng']` (see
  :func:`reward_apply`).

  Under an outer `jit` the bound params become constants of the program; for big models prefer
  `functools.partial(reward_apply, params_arg, config)` with the params passed as a jit argument.
  """
  if reward_overrides:
    config = dataclasses.replace(config, **reward_overrides)

  def reward(x, cond, t=None):
    return reward_apply(params, config, x, cond, t)

  return reward
