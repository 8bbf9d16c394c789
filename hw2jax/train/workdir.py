"""A run's workdir: reused only by the same settings, archived (never deleted) to start over,
and used by one run at a time (an advisory lock the OS drops when the process dies)."""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from hw2jax.errors import UserError
from hw2jax.train import checkpoints as ckpt_lib
from hw2jax.train import runlog
from hw2jax.train import sharding
from hw2jax.train.sharding import primary

CONFIG = "config.json"
LOCK = ".lock"
ARCHIVE = "archive"
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
  target = workdir / ARCHIVE / datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
  target.mkdir(parents=True)
  for p in present:
    shutil.move(str(p), str(target / p.name))
  return target


def ensure(workdir: str | Path) -> Path:
  """Creates `workdir` (and its parents) or says in one line why it cannot be used."""
  workdir = Path(workdir)
  try:
    str(workdir).encode("utf-8")
  except UnicodeEncodeError:   # bytes of another encoding, or a UTF-8 name under LC_ALL=C
    raise UserError(f"workdir {ascii(str(workdir))} is not a UTF-8 path, which Orbax's "
                    "checkpoints need; give a UTF-8 name (under LC_ALL=C, set PYTHONUTF8=1)"
                    ) from None
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
def locked(workdir: str | Path, *, read_only: bool = False) -> Iterator[Path]:
  """Holds <workdir>/.lock (an advisory `fcntl` lock) while the block runs: a second run in the
  same workdir is refused with the first one's pid. The OS releases the lock when the process
  dies, so a killed run never leaves a stale lock behind. (Process 0 only.)

  `read_only` (--predict, --to_torch): a shared lock on an existing lock file, so that readers
  never meet a training run mid-write, and nothing is created: a read-only workdir works."""
  if read_only:
    with _shared_lock(Path(workdir)) as workdir:
      yield workdir
    return
  made = [p for p in (Path(workdir), *Path(workdir).parents) if not p.exists()]
  try:
    workdir = ensure(workdir)   # one it made and cannot use (umask 777) goes too
    with _exclusive(workdir) as workdir:
      yield workdir
  except BaseException:
    _remove_if_empty(made)      # a run that failed before writing anything leaves no folder
    raise


def _remove_if_empty(folders: list[Path]) -> None:
  """Removes the folders this run made (the workdir first, then its new parents) while they
  are empty. A lock file keeps them: it may be a second run's, which holds it now."""
  try:
    for folder in folders:
      folder.rmdir()            # only an empty folder goes
  except OSError:               # not empty, or not ours to remove: it stays
    pass


@contextlib.contextmanager
def _exclusive(workdir: Path) -> Iterator[Path]:
  """The write lock of `locked`, on an existing workdir."""
  if not primary():             # process 0 holds the lock for the run; its answer is theirs
    refused = sharding.from_process_0("")
    if refused:
      raise UserError(refused)
    yield workdir
    return
  link = planted_link(workdir)
  if link is not None:
    message = (f"{link} is a symbolic link: a run writes only real files and folders in its "
               "workdir, so that no write can land outside it; remove the link (and put back "
               "what it stood for), or use another --workdir")
    sharding.from_process_0(message)
    raise UserError(message)
  path = workdir / LOCK
  try:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
  except OSError as e:
    message = f"cannot open the lock file {path} ({e.strerror or e})"
    sharding.from_process_0(message)
    raise UserError(message) from None
  try:
    try:
      _lock(fd, fcntl.LOCK_EX, workdir)
    except UserError as e:
      sharding.from_process_0(str(e))
      raise
    sharding.from_process_0("")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    yield workdir
  finally:
    os.close(fd)


def refuse_training_run(workdir: Path, command: str) -> None:
  """A command that keeps no checkpoints (experiments.hopfield) does not write its files into a
  training run's workdir (it would archive that run's summary and mix its figures in)."""
  found = [name for name in ("checkpoints", CONFIG) if (workdir / name).exists()]
  if found:
    raise UserError(f"{workdir} holds a training run ({', '.join(found)}); {command} writes "
                    "into a folder of its own: use another --workdir")


