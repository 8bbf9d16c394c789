"""The epoch loop shared by every experiment: train, evaluate, checkpoint and log through the
`Run`, resume, stop on NaN.

`fit` resumes from the run's newest readable checkpoint, so rerunning the same command continues
where a run stopped. An epoch with a non-finite training loss, non-finite weights (checked once
an epoch, on the device) or a non-finite validation number ends the run ("diverged at epoch
k"; such an epoch is never the best), and a resumed diverged run stays stopped.
"""

from __future__ import annotations

import math
import numbers
import time
from typing import Any, Callable, Sequence

from hw2jax.train import trainer as trainer_lib
from hw2jax.train.meter import Meter
from hw2jax.train.run import Progress, Run
from hw2jax.train.trainer import Trainer, TrainState


def fit(trainer: Trainer, state: TrainState, train_data, run: Run, *, epochs: int,
        evaluate: Callable[[TrainState], dict], best_metric: str, best_mode: str = "max",
        progress_keys: Sequence[str] = (), unit: str = "examples",
        progress: bool = True) -> Progress:
  """Trains `state` for `epochs` epochs in total (counting epochs already checkpointed).

  `evaluate(state)` returns validation metrics (e.g. {'val_loss', 'val_accuracy'}); the epoch
  with the best `best_metric` ('max' or 'min' `best_mode`) is kept as the best checkpoint.
  `progress`: show the steps inside each epoch (`meter.Meter`; `unit` names the examples).
  """
  if best_mode not in ("max", "min"):
    raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
  at = run.resume(state)
  start, say = at.resumed_from, lambda text: run.log(f"{run.prefix}{text}")
  if at.diverged_at is not None:
    say(f"this run diverged at epoch {at.diverged_at}; nothing more to train (use --fresh to "
        "start over)")
  elif start > epochs:
    say(f"{start} epochs already trained in {run.workdir}, more than the {epochs} asked for; "
        f"its results are those of epoch {start} (--fresh trains {epochs} from scratch)")
  elif start == epochs:
    say(f"{start} of {epochs} epochs already trained in {run.workdir}; nothing more to train")
  elif start:
    say(f"resuming from the checkpoint of epoch {start} in {run.checkpoints.root}")
  meter = Meter(unit=unit, batch_size=trainer.batch_size, enabled=progress, prefix=run.prefix)
  try:
    for epoch in range(start, epochs if at.diverged_at is None else start):
      t0 = time.perf_counter()
      meter.start(epoch, epochs)
      at.state, train_metrics = trainer.train_epoch(at.state, train_data, epoch, meter)
      record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": train_metrics["loss"]}
      if "accuracy" in train_metrics:
        record["train_accuracy"] = train_metrics["accuracy"]
      why = _divergence(train_metrics["loss"], at.state)
      if not why:
        meter.phase("validating")
      evaluated = {} if why else evaluate(at.state)
      why = why or _non_finite(evaluated)
      if why:
        at.diverged_at = epoch + 1
        if not math.isfinite(record["train_loss"]):
          record["train_loss"] = None      # JSON has no NaN; "diverged" says why
        record["diverged"] = True          # no validation numbers: none is the best, or reported
      record.update({} if why else evaluated, seconds=time.perf_counter() - t0)
      if not why and _is_better(record[best_metric], at.best and at.best[best_metric],
                                best_mode):
        at.best = dict(record)
      at.history.append(record)
      # Saving first surfaces a failed (asynchronous) save of the previous epoch before this
      # epoch is logged: metrics.jsonl never runs more than one epoch ahead of the checkpoints.
      run.save(at)
      meter.clear()
      run.log_epoch(record, progress_keys, epochs)
      if why:
        say(f"diverged at epoch {at.diverged_at}: {why}; stopping this run")
        break
  finally:
    meter.clear()        # an interrupted epoch leaves no half line before the error
  return at


def _is_better(value: float, best: float | None, mode: str) -> bool:
  return best is None or (value > best if mode == "max" else value < best)


def _divergence(train_loss: float, state: TrainState) -> str | None:
  """Why an epoch diverged, from its training loss and its weights (one device check)."""
  if not math.isfinite(train_loss):
    return f"the training loss is {train_loss}"
  if not trainer_lib.finite(state):
    return "its weights are not finite"
  return None


def _non_finite(evaluated: dict) -> str | None:
  """Why validation numbers (e.g. a NaN val_loss of overflowing weights) end the run."""
  for key, value in evaluated.items():
    if isinstance(value, numbers.Real) and not math.isfinite(value):
      return f"{key} is {value}"
  return None
