"""Issue 28's own adversarial pass, flags, environment and input contents: each case below ended
in a traceback, a native abort, a hang, unbounded memory, a silent misreading or a terminal
escape printed raw. Each is now one printable line and exit 2 with nothing written, run as a
user runs the CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import (assert_clean_failure, checksums, cli_env, run_cli, write_npz,
                     write_p2g_folder)
from hw2jax import cli
from hw2jax.data import phonemes
from hw2jax.errors import UserError

P2G = ("--epochs=1", "--hidden_size=8", "--batch_size=8")


def test_an_error_line_shows_control_characters_escaped_and_cuts_a_huge_message():
  line = cli.error_line("word 'k \x1b[2J\x1b[31m æ t'\nsecond")
  assert line == "error: word 'k \\x1b[2J\\x1b[31m æ t'\\nsecond"
  long = cli.error_line("--lr=" + "1," * 100_000 + "; use fewer", limit=2000)
  assert len(long) < 2100 and long.endswith("; use fewer") and "characters ...]" in long


def test_a_host_memory_error_is_one_line_naming_the_flags(tmp_path):
  proc = subprocess.run([sys.executable, "-c", (
      "from hw2jax import cli\n"
      "def main(argv):\n"
      "  raise MemoryError('Unable to allocate 150. GiB for an array')\n"
      "cli.run(main, memory_flags='--batch_size')\n")], env=cli_env(tmp_path), cwd=tmp_path,
      capture_output=True, text=True, timeout=300)
  assert_clean_failure(proc, "out of host memory (Unable to allocate 150. GiB", "--batch_size")


def test_an_empty_item_of_a_list_flag_is_refused_not_dropped():
  assert cli.parse_ints("8,16", "channels") == [8, 16]
  for bad in ("8,,8", "8,", ","):
    with pytest.raises(UserError, match=f"--channels={bad} has an empty item"):
      cli.parse_ints(bad, "channels")
  with pytest.raises(UserError, match="--lr is empty"):
    cli.parse_floats("", "lr")


# (module, flags, extra environment, fragment of the one line): before, each of these ended in
# a traceback, an abort, a long wait or a silent misreading.
CASES = [
    ("experiments.cnn", ["--flagfile=/dev/zero"], {}, "--flagfile=/dev/zero is not a file of"),
    ("experiments.cnn", ["--flagfile=."], {}, "--flagfile=. is not a file of flags"),
    ("experiments.cnn", ["--batch_size=1099511627776"], {},
     "--batch_size=1099511627776 is beyond any size"),
    ("experiments.p2g", ["--k=1099511627776", "--topp=0.8"], {}, "--k=1099511627776 is beyond"),
    ("experiments.report", ["--q3_hidden_size=1099511627776"], {}, "--q3_hidden_size="),
    ("experiments.hopfield", ["--steps=1099511627776"], {}, "--steps=1099511627776 is beyond"),
    ("experiments.p2g", ["--beam=100000"], {}, "--beam=100000 must be in 0..64"),
    ("experiments.cnn", ["--dropout=0.99999999999"], {}, "--dropout=0.99999999999 must be in"),
    ("experiments.cnn", ["--channels=8,,8"], {}, "--channels=8,,8 has an empty item"),
    ("experiments.report", ["--quick", "--ablation_kernel_sizes=3,3"], {},
     "--ablation_kernel_sizes=3,3 must be positive odd numbers, each given once"),
    ("experiments.hopfield", ["--betas=0.1,0.1"], {},
     "--betas=0.1,0.1 must be positive numbers, each given once"),
    ("experiments.cnn", [], {"HW2JAX_DOWNLOAD": "nevr"}, "HW2JAX_DOWNLOAD=nevr is not auto or"),
    ("experiments.cnn", ["--distributed"], {"JAX_PROCESS_ID": "5", "JAX_NUM_PROCESSES": "1",
                                            "JAX_COORDINATOR_ADDRESS": "localhost:1"},
     "JAX_PROCESS_ID=5 with JAX_NUM_PROCESSES=1"),
    ("experiments.cnn", ["--data_path=\x1b[2Jx.npz"], {}, "\\x1b[2Jx.npz"),
]


@pytest.mark.slow
@pytest.mark.parametrize("module, args, env, fragment", CASES,
                         ids=[f"{c[0][12:]}-{(c[1] or list(c[2]))[0][:30]}" for c in CASES])
def test_a_flag_or_setting_beyond_what_the_program_handles_is_one_line(tmp_path, module, args,
                                                                       env, fragment):
  (tmp_path / "w").mkdir()
  (tmp_path / "w" / "kept.txt").write_text("x")
  before = checksums(tmp_path)
  proc = subprocess.run([sys.executable, "-m", module, "--workdir=w", *args], cwd=tmp_path,
                        env={**cli_env(tmp_path), **env}, capture_output=True, text=True,
                        timeout=120)
  assert_clean_failure(proc, fragment)
  assert "\x1b" not in proc.stderr
  assert {k: v for k, v in checksums(tmp_path).items() if not k.startswith("cache/")} == before


@pytest.mark.slow
def test_a_workdir_that_is_not_utf8_is_refused_before_training(tmp_path):
  """Orbax failed after the first epoch with a 133-line traceback and left a temp step."""
  write_npz(tmp_path / "tiny.npz", n_train=12, n_val=6, n_test=6)
  proc = subprocess.run([sys.executable, "-m", "experiments.cnn", "--data_path=tiny.npz",
                         "--epochs=1", b"--workdir=w\xff"], cwd=tmp_path, env=cli_env(tmp_path),
                        capture_output=True, text=True, timeout=300)
  assert_clean_failure(proc, "is not a UTF-8 path")
  assert not any(p.name.startswith("w") for p in tmp_path.iterdir())


# -- P2G lines and files ---------------------------------------------------------------------


@pytest.mark.parametrize("line, fragment", [
    ("k a t\tcha\x00t", "a control character or byte-order mark ('\\x00')"),
    ("\ufeffk a t\tcat", "a control character or byte-order mark ('\\ufeff')"),
    ("k a t\tc\x1b[2Jat", "('\\x1b')"),
    ("k a t\t" + "a" * 257, "3 phonemes, 257 letters; a word has at most 256"),
    (" ".join(["a"] * 300) + "\tcat", "300 phonemes, 3 letters; a word has at most 256"),
], ids=["NUL", "BOM mid-file", "terminal escape", "long spelling", "long pronunciation"])
def test_a_p2g_line_with_a_control_character_or_a_huge_word_is_a_bad_line(line, fragment):
  with pytest.raises(UserError, match="^f.tsv:7: .*" + re.escape(fragment)):
    phonemes.parse_line(line, "f.tsv:7")


def test_accents_joiners_and_right_to_left_marks_are_still_letters():
  assert phonemes.parse_line("k a f e\tcafe\u0301\u200d\u200f", "x")[1] == "cafe\u0301\u200d\u200f"


@pytest.mark.parametrize("kind", ["folder", "fifo", "loop"])
def test_a_test_tsv_that_is_no_file_is_named_as_such_not_missing(tmp_path, kind):
  folder = write_p2g_folder(tmp_path / "p2g", n_train=8, n_valid=4, n_test=4)
  path = folder / "test.tsv"
  path.unlink()
  {"folder": path.mkdir, "fifo": lambda: os.mkfifo(path),
   "loop": lambda: path.symlink_to(path)}[kind]()
  with pytest.raises(UserError, match="test.tsv is not a file .*a P2G data folder holds"):
    phonemes.read_tsv(path)


@pytest.mark.slow
def test_a_huge_training_word_is_one_line_not_an_allocation_traceback(tmp_path):
  folder = write_p2g_folder(tmp_path / "p2g", n_train=24, n_valid=6, n_test=6)
  with open(folder / "train.tsv", "a") as f:
    f.write("k a t\t" + "a" * 2_000_000 + "\n")
  proc = run_cli("experiments.p2g", "--data_path=p2g", "--workdir=w", *P2G, cwd=tmp_path)
  assert_clean_failure(proc, "train.tsv:25: 3 phonemes, 2,000,000 letters")
  assert not (tmp_path / "w").exists()


# -- Q1 and TensorBoard ------------------------------------------------------------------------


@pytest.mark.slow
def test_constant_images_are_refused_for_retrieval_not_reported_as_nan(tmp_path):
  write_npz(tmp_path / "tiny.npz", n_train=12, n_val=6, n_test=6)
  with np.load(tmp_path / "tiny.npz") as npz:
    arrays = {k: npz[k] for k in npz.files}
  arrays["train_images"][:] = 0
  np.savez(tmp_path / "zeros.npz", **arrays)
  proc = run_cli("experiments.hopfield", "--parts=retrieval", "--data_path=zeros.npz",
                 "--num_patterns=8", "--betas=0.01", "--steps=2", "--workdir=w", cwd=tmp_path)
  assert_clean_failure(proc, "8 of the 8 training images chosen", "are of one colour")


@pytest.mark.slow
def test_a_resume_keeps_what_a_user_put_in_tb(tmp_path):
  """Every (re)start deleted tb/ whole; it now drops only the event files it writes."""
  write_npz(tmp_path / "tiny.npz", n_train=12, n_val=6, n_test=6)
  args = ("experiments.cnn", "--data_path=tiny.npz", "--channels=4,8,16", "--workdir=w")
  assert run_cli(*args, "--epochs=1", cwd=tmp_path).returncode == 0
  (tmp_path / "w" / "tb" / "notes.txt").write_text("mine")
  (tmp_path / "w" / "tb" / "other_run").mkdir()
  (tmp_path / "w" / "tb" / "other_run" / "events.out.tfevents.1.x").write_text("theirs")
  proc = run_cli(*args, "--epochs=2", cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert (tmp_path / "w" / "tb" / "notes.txt").read_text() == "mine"
  assert (tmp_path / "w" / "tb" / "other_run" / "events.out.tfevents.1.x").read_text() == "theirs"
  assert len(list((tmp_path / "w" / "tb").glob("events.out.tfevents.*"))) == 1


# -- messages that named the wrong thing --------------------------------------------------------


def test_a_flag_parse_error_reads_as_words_not_a_python_tuple():
  proc = subprocess.run([sys.executable, "-m", "experiments.cnn", "--fresh=maybe"],
                        env=cli_env(Path.cwd()), capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and "('" not in proc.stderr and "ERROR:" not in proc.stderr
  assert "Non-boolean argument to boolean flag (maybe)" in proc.stderr, proc.stderr


@pytest.mark.parametrize("cli_name", ["cnn", "p2g"])
def test_an_empty_to_torch_is_refused_not_read_as_the_current_folder(tmp_path, cli_name):
  proc = run_cli(f"experiments.{cli_name}", "--to_torch=", "--workdir=w", cwd=tmp_path)
  assert_clean_failure(proc, "--to_torch is empty; give a file name")
  assert not (tmp_path / "w").exists()


def test_a_deleted_working_folder_is_named_as_such(tmp_path):
  gone = tmp_path / "gone"
  gone.mkdir()
  env = cli_env(tmp_path)
  env["PYTHONPATH"] = env["PYTHONPATH"].strip(os.pathsep)   # no '' entry: Python resolves each
  proc = subprocess.run(
      f"cd {gone} && rmdir {gone} && exec {sys.executable} -m experiments.cnn --epochs=1 "
      f"--data_path={tmp_path / 'none.npz'}", shell=True, env=env,
      capture_output=True, text=True, timeout=120)
  assert_clean_failure(proc, "the folder this command runs in was deleted; cd into one")


@pytest.mark.parametrize("module, args, fragment", [
    ("experiments.p2g", ["--predict=k a t", "--fresh"], "--fresh does not apply to it"),
    ("experiments.hopfield", ["--check", "--parts=retrieval"], "--check means --parts=check"),
])
def test_flags_that_contradict_the_mode_are_refused_not_ignored(tmp_path, module, args, fragment):
  proc = run_cli(module, "--workdir=w", *args, cwd=tmp_path)
  assert_clean_failure(proc, fragment)
  assert not (tmp_path / "w").exists()


def test_a_workdir_the_cli_made_but_cannot_use_is_removed_again(tmp_path, monkeypatch):
  """Under umask 777 a CLI made its workdir without any permission, refused it as not writable
  and left it behind (root writes anywhere, so the refusal is simulated here)."""
  from hw2jax.train import run as run_lib
  monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)
  with pytest.raises(UserError, match="is not writable"):
    with run_lib.locked(tmp_path / "new" / "w"):
      pass
  assert not (tmp_path / "new").exists()
