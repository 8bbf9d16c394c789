"""The CLI edge: list flags, devices, and the failures a user fixes outside the program (a
file system that refuses a write, a device out of memory) as one line."""

import errno
import json
import subprocess
import sys

import pytest

from helpers import assert_clean_failure, cli_env, run_cli, write_npz, write_p2g_folder
from hw2jax import cli
from hw2jax.errors import UserError


def test_list_flags_name_themselves_in_their_messages():
  assert cli.parse_floats("0.1,0.01", "lr") == [0.1, 0.01]
  assert cli.parse_ints(["3", "5"], "kernel_sizes") == [3, 5]
  with pytest.raises(UserError, match=r"--betas=0.1,abc must be numbers .* e.g. --betas=0.1"):
    cli.parse_floats("0.1,abc", "betas")
  with pytest.raises(UserError, match="--lr is empty"):
    cli.parse_floats("", "lr")
  with pytest.raises(UserError, match="--seeds=a must be integers"):
    cli.parse_ints("a", "seeds")


def test_devices_are_all_or_a_positive_count():
  assert cli.parse_devices("all") == 0 and cli.parse_devices("2") == 2
  for bad in ("0", "-1", "many"):
    with pytest.raises(UserError, match=f"--devices={bad} must be all or a positive number"):
      cli.parse_devices(bad)


def test_os_errors_are_one_line_saying_what_to_do():
  full = cli.describe_os_error(OSError(errno.ENOSPC, "No space left on device", "/runs/x"))
  assert full.startswith("disk full while writing /runs/x") and "resume" in full
  denied = cli.describe_os_error(PermissionError(errno.EACCES, "Permission denied", "/x"))
  assert "no permission to write, move or remove /x" in denied and "\n" not in denied


@pytest.mark.slow
def test_an_os_error_a_run_meets_is_one_line_and_exit_2(tmp_path):
  """A file the run must write is blocked (a folder where curves.png goes): the CLI edge turns
  the OSError into one line naming the path, and the epoch's checkpoint is kept."""
  write_npz(tmp_path / "tiny.npz", n_train=24, n_val=6, n_test=6)
  (tmp_path / "run" / "curves.png").mkdir(parents=True)
  proc = run_cli("experiments.cnn", "--data_path=tiny.npz", "--workdir=run", "--epochs=1",
                 "--channels=4,8,16", "--notensorboard", cwd=tmp_path)
  assert_clean_failure(proc, "Is a directory: run/curves.png")
  assert (tmp_path / "run" / "checkpoints" / "1").is_dir()


def test_out_of_memory_names_the_size_and_the_flags():
  e = RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 160000000000 bytes.")
  line = cli.describe_out_of_memory(e, "--batch_size or --channels")
  assert "149.0 GiB" in line and "--batch_size or --channels" in line


@pytest.mark.parametrize("module,flag", [("cnn", "--help"), ("p2g", "--helpfull"),
                                         ("hopfield", "--helpshort"), ("report", "--help")])
def test_help_that_was_asked_for_exits_0(tmp_path, module, flag):
  proc = run_cli(f"experiments.{module}", flag, cwd=tmp_path)
  assert proc.returncode == 0 and "--workdir" in proc.stdout, proc.stderr[-2000:]


# -- issue 28: what the environment hands a CLI, each one line and exit 2 ----------------------


@pytest.mark.slow
@pytest.mark.parametrize("name, value, fragment", [
    ("JAX_ENABLE_X64", "maybe", "invalid truth value 'maybe' for environment 'JAX_ENABLE_X64'"),
    ("JAX_DEFAULT_MATMUL_PRECISION", "garbage", 'Invalid value "garbage" for JAX flag'),
    ("XLA_FLAGS", "--xla_force_host_platform_device_count=0",
     "--xla_force_host_platform_device_count=0 must be a whole number of devices >= 1"),
    ("XLA_FLAGS", "--xla_force_host_platform_device_count=abc",
     "--xla_force_host_platform_device_count=abc must be a whole number of devices >= 1"),
])
def test_a_bad_jax_or_xla_setting_in_the_environment_is_one_line(tmp_path, name, value,
                                                                  fragment):
  """JAX reads JAX_* when imported, XLA parses XLA_FLAGS when its backend starts (and aborts the
  process with a C++ check on a value it cannot read): both are one line before anything runs."""
  proc = subprocess.run([sys.executable, "-m", "experiments.hopfield", "--check",
                         "--check_trials=1", "--workdir=out"], cwd=tmp_path,
                        env={**cli_env(tmp_path), name: value}, capture_output=True, text=True,
                        timeout=300)
  assert_clean_failure(proc, fragment, "fix or unset it")
  assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_coordinator_address_that_is_no_host_and_port_is_one_line(tmp_path):
  write_npz(tmp_path / "tiny.npz", n_train=24, n_val=6, n_test=6)
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.cnn", "--data_path=tiny.npz", "--epochs=1",
       "--channels=4,8,16", "--workdir=run", "--distributed"], cwd=tmp_path,
      env={**cli_env(tmp_path), "JAX_COORDINATOR_ADDRESS": "not a host:::",
           "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"},
      capture_output=True, text=True, timeout=300)
  assert_clean_failure(proc, "JAX_COORDINATOR_ADDRESS='not a host:::' must be host:port")


