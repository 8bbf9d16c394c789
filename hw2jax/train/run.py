"""A run's workdir behind one object: `Run.train` for the command that trains or evaluates (one
run at a time, under an advisory lock the OS drops when the process dies; reused only by the
same settings and data, its `Card`; archived, never deleted, to start over), `Run.read` for
commands that only read (a shared lock; nothing created, written or moved). Process 0 writes."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from hw2jax import files
from hw2jax.errors import UserError
from hw2jax.train import checkpoints as ckpt_lib
from hw2jax.train import optimizer, runlog, sharding
from hw2jax.train.sharding import primary

CONFIG, LOCK, ARCHIVE = "config.json", ".lock", "archive"
CHECKPOINTS, METRICS, SUMMARY, TB = ckpt_lib.FOLDER, runlog.METRICS, runlog.SUMMARY, runlog.TB
read_metrics = runlog.read_metrics        # the epochs' records, for the report's readers
# Settings a run may change when it is resumed (more epochs, another epoch runner, whether it
# writes TensorBoard files, how many devices it spans).
RESUMABLE = ("epochs", "epoch_mode", "eval_batch_size", "tensorboard", "devices")


@dataclasses.dataclass(frozen=True)
class Card:
  """What a run is made from: its settings, its data's source and fingerprint, and what a
  reader needs to use the model: (P2G) its vocabularies, (CNN) its images' shape and class
  names. Every checkpoint carries it as an item of its own; config.json is a copy."""
  config: dict
  data: str
  fingerprint: dict | None = None
  vocab: dict | None = None
  images: dict | None = None         # {'shape': [H, W, C], 'classes': [...]}

  def identity(self) -> dict:
    """config.json's content (the card without what follows from the data it fingerprints)."""
    return {"config": self.config, "data": self.data, "fingerprint": self.fingerprint}


@dataclasses.dataclass
class Progress:
  """Where a run stands: its state, one record per epoch (as in metrics.jsonl), the best epoch's
  record, the 1-based epoch that diverged, and how many epochs this call resumed from."""
  state: Any
  history: list[dict]
  best: dict | None
  diverged_at: int | None
  resumed_from: int

  @property
  def train_seconds(self) -> float:          # of the epochs trained (and evaluated) in this call
    return sum(r.get("seconds", 0.0) for r in self.history[self.resumed_from:])

  @property
  def train_seconds_total(self) -> float:    # of every epoch of the run, over all calls
    return sum(r.get("seconds", 0.0) for r in self.history)

  def status(self, epochs: int) -> str:
    """'completed', 'diverged at epoch k' or 'stopped at epoch k of n'."""
    if self.diverged_at:
      return f"diverged at epoch {self.diverged_at}"
    done = len(self.history)
    return "completed" if done >= epochs else f"stopped at epoch {done} of {epochs}"


