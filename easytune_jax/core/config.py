"""Configs as data: frozen dataclasses to and from JSON, and the check a resumed run makes against its checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any, Iterable, Mapping, Sequence

from easytune_jax.core.checkpoint import CheckpointError

def _tuples(v):
  return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


def config_from_dict(cls, d: Mapping[str, Any], where: str = "config"):
  """Inverse of `dataclasses.asdict` for (nested) frozen config dataclasses read back from JSON.

  Nested dataclass fields are rebuilt from their dicts, JSON lists become tuples (configs stay hashable);
  an unknown key raises ValueError naming `where`, the class and the fields it accepts.
  """
  hints = typing.get_type_hints(cls)
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(d) - names)
  if unknown:
    raise ValueError(f"{where}: unknown {cls.__name__} fields {unknown}; expected some of {sorted(names)}")
  kw = {}
  for k, v in d.items():
    t = hints[k]
    kw[k] = config_from_dict(t, v, f"{where}.{k}") if dataclasses.is_dataclass(t) and isinstance(v, Mapping) \
        else _tuples(v)
  return cls(**kw)


def check_config_matches(saved: Mapping[str, Any], current: Mapping[str, Any], where: str,
                         ignore: Iterable[str] = ()) -> None:
  """Raises CheckpointError naming every differing config field (flattened 'a.b' keys)."""
  def flat(d, prefix=""):
    out = {}
    for k, v in d.items():
      if isinstance(v, Mapping):
        out.update(flat(v, f"{prefix}{k}."))
      else:
        out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out
  a, b = flat(saved), flat(json.loads(json.dumps(current)))
  diffs = [f"{k}: checkpoint has {a.get(k)!r}, config has {b.get(k)!r}" for k in sorted(set(a) | set(b))
           if a.get(k) != b.get(k) and not any(k.startswith(i) for i in ignore)]
  if diffs:
    raise CheckpointError(f"{where}: checkpoint was written with a different config: " + "; ".join(diffs))


def config_to_dict(config) -> dict:
  return dataclasses.asdict(config)


def _parse_value(text: str, current: Any, key: str):
  if isinstance(current, bool):
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
      return True
    if low in ("0", "false", "no", "off"):
      return False
    raise ValueError(f"override {key}={text!r}: expected a boolean (true/false)")
  try:
    if isinstance(current, int):
      return int(text)
    if isinstance(current, float):
      return float(text)
  except ValueError:
    raise ValueError(f"override {key}={text!r}: expected {type(current).__name__}") from None
  return text


def apply_overrides(config, overrides: Sequence[str]):
  """Applies `key=value` strings ('vae.width=32', 'diffusion.prediction_type=sample') to a frozen dataclass
  config, converting each value to the type of the field it replaces."""
  for item in overrides:
    if "=" not in item:
      raise ValueError(f"override {item!r}: expected 'key=value'")
    key, text = item.split("=", 1)
    config = _override(config, key.strip().split("."), text, key.strip())
  return config


def _override(obj, path, text, full):
  names = [f.name for f in dataclasses.fields(obj)]
  if path[0] not in names:
    raise ValueError(f"override {full!r}: {type(obj).__name__} has no field {path[0]!r}; fields: {names}")
  cur = getattr(obj, path[0])
  if len(path) > 1:
    if not dataclasses.is_dataclass(cur):
      raise ValueError(f"override {full!r}: {path[0]!r} is not a nested config")
    return dataclasses.replace(obj, **{path[0]: _override(cur, path[1:], text, full)})
  if dataclasses.is_dataclass(cur):
    raise ValueError(f"override {full!r}: {path[0]!r} is a config group; set one of its fields")
  return dataclasses.replace(obj, **{path[0]: _parse_value(text, cur, full)})
