"""TensorBoard event files are rebuilt from the history, so a resumed run shows each epoch once."""

from helpers import read_tensorboard

from hw2jax.train import tensorboard


def test_a_restart_rewrites_the_history_once_and_skips_non_numbers(tmp_path):
  board = tensorboard.Board(tmp_path)
  board.start([{"epoch": 1, "train_loss": 0.9, "note": "x", "diverged": True}])
  board.epoch({"epoch": 2, "train_loss": 0.7, "val_accuracy": float("nan")})
  board.close()
  board = tensorboard.Board(tmp_path)  # resumed from the checkpoint of epoch 1
  board.start([{"epoch": 1, "train_loss": 0.9}])
  board.epoch({"epoch": 2, "train_loss": 0.6})
  board.close()
  scalars = read_tensorboard(tmp_path / "tb")
  assert set(scalars) == {"train_loss"}
  assert [(s, round(v, 4)) for s, v in scalars["train_loss"]] == [(1, 0.9), (2, 0.6)]


def test_hparams_hold_settings_beside_final_numbers_and_replace_earlier_ones(tmp_path):
  for acc in (0.5, 0.75):
    tensorboard.write_hparams(tmp_path, {"lr": 0.01, "model": "bn_gap", "dropout": None,
                                         "kernels": (3, 5)}, {"test_accuracy": acc, "label": "x"})
  folder = tmp_path / "tb" / "hparams"
  assert len(list(folder.rglob("events.out.tfevents.*"))) == 1
  assert read_tensorboard(folder) == {"final/test_accuracy": [(0, 0.75)]}


def test_disabled_boards_write_nothing(tmp_path):
  board = tensorboard.Board(tmp_path, enabled=False)
  board.start([{"epoch": 1, "train_loss": 1.0}])
  board.epoch({"epoch": 2, "train_loss": 1.0})
  tensorboard.write_hparams(tmp_path, {"lr": 1.0}, {"acc": 1.0}, enabled=False)
  assert not (tmp_path / "tb").exists()


def test_event_files_are_written_without_importing_pytorch_which_stays_importable(tmp_path):
  """tensorboardX imports torch when it is installed (1.4 s of every run's start); the Board
  loads it without, and `import torch` still works afterwards (--from_torch, the benchmarks)."""
  import subprocess
  import sys
  pytest = __import__("pytest")
  pytest.importorskip("torch")
  script = ("import sys; from hw2jax.train import tensorboard as tb\n"
            f"b = tb.Board({str(tmp_path)!r}); b.start([{{'epoch': 1, 'train_loss': 0.5}}])\n"
            "b.close(); print('torch' in sys.modules)\n"
            f"tb.write_hparams({str(tmp_path)!r}, {{'lr': 0.1}}, {{'acc': 0.5}})\n"
            "import torch; print(torch.zeros(2).sum().item())\n")
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.split() == ["False", "0.0"]
  assert read_tensorboard(tmp_path / "tb")["train_loss"] == [(1, 0.5)]