def planted_link(workdir: Path) -> Path | None:
  """The first symbolic link in `workdir` (its lock, run files, the folders runs write into,
  nested runs' workdirs), or None. Archived runs (archive/*) are not looked into: nothing is
  written there but new folders. `workdir` itself may be a link: the user names it."""
  folders = [workdir]
  while folders:
    try:
      with os.scandir(folders.pop()) as entries:
        entries = sorted(entries, key=lambda e: e.name)
    except OSError:        # gone meanwhile, or unreadable: a write there fails on its own
      continue
    for entry in entries:
      if entry.is_symlink():
        return Path(entry.path)
      if entry.is_dir(follow_symlinks=False) and entry.name != ARCHIVE:
        folders.append(Path(entry.path))
  return None


@contextlib.contextmanager
def _shared_lock(workdir: Path) -> Iterator[Path]:
  if not workdir.is_dir():
    raise UserError(f"workdir {workdir} does not exist or is not a folder")
  try:
    fd = os.open(workdir / LOCK, os.O_RDONLY)
  except OSError:           # no lock file: no run ever trained here to be met mid-write
    yield workdir
    return
  try:
    _lock(fd, fcntl.LOCK_SH, workdir)
    yield workdir
  finally:
    os.close(fd)


def _lock(fd: int, kind: int, workdir: Path) -> None:
  """flock(kind) without waiting; held by another run: a UserError naming its pid."""
  try:
    fcntl.flock(fd, kind | fcntl.LOCK_NB)
  except OSError as e:
    if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
      raise UserError(f"cannot lock {workdir / LOCK} ({e.strerror or e})") from None
    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
    raise UserError(f"{workdir} is in use by another run (pid {holder}); wait for it to "
                    "finish, or use another --workdir") from None


def fingerprint_splits(splits: Mapping[str, Any]) -> dict[str, dict]:
  """{split: {'count', 'hash'}} of a dataset's splits, so that a run can tell whether the data it
  resumes on is the data it was made from. A split is a tuple of numpy arrays (images, labels:
  count = their length; hashed by dtype, shape and bytes) or a sequence of JSON-able rows (P2G
  pairs: hashed as JSON text)."""
  out = {}
  for name, split in splits.items():
    h = hashlib.blake2b(digest_size=16)
    if isinstance(split, tuple) and all(isinstance(a, np.ndarray) for a in split):
      count = len(split[0])
      for a in split:
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    else:
      count = len(split)
      for row in split:
        h.update(json.dumps(row, ensure_ascii=False).encode() + b"\n")
    out[name] = {"count": count, "hash": h.hexdigest()}
  return out


def identity(config: dict, data_source: str, fingerprint: dict | None = None) -> dict:
  """What a run is made from: its settings, its data's source and fingerprint. Every checkpoint
  carries it (the authority, see `prepare`); config.json is a readable copy."""
  return {"config": config, "data": data_source, "fingerprint": fingerprint}


def stored_identity(workdir: str | Path) -> tuple[dict, str] | None:
  """The identity of the run in `workdir` and where it was read: the newest checkpoint that
  carries one, else config.json (runs of before this check). None for a new workdir. Reads
  only; a config.json that is not a run's identity is a UserError only when nothing else tells."""
  workdir = Path(workdir)
  saved = ckpt_lib.newest_meta(workdir, "identity")
  if saved is not None:
    return saved[1]["identity"], f"the checkpoint of epoch {saved[0]}"
  path = workdir / CONFIG
  if not path.exists():
    if ckpt_lib.newest_meta(workdir) is not None:
      raise UserError(f"{workdir} has checkpoints but no {CONFIG} to tell what they were made "
                      f"from; restore {CONFIG}, or use --fresh to archive the run and start over")
    return None
  copy = runlog.read_json(path)
  if not (isinstance(copy, dict) and isinstance(copy.get("config"), dict)):
    raise UserError(f"{path} is damaged (not a run's settings); repair or remove it, or use "
                    "--fresh to archive the run and start over")
  return copy, CONFIG


def differences(have: dict, now: dict, resumable: Iterable[str] = RESUMABLE) -> list[str]:
  """What differs between two identities, in words: settings outside `resumable`, then the
  data (by fingerprint where both have one, so a moved file is the same data; else by source)."""
  resumable = set(resumable)
  diffs = [f"{k}={have['config'].get(k)!r} (now {v!r})" for k, v in now["config"].items()
           if k not in resumable and have["config"].get(k) != v]
  old, new = have.get("fingerprint"), now.get("fingerprint")
  if not (isinstance(old, dict) and new):
    if have.get("data") != now.get("data"):
      diffs.append(f"data {have.get('data')} (now {now.get('data')})")
    return diffs
  for split in dict.fromkeys([*old, *new]):
    a, b = old.get(split), new.get(split)
    if a == b:
      continue
    if a is None or b is None:
      diffs.append(f"data split {split} {'added' if a is None else 'missing'}")
    elif a.get("count") != b.get("count"):
      diffs.append(f"{split} split of {a.get('count'):,} items (now {b['count']:,})")
    else:
      diffs.append(f"{split} split: the same {b['count']:,} items in number, other content")
  return diffs


