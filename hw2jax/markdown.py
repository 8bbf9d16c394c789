"""How numbers are written in tables and progress lines (one place, so every table agrees)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

DASH = "—"


def fmt(x: float | None, digits: int = 4) -> str:
  """'0.6907', or '—' for a missing number."""
  return DASH if x is None else f"{x:.{digits}f}"


def mean_std(values: Sequence[float | None], digits: int = 4) -> str:
  """'0.6907' for one value, '0.6907 ± 0.0050' (sample std) for several, '—' for none."""
  xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
  if not xs:
    return DASH
  if len(xs) == 1:
    return f"{xs[0]:.{digits}f}"
  return f"{np.mean(xs):.{digits}f} ± {np.std(xs, ddof=1):.{digits}f}"


def numbers(xs: Sequence[float]) -> str:
  """'0.1,0.01': numbers as a flag takes them (for messages about list flags)."""
  return ",".join(f"{x:g}" for x in xs)


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
  """A GitHub markdown table."""
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def format_seconds(s: float) -> str:
  """'4s', '2m05s', '1h02m05s'."""
  s = max(0, int(round(s)))
  h, rem = divmod(s, 3600)
  m, sec = divmod(rem, 60)
  return f"{h}h{m:02d}m{sec:02d}s" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


def seconds(x: float | None) -> str:
  """`format_seconds`, or '—' for a missing time."""
  return DASH if x is None else format_seconds(x)
