"""How hw2jax writes a file, so that no failure (full disk, Ctrl-C, kill -9) leaves debris and
nothing is written through a symbolic link planted at its name or its temp file's (the link is
replaced); and its JSON files (NaN as null, damage named in one line)."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import socket
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable

import jax

from hw2jax import records
from hw2jax.errors import UserError

# A temp file says whose it is: <stem>.tmp-<host>-<pid><suffix> (or, without the host,
# <stem>.tmp<pid><suffix>).
_TEMP_RE = re.compile(r"\.tmp(?:-(?P<host>[A-Za-z0-9_.-]*)-|)(?P<pid>\d+)(?P<suffix>\.[^.]*)?$")
# A temp file this old is nobody's write in progress (a conversion takes minutes), whoever's
# it is: covers other hosts sharing the folder and a dead writer's pid reused since.
STALE_AFTER_S = 24 * 3600


def _host() -> str:
  return re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "host"


def temp_path(path: Path) -> Path:
  """The temp file this process writes `path` through: named after its host and pid, so that a
  later run can tell an orphan (its writer is dead) from another process's write in progress."""
  return path.with_name(f"{path.stem}.tmp-{_host()}-{os.getpid()}{path.suffix}")


def write_atomically(path: Path, write: Callable[[BinaryIO], None], *, new: bool = False
                     ) -> None:
  """Writes `path` through `write(file)` into `temp_path(path)`, then renames it into place:
  readers see the old file or the whole new one. On any failure (a full disk, Ctrl-C) the temp
  file is removed before the exception goes on; only kill -9 leaves it (`remove_stale_temps`).
  No link is followed: the temp file is created new (`create_new`), and the rename replaces a
  link at `path` itself. An OSError names `path`, not the temp file (a folder in its place:
  "Is a directory: <path>"). `new`: never replace a file; the temp file is hard-linked to
  `path` instead (FileExistsError if something is there by then, even one made since the
  caller looked; a file system without hard links gets `path` created exclusively)."""
  path = Path(path)
  tmp = temp_path(path)
  try:
    with create_new(tmp) as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    if new:
      _link_new(tmp, path, write)
    else:
      os.replace(tmp, path)
  except BaseException as e:
    with contextlib.suppress(OSError):  # the write's own error is the one to report
      tmp.unlink(missing_ok=True)
    if isinstance(e, OSError) and e.filename == str(tmp):
      raise type(e)(e.errno, e.strerror, str(path)) from None
    raise


def _link_new(tmp: Path, path: Path, write: Callable[[BinaryIO], None]) -> None:
  try:
    os.link(tmp, path, follow_symlinks=False)
  except OSError as e:
    if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
      raise
    with open(path, "xb") as f:
      write(f)
  tmp.unlink()


def write_file(path: str | Path, content: str | bytes | Callable[[BinaryIO], None]) -> None:
  """Writes `content` (text as UTF-8, bytes, or what a function writes into the open file) to
  `path` with `write_atomically`, first removing the temp files killed writers of `path` left."""
  path = Path(path)
  if isinstance(content, (str, bytes)):
    data = content.encode() if isinstance(content, str) else content
    content = lambda f: f.write(data)
  remove_stale_temps(path.parent, f"{path.stem}.tmp-")
  write_atomically(path, content)


def create_new(path: Path) -> BinaryIO:
  """`path` opened for writing as a new file, never through a link: whatever is at that name
  (the leftover of a process that had this pid, or a link planted there) is removed first, and
  the file is created exclusively (O_EXCL never follows a link)."""
  with contextlib.suppress(FileNotFoundError):
    os.unlink(path)                     # a link itself, never its target
  exclusive = os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
  return open(path, "wb", opener=lambda name, flags: os.open(name, flags | exclusive, 0o666))


def path_component(name: str) -> str:
  """`name` as one folder or file name inside its parent, whatever the user string it comes
  from (a file stem, a label): a separator or NUL becomes '_', and a name that would be its
  parent, its grandparent or nothing ('.', '..', '') gets a leading '_'."""
  safe = re.sub(r"[/\\\x00]", "_", name)
  return f"_{safe}" if safe in ("", ".", "..") else safe


def remove_stale_temps(folder: Path, prefix: str) -> list[Path]:
  """Removes the temp files of `write_atomically` in `folder` whose name starts with `prefix`
  and whose writer is gone: its pid runs no process on this host, or it is a day old. Returns
  those removed; one that cannot be removed is left for a later run."""
  removed = []
  try:
    candidates = [p for p in folder.iterdir() if p.name.startswith(prefix)]
  except OSError:
    return removed
  for p in candidates:
    m = _TEMP_RE.search(p.name)
    if m is None or not _is_orphan(p, m):
      continue
    try:
      p.unlink()
      removed.append(p)
    except OSError:
      pass
  return removed


def _is_orphan(path: Path, m: re.Match) -> bool:
  try:
    if not path.is_file():
      return False
    if time.time() - path.stat().st_mtime > STALE_AFTER_S:
      return True
  except OSError:
    return False
  same_host = m["host"] is None or m["host"] == _host()
  return same_host and not pid_running(int(m["pid"]))


def pid_running(pid: int) -> bool:
  """Whether a process with this pid runs on this host (one of another user's counts). On
  Windows os.kill would end the process: there every pid counts as running."""
  if pid == os.getpid() or os.name == "nt":
    return True
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except (OSError, OverflowError):  # PermissionError: another user's process
    return True
  return True


def write_json(path: str | Path, obj: Any) -> None:
  """Writes JSON atomically (a temp file named after this host and pid, then a rename), so a
  killed run never leaves half a file; a failed write leaves no temp file, and those of killed
  writers are removed by the next write of the same file. (Process 0 only.)"""
  if jax.process_index() != 0:
    return
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  write_file(path, json_text(obj, indent=2) + "\n")


def json_text(obj: Any, **kwargs) -> str:
  """`obj` as JSON with sorted keys, NaN/inf as null and numpy/JAX values as numbers."""
  return json.dumps(finite(obj), sort_keys=True, default=_jsonable, **kwargs)


def finite(obj: Any) -> Any:
  """`obj` with every NaN/inf float replaced by None (JSON has no NaN)."""
  if isinstance(obj, float):
    return obj if math.isfinite(obj) else None
  if isinstance(obj, dict):
    return {k: finite(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [finite(v) for v in obj]
  return obj


def read_json(path: str | Path) -> Any:
  """The JSON in `path`; a damaged file is a UserError naming it (not a traceback)."""
  path = Path(path)
  try:
    return json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise UserError(f"{path} is damaged (not valid JSON: {e}); repair or remove it, or use "
                    "--fresh to archive the run and start over") from None


def read_record(path: str | Path, cls) -> Any:
  """The JSON in `path` read as the typed record `cls` (its own `from_json`, else this
  module's); a file of another shape (a list, numbers as strings) is a UserError naming it."""
  data = read_json(path)
  try:
    return cls.from_json(data) if hasattr(cls, "from_json") else records.from_json(cls, data)
  except (TypeError, ValueError, KeyError, AttributeError) as e:
    raise UserError(f"{path} is damaged ({e}); repair or remove it, or use --fresh to archive "
                    "the run and start over") from None


def _jsonable(x):
  if hasattr(x, "tolist"):  # numpy/JAX scalars and arrays alike
    return x.tolist()
  raise TypeError(f"not JSON serialisable: {type(x).__name__}")
