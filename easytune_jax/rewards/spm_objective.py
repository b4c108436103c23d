"""The SPM's training objective: `RewardTrainConfig` (sizes, rates, loss weights and the objective's named
options; defaults: the tiny CPU run, the presets 'official' / 'paper' / 'paper_tmr' are in
easytune_jax/configs/reward.py) and the optimizer of each stage.

The config is what a reward workdir stores (checkpoint metadata 'train'), so the trainer (`train/reward.py`), the
losses (`rewards/spm_loss.py`), the loader and converter (`bundles/reward.py`) and the retrieval evaluation
(`eval/retrieval.py`) read it from here.

The official objective (EasyTune's `train_spm.py` + `GradGuidance/spm.py`; the 'official' / 'paper' presets of
configs/reward.py, or `config.with_objective('official')` at any size) differs from ours in named options, each
kept selectable (OFFICIAL_OBJECTIVE / OUR_OBJECTIVE):

* `timestep_routing='official'`: pretraining gives no timestep to either encoder; in the SPL stage the SPM loss
  gives the sampled t to the encoders the mode selects and the SPL term's second pass gives it to the motion
  encoder always and never to the text encoder; t is sampled for every batch, clean ones too ('mode': t to the
  mode's encoders in both stages, t = 0 for clean batches);
* `spl_latents='sample'`: SPL ranks reparameterised samples of a second forward pass ('mean': the latent
  means of the SPM-loss pass);
* `spl_temperature_convention='official'`: the SPL logits are divided by tau twice ('single': once);
* `filter_convention='tmr'`: the near-duplicate caption filter drops cosines above 2 * threshold - 1
  ('cosine': above threshold);
* `recons_target='input'`: reconstruction target = the (possibly noised) input motion, smooth-L1 averaged over
  every frame up to the batch's longest clip, padding included, as the official code pads each batch to its
  longest clip ('clean_valid': the clean motion on valid frames only);
* t ~ U{0, ..., 500} (max_timestep=501), AdamW weight decay 0.01 (torch's default) and no gradient clipping.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from easytune_jax.core.config import config_from_dict
from easytune_jax.core.optim import OptimConfig
from easytune_jax.core.schedules import DiffusionConfig
from easytune_jax.models.spm import SPMConfig
from easytune_jax.rewards import spl as spl_lib

_WHERE = __name__.replace(".", "/") + ".py"

# before these fields existed read back with the behaviour they were trained with.
OUR_OBJECTIVE = dict(
  timestep_routing="mode",
  spl_latents="mean",
  spl_temperature_convention="single",
  filter_convention="cosine",
  recons_target="clean_valid",
  max_timestep=500,
  weight_decay=0.0,
  grad_clip_norm=1.0,
)
OFFICIAL_OBJECTIVE = dict(
  timestep_routing="official",
  spl_latents="sample",
  spl_temperature_convention="official",
  filter_convention="tmr",
  recons_target="input",
  max_timestep=501,
  weight_decay=0.01,
  grad_clip_norm=0.0,
)
_CHOICES = {
  "timestep_routing": ("mode", "official"),
  "spl_latents": ("mean", "sample"),
  "spl_temperature_convention": spl_lib.TEMPERATURE_CONVENTIONS,
  "filter_convention": spl_lib.FILTER_CONVENTIONS,
  "recons_target": ("clean_valid", "input"),
}


@dataclasses.dataclass(frozen=True)
class RewardTrainConfig:
  """Reward-model training. Defaults: the tiny CPU run; EasyTune's settings are the 'official' / 'paper' presets
  of configs/reward.py.

  Attributes:
    model: the SPM architecture (`vocab_size` is filled in from the tokenizer).
    batch_size, max_length: batch shape [B, max_length, D] (crops longer clips).
    text_max_length: tokenizer length Lt (sos/eos included).
    num_steps: optimizer steps of a stage (overridable per call).
    learning_rate / spl_learning_rate: AdamW rates of pretraining / SPL fine-tuning (paper: 1e-4 / 1e-5; the
      tiny CPU run uses 1e-3 / 1e-4 to learn within a few hundred steps, keeping the 10x ratio).
    noise_threshold: probability that a batch stays clean (0.5: half the batches are noised).
    max_timestep: noised batches draw t ~ U{0, ..., max_timestep - 1}.
    temperature, threshold_selfsim: InfoNCE temperature and near-duplicate caption threshold.
    spl_k, spl_high_sim, spl_temperature, spl_weight: SPL top-k, high-similarity rule, tau, loss weight.
    w_*: pretraining loss weights (reconstruction, KL, latent matching, contrastive).
    timestep_routing, spl_latents, spl_temperature_convention, filter_convention, recons_target: the
      objective's named options, ours by default, official in the 'official' preset (module docstring).
  """

  model: SPMConfig = SPMConfig()
  diffusion: DiffusionConfig = DiffusionConfig()
  batch_size: int = 32
  max_length: int = 196
  text_max_length: int = 24
  num_steps: int = 400
  learning_rate: float = 1e-3
  spl_learning_rate: float = 1e-4
  weight_decay: float = 0.0
  grad_clip_norm: float = 1.0
  noise_threshold: float = 0.5
  max_timestep: int = 500
  temperature: float = 0.1
  threshold_selfsim: float = 0.9
  spl_k: int = 10
  spl_high_sim: float = 0.8
  spl_temperature: float = 0.1
  spl_weight: float = 0.01
  w_recons: float = 1.0
  w_kl: float = 1e-5
  w_latent: float = 1e-5
  w_contrastive: float = 0.1
  seed: int = 0
  log_every: int = 50
  checkpoint_every: int = 500
  timestep_routing: str = "mode"
  spl_latents: str = "mean"
  spl_temperature_convention: str = "single"
  filter_convention: str = "cosine"
  recons_target: str = "clean_valid"

  def __post_init__(self):
    for name, allowed in _CHOICES.items():
      if getattr(self, name) not in allowed:
        raise ValueError(
          f"{_WHERE}: RewardTrainConfig.{name}: expected one of {tuple(allowed)}, found {getattr(self, name)!r}"
        )
    if not 0.0 <= self.noise_threshold <= 1.0:
      raise ValueError(f"{_WHERE}: RewardTrainConfig.noise_threshold: expected in [0, 1], found {self.noise_threshold}")
    if not 1 <= self.max_timestep <= self.diffusion.num_train_timesteps:
      raise ValueError(
        f"{_WHERE}: RewardTrainConfig.max_timestep: expected in [1, "
        f"{self.diffusion.num_train_timesteps}], found {self.max_timestep}"
      )
    if self.batch_size < 2:
      raise ValueError(f"{_WHERE}: RewardTrainConfig.batch_size: expected >= 2 (contrastive), found {self.batch_size}")

  def with_objective(self, objective: str) -> RewardTrainConfig:
    """This config with every objective option set to 'official' (OFFICIAL_OBJECTIVE) or 'ours' (OUR_OBJECTIVE);
    sizes, rates and the model are kept."""
    table = {"official": OFFICIAL_OBJECTIVE, "ours": OUR_OBJECTIVE}
    if objective not in table:
      raise ValueError(f"{_WHERE}: with_objective: expected one of {sorted(table)}, found {objective!r}")
    return dataclasses.replace(self, **table[objective])

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> RewardTrainConfig:
    return config_from_dict(cls, d, "RewardTrainConfig")


def optim_config(config: RewardTrainConfig, learning_rate: float) -> OptimConfig:
  """AdamW at `learning_rate` with the config's weight decay and gradient clipping."""
  return OptimConfig(
    learning_rate=learning_rate, weight_decay=config.weight_decay, grad_clip_norm=config.grad_clip_norm
  )


def stage_optim(config: RewardTrainConfig, spl: bool) -> OptimConfig:
  """The optimizer of a stage: AdamW at learning_rate (pretraining) or spl_learning_rate (SPL)."""
  return optim_config(config, config.spl_learning_rate if spl else config.learning_rate)
