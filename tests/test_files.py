"""How hw2jax writes a file: atomically, through a temp file named after its writer that no
failure leaves behind, and whose orphans the next write removes."""

import errno
import os
import subprocess
import time
from pathlib import Path

import pytest

from hw2jax import files


def dead_pid() -> int:
  """The pid of a process that has exited (and been reaped)."""
  proc = subprocess.Popen(["true"])
  proc.wait()
  return proc.pid


def temp_name_of(target: Path, pid: int) -> str:
  """The temp file name process `pid` of this host writes `target` through."""
  return files.temp_path(target).name.replace(f"-{os.getpid()}.", f"-{pid}.")


def test_a_temp_file_names_its_host_and_pid(tmp_path):
  name = files.temp_path(tmp_path / "intel48-abc.npz").name
  assert name.startswith("intel48-abc.tmp-") and name.endswith(f"-{os.getpid()}.npz")


def test_a_write_replaces_the_file_whole(tmp_path):
  target = tmp_path / "c.bin"
  target.write_bytes(b"old")
  files.write_atomically(target, lambda f: f.write(b"new"))
  assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["c.bin"]


def _full_disk(f):
  f.write(b"x" * 1000)
  raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _interrupted(f):
  f.write(b"x" * 1000)
  raise KeyboardInterrupt


@pytest.mark.parametrize("write, error", [(_full_disk, OSError), (_interrupted, KeyboardInterrupt)])
def test_a_failed_write_leaves_no_temp_file_and_the_old_file_intact(tmp_path, write, error):
  target = tmp_path / "c.bin"
  target.write_bytes(b"old")
  with pytest.raises(error):
    files.write_atomically(target, write)
  assert os.listdir(tmp_path) == ["c.bin"] and target.read_bytes() == b"old"


def test_a_failed_rename_leaves_no_temp_file(tmp_path, monkeypatch):
  def no_space(*_):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  monkeypatch.setattr(os, "replace", no_space)
  with pytest.raises(OSError):
    files.write_atomically(tmp_path / "c.bin", lambda f: f.write(b"new"))
  assert os.listdir(tmp_path) == []


def test_only_temp_files_of_dead_writers_are_removed(tmp_path):
  target = tmp_path / "intel48-abc.npz"
  dead = dead_pid()
  orphan = tmp_path / temp_name_of(target, dead)
  legacy = tmp_path / f"intel48-abc.tmp{dead}.npz"           # the names of earlier versions
  mine = files.temp_path(target)                               # a write in progress
  other_host = tmp_path / f"intel48-abc.tmp-elsewhere-{dead}.npz"
  old_other_host = tmp_path / f"intel48-old.tmp-elsewhere-{dead}.npz"
  not_ours = tmp_path / temp_name_of(tmp_path / "notes.npz", dead)
  for p in (orphan, legacy, mine, other_host, old_other_host, not_ours, target):
    p.write_bytes(b"x")
  day_ago = time.time() - files.STALE_AFTER_S - 60
  os.utime(old_other_host, (day_ago, day_ago))
  removed = files.remove_stale_temps(tmp_path, "intel48-")
  assert sorted(removed) == sorted([orphan, legacy, old_other_host])
  assert sorted(os.listdir(tmp_path)) == sorted(
      p.name for p in (mine, other_host, not_ours, target))


def test_a_missing_folder_has_no_stale_temps(tmp_path):
  assert files.remove_stale_temps(tmp_path / "absent", "intel48-") == []
