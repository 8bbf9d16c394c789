"""--distributed with two real processes on localhost (CPU collectives over gloo): the same
numbers as one process with two devices; a killed peer ends the survivor with one line and exit
2, and both restarted resume to the uninterrupted run; processes started differently are
refused before anything is written. Every process runs under a timeout, so a hang fails."""

import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pytest

from helpers import cli_env, write_npz

pytestmark = pytest.mark.slow
TIMEOUT = 240                        # per process; the runs below take ~10-20 s each
ARGS = ["--epochs=4", "--channels=4,8,16", "--batch_size=8", "--tensorboard=false"]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start(cwd, workdir, *extra, processes=2, only=None):
  """`processes` processes of one --distributed experiments.cnn run, each with its own env;
  `only` ({rank: [flags]}) gives some of them flags of their own."""
  port = free_port()
  procs = []
  for rank in range(processes):
    env = {**cli_env(cwd), "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
           "JAX_NUM_PROCESSES": str(processes), "JAX_PROCESS_ID": str(rank)}
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "experiments.cnn", "--data_path=tiny.npz", "--distributed",
         f"--workdir={workdir}", *ARGS, *extra, *(only or {}).get(rank, [])], cwd=cwd, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True))
  return procs


def finish(procs):
  """[(returncode, stdout, stderr)] of every process; kills them all if one hangs."""
  deadline = time.monotonic() + TIMEOUT
  out = []
  try:
    for p in procs:
      o, e = p.communicate(timeout=max(1, deadline - time.monotonic()))
      out.append((p.returncode, o, e))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return out


def history(run):
  return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
          for line in (run / "metrics.jsonl").read_text().splitlines()]


class Life(NamedTuple):
  root: Path
  one: subprocess.CompletedProcess   # one process with two devices, uninterrupted
  survivor: tuple                    # process 0's (returncode, stdout, stderr) after the kill
  survivor_seconds: float            # from the kill to the survivor's end
  killed_metrics: list[str]          # metrics.jsonl's lines when both were down
  resumed: list[tuple]               # both processes started again: (returncode, stdout, stderr)


@pytest.fixture(scope="module")
def life(tmp_path_factory):
  """One --distributed run through its life: process 1 is killed mid-run and the survivor
  ends (both are then down, as after killing both); both are started again and resume. Beside
  it, the same run as one process with two devices."""
  root = tmp_path_factory.mktemp("two_processes")
  write_npz(root / "tiny.npz", n_train=128, n_val=16, n_test=16)
  one = subprocess.run(
      [sys.executable, "-m", "experiments.cnn", "--data_path=tiny.npz", "--workdir=one", *ARGS],
      cwd=root, env={**cli_env(root), "XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
      capture_output=True, text=True, timeout=TIMEOUT)
  procs = start(root, "two")
  metrics = root / "two" / "metrics.jsonl"
  deadline = time.monotonic() + TIMEOUT
  while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
    assert time.monotonic() < deadline and procs[0].poll() is None, finish(procs)
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGKILL)
  killed_at = time.monotonic()
  survivor = finish(procs)[0]
  survivor_seconds = time.monotonic() - killed_at
  killed_metrics = metrics.read_text().splitlines()
  return Life(root, one, survivor, survivor_seconds, killed_metrics,
              finish(start(root, "two")))


@pytest.mark.xdist_group("two_processes")     # one worker runs the `life` fixture once
def test_a_killed_peer_ends_the_survivor_at_once_with_one_line_and_exit_2(life):
  returncode, _, stderr = life.survivor
  assert life.survivor_seconds < 120
  errors = [line for line in stderr.splitlines() if line.startswith("error:")]
  assert returncode == 2 and "Traceback" not in stderr, stderr[-3000:]
  assert len(errors) == 1 and "process 0 of 2: process 1 of this run stopped" in errors[0]
  assert "start every process again with the same command to resume" in errors[0]