class Run:
  """An open workdir: `resume`, `save`, `log_epoch` for `fit`; `best_state`, `write`, `finish`."""

  def __init__(self, workdir: Path, card: Card | None, *, read_only: bool, tensorboard: bool,
               log: Callable[[str], None], prefix: str):
    self.workdir, self.card, self.read_only = workdir, card, read_only
    self.log, self.prefix = log, prefix
    self.board = runlog.Board(workdir, enabled=tensorboard and not read_only)
    self._checkpoints: ckpt_lib.Checkpoints | None = None
    self._seconds: list[float] = []      # of the epochs trained by this process, for the ETA
    self._scalars: dict[str, float] = {}  # shown beside every epoch's record in TensorBoard

  @classmethod
  @contextlib.contextmanager
  def train(cls, workdir: str | Path, card: Card, *, fresh: bool, run_files: Iterable[str],
            globs: Sequence[str] = (), resumable: Iterable[str] = RESUMABLE,
            added_settings: Mapping[str, Any] = {}, tensorboard: bool = True,
            log: Callable[[str], None] = print, prefix: str = "") -> Iterator["Run"]:
    """The locked workdir of a run made from `card`: checked to hold the same run or none (see
    `check_same_run`), or with `fresh` its `run_files` (and folders matching `globs`) archived."""
    with locked(workdir) as workdir:
      sharding.same_everywhere({"config": card.config, "data": card.fingerprint},
                               "settings or data")
      if fresh:
        archived = archive(workdir, [*run_files, CONFIG], globs)
        if archived:
          log(f"--fresh: moved the previous run's files to {archived}")
      else:
        origin = check_same_run(workdir, card, resumable, added_settings)
        if origin not in (None, CONFIG):
          log(f"{workdir / CONFIG} was missing or damaged; rebuilt it from {origin}")
      files.write_json(workdir / CONFIG, card.identity())
      with cls(workdir, card, read_only=False, tensorboard=tensorboard, log=log,
               prefix=prefix)._open() as run:
        yield run

  @classmethod
  @contextlib.contextmanager
  def read(cls, workdir: str | Path, log: Callable[[str], None] = print) -> Iterator["Run"]:
    """A trained workdir for a command that only reads (a damaged step is skipped, left)."""
    with locked(workdir, read_only=True) as workdir:
      with cls(workdir, stored_card(workdir), read_only=True, tensorboard=False, log=log,
               prefix="")._open() as run:
        yield run

  @contextlib.contextmanager
  def _open(self) -> Iterator["Run"]:
    lost_peer = False
    try:
      yield self
    except BaseException as e:
      lost_peer = bool(sharding.lost_peer(e))
      raise
    finally:
      self.board.close()
      # A save in flight waits at a barrier for every process, a dead one too: after a lost
      # peer it is left unfinished (the next run skips it) and the CLI ends here.
      if self._checkpoints is not None and not lost_peer:
        self._checkpoints.wait()
        self._checkpoints.close()

  @property
  def checkpoints(self) -> ckpt_lib.Checkpoints:
    if self._checkpoints is None:
      self._checkpoints = ckpt_lib.Checkpoints(self.workdir, log=self.log,
                                               read_only=self.read_only)
    return self._checkpoints

  def path(self, name: str) -> Path:
    return self.workdir / name

  def resume(self, template) -> Progress:
    """The newest readable checkpoint onto `template` (or `template`); metrics.jsonl and
    TensorBoard are rewritten to the epochs it holds."""
    restored = self.checkpoints.restore(template)
    state, meta = restored if restored is not None else (template, {})
    history = list(meta.get("history", []))
    progress = Progress(state, history, meta.get("best"), meta.get("diverged_at"), len(history))
    _check_nothing_lost(self.workdir, len(progress.history), self.checkpoints.root)
    runlog.rewrite_metrics(self.workdir, progress.history)
    rate = optimizer.learning_rate(template)
    self._scalars = {} if rate is None else {"learning_rate": rate}
    self.board.start([{**r, **self._scalars} for r in progress.history])
    return progress

  def save(self, progress: Progress) -> None:
    """Checkpoints the state as epoch len(history) with the run's card, asynchronously."""
    epoch = len(progress.history)
    meta = {"epoch": epoch, "history": progress.history, "best": progress.best,
            "diverged_at": progress.diverged_at}
    self.checkpoints.save(epoch, progress.state, meta, dataclasses.asdict(self.card))

  def log_epoch(self, record: dict, keys: Sequence[str], total_epochs: int) -> None:
    """metrics.jsonl, TensorBoard and the progress line (a diverged epoch: the file only)."""
    runlog.append_metrics(self.workdir, record)
    if not record.get("diverged"):
      self.board.epoch({**record, **self._scalars})
      self._seconds.append(float(record.get("seconds", 0.0)))
      line = runlog.progress_line(self.prefix, record, keys, total_epochs, self._seconds)
      if primary():
        self.log(line)

  def best_state(self, template):
    """The best epoch's state (None: none)."""
    restored = self.checkpoints.restore_best(template)
    return None if restored is None else restored[0]

  def write(self, name: str, obj: Any) -> None:
    """A JSON file of the run (summary.json, vocab.json), written atomically."""
    files.write_json(self.workdir / name, obj)

  def finish(self, summary: dict, metrics: Mapping[str, Any]) -> None:
    """summary.json, and the settings beside `metrics` in TensorBoard's HPARAMS tab."""
    self.write(SUMMARY, summary)
    if self.board.enabled:
      runlog.write_hparams(self.workdir, self.card.config, metrics)


def archive(workdir: str | Path, names: Iterable[str], globs: Sequence[str] = ()
            ) -> Path | None:
  """Moves `names` (and folders matching `globs`) of `workdir` to <workdir>/archive/<time>/,
  and returns it (None: nothing to move)."""
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
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise UserError(f"workdir {workdir} is not writable; give a folder you can write to")
  return workdir


