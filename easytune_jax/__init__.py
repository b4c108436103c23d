"""easytune_jax: step-aware reward fine-tuning of diffusion text-to-motion generators in JAX.

Reimplements EasyTune (Tan, Weng, Lei, Wang; ICLR 2026, arXiv 2602.07967) with its baselines
(DRaFT-K, ReFL, AlignProp, DRTune), its step-aware reward model (SPM + SPL) and the standard
text-to-motion evaluation.
"""

__version__ = "0.1.0"

from easytune_jax.core import prng as _prng  # noqa: E402

_prng.apply_default()  # CPU: threefry lowered straight-line (same bits, faster steps; core/prng.py)