def prepare(workdir: str | Path, config: dict, data_source: str, *, fresh: bool,
            run_files: Iterable[str], resumable: Iterable[str] = RESUMABLE,
            globs: Sequence[str] = (), log: Callable[[str], None] = print,
            fingerprint: dict | None = None, added_settings: Mapping[str, Any] = {}) -> Path:
  """Creates `workdir`, or checks that the run it holds was made from the same settings and
  data (`identity`), as its newest checkpoint records them (config.json only for runs whose
  checkpoints predate that record): a difference is a UserError naming it, with nothing moved
  or rewritten. Keys in `resumable` (e.g. the number of epochs) may differ. With `fresh`, the
  previous run's `run_files` move to <workdir>/archive/<time>/ first. Writes config.json, the
  readable copy of the identity (rebuilt from the checkpoint when missing or damaged).
  `added_settings`: settings newer than some stored runs, with the value those runs used.
  """
  workdir = ensure(workdir)
  now = identity(config, data_source, fingerprint)
  if fresh:
    archived = archive(workdir, [*run_files, CONFIG], globs)
    if archived:
      log(f"--fresh: moved the previous run's files to {archived}")
  else:
    stored = check_same_run(workdir, now, resumable, added_settings)
    if stored is not None:
      have, origin = stored
      if origin != CONFIG and _copy_differs(workdir / CONFIG, have, set(resumable)):
        log(f"{workdir / CONFIG} was missing or damaged; rebuilt it from {origin}")
  runlog.write_json(workdir / CONFIG, now)
  return workdir


def check_same_run(workdir: Path, now: dict, resumable: Iterable[str] = RESUMABLE,
                   added_settings: Mapping[str, Any] = {}) -> tuple[dict, str] | None:
  """`prepare`'s check without its writes: the identity `workdir`'s run was made from (and
  where it is recorded), None for a workdir that holds no run yet; a UserError naming what
  differs from `now` (an `identity`). Lets a sweep check every rate's folder before it trains
  the first."""
  ckpt_lib.refuse_old_layout(workdir / "checkpoints")
  newest = ckpt_lib.newest_meta(workdir)
  if newest is not None:
    ckpt_lib.check_x64(newest[1].get(ckpt_lib.X64), workdir / "checkpoints")
    asked = now["config"].get("epochs")
    if isinstance(asked, int) and newest[0] > asked:   # its results would pass as `asked`'s
      raise UserError(f"{workdir} holds {newest[0]} trained epochs, more than the --epochs="
                      f"{asked} asked for; ask --epochs={newest[0]} to see its results, use "
                      "another --workdir for a shorter run, or --fresh to archive it")
  stored = stored_identity(workdir)
  if stored is None:
    if (workdir / runlog.SUMMARY).is_file():   # results without a run's settings: not ours
      raise UserError(f"{workdir} holds the {runlog.SUMMARY} of another kind of run (no "
                      f"{CONFIG} or checkpoints: experiments.hopfield's?); use another "
                      "--workdir, or --fresh to archive its files and start over")
    return None
  have, origin = stored
  have = {**have, "config": {**added_settings, **have["config"]}}
  diffs = differences(have, now, resumable)
  if diffs:
    raise UserError(f"{workdir} holds a run made from other settings or data ({origin}): "
                    f"{'; '.join(diffs)}. For a separate run use --workdir=<another "
                    "folder>; to replace that run, --fresh (it is archived, not deleted)")
  return have, origin


def _copy_differs(path: Path, have: dict, resumable: set[str]) -> bool:
  """Whether config.json does not hold the settings of the identity `have`, `resumable` ones
  aside (a data path that moved with the same fingerprint is no damage either: the copy just
  follows it)."""
  try:
    copy = json.loads(path.read_text())
  except (OSError, ValueError, UnicodeDecodeError):
    return True
  fixed = lambda config: {k: v for k, v in config.items() if k not in resumable}
  return not (isinstance(copy, dict) and isinstance(copy.get("config"), dict)
              and fixed(copy["config"]) == fixed(have["config"]))
