"""Interop: reading and converting foreign files (no torch needed).

File formats: `torch_zip` (torch.save zips, read and written), `safetensors`, `hf_weights` (HuggingFace model
folders: weight files, checked tensor access). Official checkpoints -> our Flax parameter trees: `t2m_convert` (the
T2M evaluator + GloVe), `spm_convert` (the official SPM reward), `mld_convert` (the official MLD VAE / denoiser).
Pretrained text encoders from their downloaded folders: `sentence_t5` (+ `t5_tokenizer`), `clip` (+ `clip_tokenizer`).
The networks these fill live in `easytune_jax.models`; the dataset readers with clear errors in `data/safe_io.py`.
"""
