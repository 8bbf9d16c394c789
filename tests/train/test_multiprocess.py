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


def test_two_processes_equal_one_and_a_killed_peer_ends_the_survivor_and_both_resume(
    tmp_path):
  """Process 1 is killed mid-run; the survivor ends at once (both processes are then down, as
  after killing both); both restarted resume and end as one process with two devices does."""
  write_npz(tmp_path / "tiny.npz", n_train=128, n_val=16, n_test=16)
  one = subprocess.run(
      [sys.executable, "-m", "experiments.cnn", "--data_path=tiny.npz", "--workdir=one", *ARGS],
      cwd=tmp_path, env={**cli_env(tmp_path),
                         "XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
      capture_output=True, text=True, timeout=TIMEOUT)
  assert one.returncode == 0, one.stderr[-2000:]

  procs = start(tmp_path, "two")
  metrics = tmp_path / "two" / "metrics.jsonl"
  deadline = time.monotonic() + TIMEOUT
  while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
    assert time.monotonic() < deadline and procs[0].poll() is None, finish(procs)
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGKILL)
  killed_at = time.monotonic()
  survivor = finish(procs)[0]
  assert time.monotonic() - killed_at < 120
  errors = [line for line in survivor[2].splitlines() if line.startswith("error:")]
  assert survivor[0] == 2 and "Traceback" not in survivor[2], survivor[2][-3000:]
  assert len(errors) == 1 and "process 0 of 2: process 1 of this run stopped" in errors[0]
  assert "start every process again with the same command to resume" in errors[0]

  resumed = finish(start(tmp_path, "two"))
  assert [r[0] for r in resumed] == [0, 0], [r[2][-2000:] for r in resumed]
  assert "resuming from the checkpoint of epoch" in resumed[0][1]
  assert "epoch   4/4" in resumed[0][1] and resumed[1][1] == ""      # process 0 prints
  two, single = [json.loads((tmp_path / w / "summary.json").read_text()) for w in ("two", "one")]
  assert two["device"].endswith("x2") and single["device"].endswith("x2")
  # The same programs on the same global batches; only the all-reduce differs (gloo between
  # processes, XLA's in-process one), which may sum the two halves in another order.
  for a, b in zip(history(tmp_path / "two"), history(tmp_path / "one"), strict=True):
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