@contextlib.contextmanager
def locked(workdir: str | Path, *, read_only: bool = False) -> Iterator[Path]:
  """Holds <workdir>/.lock (`flock`) while the block runs; a second run is refused with the
  first one's pid. `read_only`: a shared lock, if there is a lock file, and nothing created.
  Folders this call made are removed again if the block fails before writing into them."""
  workdir = Path(workdir)
  if read_only:
    if not workdir.is_dir():
      raise UserError(f"workdir {workdir} does not exist or is not a folder")
    fd = _take_lock(workdir, exclusive=False)
    try:
      yield workdir
    finally:
      if fd is not None:
        os.close(fd)
    return
  made = [p for p in (workdir, *workdir.parents) if not p.exists()]
  try:
    ensure(workdir)
    if not primary():         # process 0 holds the lock for the run; its answer is theirs
      refused = sharding.from_process_0("")
      if refused:
        raise UserError(refused)
      yield workdir
      return
    try:
      _refuse_links(workdir)
      fd = _take_lock(workdir, exclusive=True)
    except UserError as e:
      sharding.from_process_0(str(e))
      raise
    sharding.from_process_0("")
    try:
      os.ftruncate(fd, 0)
      os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
      yield workdir
    finally:
      os.close(fd)
  except BaseException:
    for folder in made:       # only empty folders go; a lock file keeps them (a second run's)
      with contextlib.suppress(OSError):
        folder.rmdir()
    raise


def _take_lock(workdir: Path, exclusive: bool) -> int | None:
  """An fd of <workdir>/.lock holding the lock (None: a reader, no lock file); a UserError
  naming the pid of the run that holds it."""
  path = workdir / LOCK
  flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) if exclusive else os.O_RDONLY
  try:
    fd = os.open(path, flags, 0o644)
  except OSError as e:
    if not exclusive:
      return None
    raise UserError(f"cannot open the lock file {path} ({e.strerror or e})") from None
  try:
    fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    return fd
  except OSError as e:
    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
    os.close(fd)
    if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
      raise UserError(f"cannot lock {path} ({e.strerror or e})") from None
    raise UserError(f"{workdir} is in use by another run (pid {holder}); wait for it to "
                    "finish, or use another --workdir") from None


def _refuse_links(workdir: Path) -> None:
  """A symbolic link in `workdir` (archive/ aside: only new folders go there) is refused, so
  that no write lands outside it. `workdir` itself may be a link."""
  folders = [workdir]
  while folders:
    try:
      with os.scandir(folders.pop()) as entries:
        entries = sorted(entries, key=lambda e: e.name)
    except OSError:        # gone meanwhile, or unreadable: a write there fails on its own
      continue
    for entry in entries:
      if entry.is_symlink():
        raise UserError(f"{entry.path} is a symbolic link: a run writes only real files and "
                        "folders in its workdir, so that no write can land outside it; remove "
                        "the link (and put back what it stood for), or use another --workdir")
      if entry.is_dir(follow_symlinks=False) and entry.name != ARCHIVE:
        folders.append(Path(entry.path))


def stored_card(workdir: str | Path) -> Card | None:
  """The card of the run in `workdir` (None: none): its newest intact checkpoint's, else
  config.json's (runs older than cards in checkpoints)."""
  workdir = Path(workdir)
  carded = ckpt_lib.newest(workdir / CHECKPOINTS, with_card=True)
  if carded is not None:
    return Card(**carded.card)
  identity = _identity_copy(workdir, _read_copy(workdir / CONFIG), stored=None)
  return None if identity is None else Card(**identity)


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


