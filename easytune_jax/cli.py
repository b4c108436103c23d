"""The shared front of every launcher: one config path, one-line errors naming flags, no empty output folders.

Each launcher defines its path flags, calls :func:`define_config_flag` with its presets and :func:`define_flags`
(the flags launchers share, defined only there: ``--verbose``; ``--[no]progress`` for launchers that show progress;
``--on_missing`` / ``--drop_nonfinite`` for launchers that read a dataset; ``--mesh`` and the multi-host flags for
launchers that run on a mesh), reads its config with :func:`get_config` and ends with
``cli.run(main, outputs=..., inputs=...)`` instead of ``app.run(main)``.
Then:

* ``--config=<preset>`` (e.g. ``tiny``, ``paper``; the presets live in ``easytune_jax/configs/``) or
  ``--config=path/to/file.py`` (a file whose ``get_config()`` returns the config) picks the run's config, and
  ``--config.<field>[.<subfield>]=<value>`` overrides any field, parsed by its type hint
  (``core.config.parse_value``: bool, int, float, str, ``none`` for Optional, comma-separated tuples);
* an error prints ONE line ``error: <message>`` on stderr and exits with status 1 (``--verbose`` prints the
  traceback, ``--pdb`` opens the post-mortem debugger); config-field names in the message
  (``FinetuneConfig.num_steps``) are completed by the flag that sets them (``--config.finetune.num_steps``);
* input folders (``inputs``: ``--data_dir``, ``--generator_workdir``, ...) are checked before anything runs:
  a missing one says which flag and that the folder does not exist;
* output folders (``outputs``: ``--workdir``, ``--out_dir``) that did not exist before the call and hold no
  file when it fails are removed again (a folder that existed before is never touched, and one a failing
  run wrote files into is kept: it may hold a checkpoint to resume from);
* ``--on_missing=skip`` / ``--drop_nonfinite`` set the dataset reader's skip policies
  (``humanml3d.set_default_policy``) for every dataset the run loads;
* the launcher opts in to the straight-line CPU lowering of JAX's threefry (``core.prng.use_fast_cpu_threefry``:
  the same random bits, faster steps that draw many dropout masks; ``EASYTUNE_JAX_CPU_THREEFRY=rolled`` keeps
  JAX's loop). The library itself never changes JAX on import: this is the application's choice, made here for
  every ``launch/*.py``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from absl import app, flags

from easytune_jax.core import config as config_lib
from easytune_jax.core import prng
from easytune_jax.data import humanml3d

FLAGS = flags.FLAGS

CONFIG_PREFIX = "--config."
# The launcher's presets, the overrides found on the command line and, once resolved, where each config class
# sits in the config (class name -> dotted path, for error messages).
_CONFIG: dict = {"presets": None, "default": None, "overrides": [], "paths": {}}


def define_config_flag(presets: Mapping[str, Callable[[], Any]], default: str | None, help: str = "") -> None:
  """Registers ``--config`` (a preset name of `presets` or a .py file with ``get_config()``; required when
  `default` is None); the ``--config.<field>=<value>`` overrides are read by :func:`run` and applied by
  :func:`get_config`."""
  flags.disclaim_key_flags()  # --config belongs to the launcher that calls this function (listed by its --help)
  flags.DEFINE_string(
    "config",
    default,
    f"{help} A preset ({', '.join(presets)}) or a Python file whose get_config() returns the "
    "config. Override any field with --config.<field>=<value> (nested: --config.optim.learning_rate=1e-4; "
    "Optional: none; tuples: comma-separated).".strip(),
    required=default is None,
  )
  _CONFIG.update(presets=dict(presets), default=default)


def split_config_overrides(argv: Sequence[str]) -> tuple[list, list]:
  """Splits `argv` into (the other arguments, [(dotted key, text)] of ``--config.<key>=<text>`` or
  ``--config.<key> <text>``; a bare ``--config.<key>`` before another flag or at the end means 'true')."""
  rest, overrides, i = [], [], 0
  while i < len(argv):
    arg = argv[i]
    if arg == "--":  # the rest is not this launcher's (e.g. the command launch/multiprocess.py runs)
      rest += argv[i:]
      break
    if arg.startswith(CONFIG_PREFIX):
      body = arg[len(CONFIG_PREFIX) :]
      if "=" in body:
        key, text = body.split("=", 1)
      elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
        key, text, i = body, argv[i + 1], i + 1
      else:
        key, text = body, "true"
      if not key:
        raise app.UsageError(f"{arg}: expected --config.<field>=<value>")
      overrides.append((key, text))
    else:
      rest.append(arg)
    i += 1
  return rest, overrides


def _parse_flags(argv: Sequence[str]) -> list:
  """absl's flag parser after taking the ``--config.*`` overrides out of `argv` (they are not absl flags)."""
  try:
    rest, overrides = split_config_overrides(list(argv))
    if overrides and "config" not in FLAGS:
      raise app.UsageError(f"--config.{overrides[0][0]}: this launcher has no config")
  except app.UsageError as e:
    print(f"error: {e} (see --help)", file=sys.stderr)
    sys.exit(1)
  _CONFIG["overrides"] = overrides
  return app.parse_flags_with_usage(rest)


