"""Named presets of every launcher's config (`--config=<name>`; cli.define_config_flag).

One module per launcher; each holds `PRESETS` (name -> function returning the config dataclass) and
`get_config(name)`. 'tiny' is the CPU setting (the config classes' defaults), 'paper' the paper's sizes where
one exists. DDIM steps and guidance come from `core.sampling` (NUM_STEPS / GUIDANCE_SCALE for the paper,
CPU_NUM_STEPS / CPU_GUIDANCE_SCALE for the CPU), never from a literal here.

A config file is any Python file with `get_config()` returning the launcher's config, e.g.

  from easytune_jax.configs import finetune
  def get_config():
    return dataclasses.replace(finetune.get_config("paper"), trajectories=200)

used as `python -m launch.finetune --config=path/to/file.py --config.seed=1 ...`.
"""
