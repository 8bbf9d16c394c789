"""Frozen dataclasses as JSON: configs and results cross module boundaries typed, and land on disk
as the same plain JSON as always (config.json, summary.json, report.json).

`to_json` turns a dataclass (nested dataclasses, lists, tuples, dicts) into JSON values, in field
order; a field made with `optional()` is left out while it is None. `from_json(cls, data)` reads
it back, converting by the field types; keys it does not know are ignored and missing ones take
the field's default, so older files still read. `require` is every config's `validate`, with
the checks several configs share (`positive`, `non_negative`, `seed_check`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import types
import typing
from typing import Any, Iterable, TypeVar

from hw2jax.errors import UserError

T = TypeVar("T")
_OMIT_NONE = {"omit_none": True}


def optional(**kwargs) -> Any:
  """A dataclass field that defaults to None and is not written to JSON while it is None."""
  return dataclasses.field(default=None, metadata=_OMIT_NONE, **kwargs)


def require(checks: Iterable[tuple[bool, str]]) -> None:
  """Raises UserError with the message of the first check that does not hold."""
  for ok, message in checks:
    if not ok:
      raise UserError(message)


def positive(x: float) -> bool:
  """A positive, finite number."""
  return x > 0 and math.isfinite(x)


def non_negative(x: float) -> bool:
  """A finite number >= 0 (inf passes `x >= 0`, and a run with it only diverges)."""
  return x >= 0 and math.isfinite(x)


# JAX keys keep a seed's low 32 bits: 2**32 would silently be seed 0 again and -1 be 2**32 - 1.
SEED_LIMIT = 2 ** 32


def seed_check(seeds: int | Iterable[int], flag: str = "seed") -> tuple[bool, str]:
  """`require`'s check that every seed is an integer JAX takes as itself, in [0, 2^32)."""
  seeds = [seeds] if isinstance(seeds, int) else list(seeds)
  return (all(0 <= s < SEED_LIMIT for s in seeds),
          f"--{flag}={','.join(map(str, seeds))} must be in 0..{SEED_LIMIT - 1}: seeds have 32 "
          "bits, and a larger or negative one would silently be another seed")


def to_json(obj: Any) -> Any:
  """Dataclasses -> dicts (fields in order), tuples -> lists, recursively."""
  if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
    out = {}
    for f in dataclasses.fields(obj):
      value = getattr(obj, f.name)
      if value is None and f.metadata.get("omit_none"):
        continue
      out[f.name] = to_json(value)
    return out
  if isinstance(obj, (list, tuple)):
    return [to_json(v) for v in obj]
  if isinstance(obj, dict):
    return {k: to_json(v) for k, v in obj.items()}
  return obj


def json_digest(data: Any) -> str:
  """A short hash of JSON-able `data`, key order aside: what a file says, not how it is laid out."""
  return hashlib.blake2b(json.dumps(data, sort_keys=True).encode(), digest_size=16).hexdigest()


def from_json(cls: type[T], data: Any) -> T:
  """`data` (as `to_json` writes it) as an instance of `cls` (a dataclass or a type hint)."""
  return _convert(cls, data)


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
  return typing.get_type_hints(cls)


def _convert(hint: Any, value: Any) -> Any:
  if value is None:
    return None
  origin = typing.get_origin(hint)
  if origin in (typing.Union, types.UnionType):
    options = [a for a in typing.get_args(hint) if a is not type(None)]
    for option in options:
      try:
        return _convert(option, value)
      except (TypeError, ValueError):
        continue
    raise TypeError(f"{value!r} fits none of {options}")
  if dataclasses.is_dataclass(hint):
    if not isinstance(value, dict):
      raise TypeError(f"{hint.__name__} needs a JSON object, got {type(value).__name__}")
    hints = _hints(hint)
    known = {f.name for f in dataclasses.fields(hint) if f.init}
    return hint(**{k: _convert(hints[k], v) for k, v in value.items() if k in known})
  if origin in (list, tuple):
    args = typing.get_args(hint)
    if origin is tuple and args and (len(args) != 2 or args[1] is not Ellipsis):
      return tuple(_convert(a, v) for a, v in zip(args, value))
    items = [_convert(args[0] if args else Any, v) for v in value]
    return tuple(items) if origin is tuple else items
  if origin is dict:
    _, value_hint = typing.get_args(hint) or (str, Any)
    return {k: _convert(value_hint, v) for k, v in value.items()}
  if hint is float and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  if hint in (int, float, str, bool) and not isinstance(value, hint):
    raise TypeError(f"{value!r} is not a {hint.__name__}")
  return value
