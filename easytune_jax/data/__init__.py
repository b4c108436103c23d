"""Data layer: HumanML3D/KIT reader, skeleton + features<->joints, synthetic dataset, tokenizer, batching.

Modules: ``skeleton`` (tables, quaternions, FK/IK), ``features`` (recover_from_ric,
joints_to_features), ``humanml3d`` (folder reader, Mean/Std), ``batching`` (fixed-shape
deterministic batches), ``text`` (Tokenizer, precomputed embeddings), ``synthetic`` (procedural
text-motion dataset writer), ``preview`` (stick-figure strips; imports matplotlib).
"""

from easytune_jax.data.batching import batch_at, iterate_batches, make_batch, steps_per_epoch, unit_length_crop
from easytune_jax.data.features import (
  feature_dim,
  feature_slices,
  heading_from_features,
  joints_num_for_dim,
  joints_to_features,
  recover_from_ric,
  recover_root_rot_pos,
)
from easytune_jax.data.humanml3d import (
  DatasetInfo,
  MotionDataset,
  MotionEntry,
  dataset_info,
  denormalize,
  group_mean_std,
  load_dataset,
  load_mean_std,
  normalize,
)
from easytune_jax.data.synthetic import ACTIONS, caption_action_labels, primary_action_label, write_synthetic_dataset
from easytune_jax.data.text import TextEmbeddings, Tokenizer, save_text_embeddings
