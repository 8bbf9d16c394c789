"""metrics.jsonl, summary.json and the progress line: atomic, NaN-safe, readable after a kill."""

import json

import numpy as np
import pytest

from hw2jax.errors import UserError
from hw2jax.train import runlog


def test_json_is_written_whole_with_nan_as_null_and_arrays_as_lists(tmp_path):
  path = tmp_path / "deep" / "summary.json"
  runlog.write_json(path, {"loss": float("nan"), "acc": np.float32(0.5), "w": np.arange(2)})
  assert runlog.read_json(path) == {"loss": None, "acc": 0.5, "w": [0, 1]}
  assert [p.name for p in path.parent.iterdir()] == ["summary.json"]  # no temp file left


def test_a_damaged_json_file_is_one_line_naming_it(tmp_path):
  path = tmp_path / "summary.json"
  path.write_text('{"epochs": 3')
  with pytest.raises(UserError, match=r"summary.json is damaged .* --fresh"):
    runlog.read_json(path)


def test_a_line_cut_short_by_a_kill_is_left_out_but_a_damaged_middle_line_is_named(tmp_path):
  log = runlog.RunLog(tmp_path, total_epochs=3, printer=lambda line: None)
  log.append({"epoch": 1, "train_loss": 0.5})
  log.append({"epoch": 2, "train_loss": float("inf")})
  with open(log.path, "a") as f:
    f.write('{"epoch": 3, "train_lo')
  assert runlog.read_metrics(tmp_path) == [{"epoch": 1, "train_loss": 0.5},
                                           {"epoch": 2, "train_loss": None}]
  log.path.write_text('{"epoch": 1}\nnot json\n{"epoch": 3}\n')
  with pytest.raises(UserError, match=r"metrics.jsonl:2 is damaged"):
    runlog.read_metrics(tmp_path)
  assert runlog.read_metrics(tmp_path / "absent") == []


def test_reset_keeps_only_the_epochs_a_checkpoint_holds(tmp_path):
  log = runlog.RunLog(tmp_path, total_epochs=4, printer=lambda line: None)
  for e in (1, 2, 3):
    log.append({"epoch": e})
  log.reset([{"epoch": 1}])
  assert [json.loads(line)["epoch"] for line in log.path.read_text().splitlines()] == [1]


def test_progress_line_leaves_the_compiling_first_epoch_out_of_the_eta(tmp_path):
  printed = []
  log = runlog.RunLog(tmp_path, total_epochs=12, prefix="[lr 0.01] ", printer=printed.append)
  log.progress({"epoch": 1, "seconds": 100.0, "train_loss": 0.25}, ["train_loss", "absent"])
  line = log.progress({"epoch": 2, "seconds": 10.0, "val_accuracy": 0.5}, ["val_accuracy"])
  assert printed[1] == line
  assert line.startswith("[lr 0.01] epoch   2/12  val_accuracy 0.5000  10.0s")
  assert line.endswith("ETA 1m40s")  # 10 epochs left x 10 s, not x 55 s
  assert "absent" not in printed[0]


def test_run_files_leave_no_temp_file_on_failure_and_remove_those_of_killed_writers(
    tmp_path, monkeypatch):
  """summary.json, config.json and metrics.jsonl are written through a temp file named after
  this host and pid: a failed write (a full disk) removes it, and the next write of the same
  file removes one that a killed process left."""
  import errno
  import os
  import subprocess
  import sys
  from hw2jax import cache
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True).stdout.strip()
  orphans = [cache.temp_path(tmp_path / name).with_name(
      cache.temp_path(tmp_path / name).name.replace(f"-{os.getpid()}.", f"-{dead}."))
      for name in ("summary.json", "metrics.jsonl")]
  for orphan in orphans:
    orphan.write_text("half")
  runlog.write_json(tmp_path / "summary.json", {"epochs_done": 1})
  runlog.RunLog(tmp_path, total_epochs=1, printer=lambda line: None).reset([{"epoch": 1}])
  assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "summary.json"]

  def full_disk(*args):
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(os, "replace", full_disk)
  with pytest.raises(OSError, match="No space left"):
    runlog.write_json(tmp_path / "summary.json", {"epochs_done": 2})
  assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "summary.json"]
  assert runlog.read_json(tmp_path / "summary.json") == {"epochs_done": 1}
