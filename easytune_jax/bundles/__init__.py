"""Bundles: a generator, an evaluator or a fine-tuning task, loaded from a work directory or an official checkpoint.

Importing the package registers the converted-checkpoint generator kinds with `generator.load_generator`.
"""

from easytune_jax.bundles import adapter, official_generator  # noqa: F401  (register their workdir loaders)
