"""How numbers are written in every table."""

import math

from hw2jax import markdown


def test_mean_std_fmt_and_seconds():
  assert markdown.mean_std([]) == markdown.mean_std([None, math.nan]) == "—"
  assert markdown.mean_std([0.5]) == "0.5000"
  assert markdown.mean_std([0.6, 0.7, None, 0.8]) == "0.7000 ± 0.1000"   # sample std
  assert markdown.fmt(None) == "—" and markdown.fmt(0.12345, 3) == "0.123"
  assert [markdown.format_seconds(s) for s in (4.4, 125, 3725)] == ["4s", "2m05s", "1h02m05s"]
  assert markdown.seconds(None) == "—" and markdown.numbers([0.1, 0.01]) == "0.1,0.01"


def test_table():
  assert markdown.table(["a", "b"], [[1, "x"]]) == "| a | b |\n|---|---|\n| 1 | x |\n"
