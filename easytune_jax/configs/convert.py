"""Presets of the converters: launch/convert_official_mld.py (`OfficialMLDConversion`,
bundles/official_generator.py) and launch/convert_official_spm.py (`SPMConversion`, bundles/reward.py). 'official'
is the official checkpoints' setting."""

from __future__ import annotations

from easytune_jax.bundles.official_generator import OfficialMLDConversion
from easytune_jax.bundles.reward import SPMConversion

MLD_PRESETS = {"official": OfficialMLDConversion}
SPM_PRESETS = {"official": SPMConversion}
