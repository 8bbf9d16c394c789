"""What a run logs in its workdir: metrics.jsonl (one line per epoch), summary.json and other
JSON written atomically, and the progress line printed per epoch. Only process 0 writes."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from hw2jax import cache, records
from hw2jax.errors import UserError
from hw2jax.markdown import format_seconds
from hw2jax.train.sharding import primary

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"


def write_json(path: str | Path, obj: Any) -> None:
  """Writes JSON atomically (a temp file named after this host and pid, then a rename), so a
  killed run never leaves half a file; a failed write leaves no temp file, and those of killed
  writers are removed by the next write of the same file. (Process 0 only.)"""
  if not primary():
    return
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  text = json.dumps(finite(obj), indent=2, sort_keys=True, default=_jsonable) + "\n"
  cache.remove_stale_temps(path.parent, f"{path.stem}.tmp-")
  cache.write_atomically(path, lambda f: f.write(text.encode()))


def finite(obj: Any) -> Any:
  """`obj` with every NaN/inf float replaced by None (JSON has no NaN)."""
  if isinstance(obj, float):
    return obj if math.isfinite(obj) else None
  if isinstance(obj, dict):
    return {k: finite(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [finite(v) for v in obj]
  return obj


def read_json(path: str | Path) -> Any:
  """The JSON in `path`; a damaged file is a UserError naming it (not a traceback)."""
  path = Path(path)
  try:
    return json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise UserError(f"{path} is damaged (not valid JSON: {e}); repair or remove it, or use "
                    "--fresh to archive the run and start over") from None


def read_record(path: str | Path, cls) -> Any:
  """The JSON in `path` read as the typed record `cls` (its `from_json`, else
  `records.from_json`); a file of another shape (a list, numbers as strings) is a UserError
  naming it, like damaged JSON."""
  data = read_json(path)
  try:
    return cls.from_json(data) if hasattr(cls, "from_json") else records.from_json(cls, data)
  except (TypeError, ValueError, KeyError, AttributeError) as e:
    raise UserError(f"{path} is damaged ({e}); repair or remove it, or use --fresh to archive "
                    "the run and start over") from None


def _jsonable(x):
  if hasattr(x, "tolist"):  # numpy/JAX scalars and arrays alike
    return x.tolist()
  raise TypeError(f"not JSON serialisable: {type(x).__name__}")


class RunLog:
  """Appends one JSON line per epoch to `<workdir>/metrics.jsonl` and prints a progress line.

  `reset(history)` rewrites the file to the epochs a resumed checkpoint holds, so the log never
  shows epochs that were trained after the last checkpoint and are about to be redone.
  """

  def __init__(self, workdir: str | Path, *, total_epochs: int, prefix: str = "",
               printer: Callable[[str], None] | None = None):
    self.workdir = Path(workdir)
    self.workdir.mkdir(parents=True, exist_ok=True)
    self.path = self.workdir / METRICS
    self.total_epochs = total_epochs
    self.prefix = prefix
    self.printer = printer or (lambda line: print(line, flush=True))
    self._epoch_seconds: list[float] = []

  def reset(self, history: Sequence[dict]) -> None:
    if not primary():
      return
    text = "".join(json.dumps(finite(r), sort_keys=True) + "\n" for r in history)
    cache.remove_stale_temps(self.workdir, f"{self.path.stem}.tmp-")
    cache.write_atomically(self.path, lambda f: f.write(text.encode()))

  def append(self, record: dict) -> None:
    if not primary():
      return
    line = json.dumps(finite(record), sort_keys=True, default=_jsonable) + "\n"
    # Never through a link planted at the name (ELOOP); `reset` wrote the file before.
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    with os.fdopen(os.open(self.path, flags, 0o666), "a") as f:
      f.write(line)

  def progress(self, record: dict, keys: Iterable[str]) -> str:
    """Prints 'epoch e/E  k1 v1  k2 v2 ...  12.3s  ETA 4m05s' for `record` and returns it."""
    seconds = float(record.get("seconds", 0.0))
    self._epoch_seconds.append(seconds)
    # The first epoch of a process includes compilation: leave it out of the ETA when possible.
    steady = self._epoch_seconds[1:] or self._epoch_seconds
    remaining = self.total_epochs - int(record["epoch"])
    eta = remaining * (sum(steady) / len(steady))
    parts = [f"{self.prefix}epoch {record['epoch']:>3d}/{self.total_epochs}"]
    for k in keys:
      if k in record:
        v = record[k]
        parts.append(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}")
    parts.append(f"{seconds:.1f}s")
    parts.append(f"ETA {format_seconds(eta)}")
    line = "  ".join(parts)
    if primary():
      self.printer(line)
    return line


def read_metrics(workdir: str | Path) -> list[dict]:
  """The records of metrics.jsonl; a last line cut short by a killed run is left out. A line
  that is not an epoch's record (JSON, but no object, or an epoch that is not a whole number
  >= 1, or a value that is not a number, true/false or null) is a UserError naming it."""
  path = Path(workdir) / METRICS
  if not path.exists():
    return []
  lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
  records = []
  for i, line in enumerate(lines):
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      if i < len(lines) - 1:
        raise UserError(f"{path}:{i + 1} is damaged (not valid JSON); repair or remove that "
                        "line, or use --fresh to archive the run and start over") from None
      continue                  # a line cut short: JSON text never ends where a cut leaves it
    problem = _not_a_record(record)
    if problem:
      raise UserError(f"{path}:{i + 1} is damaged ({problem}); repair or remove that line, or "
                      "use --fresh to archive the run and start over")
    records.append(record)
  return records


def _not_a_record(record: Any) -> str | None:
  """Why a parsed metrics.jsonl line is not an epoch's record, or None when it is one."""
  if not isinstance(record, dict):
    kind = {list: "an array", str: "a string", bool: "true/false", type(None): "null"}
    return f"{kind.get(type(record), 'a number')}, not an epoch's record"
  if "epoch" not in record:
    return "no epoch"
  epoch = record["epoch"]
  if not (type(epoch) is int and epoch >= 1):
    return f"its epoch is {json.dumps(epoch)[:40]}, not a whole number >= 1"
  for key, value in record.items():
    if not (value is None or type(value) in (bool, int, float)):
      return f"its {json.dumps(key)} is {json.dumps(value)[:40]}, not a number"
  return None