def check_same_run(workdir: Path, card: Card, resumable: Iterable[str] = RESUMABLE,
                   added_settings: Mapping[str, Any] = {}) -> str | None:
  """A UserError, with nothing written, naming what differs between `card` and the run that
  `workdir` holds (settings outside `resumable`, data); `added_settings`: settings newer than
  some runs, with the value they meant. Returns where config.json is to be rebuilt from when
  it lacks the run's settings (None: it holds them, or there is no run)."""
  root = workdir / CHECKPOINTS
  ckpt_lib.refuse_old_layout(root)
  newest = ckpt_lib.newest(root)
  carded = newest if newest is None or newest.card else ckpt_lib.newest(root, with_card=True)
  copy = _read_copy(workdir / CONFIG)
  if newest is not None:
    _same_dtype(newest.meta.get(ckpt_lib.X64), root)
    asked = card.config.get("epochs")
    if isinstance(asked, int) and newest.epoch > asked:   # its results would pass as `asked`'s
      raise UserError(f"{workdir} holds {newest.epoch} trained epochs, more than the --epochs="
                      f"{asked} asked for; ask --epochs={newest.epoch} to see its results, use "
                      "another --workdir for a shorter run, or --fresh to archive it")
  if carded is not None:
    have, origin = Card(**carded.card).identity(), f"the checkpoint of epoch {carded.epoch}"
  else:
    have, origin = _identity_copy(workdir, copy, newest), CONFIG
  if have is None:
    if (workdir / SUMMARY).is_file():   # results without a run's settings: not ours
      raise UserError(f"{workdir} holds the {SUMMARY} of another kind of run (no {CONFIG} or "
                      "checkpoints: experiments.hopfield's?); use another --workdir, or --fresh "
                      "to archive its files and start over")
    return None
  have = {**have, "config": {**added_settings, **have["config"]}}
  diffs = differences(have, card.identity(), resumable)
  if diffs:
    raise UserError(f"{workdir} holds a run made from other settings or data ({origin}): "
                    f"{'; '.join(diffs)}. For a separate run use --workdir=<another "
                    "folder>; to replace that run, --fresh (it is archived, not deleted)")
  fixed = lambda config: {k: v for k, v in config.items() if k not in set(resumable)}
  held = isinstance(copy, dict) and isinstance(copy.get("config"), dict)
  return None if held and fixed(copy["config"]) == fixed(have["config"]) else origin


_MISSING = object()


def _read_copy(path: Path) -> Any:
  """config.json as JSON: _MISSING if there is none, the error if it does not parse."""
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    return _MISSING
  except (OSError, ValueError) as e:      # (UnicodeDecodeError is a ValueError)
    return e


def _identity_copy(workdir: Path, copy: Any, stored) -> dict | None:
  """config.json's identity, for runs older than cards (None: no run); a UserError if it is
  damaged, or missing beside checkpoints (`stored`)."""
  if copy is _MISSING:
    if stored is not None:
      raise UserError(f"{workdir} has checkpoints but no {CONFIG} to tell what they were made "
                      f"from; restore {CONFIG}, or use --fresh to archive the run and start over")
    return None
  if not (isinstance(copy, dict) and isinstance(copy.get("config"), dict)):
    why = f"not valid JSON: {copy}" if isinstance(copy, Exception) else "not a run's settings"
    raise UserError(f"{workdir / CONFIG} is damaged ({why}); repair or remove it, or use "
                    "--fresh to archive the run and start over")
  return {k: copy.get(k) for k in ("config", "data", "fingerprint")}


def _same_dtype(stored: bool | None, root: Path) -> None:
  """A float32 run is not resumed under JAX_ENABLE_X64=1, nor the reverse (None: unrecorded)."""
  now = ckpt_lib.x64_enabled()
  if stored is not None and bool(stored) != now:
    setting = lambda on: "JAX_ENABLE_X64=1" if on else "JAX_ENABLE_X64 unset (float32)"
    raise UserError(f"the checkpoints in {root} were trained with {setting(stored)}, this run "
                    f"has {setting(now)}; resume with the setting it was trained with, use "
                    "another --workdir, or --fresh")


def _check_nothing_lost(workdir: Path, restored_epochs: int, root: Path) -> None:
  """Refuses to train over results the checkpoints cannot reproduce: only the newest logged
  epoch may lack its checkpoint (a run killed while writing it, saves being asynchronous)."""
  logged = [r.get("epoch", 0) for r in read_metrics(workdir)]
  if (workdir / SUMMARY).is_file():   # a summary that is not one counts none
    done = files.read_json(workdir / SUMMARY)
    done = done.get("epochs_done") if isinstance(done, dict) else None
    logged.append(done if isinstance(done, int) and not isinstance(done, bool) else 0)
  finished = max(logged, default=0)
  if finished > restored_epochs + 1:
    have = (f"its newest readable checkpoint is of epoch {restored_epochs}" if restored_epochs
            else "no readable checkpoint")
    raise UserError(f"{workdir} holds the results of {finished} finished epochs but {have} "
                    f"(in {root}; damaged ones are kept in {root / ckpt_lib.CORRUPT}); training "
                    "again would overwrite them. Use --fresh to archive this run and start over")