@pytest.mark.slow
@pytest.mark.parametrize("stdout", ["/dev/full", "a pipe closed after 3 lines"])
def test_a_closed_or_full_stdout_does_not_stop_a_run(tmp_path, stdout):
  """Progress lines are a courtesy: with stdout full (/dev/full) or closed (`| head -3`) the run
  trains every epoch and writes its results, saying once on stderr that stdout failed."""
  write_npz(tmp_path / "tiny.npz", n_train=24, n_val=6, n_test=6)
  cmd = [sys.executable, "-m", "experiments.cnn", "--data_path=tiny.npz", "--epochs=4",
         "--channels=4,8,16", "--workdir=run", "--notensorboard"]
  if stdout == "/dev/full":
    with open("/dev/full", "w") as full:
      proc = subprocess.run(cmd, cwd=tmp_path, env=cli_env(tmp_path), stdout=full,
                            stderr=subprocess.PIPE, text=True, timeout=600)
    returncode, stderr = proc.returncode, proc.stderr
  else:
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=cli_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for _ in range(3):
      proc.stdout.readline()
    proc.stdout.close()                                      # what `| head -3` does
    returncode, stderr = proc.wait(timeout=600), proc.stderr.read()
  assert returncode == 0, stderr
  assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 4
  assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"
  lines = [line for line in stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("warning: stdout failed"), stderr


@pytest.mark.slow
def test_an_ascii_terminal_gets_escapes_not_a_traceback(tmp_path):
  """PYTHONIOENCODING=ascii: P2G's tables ('—') and a --predict of IPA symbols print escaped."""
  write_p2g_folder(tmp_path / "p2g", n_train=24, n_valid=6, n_test=6)
  env = {**cli_env(tmp_path), "PYTHONIOENCODING": "ascii"}
  args = [sys.executable, "-m", "experiments.p2g", "--data_path=p2g", "--hidden_size=8",
          "--batch_size=8", "--workdir=run"]
  trained = subprocess.run([*args, "--epochs=1"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=600)
  assert trained.returncode == 0 and "Traceback" not in trained.stderr, trained.stderr[-2000:]
  word = json.loads((tmp_path / "run" / "vocab.json").read_text())["source"][4]
  predicted = subprocess.run([*args, f"--predict={word}"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=600)
  assert predicted.returncode == 0 and "greedy" in predicted.stdout, predicted.stderr[-2000:]
  assert "\\u" in predicted.stdout or word.isascii()


@pytest.mark.slow
@pytest.mark.parametrize("length", [3900, 3990, 4060, 4200])
def test_a_workdir_path_near_or_beyond_path_max_is_one_line(tmp_path, length):
  """Near PATH_MAX (4096) a workdir can be made but a checkpoint file deep inside it cannot:
  TensorStore's failure, in an asynchronous write, is one line too, with no asyncio spill."""
  write_npz(tmp_path / "tiny.npz", n_train=24, n_val=6, n_test=6)
  parts, size = [], len(str(tmp_path))
  while size < length:
    parts.append("d" * min(200, length - size - 1))
    size += len(parts[-1]) + 1
  proc = run_cli("experiments.cnn", "--data_path=tiny.npz", "--epochs=1", "--channels=4,8,16",
                 "--notensorboard", f"--workdir={tmp_path.joinpath(*parts)}", cwd=tmp_path,
                 timeout=120)          # Orbax's abandoned threads once held the exit for 300 s
  if length == 4060:                   # the workdir is made, a checkpoint file's path too long
    assert_clean_failure(proc, "has a longer path than the file system allows")
  elif proc.returncode != 0:
    assert_clean_failure(proc)
  for spill in ("Traceback", "Future exception", "never awaited", "never retrieved"):
    assert spill not in proc.stderr


@pytest.mark.slow
def test_a_coordinator_nobody_answers_is_one_line_after_the_init_timeout(tmp_path):
  """Process 1 of a --distributed run whose coordinator never answers: JAX's own client would
  abort the process (exit 134, a C++ stack) when its timeout ends; this is one line instead."""
  write_npz(tmp_path / "tiny.npz", n_train=24, n_val=6, n_test=6)
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.cnn", "--data_path=tiny.npz", "--epochs=1",
       "--channels=4,8,16", "--workdir=run", "--distributed"], cwd=tmp_path,
      env={**cli_env(tmp_path), "JAX_COORDINATOR_ADDRESS": "localhost:1",
           "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1", "HW2JAX_INIT_TIMEOUT": "2"},
      capture_output=True, text=True, timeout=120)
  assert_clean_failure(proc, "no coordinator answers at localhost:1 after 2 s")
