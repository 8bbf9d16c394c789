"""A run's workdir: reused only by the same settings, archived (never deleted) to start over."""

from __future__ import annotations

import datetime
import shutil
from pathlib import Path
from typing import Callable, Iterable, Sequence

from hw2jax import runlog
from hw2jax.errors import UserError

CONFIG = "config.json"
# Settings a run may change when it is resumed (more epochs, another epoch runner).
RESUMABLE = ("epochs", "epoch_mode", "eval_batch_size")


def archive(workdir: str | Path, names: Iterable[str], globs: Sequence[str] = ()
            ) -> Path | None:
  """Moves the run files `names` (and folders matching `globs`) of `workdir` to
  <workdir>/archive/<time>/; returns that folder, or None when there was nothing to move."""
  workdir = Path(workdir)
  if not runlog.primary():
    return None
  present = [workdir / n for n in dict.fromkeys(names) if (workdir / n).exists()]
  present += sorted(p for g in globs for p in workdir.glob(g) if p.is_dir())
  if not present:
    return None
  target = workdir / "archive" / datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
  target.mkdir(parents=True)
  for p in present:
    shutil.move(str(p), str(target / p.name))
  return target


def prepare(workdir: str | Path, config: dict, data_source: str, *, fresh: bool,
            run_files: Iterable[str], resumable: Iterable[str] = RESUMABLE,
            globs: Sequence[str] = (), log: Callable[[str], None] = print) -> Path:
  """Creates `workdir`, or checks that the run it holds has the same `config` and data.

  Keys in `resumable` (e.g. the number of epochs) may differ. With `fresh`, the previous run's
  `run_files` move to <workdir>/archive/<time>/ first. Writes <workdir>/config.json.
  """
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  resumable = set(resumable)
  if fresh:
    archived = archive(workdir, [*run_files, CONFIG], globs)
    if archived:
      log(f"--fresh: moved the previous run's files to {archived}")
  elif (workdir / CONFIG).exists():
    have = runlog.read_json(workdir / CONFIG)
    diffs = [f"{k}={have.get('config', {}).get(k)!r} (now {v!r})" for k, v in config.items()
             if k not in resumable and have.get("config", {}).get(k) != v]
    if have.get("data") != data_source:
      diffs.append(f"data {have.get('data')} (now {data_source})")
    if diffs:
      raise UserError(f"{workdir} holds a run with other settings: {'; '.join(diffs)}. Use "
                      "another --workdir, or --fresh to archive that run and start over")
  runlog.write_json(workdir / CONFIG, {"config": config, "data": data_source})
  return workdir
