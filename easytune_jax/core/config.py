"""Configs as data: frozen dataclasses to and from JSON, command-line overrides parsed by type hints, config files,
and the check a resumed run makes against its checkpoint.
"""

from __future__ import annotations

import ast
import collections.abc
import dataclasses
import enum
import importlib.util
import json
import os
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

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
    kw[k] = (
      config_from_dict(t, v, f"{where}.{k}") if dataclasses.is_dataclass(t) and isinstance(v, Mapping) else _tuples(v)
    )
  return cls(**kw)


def check_config_matches(
  saved: Mapping[str, Any], current: Mapping[str, Any], where: str, ignore: Iterable[str] = ()
) -> None:
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
  diffs = [
    f"{k}: checkpoint has {a.get(k)!r}, config has {b.get(k)!r}"
    for k in sorted(set(a) | set(b))
    if a.get(k) != b.get(k) and not any(k.startswith(i) for i in ignore)
  ]
  if diffs:
    raise CheckpointError(f"{where}: checkpoint was written with a different config: " + "; ".join(diffs))


def config_to_dict(config) -> dict:
  return dataclasses.asdict(config)


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _type_name(t) -> str:
  if t is type(None):
    return "None"
  if isinstance(t, type) and not typing.get_args(t):
    return t.__name__
  args = typing.get_args(t)
  if typing.get_origin(t) in (typing.Union, types.UnionType) and type(None) in args:
    rest = [a for a in args if a is not type(None)]  # `X | None` and Optional[X] read alike: `X | None`
    return " | ".join([_type_name(a) for a in rest] + ["None"])
  return str(t).replace("typing.", "")


def parse_value(text: str, hint: Any, current: Any = None, where: str = "value"):
  """Parses a command-line string as a value of the type hint `hint`.

  Handles bool (true/false/1/0/yes/no/on/off), int, float, str, Optional[X] ('none' / 'None' / 'null' give None),
  Literal[...] (one of its choices), tuples and lists (comma-separated, optional brackets; '' or '()' is empty;
  a bare `tuple` takes its item type from `current`'s items) and Any (Python literal, else the string).

  Args:
    text: the string given on the command line.
    hint: the field's type hint (from `typing.get_type_hints`).
    current: the field's current value (item types of a bare `tuple`; the type when the hint is Any).
    where: names the field or flag in errors.

  Returns:
    The parsed value. Raises ValueError naming `where`, the expected type and the text.
  """
  origin, args = typing.get_origin(hint), typing.get_args(hint)
  if origin in (typing.Union, types.UnionType):
    if type(None) in args and text.strip() in ("none", "None", "null"):
      return None
    options = [a for a in args if a is not type(None)]
    errors = []
    for a in options:
      try:
        return parse_value(text, a, current, where)
      except ValueError as e:
        errors.append(e)
    if len(options) == 1:
      raise errors[0]
    raise ValueError(f"{where}={text!r}: expected {_type_name(hint)}")
  if origin is typing.Literal:
    for a in args:
      if str(a) == text.strip():
        return a
    raise ValueError(f"{where}={text!r}: expected one of {list(args)}")
  if hint in (tuple, list) or origin in (tuple, list, collections.abc.Sequence):
    return _parse_sequence(text, hint, origin, args, current, where)
  if hint is bool:
    low = text.strip().lower()
    if low in _TRUE + _FALSE:
      return low in _TRUE
    raise ValueError(f"{where}={text!r}: expected a bool (true/false)")
  if hint in (int, float):
    try:
      return hint(text)
    except ValueError:
      if hint is int:
        try:  # '1e4' and '2.0' are ints written as floats
          f = float(text)
          if f == int(f):
            return int(f)
        except (ValueError, OverflowError):
          pass
      raise ValueError(f"{where}={text!r}: expected {hint.__name__}") from None
  if hint is str:
    return text
  if hint is Any or hint is None:
    if current is not None and not isinstance(current, str):
      return parse_value(text, type(current), current, where)
    return _literal(text)
  if dataclasses.is_dataclass(hint):
    raise ValueError(
      f"{where}: is a config group ({hint.__name__}); set one of its fields "
      f"{[f.name for f in dataclasses.fields(hint)]}"
    )
  if isinstance(hint, type) and issubclass(hint, enum.Enum):
    try:
      return hint[text] if text in hint.__members__ else hint(text)
    except ValueError:
      raise ValueError(f"{where}={text!r}: expected one of {list(hint.__members__)}") from None
  raise ValueError(f"{where}: cannot parse a {_type_name(hint)} from the command line")


