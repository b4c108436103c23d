"""easytune_jax: step-aware reward fine-tuning of diffusion text-to-motion generators in JAX.

Reimplements EasyTune (Tan, Weng, Lei, Wang; ICLR 2026, arXiv 2602.07967) with its baselines
(DRaFT-K, ReFL, AlignProp, DRTune), its step-aware reward model (SPM + SPL) and the standard
text-to-motion evaluation.
"""

__version__ = "0.1.0"

# Importing the package changes nothing in JAX. The faster CPU lowering of threefry (same random bits) is an
# explicit opt-in: `easytune_jax.core.prng.use_fast_cpu_threefry()`, which the launchers call (cli.run).
