"""Figures: one matplotlib Figure at a time (object API, no pyplot state), epochs as whole
numbers, legends where they hide no data; the training curves every run draws."""

from __future__ import annotations

import contextlib
import math
import threading
from pathlib import Path
from typing import Sequence

from hw2jax.train.sharding import primary

# matplotlib is not thread-safe and the report trains parts in threads: one figure at a time.
_LOCK = threading.RLock()

LABELS = {
    "train_loss": "training loss (true mean of the epoch)",
    "val_loss": "validation loss",
    "val_accuracy": "validation accuracy",
    "train_accuracy": "training accuracy",
    "val_cer": "validation CER (greedy)",
    "val_wer": "validation WER (greedy)",
}


@contextlib.contextmanager
def figure(path: str | Path, *, dpi: int, **figure_kwargs):
  """A matplotlib Figure written to `path` as PNG on exit (process 0 only)."""
  from matplotlib.figure import Figure
  path = Path(path)
  with _LOCK:
    fig = Figure(**figure_kwargs)
    yield fig
    if primary():
      path.parent.mkdir(parents=True, exist_ok=True)
      fig.savefig(path, dpi=dpi)


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
