"""Data layer: HumanML3D/KIT reader, skeleton + features<->joints, synthetic dataset, tokenizer, batching.

Modules: ``skeleton`` (tables, quaternions, FK/IK), ``features`` (recover_from_ric,
joints_to_features), ``humanml3d`` (folder reader, Mean/Std), ``batching`` (fixed-shape
deterministic batches), ``text`` (Tokenizer, precomputed embeddings), ``synthetic`` (procedural
text-motion dataset writer) with ``synthetic_actions`` (the actions and their parameters), ``synthetic_motion``
(actions -> joints) and ``synthetic_captions`` (caption grammar, POS tagger, caption -> action labels),
``preview`` (stick-figure strips; imports matplotlib).
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
from easytune_jax.data.synthetic import write_synthetic_dataset
from easytune_jax.data.synthetic_actions import ACTIONS
from easytune_jax.data.synthetic_captions import caption_action_labels, primary_action_label
from easytune_jax.data.text import TextEmbeddings, Tokenizer, save_text_embeddings
