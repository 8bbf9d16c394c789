"""Workdirs: one run at a time (a lock a kill -9 never leaves stale), and every workdir problem
of every CLI is one line and exit 2 with nothing changed."""

import json
import os
import signal
import subprocess
import sys

import pytest

from helpers import (assert_clean_failure, checksums, cli_env, run_cli, run_read_only,
                     write_npz, write_p2g_folder)
from hw2jax.train import run as run_lib
from hw2jax.errors import UserError


def test_a_second_lock_on_the_same_workdir_names_the_first_ones_pid(tmp_path):
  with run_lib.locked(tmp_path / "run"):
    with pytest.raises(UserError, match=rf"in use by another run \(pid {os.getpid()}\)"):
      with run_lib.locked(tmp_path / "run"):
        pass
  with run_lib.locked(tmp_path / "run"):        # released on exit
    pass


def test_a_killed_run_leaves_no_stale_lock(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from hw2jax.train import run as run_lib\n"
       f"with run_lib.locked({str(tmp_path / 'run')!r}):\n  print('locked', flush=True)\n"
       "  time.sleep(600)"], env=cli_env(tmp_path), stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == "locked"
  with pytest.raises(UserError, match=f"pid {holder.pid}"):
    with run_lib.locked(tmp_path / "run"):
      pass
  holder.send_signal(signal.SIGKILL)
  holder.wait()
  with run_lib.locked(tmp_path / "run"):
    pass


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  root = tmp_path_factory.mktemp("inputs")
  write_npz(root / "tiny.npz", n_train=24, n_val=6, n_test=6)
  write_p2g_folder(root / "p2g", n_train=24, n_valid=6, n_test=6)
  return root


def cli_args(cli, root):
  return {"cnn": [f"--data_path={root}/tiny.npz", "--epochs=1", "--channels=4,8,16"],
          "p2g": [f"--data_path={root}/p2g", "--epochs=1", "--hidden_size=8",
                  "--batch_size=8"],
          "hopfield": ["--check", "--check_trials=1"],
          "report": ["--parts=q1", "--quick"]}[cli]


# Every command that writes a workdir: (its module, its extra flags).
WRITERS = {"cnn": ("cnn", []), "cnn --lr sweep": ("cnn", ["--lr=0.01,0.1"]), "p2g": ("p2g", []),
           "hopfield": ("hopfield", []), "report": ("report", [])}


@pytest.mark.slow
@pytest.mark.parametrize("writer", WRITERS)
def test_a_second_run_in_a_busy_workdir_is_refused_with_the_first_ones_pid(writer, inputs,
                                                                            tmp_path):
  cli, extra = WRITERS[writer]
  run = tmp_path / "run"
  with run_lib.locked(run):
    proc = run_cli(f"experiments.{cli}", *cli_args(cli, inputs), *extra, "--workdir=run",
                   cwd=tmp_path)
  assert_clean_failure(proc, f"in use by another run (pid {os.getpid()})")
  assert [p.name for p in run.iterdir()] == [run_lib.LOCK]          # nothing written in it
  assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == ["run"]


