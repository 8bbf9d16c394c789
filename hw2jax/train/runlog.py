"""What a run logs beside its checkpoints: metrics.jsonl (one line per epoch, the source of
truth), the progress line, and TensorBoard event files in <workdir>/tb/ (tensorboardX: no
TensorFlow), rebuilt from the history whenever training (re)starts. Only process 0 writes."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from hw2jax import files
from hw2jax.errors import UserError
from hw2jax.markdown import format_seconds
from hw2jax.train.sharding import primary

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
TB, HPARAMS = "tb", "hparams"
EVENTS = "events.out.tfevents."       # tensorboardX's event file names start so


def rewrite_metrics(workdir: Path, history: Sequence[dict]) -> None:
  """metrics.jsonl holding `history` (the epochs a resumed checkpoint holds): epochs trained
  after the last checkpoint, about to be redone, are not shown twice."""
  if primary():
    text = "".join(files.json_text(r) + "\n" for r in history)
    files.write_file(workdir / METRICS, text)


def append_metrics(workdir: Path, record: dict) -> None:
  if primary():
    line = files.json_text(record) + "\n"
    # Never through a link planted at the name (ELOOP); `rewrite_metrics` wrote the file.
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    with os.fdopen(os.open(workdir / METRICS, flags, 0o666), "a") as f:
      f.write(line)


def progress_line(prefix: str, record: dict, keys: Sequence[str], total_epochs: int,
                  seconds: Sequence[float]) -> str:
  """'epoch e/E  k1 v1  k2 v2 ...  12.3s  ETA 4m05s'; `seconds`: of the epochs this process
  trained, the first of which (compilation) is left out of the ETA when there are others."""
  steady = seconds[1:] or seconds
  eta = (total_epochs - int(record["epoch"])) * (sum(steady) / len(steady))
  parts = [f"{prefix}epoch {record['epoch']:>3d}/{total_epochs}"]
  parts += [f"{k} {record[k]:.4f}" if isinstance(record[k], float) else f"{k} {record[k]}"
            for k in keys if k in record]
  return "  ".join([*parts, f"{float(record.get('seconds', 0.0)):.1f}s",
                    f"ETA {format_seconds(eta)}"])


def read_metrics(workdir: str | Path) -> list[dict]:
  """The records of metrics.jsonl; a last line cut short by a killed run is left out. A line
  that is not an epoch's record (JSON, but no object, or an epoch that is not a whole number
  >= 1, or a value that is not a number, true/false or null) is a UserError naming it."""
  path = Path(workdir) / METRICS
  if not path.exists():
    return []
  lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
  out = []
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
    out.append(record)
  return out


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


class Board:
  """Every number of each epoch's record as a TensorBoard scalar under <workdir>/tb/."""

  def __init__(self, workdir: str | Path, enabled: bool = True):
    self.dir = Path(workdir) / TB
    self.enabled = enabled and primary()
    self._writer = None

  def start(self, history: Sequence[Mapping[str, Any]]) -> None:
    """Drops earlier event files and writes `history` (the epochs the run resumes from)."""
    if self.enabled:
      remove_event_files(self.dir)
      self._writer = summary_writer()(str(self.dir), flush_secs=30)
      for record in history:
        self.epoch(record)

  def epoch(self, record: Mapping[str, Any]) -> None:
    if self._writer is not None:
      for key, value in record.items():
        if key != "epoch" and _number(value):
          self._writer.add_scalar(key, float(value), int(record["epoch"]))
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None


def write_hparams(workdir: str | Path, hparams: Mapping[str, Any],
                  metrics: Mapping[str, Any]) -> None:
  """The run's settings beside its final (test) metrics (TensorBoard's HPARAMS tab) under
  <workdir>/tb/hparams/, replacing an earlier call's."""
  if not primary():
    return
  folder = Path(workdir) / TB / HPARAMS
  remove_event_files(folder)
  values = {k: v if isinstance(v, (bool, int, float, str)) else str(v)
            for k, v in hparams.items() if v is not None}
  numbers = {f"final/{k}": float(v) for k, v in metrics.items() if _number(v)}
  with summary_writer()(str(folder)) as writer:
    writer.add_hparams(values, numbers, name=".")


def remove_event_files(folder: Path) -> None:
  """The event files this module writes into `folder`, not what else a user keeps there (notes,
  another run's events in a subfolder, profiler traces)."""
  for path in folder.glob(f"{EVENTS}*") if folder.is_dir() else ():
    if path.is_file() and not path.is_symlink():
      path.unlink()


def summary_writer():
  """tensorboardX's SummaryWriter class, imported without PyTorch. tensorboardX imports torch
  whenever it is installed (1.4 s of every run's start on a 2-core CPU) only to accept torch
  tensors, which hw2jax never passes; torch stays importable afterwards, and one already
  imported (--from_torch) is left as it is."""
  if "torch" in sys.modules or "tensorboardX.writer" in sys.modules:
    from tensorboardX import SummaryWriter
    return SummaryWriter
  sys.modules["torch"] = None          # `import torch` raises ImportError while it loads
  try:
    from tensorboardX import SummaryWriter
  finally:
    del sys.modules["torch"]
  return SummaryWriter


def _number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
