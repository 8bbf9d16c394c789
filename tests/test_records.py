"""Typed configs and results as JSON: round trips, optional fields, older files, validation."""

import dataclasses

import pytest

from hw2jax import records
from hw2jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Inner:
  x: float
  note: str | None = records.optional()


@dataclasses.dataclass(frozen=True)
class Outer:
  name: str
  sizes: tuple[int, ...]
  inner: Inner
  by_key: dict[str, Inner]
  pairs: dict[str, tuple[int, int]]
  maybe: Inner | None = None
  items: list[Inner] = dataclasses.field(default_factory=list)


def test_round_trip_keeps_types_and_leaves_out_optional_nones():
  value = Outer("a", (1, 2), Inner(1.5), {"k": Inner(2.0, "n")}, {"p": (3, 4)},
                items=[Inner(0.5)])
  data = records.to_json(value)
  assert data["sizes"] == [1, 2] and data["inner"] == {"x": 1.5}
  assert data["by_key"] == {"k": {"x": 2.0, "note": "n"}} and data["maybe"] is None
  assert records.from_json(Outer, data) == value


def test_older_files_read_unknown_keys_ignored_missing_ones_defaulted():
  data = {"name": "a", "sizes": [1], "inner": {"x": 1}, "by_key": {}, "pairs": {},
          "gone_field": 3}
  value = records.from_json(Outer, data)
  assert value.items == [] and value.maybe is None and value.inner.x == 1.0
  assert isinstance(value.inner.x, float)


def test_a_wrong_type_is_not_silently_accepted():
  with pytest.raises(TypeError):
    records.from_json(Inner, {"x": "not a number"})


def test_require_raises_the_first_failing_message():
  records.require([(True, "fine")])
  with pytest.raises(UserError, match="second"):
    records.require([(True, "first"), (False, "second"), (False, "third")])
  assert records.positive(1e-9) and not records.positive(0) and not records.positive(float("inf"))