@pytest.fixture(scope="module")
def trained(inputs, tmp_path_factory):
  """A tiny trained CNN workdir and P2G workdir (<root>/cnn, <root>/p2g), one CLI call each.
  The CNN has the course's channels (--to_torch exports only those), BatchNorm and global
  average pooling (the smallest of them)."""
  root = tmp_path_factory.mktemp("trained")
  args = {"cnn": [f"--data_path={inputs}/tiny.npz", "--epochs=1", "--model=bn_gap",
                  "--batch_size=8"], "p2g": cli_args("p2g", inputs)}
  for cli in ("cnn", "p2g"):
    proc = run_cli(f"experiments.{cli}", *args[cli], f"--workdir={cli}", cwd=root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
  return root


def reader(command, trained, inputs):
  """(module, flags, what its success prints or writes) of a command that only reads."""
  word = json.loads((trained / "p2g" / "vocab.json").read_text())["source"][4]
  return {"p2g --predict": ("p2g", [f"--workdir={trained / 'p2g'}", f"--predict={word}"]),
          "p2g --to_torch": ("p2g", [f"--workdir={trained / 'p2g'}",
                                     f"--data_path={inputs}/p2g", "--to_torch=out.pt"]),
          "cnn --to_torch": ("cnn", [f"--workdir={trained / 'cnn'}", "--to_torch=out.pt"])
          }[command]


@pytest.mark.slow
@pytest.mark.xdist_group("trained_workdirs")     # one worker runs the `trained` fixture once
@pytest.mark.parametrize("command", ["p2g --predict", "p2g --to_torch", "cnn --to_torch"])
def test_a_read_only_command_is_refused_while_a_run_holds_the_workdir_and_makes_no_lock_file(
    command, trained, inputs, tmp_path):
  """A reader takes a shared lock: refused (one line, the holder's pid, exit 2, nothing
  changed) while a run holds the workdir; without one it works and creates no lock file."""
  if "--to_torch" in command:
    pytest.importorskip("torch")
  cli, args = reader(command, trained, inputs)
  run = trained / cli
  before = checksums(run)
  with run_lib.locked(run):
    proc = run_cli(f"experiments.{cli}", *args, cwd=tmp_path)
  assert_clean_failure(proc, f"in use by another run (pid {os.getpid()})")
  assert checksums(run) == before and not (tmp_path / "out.pt").exists()

  (run / run_lib.LOCK).unlink()
  proc = run_cli(f"experiments.{cli}", *args, cwd=tmp_path)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  if command == "p2g --predict":
    assert "greedy" in proc.stdout, proc.stdout
  else:
    assert (tmp_path / "out.pt").is_file()
  assert checksums(run) == before and not (run / run_lib.LOCK).exists()


@pytest.mark.slow
@pytest.mark.xdist_group("trained_workdirs")     # one worker runs the `trained` fixture once
def test_cnn_to_torch_works_on_a_read_only_workdir_and_writes_only_outside_it(trained,
                                                                               tmp_path):
  pytest.importorskip("torch")
  run = trained / "cnn"
  before = checksums(run)
  proc = run_read_only(run, [sys.executable, "-m", "experiments.cnn", f"--workdir={run}",
                             "--to_torch=out.pt"], tmp_path)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert (tmp_path / "out.pt").is_file() and checksums(run) == before


CLIS = ("cnn", "p2g", "hopfield", "report")
CONFIG = {"cnn": "config.json", "p2g": "config.json", "report": "report_config.json"}


@pytest.mark.parametrize("cli", CLIS)
@pytest.mark.parametrize("case", ["a file", "under a file", "unwritable", "damaged config"])
def test_workdir_problems_are_one_line_in_every_cli(cli, case, inputs, tmp_path):
  (tmp_path / "afile").write_text("mine")
  if case == "damaged config":
    if cli not in CONFIG:
      pytest.skip(f"experiments.{cli} keeps no settings in its workdir")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / CONFIG[cli]).write_text('{"config": {"model": ')
  target = {"a file": "afile", "under a file": "afile/run", "unwritable": "/proc/hw2jax/run",
            "damaged config": "run"}[case]
  expected = {"a file": "is a file, not a folder", "under a file": "a part of its path is a file",
              "unwritable": "cannot be created",
              "damaged config": f"{CONFIG.get(cli)} is damaged (not valid JSON"}[case]
  before = checksums(tmp_path)
  proc = run_cli(f"experiments.{cli}", *cli_args(cli, inputs), f"--workdir={target}",
                 cwd=tmp_path)
  assert_clean_failure(proc, expected)
  after = checksums(tmp_path)
  assert {k: v for k, v in after.items() if not k.startswith("cache/")} == before


def test_unwritable_workdir_says_so(tmp_path):
  if os.geteuid() == 0:
    pytest.skip("root may write anywhere")
  locked = tmp_path / "locked"
  locked.mkdir(mode=0o500)
  with pytest.raises(UserError, match="not writable"):
    run_lib.ensure(locked)