def config_overrides() -> dict:
  """{dotted key: text} of the ``--config.<key>=<text>`` overrides given on the command line."""
  return dict(_CONFIG["overrides"])


def resolve_config(
  spec: str,
  overrides: Sequence[tuple] = (),
  presets: Mapping[str, Callable] | None = None,
  default: str | None = None,
):
  """The config named by `spec` (a preset of `presets` or a .py file with get_config()) with `overrides`
  ([(dotted key, text)]) applied; errors name the ``--config`` flag, the field and the expected type."""
  presets = dict(presets or {})
  if spec in presets:
    config = presets[spec]()
  elif spec.endswith(".py") or os.path.sep in spec:
    config = config_lib.load_config_file(spec)
    expected = type(presets[default]()) if default in presets else None
    if expected is not None and type(config) is not expected:
      raise app.UsageError(
        f"--config={spec}: get_config() returned a {type(config).__name__}, expected a {expected.__name__}"
      )
  else:
    raise app.UsageError(f"--config={spec!r}: expected a preset ({', '.join(presets)}) or a .py config file")
  _CONFIG["paths"] = _class_paths(config)  # before the overrides: their errors name flags too
  return config_lib.apply_overrides(config, dict(overrides), prefix=CONFIG_PREFIX)


def get_config():
  """The launcher's config: ``--config`` resolved and the command line's ``--config.*`` overrides applied."""
  if _CONFIG["presets"] is None:
    raise RuntimeError("get_config: the launcher did not call cli.define_config_flag")
  return resolve_config(FLAGS.config, _CONFIG["overrides"], _CONFIG["presets"], _CONFIG["default"])


def _class_paths(config, prefix: str = "") -> dict:
  """{class name: dotted path} of every nested config (a class found at two paths maps to None)."""
  out = {type(config).__name__: prefix} if not prefix else {}
  for f in dataclasses.fields(config):
    value = getattr(config, f.name)
    if dataclasses.is_dataclass(value):
      name = type(value).__name__
      out[name] = None if name in out else f"{prefix}{f.name}."
      for k, v in _class_paths(value, f"{prefix}{f.name}.").items():
        out[k] = None if k in out and out[k] != v else v
  return out


COMMON_FLAGS = {
  "verbose": "every launcher",
  "progress": "launchers that show progress bars (progress=True)",
  "on_missing": "launchers that read a dataset (dataset=True)",
  "drop_nonfinite": "launchers that read a dataset (dataset=True)",
  "mesh": "launchers that run on a device mesh (mesh=True; with --coordinator_address, --num_processes, "
  "--process_id, --distributed: core/parallel.define_flags)",
}