@pytest.mark.xdist_group("two_processes")
def test_both_processes_started_again_resume_from_the_checkpoints_and_one_of_them_prints(life):
  assert [r[0] for r in life.resumed] == [0, 0], [r[2][-2000:] for r in life.resumed]
  lines = (life.root / "two/metrics.jsonl").read_text().splitlines()
  assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4]
  # Every epoch logged before the kill but the newest (whose checkpoint may not have been
  # written) is kept as it was, its time included: resumed, not trained again.
  kept = life.killed_metrics[:-1]
  assert kept and lines[:len(kept)] == kept
  assert json.loads((life.root / "two/summary.json").read_text())["status"] == "completed"
  assert life.resumed[0][1] and life.resumed[1][1] == ""             # process 0 prints


@pytest.mark.xdist_group("two_processes")
def test_two_processes_train_as_one_process_with_two_devices(life):
  assert life.one.returncode == 0, life.one.stderr[-2000:]
  two, single = [json.loads((life.root / w / "summary.json").read_text()) for w in ("two", "one")]
  assert two["device"].endswith("x2") and single["device"].endswith("x2")
  # The same programs on the same global batches; only the all-reduce differs (gloo between
  # processes, XLA's in-process one), which may sum the two halves in another order.
  for a, b in zip(history(life.root / "two"), history(life.root / "one"), strict=True):
    assert a == pytest.approx(b, rel=1e-5, abs=1e-6)
  for key in ("train_loss", "val_loss", "test_loss", "val_accuracy", "test_accuracy"):
    assert two["final"][key] == pytest.approx(single["final"][key], rel=1e-5, abs=1e-6), key


def test_a_busy_workdir_and_processes_started_differently_are_refused_by_every_process(
    tmp_path):
  write_npz(tmp_path / "tiny.npz", n_train=48, n_val=12, n_test=12)
  (tmp_path / "run").mkdir()
  with open(tmp_path / "run" / ".lock", "w") as lock:     # another run holds the workdir
    fcntl.flock(lock, fcntl.LOCK_EX)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    results = finish(start(tmp_path, "run"))
  for code, _, err in results:
    assert code == 2 and f"is in use by another run (pid {os.getpid()})" in err, err[-2000:]

  results = finish(start(tmp_path, "run", only={1: ["--lr=0.1"]}))
  for rank, (code, _, err) in enumerate(results):
    assert code == 2 and "Traceback" not in err, err[-2000:]
    assert (f"process {rank} of 2: process(es) 1 started with other settings or data than "
            "process 0") in err
  assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("name, value, message", [
    ("JAX_NUM_PROCESSES", "two", "JAX_NUM_PROCESSES='two' must be a whole number"),
    ("JAX_PROCESS_ID", "1.5", "JAX_PROCESS_ID='1.5' must be a whole number"),
    ("HW2JAX_HEARTBEAT_TIMEOUT", "0", "HW2JAX_HEARTBEAT_TIMEOUT='0' must be a whole number of "
     "seconds >= 1"),
    ("HW2JAX_INIT_TIMEOUT", "soon", "HW2JAX_INIT_TIMEOUT='soon' must be a whole number"),
])
def test_bad_cluster_variables_are_one_line_before_jax_starts(monkeypatch, name, value, message):
  from hw2jax.errors import UserError
  from hw2jax.train import sharding
  monkeypatch.setenv(name, value)
  monkeypatch.setattr(sharding.jax.distributed, "initialize",
                      lambda **kw: pytest.fail(f"initialize called with {kw}"))
  with pytest.raises(UserError, match=re.escape(message)):
    sharding.initialize_distributed()


def test_the_timeouts_reach_jax(monkeypatch):
  from hw2jax.train import sharding
  seen = {}
  monkeypatch.setenv("HW2JAX_HEARTBEAT_TIMEOUT", "30")
  monkeypatch.setattr(sharding.jax.distributed, "initialize", lambda **kw: seen.update(kw))
  sharding.initialize_distributed()
  assert seen["heartbeat_timeout_seconds"] == 30
  assert seen["initialization_timeout"] == sharding.INIT_TIMEOUT == 90