def _literal(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def _parse_sequence(text, hint, origin, args, current, where):
  body = text.strip()
  if body[:1] + body[-1:] in ("()", "[]"):
    body = body[1:-1]
  items = [s.strip() for s in body.split(",")] if body.strip() else []
  if items and items[-1] == "":  # '(1,)'
    items = items[:-1]
  if len(args) == 2 and args[1] is Ellipsis:
    item_hints = [args[0]] * len(items)
  elif args and origin is tuple:
    if len(args) != len(items):
      raise ValueError(f"{where}={text!r}: expected {len(args)} comma-separated items ({_type_name(hint)})")
    item_hints = list(args)
  elif args:
    item_hints = [args[0]] * len(items)
  elif current:  # bare `tuple`: items like the current ones (mixed or empty: Python literals)
    kinds = {type(c) for c in current}
    item_hints = [kinds.pop() if len(kinds) == 1 else Any] * len(items)
  else:
    item_hints = [Any] * len(items)
  out = [parse_value(s, h, None, f"{where}[{i}]") for i, (s, h) in enumerate(zip(items, item_hints))]
  return list(out) if (hint is list or origin is list) else tuple(out)


def parse_override(item: str) -> tuple[str, str]:
  """'a.b=value' -> ('a.b', 'value'); ValueError without '='."""
  if "=" not in item:
    raise ValueError(f"override {item!r}: expected 'key=value'")
  key, text = item.split("=", 1)
  return key.strip(), text


def apply_overrides(config, overrides: Sequence[str] | Mapping[str, str], prefix: str = ""):
  """Returns `config` (a frozen dataclass) with each 'a.b=value' override applied, parsed by the field's type hint.

  Args:
    config: a (nested) frozen dataclass config.
    overrides: 'vae.width=128' strings, or a {'vae.width': '128'} mapping, applied in order.
    prefix: how a key is named in errors ('--config.' names the command-line flag).

  Returns:
    The new config (each nested level rebuilt by `dataclasses.replace`, so `__post_init__` checks run).
    Raises ValueError naming `prefix + key`, the class and field, and the valid fields or the expected type.
  """
  pairs = overrides.items() if isinstance(overrides, Mapping) else (parse_override(o) for o in overrides)
  for key, text in pairs:
    config = _override(config, key.split("."), text, prefix + key)
  return config


def _override(obj, path, text, full):
  cls = type(obj)
  names = [f.name for f in dataclasses.fields(obj)]
  if path[0] not in names:
    raise ValueError(f"{full}: {cls.__name__} has no field {path[0]!r}; valid fields: {', '.join(names)}")
  cur = getattr(obj, path[0])
  if len(path) > 1:
    if not dataclasses.is_dataclass(cur):
      raise ValueError(f"{full}: {cls.__name__}.{path[0]} is not a nested config (found {cur!r})")
    return dataclasses.replace(obj, **{path[0]: _override(cur, path[1:], text, full)})
  hint = typing.get_type_hints(cls)[path[0]]
  if dataclasses.is_dataclass(cur):
    hint = type(cur)
  try:
    value = parse_value(text, hint, cur, full)
  except ValueError as e:
    raise ValueError(f"{e} ({cls.__name__}.{path[0]}: {_type_name(hint)})") from None
  return dataclasses.replace(obj, **{path[0]: value})


def load_config_file(path: str, name: str = "config_file"):
  """Runs the Python file `path` and returns its `get_config()` (a config file, as in the flax examples)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: config file does not exist")
  spec = importlib.util.spec_from_file_location(f"_easytune_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not callable(getattr(module, "get_config", None)):
    raise ValueError(f"{path}: a config file defines get_config() returning the config")
  return module.get_config()
