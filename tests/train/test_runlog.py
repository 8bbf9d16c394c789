"""What a run logs: metrics.jsonl, summary.json and the progress line (atomic, NaN-safe,
readable after a kill) and TensorBoard event files, rebuilt from the history so that a resumed
run shows each epoch once."""

import json

import numpy as np
import pytest

from helpers import read_tensorboard
from hw2jax import files
from hw2jax.errors import UserError
from hw2jax.train import runlog


def test_json_is_written_whole_with_nan_as_null_and_arrays_as_lists(tmp_path):
  path = tmp_path / "deep" / "summary.json"
  files.write_json(path, {"loss": float("nan"), "acc": np.float32(0.5), "w": np.arange(2)})
  assert files.read_json(path) == {"loss": None, "acc": 0.5, "w": [0, 1]}
  assert [p.name for p in path.parent.iterdir()] == ["summary.json"]  # no temp file left


def test_a_damaged_json_file_is_one_line_naming_it(tmp_path):
  path = tmp_path / "summary.json"
  path.write_text('{"epochs": 3')
  with pytest.raises(UserError, match=r"summary.json is damaged .* --fresh"):
    files.read_json(path)


def test_a_line_cut_short_by_a_kill_is_left_out_but_a_damaged_middle_line_is_named(tmp_path):
  runlog.append_metrics(tmp_path, {"epoch": 1, "train_loss": 0.5})
  runlog.append_metrics(tmp_path, {"epoch": 2, "train_loss": float("inf")})
  path = tmp_path / runlog.METRICS
  with open(path, "a") as f:
    f.write('{"epoch": 3, "train_lo')
  assert runlog.read_metrics(tmp_path) == [{"epoch": 1, "train_loss": 0.5},
                                           {"epoch": 2, "train_loss": None}]
  path.write_text('{"epoch": 1}\nnot json\n{"epoch": 3}\n')
  with pytest.raises(UserError, match=r"metrics.jsonl:2 is damaged"):
    runlog.read_metrics(tmp_path)
  assert runlog.read_metrics(tmp_path / "absent") == []


def test_a_rewrite_keeps_only_the_epochs_a_checkpoint_holds(tmp_path):
  for e in (1, 2, 3):
    runlog.append_metrics(tmp_path, {"epoch": e})
  runlog.rewrite_metrics(tmp_path, [{"epoch": 1}])
  lines = (tmp_path / runlog.METRICS).read_text().splitlines()
  assert [json.loads(line)["epoch"] for line in lines] == [1]


def test_progress_line_leaves_the_compiling_first_epoch_out_of_the_eta():
  first = runlog.progress_line("[lr 0.01] ", {"epoch": 1, "seconds": 100.0, "train_loss": 0.25},
                               ["train_loss", "absent"], 12, [100.0])
  line = runlog.progress_line("[lr 0.01] ", {"epoch": 2, "seconds": 10.0, "val_accuracy": 0.5},
                              ["val_accuracy"], 12, [100.0, 10.0])
  assert line.startswith("[lr 0.01] epoch   2/12  val_accuracy 0.5000  10.0s")
  assert line.endswith("ETA 1m40s")  # 10 epochs left x 10 s, not x 55 s
  assert "absent" not in first and first.endswith("ETA 18m20s")


def test_run_files_leave_no_temp_file_on_failure_and_remove_those_of_killed_writers(
    tmp_path, monkeypatch):
  """summary.json, config.json and metrics.jsonl are written through a temp file named after
  this host and pid: a failed write (a full disk) removes it, and the next write of the same
  file removes one that a killed process left."""
  import errno
  import os
  import subprocess
  import sys
  from hw2jax import files
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True).stdout.strip()
  orphans = [files.temp_path(tmp_path / name).with_name(
      files.temp_path(tmp_path / name).name.replace(f"-{os.getpid()}.", f"-{dead}."))
      for name in ("summary.json", "metrics.jsonl")]
  for orphan in orphans:
    orphan.write_text("half")
  files.write_json(tmp_path / "summary.json", {"epochs_done": 1})
  runlog.rewrite_metrics(tmp_path, [{"epoch": 1}])
  assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "summary.json"]

  def full_disk(*args):
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(os, "replace", full_disk)
  with pytest.raises(OSError, match="No space left"):
    files.write_json(tmp_path / "summary.json", {"epochs_done": 2})
  assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "summary.json"]
  assert files.read_json(tmp_path / "summary.json") == {"epochs_done": 1}


def test_a_restart_rewrites_the_history_once_and_skips_non_numbers(tmp_path):
  board = runlog.Board(tmp_path)
  board.start([{"epoch": 1, "train_loss": 0.9, "note": "x", "diverged": True}])
  board.epoch({"epoch": 2, "train_loss": 0.7, "val_accuracy": float("nan")})
  board.close()
  board = runlog.Board(tmp_path)  # resumed from the checkpoint of epoch 1
  board.start([{"epoch": 1, "train_loss": 0.9}])
  board.epoch({"epoch": 2, "train_loss": 0.6})
  board.close()
  scalars = read_tensorboard(tmp_path / "tb")
  assert set(scalars) == {"train_loss"}
  assert [(s, round(v, 4)) for s, v in scalars["train_loss"]] == [(1, 0.9), (2, 0.6)]


def test_hparams_hold_settings_beside_final_numbers_and_replace_earlier_ones(tmp_path):
  for acc in (0.5, 0.75):
    runlog.write_hparams(tmp_path, {"lr": 0.01, "model": "bn_gap", "dropout": None,
                                    "kernels": (3, 5)}, {"test_accuracy": acc, "label": "x"})
  folder = tmp_path / "tb" / "hparams"
  assert len(list(folder.rglob("events.out.tfevents.*"))) == 1
  assert read_tensorboard(folder) == {"final/test_accuracy": [(0, 0.75)]}


def test_a_run_without_tensorboard_writes_no_event_files(tmp_path):
  from hw2jax.train import run as run_lib
  with run_lib.Run.train(tmp_path, run_lib.Card({"lr": 1.0}, "none"), fresh=False, run_files=(),
                         tensorboard=False, log=lambda line: None) as run:
    run.board.start([{"epoch": 1, "train_loss": 1.0}])
    run.log_epoch({"epoch": 2, "train_loss": 1.0}, ["train_loss"], 2)
    run.finish({"epochs_done": 2}, {"acc": 1.0})
  assert not (tmp_path / "tb").exists() and (tmp_path / "summary.json").is_file()


def test_event_files_are_written_without_importing_pytorch_which_stays_importable(tmp_path):
  """tensorboardX imports torch when it is installed (1.4 s of every run's start); the Board
  loads it without, and `import torch` still works afterwards (--from_torch, the benchmarks)."""
  import subprocess
  import sys
  pytest = __import__("pytest")
  pytest.importorskip("torch")
  script = ("import sys; from hw2jax.train import runlog as tb\n"
            f"b = tb.Board({str(tmp_path)!r}); b.start([{{'epoch': 1, 'train_loss': 0.5}}])\n"
            "b.close(); print('torch' in sys.modules)\n"
            f"tb.write_hparams({str(tmp_path)!r}, {{'lr': 0.1}}, {{'acc': 0.5}})\n"
            "import torch; print(torch.zeros(2).sum().item())\n")
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.split() == ["False", "0.0"]
  assert read_tensorboard(tmp_path / "tb")["train_loss"] == [(1, 0.5)]
