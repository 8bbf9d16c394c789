"""Progress inside an epoch as a user sees it: the CLIs on a pseudo-terminal (one line updated
in place, then each epoch's line at the margin), on a pipe (no control characters), and with
--noprogress (nothing inside an epoch). How often lines come: tests/train/test_meter.py."""

import os
import pty
import re
import subprocess
import sys

import pytest

from helpers import cli_env, write_npz, write_p2g_folder

pytestmark = pytest.mark.slow
CNN = ("experiments.cnn", "--data_path=tiny.npz", "--epochs=2", "--channels=4,8,16",
       "--workdir=run")
P2G = ("experiments.p2g", "--data_path=p2g", "--epochs=2", "--hidden_size=8", "--batch_size=2",
       "--workdir=run")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  """Data for epochs of a second or so: 3,000 images (375 steps), 2,400 words (1,200 steps)."""
  root = tmp_path_factory.mktemp("progress")
  write_npz(root / "tiny.npz", n_train=3000, n_val=12, n_test=12)
  write_p2g_folder(root / "p2g", n_train=2400, n_valid=6, n_test=6)
  return root


def on_terminal(args, cwd) -> tuple[int, str]:
  """Runs `python -m args` with stdout on a pseudo-terminal: (exit code, what it showed)."""
  leader, follower = pty.openpty()
  proc = subprocess.Popen([sys.executable, "-m", *args], cwd=cwd, env=cli_env(cwd),
                          stdin=subprocess.DEVNULL, stdout=follower, stderr=subprocess.DEVNULL)
  os.close(follower)
  shown = b""
  while True:
    try:
      chunk = os.read(leader, 1 << 16)
    except OSError:                 # EIO: the process closed its end
      break
    if not chunk:
      break
    shown += chunk
  os.close(leader)
  return proc.wait(timeout=600), shown.decode()


def on_pipe(args, cwd) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=cli_env(cwd),
                        capture_output=True, text=True, timeout=600)


def updates(shown: str) -> list[str]:
  """The in-place updates: what each carriage return that starts no new line writes."""
  return [part for part in re.split(r"\r(?!\n)", shown.replace("\r\n", "\n"))[1:]
          if part.startswith(("epoch", "[")) and "step" in part]


@pytest.mark.parametrize("args, unit", [(CNN, "images/s"), (P2G, "words/s")])
def test_on_a_terminal_one_line_moves_inside_each_epoch(inputs, tmp_path, args, unit):
  code, shown = on_terminal([*args, f"--workdir={tmp_path}/run"], inputs)
  assert code == 0, shown
  moving = updates(shown)
  for epoch in (1, 2):
    steps = [int(m.group(1)) for m in
             (re.match(rf"epoch {epoch}/2  step (\d+)/(\d+)", u.split("\x1b")[0]) for u in moving)
             if m]
    assert len(steps) >= 2 and steps == sorted(steps), moving
  assert any(unit in u and "ETA" in u and "(run " in u for u in moving), moving
  assert all("\n" not in u.split("\x1b[K")[0] for u in moving)      # never a line of its own
  # Each epoch's own line starts at the margin: the live line was cleared first.
  for epoch in (1, 2):
    assert re.search(rf"(\n|\r\x1b\[K)epoch +{epoch}/2  train_loss", shown), shown


@pytest.mark.parametrize("args", [CNN, P2G])
def test_on_a_pipe_and_with_noprogress_nothing_moves(inputs, tmp_path, args):
  proc = on_pipe([*args, f"--workdir={tmp_path}/piped"], inputs)
  assert proc.returncode == 0, proc.stderr
  assert "\r" not in proc.stdout and "\x1b" not in proc.stdout
  assert "step " not in proc.stdout               # epochs under 10 s: no plain line inside
  assert re.search(r"epoch +2/2  train_loss", proc.stdout)
  code, shown = on_terminal([*args, f"--workdir={tmp_path}/quiet", "--noprogress"], inputs)
  assert code == 0, shown
  assert "step " not in shown and "\x1b" not in shown and "\r" not in shown.replace("\r\n", "")


def test_the_report_moves_for_its_cnn_runs_and_q3_beside_them_never_lands_inside(inputs, tmp_path):
  """--overlap=on: Q3 trains in a second thread with its epoch lines only; each of them starts
  at the margin, the live line of the CNN runs cleared first."""
  code, shown = on_terminal(["experiments.report", f"--workdir={tmp_path}/rep", "--parts=q2,q3",
                             "--quick", "--intel_data_path=tiny.npz", "--p2g_data_path=p2g",
                             "--overlap=on", "--q3_hidden_size=8", "--q3_beam=0"], inputs)
  assert code == 0, shown[-3000:]
  moving = updates(shown)
  assert any(u.startswith("[vanilla lr 0.1 seed 42] epoch 1/2  step") for u in moving), moving
  assert not any("[Q3]" in u.split("\x1b[K")[0] for u in moving)
  lines = [m.start() for m in re.finditer(r"\[Q3\] ", shown)]
  assert lines and all(shown[i - 1] == "\n" or shown[i - 4:i] == "\r\x1b[K" for i in lines)


def test_the_cost_benchmark_runs_each_workload_and_prints_its_ratio(inputs, tmp_path):
  proc = on_pipe(["benchmarks.progress_cost", "--cnn_images=24", "--cnn_scan_images=24",
                  "--p2g_data_path=p2g", "--p2g_words=128", "--repeats=1"], inputs)
  assert proc.returncode == 0, proc.stderr
  assert re.search(r"host time per step: \d+\.\d\d us", proc.stdout), proc.stdout
  for name, mode in (("cnn_loop", "loop"), ("cnn_scan", "scan"), ("p2g", "loop")):
    assert re.search(rf"{name} +\({mode}\) off \S+ s  on \S+ s per epoch; on/off, median of 1 "
                     r"pairs \d\.\d{3}", proc.stdout), proc.stdout
