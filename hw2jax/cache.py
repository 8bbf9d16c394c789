"""Where hw2jax keeps what it can rebuild: converted datasets and compiled XLA programs, and
how hw2jax writes a file: so that no failure (full disk, Ctrl-C, kill -9) leaves debris, and
never through a symbolic link planted at its name or its temp file's (the link is replaced)."""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import socket
import time
from pathlib import Path
from typing import BinaryIO, Callable, Mapping

# A temp file says whose it is: <stem>.tmp-<host>-<pid><suffix>. Before these names, temp
# files were <stem>.tmp<pid><suffix> (no host); those are cleaned up too.
_TEMP_RE = re.compile(r"\.tmp(?:-(?P<host>[A-Za-z0-9_.-]*)-|)(?P<pid>\d+)(?P<suffix>\.[^.]*)?$")
# A temp file this old is nobody's write in progress (a conversion takes minutes), whoever's
# it is: covers other hosts sharing the folder and a dead writer's pid reused since.
STALE_AFTER_S = 24 * 3600


def cache_root(environ: Mapping[str, str] | None = None) -> Path:
  """$HW2JAX_CACHE, else $XDG_CACHE_HOME/hw2jax, else ~/.cache/hw2jax (an empty $HOME, which
  Python reads as '/', counts as unset: the user's home from the password database)."""
  environ = os.environ if environ is None else environ
  if environ.get("HW2JAX_CACHE"):
    return Path(environ["HW2JAX_CACHE"])
  home = Path(environ["HOME"]) if environ.get("HOME") else Path(pwd.getpwuid(os.getuid()).pw_dir)
  return Path(environ.get("XDG_CACHE_HOME") or home / ".cache") / "hw2jax"


# The compiled-program cache's bound. Any bound also turns on JAX's file lock (the `filelock`
# package, a dependency for this): without it a process can read an entry that another one,
# compiling the same program (two runs of a sweep side by side), is still writing.
COMPILATION_CACHE_MAX_BYTES = 4 << 30


def enable_compilation_cache() -> None:
  """Persists compiled XLA programs (JAX's own cache) so that a rerun or a resume starts faster.

  $JAX_COMPILATION_CACHE_DIR wins if set, otherwise <cache_root>/xla; at most
  COMPILATION_CACHE_MAX_BYTES (least recently used entries go first) unless
  $JAX_COMPILATION_CACHE_MAX_SIZE says otherwise.
  """
  import jax
  if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_compilation_cache_dir", str(cache_root() / "xla"))
  if not os.environ.get("JAX_COMPILATION_CACHE_MAX_SIZE"):
    jax.config.update("jax_compilation_cache_max_size", COMPILATION_CACHE_MAX_BYTES)


def _host() -> str:
  return re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "host"


def temp_path(path: Path) -> Path:
  """The temp file this process writes `path` through: named after its host and pid, so that a
  later run can tell an orphan (its writer is dead) from another process's write in progress."""
  return path.with_name(f"{path.stem}.tmp-{_host()}-{os.getpid()}{path.suffix}")


def write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
  """Writes `path` through `write(file)` into `temp_path(path)`, then renames it into place:
  readers see the old file or the whole new one. On any failure (a full disk, Ctrl-C) the temp
  file is removed before the exception goes on; only kill -9 leaves it (`remove_stale_temps`).
  No link is followed: the temp file is created new (`create_new`), and the rename replaces a
  link at `path` itself. An OSError names `path`, not the temp file (a folder in its place:
  "Is a directory: <path>")."""
  path = Path(path)
  tmp = temp_path(path)
  try:
    with create_new(tmp) as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException as e:
    with contextlib.suppress(OSError):  # the write's own error is the one to report
      tmp.unlink(missing_ok=True)
    if isinstance(e, OSError) and e.filename == str(tmp):
      raise type(e)(e.errno, e.strerror, str(path)) from None
    raise


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