def define_flags(*, dataset: bool, progress: bool, mesh: bool = False) -> None:
  """Registers the flags launchers share (:data:`COMMON_FLAGS`), the one place they are defined, as key flags of
  the calling launcher (listed by its --help): --verbose always; --[no]progress when `progress` (the launcher
  passes ``FLAGS.progress`` to every progress bar it starts); --on_missing / --drop_nonfinite when `dataset` (applied
  by :func:`run` to every dataset the run loads); --mesh and the multi-host flags when `mesh` (read them with
  ``core.parallel.setup_from_flags()``)."""
  flags.disclaim_key_flags()  # the flags below belong to the launcher that calls this function
  flags.DEFINE_bool("verbose", False, "On an error, print the full traceback instead of one line.")
  if progress:
    flags.DEFINE_bool("progress", True, "Show progress bars and per-step progress lines (--noprogress: none).")
  if dataset:
    flags.DEFINE_enum(
      "on_missing",
      "error",
      ["error", "skip"],
      "Dataset ids without a feature or caption file, or with an empty caption file: 'error' "
      "stops and names the file; 'skip' skips them (counted and logged).",
    )
    flags.DEFINE_bool(
      "drop_nonfinite", False, "Drop dataset feature files holding NaN/inf (counted and logged) instead of stopping."
    )
  if mesh:
    from easytune_jax.core import parallel  # here: launchers without a mesh do not import jax for their flags

    parallel.define_flags()


def _flag_value(name: str):
  return FLAGS[name].value if name in FLAGS else None


def _as_list(value) -> list:
  if value is None:
    return []
  return [v for v in value if v] if isinstance(value, (list, tuple)) else [value]


def check_inputs(inputs: Sequence[str], files: Sequence[str] = ()) -> None:
  """Raises app.UsageError naming the flag when an input folder (or file) flag points at nothing."""
  for name in inputs:
    for path in _as_list(_flag_value(name)):
      if not os.path.exists(path):
        raise app.UsageError(f"--{name}={path}: folder does not exist")
      if not os.path.isdir(path):
        raise app.UsageError(f"--{name}={path}: expected a folder, found a file")
  for name in files:
    for path in _as_list(_flag_value(name)):
      if not os.path.exists(path):
        raise app.UsageError(f"--{name}={path}: file does not exist")
      if os.path.isdir(path):
        raise app.UsageError(f"--{name}={path}: expected a file, found a folder")


def _first_new_ancestor(path: str) -> str | None:
  """The outermost folder of `path` (itself included) that does not exist yet, or None if `path` exists."""
  path = os.path.abspath(path)
  if os.path.exists(path):
    return None
  new = path
  parent = os.path.dirname(new)
  while parent != new and not os.path.exists(parent):
    new, parent = parent, os.path.dirname(parent)
  return new


def _holds_files(path: str) -> bool:
  for _, _, files in os.walk(path):
    if files:
      return True
  return False


def remove_if_empty(created: Sequence[str]) -> list[str]:
  """Removes each folder of `created` (made by this call) that holds no file; returns those removed."""
  removed = []
  for path in created:
    if os.path.isdir(path) and not _holds_files(path):
      shutil.rmtree(path, ignore_errors=True)
      removed.append(path)
  return removed


_CONFIG_FIELD = re.compile(r"\b([A-Z]\w*Config)\.(\w+)\b")


def flagify(message: str, aliases: Mapping[str, str] | None = None) -> str:
  """Completes 'SomeConfig.field' to '--config.<path>.field (SomeConfig.field)' when SomeConfig sits at one place
  of the launcher's config (or to '--flag (SomeConfig.field)' when the launcher has a flag of that name)."""
  aliases = dict(aliases or {})
  paths = _CONFIG["paths"]

  def sub(m):
    cls, field = m.group(1), m.group(2)
    if paths.get(cls) is not None:
      flag = f"{CONFIG_PREFIX}{paths[cls]}{field}"
      return m.group(0) if flag in message else f"{flag} ({m.group(0)})"
    for name in (aliases.get(field), field):
      if name and name in FLAGS and FLAGS[name].name == name:
        return f"--{name} ({m.group(0)})"
    return m.group(0)

  return _CONFIG_FIELD.sub(sub, message)


