"""What a run leaves in its workdir: metrics.jsonl, summary.json, progress lines and PNG plots."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from hw2jax.errors import UserError

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
# matplotlib is not thread-safe and the report trains parts in threads: one figure at a time.
_PLOT_LOCK = threading.RLock()


def primary() -> bool:
  """Only process 0 of a multi-host run writes files and prints progress."""
  import jax
  return jax.process_index() == 0


def write_json(path: str | Path, obj: Any) -> None:
  """Writes JSON atomically (temp file + rename), so a killed run never leaves half a file.
  (Process 0 only.)"""
  if not primary():
    return
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
  tmp.write_text(json.dumps(finite(obj), indent=2, sort_keys=True, default=_jsonable) + "\n")
  os.replace(tmp, path)


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


def _jsonable(x):
  if hasattr(x, "item"):
    return x.item()
  if hasattr(x, "tolist"):
    return x.tolist()
  raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def format_seconds(s: float) -> str:
  s = max(0, int(round(s)))
  h, rem = divmod(s, 3600)
  m, sec = divmod(rem, 60)
  return f"{h}h{m:02d}m{sec:02d}s" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


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
    tmp = self.path.with_name(f".{METRICS}.tmp{os.getpid()}")
    tmp.write_text("".join(json.dumps(finite(r), sort_keys=True) + "\n" for r in history))
    os.replace(tmp, self.path)

  def append(self, record: dict) -> None:
    if not primary():
      return
    with open(self.path, "a") as f:
      f.write(json.dumps(finite(record), sort_keys=True, default=_jsonable) + "\n")

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
  """The records of metrics.jsonl; a last line cut short by a killed run is left out."""
  path = Path(workdir) / METRICS
  if not path.exists():
    return []
  lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
  records = []
  for i, line in enumerate(lines):
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      if i < len(lines) - 1:
        raise UserError(f"{path}:{i + 1} is damaged (not valid JSON); repair or remove that "
                        "line, or use --fresh to archive the run and start over") from None
  return records


def running_mean(values: Sequence[float]) -> list[float]:
  """Mean of everything so far: what the course skeleton plots as 'training loss'."""
  out, total = [], 0.0
  for i, v in enumerate(values, 1):
    total += v
    out.append(total / i)
  return out


def plot_history(history: Sequence[dict], path: str | Path, *, title: str,
                 panels: Sequence[tuple[str, Sequence[str]]], running_mean_of: str | None = None,
                 note: str | None = None) -> Path:
  """One PNG with a panel per (ylabel, [metric keys]) against epoch.

  `running_mean_of` adds the skeleton's running mean of that key as a dashed line, so a curve
  from the course can be compared like for like.
  """
  path = Path(path)
  if not primary():
    return path
  with figure(path, dpi=120, figsize=(5.5 * len(panels), 5)) as fig:
    _draw_history(fig, history, title=title, panels=panels, running_mean_of=running_mean_of,
                  note=note)
  return path


def _draw_history(fig, history, *, title, panels, running_mean_of, note) -> None:
  axes = fig.subplots(1, len(panels), squeeze=False)
  epochs = [r["epoch"] for r in history]
  for ax, (ylabel, keys) in zip(axes[0], panels):
    for key in keys:
      ys = [math.nan if r.get(key) is None else float(r[key]) for r in history]
      if all(math.isnan(y) for y in ys):
        continue
      label = LABELS.get(key, key)
      ax.plot(epochs, ys, marker="o", markersize=3, label=label)
      if key == running_mean_of:
        ax.plot(epochs, running_mean(ys), linestyle="--",
                label="training loss, running mean since epoch 1 (the course skeleton's curve)")
    epoch_axis(ax)
    ax.set_ylabel(ylabel)
    legend_below(ax)
  fig.suptitle(title)
  if note:
    fig.text(0.5, 0.005, note, ha="center", fontsize=7)
  fig.tight_layout(rect=(0, 0.03 if note else 0, 1, 1))


def epoch_axis(ax) -> None:
  """An 'epoch' x axis with whole-number ticks only, and a light grid."""
  from matplotlib.ticker import MaxNLocator
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.set_xlabel("epoch")
  ax.grid(alpha=0.3)


def legend_below(ax, fontsize: int = 7) -> None:
  """The legend under the axes, where it cannot hide a data point."""
  ax.legend(fontsize=fontsize, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1,
            frameon=False)


@contextlib.contextmanager
def figure(path: str | Path, *, dpi: int, **figure_kwargs):
  """A matplotlib Figure (object API: no pyplot state) written to `path` as PNG on exit.

  Figures are drawn one at a time across threads, as matplotlib needs.
  """
  from matplotlib.figure import Figure
  path = Path(path)
  with _PLOT_LOCK:
    fig = Figure(**figure_kwargs)
    yield fig
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)


LABELS = {
    "train_loss": "training loss (true mean of the epoch)",
    "val_loss": "validation loss",
    "val_accuracy": "validation accuracy",
    "train_accuracy": "training accuracy",
    "val_cer": "validation CER (greedy)",
    "val_wer": "validation WER (greedy)",
}


def stderr(line: str) -> None:
  print(line, file=sys.stderr, flush=True)


class Stopwatch:
  def __init__(self):
    self.start = time.perf_counter()

  def __call__(self) -> float:
    return time.perf_counter() - self.start
