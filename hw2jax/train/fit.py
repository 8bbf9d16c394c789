"""The epoch loop shared by every experiment: train, evaluate, log, checkpoint, resume, stop on NaN.

`fit` resumes from the newest readable checkpoint in the workdir, so rerunning the same command
continues where a run stopped; an epoch with a non-finite training loss, non-finite weights
(checked once an epoch, on the device) or a non-finite validation number ends the run cleanly
("diverged at epoch k"; such an epoch is never the best) and a resumed diverged run stays
stopped. A checkpoint is resumed only at the learning rate and under the JAX_ENABLE_X64 setting
it was trained with. A workdir whose metrics show more finished epochs than its checkpoints
can account for (checkpoints deleted or all damaged) is refused rather than silently trained
again from scratch over the user's results.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import time
from pathlib import Path
from typing import Any, Callable, Sequence


from hw2jax.errors import UserError
from hw2jax.train import checkpoints as ckpt_lib
from hw2jax.train import runlog, sharding
from hw2jax.train import trainer as trainer_lib
from hw2jax.train import tensorboard as tb
from hw2jax.train.optimizer import learning_rate
from hw2jax.train.trainer import Trainer, TrainState


@dataclasses.dataclass
class FitResult:
  state: TrainState                  # the final state (the last epoch trained)
  history: list[dict]                # one record per epoch, as in metrics.jsonl
  best: dict | None                  # the record of the best epoch by `best_metric`
  diverged_at: int | None            # 1-based epoch whose loss or weights were not finite
  resumed_from: int                  # epochs already done when this call started

  @property
  def train_seconds(self) -> float:
    """Seconds of the epochs trained (and evaluated) in this call."""
    return sum(r.get("seconds", 0.0) for r in self.history[self.resumed_from:])

  @property
  def train_seconds_total(self) -> float:
    """Seconds of every epoch of the run, over all calls (>= `train_seconds`)."""
    return sum(r.get("seconds", 0.0) for r in self.history)

  def status(self, epochs: int) -> str:
    """'completed', 'diverged at epoch k' or 'stopped at epoch k of n'."""
    if self.diverged_at:
      return f"diverged at epoch {self.diverged_at}"
    done = len(self.history)
    return "completed" if done >= epochs else f"stopped at epoch {done} of {epochs}"


def _is_better(value: float, best: float | None, mode: str) -> bool:
  if best is None:
    return True
  return value > best if mode == "max" else value < best


def fit(trainer: Trainer, state: TrainState, train_data, *, epochs: int,
        evaluate: Callable[[TrainState], dict], workdir: str | Path,
        best_metric: str, best_mode: str = "max", progress_keys: Sequence[str] = (),
        log: Callable[[str], None] = print, prefix: str = "",
        extra_meta: dict[str, Any] | None = None, tensorboard: bool = True) -> FitResult:
  """Trains `state` for `epochs` epochs in total (counting epochs already checkpointed).

  `evaluate(state)` returns validation metrics (e.g. {'val_loss', 'val_accuracy'}); the epoch
  with the best `best_metric` (max or min) is also saved as the best checkpoint. Every epoch
  also goes to TensorBoard event files in <workdir>/tb/ unless `tensorboard` is False.
  """
  workdir = Path(workdir)
  # Checkpoints checks best_mode, before anything is written.
  checkpoints = ckpt_lib.Checkpoints(workdir, best_metric=best_metric, best_mode=best_mode,
                                     log=log)
  board = tb.Board(workdir, enabled=tensorboard)
  lost_peer = False
  try:
    return _fit(trainer, state, train_data, checkpoints, board, epochs=epochs,
                evaluate=evaluate, workdir=workdir, best_metric=best_metric,
                best_mode=best_mode, progress_keys=progress_keys, log=log, prefix=prefix,
                extra_meta=extra_meta)
  except BaseException as e:
    lost_peer = bool(sharding.lost_peer(e))
    raise
  finally:
    board.close()
    # A checkpoint still being written waits at a barrier for every process, a dead one too:
    # after a lost peer it is left unfinished (the next run skips it) and the CLI ends here.
    if not lost_peer:
      checkpoints.wait()
      checkpoints.close()


def _fit(trainer, state, train_data, checkpoints, board, *, epochs, evaluate, workdir,
         best_metric, best_mode, progress_keys, log, prefix, extra_meta) -> FitResult:
  history: list[dict] = []
  best_record, diverged_at = None, None
  rate = learning_rate(state)                  # the template's: a checkpoint must hold the same
  extra = {} if rate is None else {"learning_rate": rate}
  restored = checkpoints.restore(state)
  if restored is not None:
    _same_learning_rate(learning_rate(restored[0]), rate, checkpoints.root)
    ckpt_lib.check_x64(restored[1].get(ckpt_lib.X64), checkpoints.root)
    state, meta = restored
    history = list(meta["history"])
    best_record = meta.get("best")
    diverged_at = meta.get("diverged_at")
  _check_nothing_lost(workdir, len(history), checkpoints.root)
  rlog = runlog.RunLog(workdir, total_epochs=epochs, prefix=prefix, printer=log)
  rlog.reset(history)
  board.start([{**r, **extra} for r in history])
  start = len(history)
  if diverged_at is not None:
    log(f"{prefix}this run diverged at epoch {diverged_at}; nothing more to train "
        "(use --fresh to start over)")
  elif start > epochs:
    log(f"{prefix}{start} epochs already trained in {workdir}, more than the {epochs} asked "
        f"for; its results are those of epoch {start} (--fresh trains {epochs} from scratch)")
  elif start == epochs:
    log(f"{prefix}{start} of {epochs} epochs already trained in {workdir}; nothing more to train")
  elif restored is not None:
    log(f"{prefix}resuming from the checkpoint of epoch {start} in {checkpoints.root}")
  for epoch in range(start, epochs if diverged_at is None else start):
    t0 = time.perf_counter()
    state, train_metrics = trainer.train_epoch(state, train_data, epoch)
    record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": train_metrics["loss"]}
    if "accuracy" in train_metrics:
      record["train_accuracy"] = train_metrics["accuracy"]
    why = _divergence(train_metrics["loss"], state)
    evaluated = {} if why else evaluate(state)
    why = why or _non_finite(evaluated)
    if why:
      diverged_at = epoch + 1
      record["seconds"] = time.perf_counter() - t0
      if not math.isfinite(record["train_loss"]):
        record["train_loss"] = None      # JSON has no NaN; "diverged" says why
      record["diverged"] = True          # no validation numbers: none is the best, or reported
      history.append(record)
      checkpoints.save(epoch + 1, state, _meta(epoch + 1, history, best_record, diverged_at,
                                               extra_meta), record)
      rlog.append(record)
      log(f"{prefix}diverged at epoch {diverged_at}: {why}; stopping this run")
      break
    record.update(evaluated)
    record["seconds"] = time.perf_counter() - t0
    if _is_better(record[best_metric], best_record and best_record[best_metric], best_mode):
      best_record = dict(record)
    history.append(record)
    # Saving first surfaces a failed (asynchronous) save of the previous epoch before this
    # epoch is logged: metrics.jsonl never runs more than one epoch ahead of the checkpoints.
    checkpoints.save(epoch + 1, state, _meta(epoch + 1, history, best_record, diverged_at,
                                             extra_meta), record)
    rlog.append(record)
    board.epoch({**record, **extra})
    rlog.progress(record, progress_keys)
  return FitResult(state=state, history=history, best=best_record, diverged_at=diverged_at,
                   resumed_from=start)


def _same_learning_rate(stored: float | None, wanted: float | None, root: Path) -> None:
  """The rate is the one setting a checkpoint carries inside its optimizer state: a resumed
  run must not silently train on at the stored rate when the template asks for another.
  `stored`, `wanted`: `trainer.learning_rate` of the checkpoint and of the template."""
  if stored != wanted:
    rate = lambda found: "none" if found is None else f"{found:.6g}"
    raise UserError(f"the checkpoints in {root} were trained at learning rate {rate(stored)}, "
                    f"this run asks for {rate(wanted)}; use another --workdir, or --fresh")


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


def _check_nothing_lost(workdir: Path, restored_epochs: int, root: Path) -> None:
  """Refuses to train over results that the checkpoints cannot reproduce.

  Saves are asynchronous and each waits for the previous one, so at most the newest logged
  epoch can lack its checkpoint (a run killed while writing it): that one is simply trained
  again. Metrics or a summary of any later epoch mean that checkpoints were deleted or damaged.
  """
  logged = [r.get("epoch", 0) for r in runlog.read_metrics(workdir)]
  summary = workdir / runlog.SUMMARY
  if summary.is_file():     # a summary that is not one (a list, a word for a number) counts none
    done = runlog.read_json(summary)
    done = done.get("epochs_done") if isinstance(done, dict) else None
    logged.append(done if isinstance(done, int) and not isinstance(done, bool) else 0)
  finished = max(logged, default=0)
  if finished > restored_epochs + 1:
    have = (f"its newest readable checkpoint is of epoch {restored_epochs}" if restored_epochs
            else "no readable checkpoint")
    raise UserError(f"{workdir} holds the results of {finished} finished epochs but {have} "
                    f"(in {root}; damaged ones are kept in {root / ckpt_lib.CORRUPT}); training "
                    "again would overwrite them. Use --fresh to archive this run and start over")


def _meta(epoch, history, best, diverged_at, extra):
  meta = {"epoch": epoch, "history": history, "best": best, "diverged_at": diverged_at}
  meta.update(extra or {})
  return meta


def restore_best(workdir: str | Path, template: TrainState, *, best_metric: str,
                 best_mode: str = "max", log: Callable[[str], None] = print,
                 read_only: bool = False) -> TrainState | None:
  """The best-validation state saved in `workdir` (None if there is none or it is unreadable).
  `read_only`: for commands that only read (nothing in the workdir is written or moved)."""
  checkpoints = ckpt_lib.Checkpoints(workdir, best_metric=best_metric, best_mode=best_mode,
                                     log=log, read_only=read_only)
  try:
    restored = checkpoints.restore_best(template)
  finally:
    checkpoints.close()
  return None if restored is None else restored[0]
