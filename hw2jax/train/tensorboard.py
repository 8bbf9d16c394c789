"""TensorBoard event files of a run (tensorboardX: no TensorFlow), what JAX/Flax users look at first.

metrics.jsonl stays the source of truth: <workdir>/tb/ is rebuilt from the run's history
whenever training (re)starts, so a resumed run shows every epoch exactly once, also the epochs a
killed run had logged beyond its last checkpoint. Only process 0 writes.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from hw2jax.train.sharding import primary

FOLDER = "tb"
HPARAMS = "hparams"
EVENTS = "events.out.tfevents."       # tensorboardX's event file names start so


class Board:
  """Scalars per epoch (every number of the epoch's record, e.g. train_loss, val_accuracy,
  seconds, learning_rate) under <workdir>/tb/, and the run's hyper-parameters with its final
  metrics (TensorBoard's HPARAMS tab) under <workdir>/tb/hparams/."""

  def __init__(self, workdir: str | Path, enabled: bool = True):
    self.dir = Path(workdir) / FOLDER
    self.enabled = enabled and primary()
    self._writer = None

  def start(self, history: Sequence[Mapping[str, Any]]) -> None:
    """Drops earlier event files and writes `history` (the epochs the run resumes from)."""
    if not self.enabled:
      return
    SummaryWriter = summary_writer()
    remove_event_files(self.dir)
    self._writer = SummaryWriter(str(self.dir), flush_secs=30)
    for record in history:
      self.epoch(record)

  def epoch(self, record: Mapping[str, Any]) -> None:
    if self._writer is None:
      return
    for key, value in record.items():
      if key != "epoch" and _number(value):
        self._writer.add_scalar(key, float(value), int(record["epoch"]))
    self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None


def write_hparams(workdir: str | Path, hparams: Mapping[str, Any], metrics: Mapping[str, Any],
                  enabled: bool = True) -> None:
  """The run's settings beside its final (test) metrics, replacing an earlier call's."""
  if not enabled or not primary():
    return
  SummaryWriter = summary_writer()
  folder = Path(workdir) / FOLDER / HPARAMS
  remove_event_files(folder)
  values = {k: v if isinstance(v, (bool, int, float, str)) else str(v)
            for k, v in hparams.items() if v is not None}
  numbers = {f"final/{k}": float(v) for k, v in metrics.items() if _number(v)}
  with SummaryWriter(str(folder)) as writer:
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
