"""The epoch loop shared by every experiment: train, evaluate, log, checkpoint, resume, stop on NaN.

`fit` resumes from the newest readable checkpoint in the workdir, so rerunning the same command
continues where a run stopped; an epoch with a non-finite training loss ends the run cleanly
("diverged at epoch k") and a resumed diverged run stays stopped.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from hw2jax import checkpoints as ckpt_lib
from hw2jax import runlog
from hw2jax.training import Trainer, TrainState


@dataclasses.dataclass
class FitResult:
  state: TrainState                  # the final state (the last epoch trained)
  history: list[dict]                # one record per epoch, as in metrics.jsonl
  best: dict | None                  # the record of the best epoch by `best_metric`
  diverged_at: int | None            # 1-based epoch whose training loss was not finite
  resumed_from: int                  # epochs already done when this call started
  train_seconds: float               # seconds spent training/evaluating in this call


def _is_better(value: float, best: float | None, mode: str) -> bool:
  if best is None:
    return True
  return value > best if mode == "max" else value < best


def fit(trainer: Trainer, state: TrainState, train_data, *, epochs: int,
        evaluate: Callable[[TrainState], dict], workdir: str | Path,
        best_metric: str, best_mode: str = "max", progress_keys: Sequence[str] = (),
        log: Callable[[str], None] = print, prefix: str = "",
        extra_meta: dict[str, Any] | None = None) -> FitResult:
  """Trains `state` for `epochs` epochs in total (counting epochs already checkpointed).

  `evaluate(state)` returns validation metrics (e.g. {'val_loss', 'val_accuracy'}); the epoch
  with the best `best_metric` (max or min) is also saved as the best checkpoint.
  """
  if best_mode not in ("max", "min"):
    raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
  workdir = Path(workdir)
  checkpoints = ckpt_lib.Checkpoints(workdir, log=log)
  rlog = runlog.RunLog(workdir, total_epochs=epochs, prefix=prefix, printer=log)
  history: list[dict] = []
  best_record, diverged_at = None, None
  restored = checkpoints.restore(state)
  if restored is not None:
    state, meta = restored
    history = list(meta["history"])
    best_record = meta.get("best")
    diverged_at = meta.get("diverged_at")
    log(f"{prefix}resuming from the checkpoint of epoch {meta['epoch']} in {checkpoints.root}")
  rlog.reset(history)
  start = len(history)
  if diverged_at is not None:
    log(f"{prefix}this run diverged at epoch {diverged_at}; nothing more to train "
        "(use --fresh to start over)")
  clock = time.perf_counter()
  try:
    for epoch in range(start, epochs if diverged_at is None else start):
      t0 = time.perf_counter()
      state, train_metrics = trainer.train_epoch(state, train_data, epoch)
      record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": train_metrics["loss"]}
      if "accuracy" in train_metrics:
        record["train_accuracy"] = train_metrics["accuracy"]
      if not math.isfinite(train_metrics["loss"]):
        diverged_at = epoch + 1
        record["seconds"] = time.perf_counter() - t0
        record["train_loss"] = None        # JSON has no NaN; "diverged" says why
        record["diverged"] = True
        history.append(record)
        rlog.append(record)
        log(f"{prefix}diverged at epoch {diverged_at}: the training loss is "
            f"{train_metrics['loss']}; stopping this run")
        checkpoints.save(epoch + 1, state, _meta(epoch + 1, history, best_record, diverged_at,
                                                 extra_meta), best=False)
        break
      record.update(evaluate(state))
      record["seconds"] = time.perf_counter() - t0
      is_best = _is_better(record[best_metric], best_record and best_record[best_metric],
                           best_mode)
      if is_best:
        best_record = dict(record)
      history.append(record)
      rlog.append(record)
      rlog.progress(record, progress_keys)
      checkpoints.save(epoch + 1, state, _meta(epoch + 1, history, best_record, diverged_at,
                                               extra_meta), best=is_best)
  finally:
    checkpoints.wait()
    checkpoints.close()
  return FitResult(state=state, history=history, best=best_record, diverged_at=diverged_at,
                   resumed_from=start, train_seconds=time.perf_counter() - clock)


def _meta(epoch, history, best, diverged_at, extra):
  meta = {"epoch": epoch, "history": history, "best": best, "diverged_at": diverged_at}
  meta.update(extra or {})
  return meta


def restore_best(workdir: str | Path, template: TrainState, log: Callable[[str], None] = print
                 ) -> TrainState | None:
  """The best-validation state saved in `workdir` (None if there is none)."""
  checkpoints = ckpt_lib.Checkpoints(workdir, log=log)
  try:
    restored = checkpoints.restore(template, which="best")
  finally:
    checkpoints.close()
  return None if restored is None else restored[0]
