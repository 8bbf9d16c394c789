"""Figures: one matplotlib Figure at a time (object API, no pyplot state), epochs as whole
numbers, numbers written out (no offset or scientific notation), legends where they hide no data
and name only what is drawn; the training curves every run draws."""

from __future__ import annotations

import contextlib
import math
import threading
from pathlib import Path
from typing import Sequence

from hw2jax import files
from hw2jax.train.sharding import primary

# matplotlib is not thread-safe and the report trains parts in threads: one figure at a time.
_LOCK = threading.RLock()
# Tick labels as plain numbers: a loss that moves in its fourth decimal reads "1.7917", not
# "0.0007" under a "+1.791" offset that a reader easily misses.
_PLAIN_NUMBERS = {"axes.formatter.useoffset": False, "axes.formatter.limits": (-99, 99)}

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
  """A matplotlib Figure written to `path` as PNG on exit (process 0 only); its axes write
  numbers out in full."""
  import matplotlib
  from matplotlib.figure import Figure
  path = Path(path)
  with _LOCK, matplotlib.rc_context(_PLAIN_NUMBERS):
    fig = Figure(**figure_kwargs)
    yield fig
    if primary():     # through a temp file: never through a link planted at `path`
      path.parent.mkdir(parents=True, exist_ok=True)
      files.write_file(path, lambda f: fig.savefig(f, dpi=dpi, format="png"))


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
  from the course can be compared like for like. Each curve shows even when it is one point
  (a run of one epoch), so the legend names nothing that is not drawn.
  """
  path = Path(path)
  with figure(path, dpi=120, figsize=(5.5 * len(panels), 5)) as fig:
    draw_history(fig, history, title=title, panels=panels, running_mean_of=running_mean_of,
                  note=note)
  return path


def draw_history(fig, history, *, title, panels, running_mean_of, note) -> None:
  """plot_history onto a Figure the caller holds (and can look at: the tests do)."""
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
        ax.plot(epochs, running_mean(ys), linestyle="--", **_point_marker(ys),
                label="training loss, running mean since epoch 1 (the course skeleton's curve)")
    epoch_axis(ax)
    ax.set_ylabel(ylabel)
    legend_below(ax)
  fig.suptitle(title)
  if note:
    fig.text(0.5, 0.005, note, ha="center", fontsize=7)
  fig.tight_layout(rect=(0, 0.03 if note else 0, 1, 1))


def _point_marker(ys: Sequence[float]) -> dict:
  """A dashed line of fewer than two points draws nothing: give it a hollow ring around the
  point (after one epoch the running mean is the loss it averages, drawn under it)."""
  if sum(not math.isnan(y) for y in ys) >= 2:
    return {}
  return {"marker": "o", "markersize": 7, "fillstyle": "none"}


def epoch_axis(ax) -> None:
  """An 'epoch' x axis with whole-number ticks only (one tick for a run of one epoch, whose x
  range matplotlib would otherwise tick at 0.945 ... 1.050), and a light grid."""
  from matplotlib.ticker import MaxNLocator
  low, high = ax.get_xlim()
  if high - low < 1:
    middle = round((low + high) / 2)
    ax.set_xlim(middle - 0.5, middle + 0.5)
  ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
  ax.set_xlabel("epoch")
  ax.grid(alpha=0.3)


def legend_below(ax, fontsize: int = 7) -> None:
  """The legend under the axes, where it cannot hide a data point (none for a panel with
  nothing drawn, e.g. the accuracy of a run that diverged in its first epoch)."""
  if not ax.get_legend_handles_labels()[0]:
    return
  ax.legend(fontsize=fontsize, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1,
            frameon=False)
