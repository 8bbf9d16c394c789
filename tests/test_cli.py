"""The CLI edge: list flags, devices, and the failures a user fixes outside the program (a
file system that refuses a write, a device out of memory) as one line."""

import errno

import pytest

from helpers import assert_clean_failure, run_cli, write_npz
from hw2jax import cli
from hw2jax.errors import UserError


def test_list_flags_name_themselves_in_their_messages():
  assert cli.parse_floats("0.1,0.01", "lr") == [0.1, 0.01]
  assert cli.parse_ints(["3", "5"], "kernel_sizes") == [3, 5]
  with pytest.raises(UserError, match=r"--betas=0.1,abc must be numbers .* e.g. --betas=0.1"):
    cli.parse_floats("0.1,abc", "betas")
  with pytest.raises(UserError, match="--lr is empty"):
    cli.parse_floats(",", "lr")
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
  assert "no permission to write /x" in denied and "\n" not in denied


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
