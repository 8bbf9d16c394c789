"""experiments.cnn end to end in subprocesses: outputs, resume, sweep, --fresh, bad input."""

import json

import numpy as np
import pytest

from conftest import assert_clean_failure, run_cli, write_npz

pytestmark = pytest.mark.slow


def lines(path):
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_single_run_writes_outputs_and_resumes(tmp_path):
  data = write_npz(tmp_path / "tiny.npz", n_train=40, n_val=12, n_test=12)
  args = [f"--data_path={data}", "--workdir=run", "--batch_size=8"]
  first = run_cli("experiments.cnn", *args, "--epochs=2", cwd=tmp_path)
  assert first.returncode == 0, first.stderr
  assert "5,340,742 trainable parameters" in first.stdout
  assert "epoch   1/2" in first.stdout and "ETA" in first.stdout
  run = tmp_path / "run"
  for name in ("metrics.jsonl", "summary.json", "curves.png", "config.json"):
    assert (run / name).is_file(), name
  assert sorted(p.name for p in (run / "checkpoints/latest").iterdir()) == ["1", "2"]
  assert len(list((run / "checkpoints/best").iterdir())) == 1
  assert [r["epoch"] for r in lines(run / "metrics.jsonl")] == [1, 2]
  summary = json.loads((run / "summary.json").read_text())
  assert summary["trainable_params"] == 5_340_742
  assert summary["status"] == "completed" and summary["epochs_done"] == 2
  assert 0.0 <= summary["final"]["test_accuracy"] <= 1.0
  assert summary["seed_report"] == {"test_accuracy": 0.6907, "val_accuracy": 0.7123}

  resumed = run_cli("experiments.cnn", *args, "--epochs=3", cwd=tmp_path)
  assert resumed.returncode == 0, resumed.stderr
  assert "resuming from the checkpoint of epoch 2" in resumed.stdout
  assert "epoch   1/3" not in resumed.stdout and "epoch   3/3" in resumed.stdout
  assert [r["epoch"] for r in lines(run / "metrics.jsonl")] == [1, 2, 3]

  other = run_cli("experiments.cnn", *args, "--epochs=3", "--lr=0.1", cwd=tmp_path)
  assert_clean_failure(other, "learning_rate=0.01 (now 0.1)", "--fresh")

  fresh = run_cli("experiments.cnn", *args, "--epochs=1", "--lr=0.1", "--fresh", cwd=tmp_path)
  assert fresh.returncode == 0, fresh.stderr
  archived = list((run / "archive").iterdir())
  assert len(archived) == 1
  assert [r["epoch"] for r in lines(archived[0] / "metrics.jsonl")] == [1, 2, 3]
  assert [r["epoch"] for r in lines(run / "metrics.jsonl")] == [1]


def test_learning_rate_sweep_writes_table_and_one_figure_per_rate(tmp_path):
  data = write_npz(tmp_path / "tiny.npz", n_train=24, n_val=12, n_test=12)
  proc = run_cli("experiments.cnn", f"--data_path={data}", "--workdir=sweep", "--model=bn_gap",
                 "--lr=0.01,0.05", "--epochs=1", "--channels=8,16,32", cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr
  sweep = tmp_path / "sweep"
  table = (sweep / "table_2_1.md").read_text()
  assert table.count("| bn_gap |") == 2 and "0.7440" in table      # the seed's BN+GAP number
  for lr in ("0.01", "0.05"):
    assert (sweep / f"lr_{lr}" / "curves.png").is_file()
    assert (sweep / f"lr_{lr}" / "summary.json").is_file()
  assert len(json.loads((sweep / "sweep.json").read_text())) == 2


def test_bn_gap_parameter_count_is_printed(tmp_path):
  proc = run_cli("experiments.cnn", "--model=bn_gap", "--data_path=missing.npz", cwd=tmp_path)
  assert "755,718 trainable parameters" in proc.stdout
  assert_clean_failure(proc, "missing.npz does not exist")


@pytest.mark.parametrize("args, fragments", [
    (["--lr=0.1,abc"], ["--lr=0.1,abc must be numbers"]),
    (["--lr=-1"], ["--lr=-1.0 must be a positive number"]),
    (["--model=resnet"], ["--model=resnet"]),
    (["--kernel_size=4"], ["--kernel_size=4 must be a positive odd number"]),
    (["--data_path=bad.npz"], ["not a readable npz"]),
    (["--data_path=nokeys.npz"], ["lacks keys"]),
    ([], ["no Intel image data found", "kaggle datasets download"]),
    (["stray"], ["unexpected arguments stray"]),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, fragments):
  (tmp_path / "bad.npz").write_bytes(b"garbage")
  np.savez(tmp_path / "nokeys.npz", images=np.zeros((2, 48, 48, 3), np.uint8))
  assert_clean_failure(run_cli("experiments.cnn", *args, cwd=tmp_path), *fragments)


def test_data_is_discovered_in_dot_data(tmp_path):
  from conftest import write_kaggle_zip
  (tmp_path / "data").mkdir()
  write_kaggle_zip(tmp_path / "data" / "intel-image-classification.zip")
  proc = run_cli("experiments.cnn", "--epochs=1", "--channels=4,8,16", "--workdir=run",
                 cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr
  assert "skipped 2 unreadable or non-image files" in proc.stdout
  assert "-> train 27, val 3, test 12" in proc.stdout