def one_line(e: BaseException, aliases: Mapping[str, str] | None = None) -> str:
  """The message of `e` on one line, config fields turned into flags."""
  msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
  msg = " ".join(str(msg).split())  # newlines and runs of spaces -> one space
  if not isinstance(e, (ValueError, FileNotFoundError, NotADirectoryError, KeyError, app.UsageError)) or not msg:
    msg = f"{type(e).__name__}: {msg}" if msg else type(e).__name__
  return flagify(msg, aliases)


def _debugging() -> bool:
  return any(n in FLAGS and FLAGS[n].value for n in ("verbose", "pdb_post_mortem", "run_with_pdb"))


def _exit_multiprocess(e: BaseException, aliases: Mapping[str, str] | None) -> None:
  """A process of a multi-process run that fails leaves at once: printing its error (its traceback with --verbose)
  and exiting without JAX's shutdown barrier, which would wait minutes for peers that are still running. The
  coordination service then stops the other processes within the heartbeat timeout (--heartbeat_timeout), each
  with a message that a peer died. Output folders are left as they are: the others may be writing into them."""
  import jax

  if _debugging():
    traceback.print_exception(e)
  where = f"process {jax.process_index()} of {jax.process_count()}"
  print(f"error ({where}): {one_line(e, aliases)} (this process exits; the others stop too)", file=sys.stderr)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(130 if isinstance(e, KeyboardInterrupt) else 1)


def wrap(
  main: Callable,
  *,
  outputs: Sequence[str] = (),
  inputs: Sequence[str] = (),
  files: Sequence[str] = (),
  aliases: Mapping[str, str] | None = None,
  fast_cpu_threefry: bool = False,
) -> Callable:
  """`main` with the behaviour of the module docstring (see :func:`run`); `fast_cpu_threefry` calls
  `prng.use_fast_cpu_threefry()` before `main` (what :func:`run` asks for)."""

  def wrapped(argv):
    created = []
    # jax logs a failed TPU probe at INFO on every CPU/GPU machine: noise in front of the one-line error.
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    try:
      if fast_cpu_threefry:
        prng.use_fast_cpu_threefry()
      if "on_missing" in FLAGS:
        humanml3d.set_default_policy(on_missing=FLAGS.on_missing, drop_nonfinite=FLAGS.drop_nonfinite)
      check_inputs(inputs, files)
      created = [c for c in (_first_new_ancestor(p) for n in outputs for p in _as_list(_flag_value(n))) if c]
      return main(argv)
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001  (every error becomes one line)
      par = sys.modules.get("easytune_jax.core.parallel")  # imported by launchers on a mesh, never here for others
      if par is not None and par.is_multiprocess():
        _exit_multiprocess(e, aliases)
      remove_if_empty(created)
      if _debugging():
        raise
      if isinstance(e, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
        sys.exit(130)
      hint = " (see --help)" if isinstance(e, app.UsageError) else " (--verbose shows the traceback)"
      print(f"error: {one_line(e, aliases)}{hint}", file=sys.stderr)
      sys.stderr.flush()
      sys.exit(1)

  wrapped.__doc__ = main.__doc__
  return wrapped


def run(
  main: Callable,
  *,
  outputs: Sequence[str] = (),
  inputs: Sequence[str] = (),
  files: Sequence[str] = (),
  aliases: Mapping[str, str] | None = None,
) -> None:
  """`app.run(main)` with one-line errors, the input / output checks of the module docstring and the opt-in to
  the fast CPU threefry lowering (`core.prng.use_fast_cpu_threefry`; the launchers are applications).

  Args:
    main: the launcher's `main(argv)`.
    outputs: names of flags holding output folders (created lazily; removed on failure when left empty).
    inputs: names of flags holding input folders (a string or a list of them) that must exist.
    files: names of flags holding input files that must exist.
    aliases: field -> flag name, for a field named in an error that a flag of another name sets.
  """
  wrapped = wrap(main, outputs=outputs, inputs=inputs, files=files, aliases=aliases, fast_cpu_threefry=True)
  app.run(wrapped, flags_parser=_parse_flags)
