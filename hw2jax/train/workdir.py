"""A run's workdir: reused only by the same settings, archived (never deleted) to start over,
and used by one run at a time (an advisory lock the OS drops when the process dies)."""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import os
import shutil
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from hw2jax.errors import UserError
from hw2jax.train import runlog
from hw2jax.train.sharding import primary

CONFIG = "config.json"
LOCK = ".lock"
# Settings a run may change when it is resumed (more epochs, another epoch runner, whether it
# writes TensorBoard files, how many devices it spans).
RESUMABLE = ("epochs", "epoch_mode", "eval_batch_size", "tensorboard", "devices")


def archive(workdir: str | Path, names: Iterable[str], globs: Sequence[str] = ()
            ) -> Path | None:
  """Moves the run files `names` (and folders matching `globs`) of `workdir` to
  <workdir>/archive/<time>/; returns that folder, or None when there was nothing to move."""
  workdir = Path(workdir)
  if not primary():
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


def ensure(workdir: str | Path) -> Path:
  """Creates `workdir` (and its parents) or says in one line why it cannot be used."""
  workdir = Path(workdir)
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except FileExistsError:
    raise UserError(f"workdir {workdir} is a file, not a folder; give a folder") from None
  except NotADirectoryError:
    raise UserError(f"workdir {workdir} cannot be created: a part of its path is a file"
                    ) from None
  except OSError as e:
    raise UserError(f"workdir {workdir} cannot be created ({e.strerror or e}); give a folder "
                    "you can write to") from None
  if not workdir.is_dir():
    raise UserError(f"workdir {workdir} is not a folder")
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise UserError(f"workdir {workdir} is not writable; give a folder you can write to")
  return workdir


@contextlib.contextmanager
def locked(workdir: str | Path) -> Iterator[Path]:
  """Holds <workdir>/.lock (an advisory `fcntl` lock) while the block runs: a second run in the
  same workdir is refused with the first one's pid. The OS releases the lock when the process
  dies, so a killed run never leaves a stale lock behind. (Process 0 only.)"""
  workdir = ensure(workdir)
  if not primary():
    yield workdir
    return
  path = workdir / LOCK
  try:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise UserError(f"cannot open the lock file {path} ({e.strerror or e})") from None
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        raise UserError(f"cannot lock {path} ({e.strerror or e})") from None
      holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
      raise UserError(f"{workdir} is in use by another run (pid {holder}); wait for it to "
                      "finish, or use another --workdir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    yield workdir
  finally:
    os.close(fd)


def prepare(workdir: str | Path, config: dict, data_source: str, *, fresh: bool,
            run_files: Iterable[str], resumable: Iterable[str] = RESUMABLE,
            globs: Sequence[str] = (), log: Callable[[str], None] = print) -> Path:
  """Creates `workdir`, or checks that the run it holds has the same `config` and data.

  Keys in `resumable` (e.g. the number of epochs) may differ. With `fresh`, the previous run's
  `run_files` move to <workdir>/archive/<time>/ first. Writes <workdir>/config.json.
  """
  workdir = ensure(workdir)
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
      raise UserError(f"{workdir} holds a run with other settings: {'; '.join(diffs)}. For a "
                      "separate run use --workdir=<another folder>; to replace that run, "
                      "--fresh (it is archived, not deleted)")
  runlog.write_json(workdir / CONFIG, {"config": config, "data": data_source})
  return workdir
