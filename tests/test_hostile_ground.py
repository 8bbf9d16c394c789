"""Issue 28's hostile-input cases: symbolic links planted in a workdir (no write may follow one
out of it: every CLI refuses such a workdir in one line, and each write is made so that it
cannot follow a link), a file stem of `..` as a default workdir's name, metrics.jsonl lines that
are JSON but no epoch's record, and a folder where a run file goes (the one line names that
file, not the temp file it was written through)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import (TINY_CLI_FLAGS, assert_clean_failure, checksums, cli_env, run_cli,
                     write_npz, write_tiny_inputs)
from hw2jax import files, plots
from hw2jax.errors import UserError
from hw2jax.recipes import torch_checkpoints
from hw2jax.train import runlog
from hw2jax.train import run as run_lib

VICTIM = "victim: must never change\n"
CNN, P2G, HOPFIELD, REPORT = (TINY_CLI_FLAGS[c] for c in ("cnn", "p2g", "hopfield", "report"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
  return write_tiny_inputs(tmp_path_factory.mktemp("inputs"))


def command(cli: str, inputs: Path, *extra: str) -> tuple[str, ...]:
  """The module and flags of a tiny run of `cli` into the workdir W."""
  args = {"cnn": (f"--data_path={inputs / 'tiny.npz'}", *CNN),
          "p2g": (f"--data_path={inputs / 'p2g'}", *P2G),
          "hopfield": HOPFIELD, "report": REPORT}[cli]
  return (f"experiments.{cli}", *args, "--workdir=W", *extra)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, inputs) -> dict[str, Path]:
  """One finished workdir per CLI that a case needs a previous run of (copied, never used)."""
  runs = {}
  for cli in ("cnn", "hopfield"):
    cwd = tmp_path_factory.mktemp(f"trained-{cli}")
    proc = run_cli(*command(cli, inputs), cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs[cli] = cwd / "W"
  return runs


def tree(root: Path) -> dict[str, str]:
  """Every entry under `root` (links not followed): its kind, and a file's checksum."""
  files = checksums(root)
  return {p.relative_to(root).as_posix(): ("link" if p.is_symlink() else
                                           files.get(p.relative_to(root).as_posix(), "folder"))
          for p in sorted(root.rglob("*"))}


def plant(workdir: Path, name: str, kind: str) -> Path:
  """A link at <workdir>/<name> to a file or folder outside the workdir, or to a file that does
  not exist yet ('dangling'); returns the folder the links point into."""
  outside = workdir.parent / "outside"
  outside.mkdir(exist_ok=True)
  (outside / "victim.txt").write_text(VICTIM)
  (outside / "victim_dir").mkdir(exist_ok=True)
  (outside / "victim_dir" / "keep.txt").write_text(VICTIM)
  target = {"file": outside / "victim.txt", "folder": outside / "victim_dir",
            "dangling": outside / "new.txt"}[kind]
  link = workdir / name
  link.parent.mkdir(parents=True, exist_ok=True)
  link.symlink_to(target, target_is_directory=kind == "folder")
  return outside


# -- item 1: writes follow links planted in a workdir ---------------------------------------------

# (CLI, planted name, what it points to, whether the workdir holds a finished run, extra flags):
# each of these wrote outside the workdir before issue 28.
PLANTED = [
    ("cnn", ".lock", "file", False, ()),
    ("cnn", "curves.png", "file", False, ()),
    ("cnn", "checkpoints", "folder", False, ()),
    ("cnn", "archive", "folder", True, ("--fresh",)),
    ("p2g", ".lock", "file", False, ()),
    ("p2g", "tables.md", "file", False, ()),
    ("p2g", "test_predictions.tsv", "file", False, ()),
    ("p2g", "cer.png", "file", False, ()),
    ("hopfield", ".lock", "file", False, ()),
    ("hopfield", "check.md", "dangling", False, ()),
    ("hopfield", "archive", "folder", True, ()),
    ("report", ".lock", "file", False, ()),
    ("report", "q1", "folder", False, ()),
]


@pytest.mark.slow
@pytest.mark.parametrize("cli,name,kind,previous,extra", PLANTED,
                         ids=[f"{c[0]}-{c[1]}{'-' + c[4][0] if c[4] else ''}" for c in PLANTED])
def test_a_workdir_with_a_planted_link_is_refused_and_nothing_outside_changes(
    tmp_path, inputs, trained, cli, name, kind, previous, extra):
  workdir = tmp_path / "W"
  if previous:
    shutil.copytree(trained[cli], workdir, symlinks=True)
  else:
    workdir.mkdir()
  outside = plant(workdir, name, kind)
  before, inside = tree(outside), tree(workdir)
  proc = run_cli(*command(cli, inputs, *extra), cwd=tmp_path)
  assert tree(outside) == before                        # the victim and its folder untouched
  assert_clean_failure(proc, f"W/{name} is a symbolic link", "--workdir")
  assert tree(workdir) == inside                        # refused before anything was written
  assert {p.name for p in tmp_path.iterdir()} <= {"W", "cache", "outside"}


def test_the_lock_is_not_taken_through_a_link(tmp_path):
  outside = plant(tmp_path / "W", ".lock", "file")
  with pytest.raises(UserError, match=r"W/\.lock is a symbolic link"):
    with run_lib.locked(tmp_path / "W"):
      pass
  assert (outside / "victim.txt").read_text() == VICTIM


def test_a_link_planted_at_a_temp_file_name_is_replaced_not_followed(tmp_path):
  """The temp file a JSON file is written through (config.tmp-<host>-<pid>.json) is created
  new: a link planted at its name is neither written through nor renamed into place."""
  target = tmp_path / "W" / "config.json"
  outside = plant(tmp_path / "W", files.temp_path(target).name, "file")
  files.write_json(target, {"config": {"epochs": 1}})
  assert (outside / "victim.txt").read_text() == VICTIM
  assert not target.is_symlink() and files.read_json(target) == {"config": {"epochs": 1}}
  assert sorted(p.name for p in target.parent.iterdir()) == ["config.json"]


def test_a_figure_replaces_a_link_at_its_name(tmp_path):
  outside = plant(tmp_path / "W", "curves.png", "file")
  plots.plot_history([{"epoch": 1, "train_loss": 1.0}], tmp_path / "W" / "curves.png",
                     title="t", panels=(("loss", ("train_loss",)),))
  assert (outside / "victim.txt").read_text() == VICTIM
  path = tmp_path / "W" / "curves.png"
  assert not path.is_symlink() and path.read_bytes().startswith(b"\x89PNG")


def test_metrics_are_never_appended_through_a_link(tmp_path):
  outside = plant(tmp_path / "W", runlog.METRICS, "file")
  with pytest.raises(OSError):
    runlog.append_metrics(tmp_path / "W", {"epoch": 1, "train_loss": 1.0})
  assert (outside / "victim.txt").read_text() == VICTIM


def test_an_export_is_not_written_through_a_link_at_its_temp_name(tmp_path):
  """--to_torch's temp file (.<name>.tmp-<pid>) is created new, never opened through a link."""
  pytest.importorskip("torch")
  import numpy as np
  from hw2jax.recipes import torch_files
  outside = plant(tmp_path / "out", f".model.pt.tmp-{os.getpid()}", "file")
  torch_files.write_state_dict({"w": np.zeros(2, np.float32)}, tmp_path / "out" / "model.pt")
  assert (outside / "victim.txt").read_text() == VICTIM
  assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.pt"]


# -- item 3: folder names made from user strings stay inside their parent --------------------------


@pytest.mark.parametrize("path", ["ckpt/...pt", "ckpt/..pt", "..", "/"])
def test_a_default_workdir_from_a_file_stem_stays_in_its_folder(path):
  workdir = Path(torch_checkpoints.default_workdir("cnn", path))
  assert workdir.parent == Path("runs/cnn/from_torch")
  assert workdir.name not in ("", ".", "..") and "/" not in workdir.name


@pytest.mark.slow
def test_from_torch_of_a_file_named_dot_dot_pt_writes_inside_from_torch(tmp_path, inputs):
  """`--from_torch=<dir>/...pt` (stem '..') wrote config.json, summary.json, tables.md and .lock
  into runs/cnn itself."""
  torch = pytest.importorskip("torch")
  from benchmarks import torch_baselines
  torch.manual_seed(0)
  (tmp_path / "ckpt").mkdir()
  torch.save(torch_baselines.TorchCNN(batch_norm=False).state_dict(), tmp_path / "ckpt" / "...pt")
  proc = run_cli("experiments.cnn", "--from_torch=ckpt/...pt",
                 f"--data_path={inputs / 'tiny.npz'}", cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert os.listdir(tmp_path / "runs" / "cnn") == ["from_torch"]
  (run,) = (tmp_path / "runs" / "cnn" / "from_torch").iterdir()
  assert {"summary.json", "tables.md", "config.json"} <= set(os.listdir(run))


# -- item 8: metrics.jsonl lines that are JSON but no epoch's record -------------------------------

NOT_RECORDS = ["5", "[1]", '{"epoch": "7"}', "null", '"epoch"', '{"epoch": true}',
               '{"epoch": 0}', '{"train_loss": 1.0}', '{"epoch": 2, "train_loss": "low"}',
               '{"epoch": 2, "val_loss": [1]}']


@pytest.mark.parametrize("line", NOT_RECORDS)
@pytest.mark.parametrize("last", [False, True], ids=["middle", "last"])
def test_a_metrics_line_that_is_no_epoch_record_is_damage_named_by_line(tmp_path, line, last):
  lines = ['{"epoch": 1, "train_loss": 1.5, "diverged": false, "val_loss": null}', line]
  if not last:
    lines.append('{"epoch": 3, "train_loss": 1.0}')
  (tmp_path / runlog.METRICS).write_text("\n".join(lines) + "\n")
  with pytest.raises(UserError, match=r"metrics\.jsonl:2 is damaged .*--fresh") as e:
    runlog.read_metrics(tmp_path)
  assert "\n" not in str(e.value)


@pytest.mark.slow
@pytest.mark.parametrize("line", ["5", "[1]", '{"epoch": "7"}'])
def test_resuming_over_a_metrics_line_that_is_no_record_is_one_line(tmp_path, inputs, trained,
                                                                     line):
  shutil.copytree(trained["cnn"], tmp_path / "W", symlinks=True)
  with open(tmp_path / "W" / runlog.METRICS, "a") as f:
    f.write(line + "\n")
  proc = run_cli(*command("cnn", inputs, "--epochs=2"), cwd=tmp_path)
  assert_clean_failure(proc, "W/metrics.jsonl:2 is damaged", "--fresh")


# -- item 14: a folder where a run file goes -------------------------------------------------------

# (hopfield moves a previous run's files, a folder too, to archive/ before it writes.)
FOLDERS = [("cnn", "summary.json"), ("p2g", "summary.json"), ("report", "REPORT.md"),
           ("report", "report.json")]


@pytest.mark.slow
@pytest.mark.parametrize("cli,name", FOLDERS, ids=[f"{c}-{n}" for c, n in FOLDERS])
def test_a_folder_where_a_run_file_goes_is_named_not_its_temp_file(tmp_path, inputs, cli, name):
  (tmp_path / "W" / name).mkdir(parents=True)
  proc = run_cli(*command(cli, inputs), cwd=tmp_path)
  assert_clean_failure(proc, f"Is a directory: W/{name}")
  assert ".tmp-" not in proc.stderr
  assert not [p for p in (tmp_path / "W").iterdir() if ".tmp-" in p.name]


def test_a_write_over_a_folder_names_the_file(tmp_path):
  (tmp_path / "summary.json").mkdir()
  with pytest.raises(IsADirectoryError) as e:
    files.write_json(tmp_path / "summary.json", {"epochs_done": 1})
  assert e.value.filename == str(tmp_path / "summary.json")
  assert os.listdir(tmp_path) == ["summary.json"]


# -- the report: damaged files of its own, data replaced in place, a JAX that cannot start ----


@pytest.fixture(scope="module")
def q1_report(tmp_path_factory, inputs) -> Path:
  """A finished quick Q1 report on the tiny npz (copied into each test that changes it)."""
  root = tmp_path_factory.mktemp("q1_report")
  proc = run_cli("experiments.report", *REPORT, f"--intel_data_path={inputs / 'tiny.npz'}",
                 "--workdir=R", cwd=root)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return root


@pytest.mark.slow
@pytest.mark.parametrize("name, content, fragment", [
    ("report.json", "[1, 2]", "R/report.json is damaged ('list' object has no attribute"),
    ("report.json", "numbers as strings", "R/report.json is damaged ("),
    ("report_config.json", '{"quick": 5}', "R/report_config.json is damaged (its 'quick' is not "
                                           "true or false)"),
])
def test_a_reports_own_file_of_another_shape_is_one_line(tmp_path, inputs, q1_report, name,
                                                         content, fragment):
  root = shutil.copytree(q1_report, tmp_path / "r")
  path = root / "R" / name
  if content == "numbers as strings":
    def strings(x):
      if isinstance(x, dict):
        return {k: strings(v) for k, v in x.items()}
      if isinstance(x, list):
        return [strings(v) for v in x]
      return str(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else x
    content = json.dumps(strings(json.loads(path.read_text())))
  path.write_text(content)
  before = checksums(root / "R")
  proc = run_cli("experiments.report", *REPORT, f"--intel_data_path={inputs / 'tiny.npz'}",
                 "--workdir=R", cwd=root)
  assert_clean_failure(proc, fragment, "--fresh")
  assert checksums(root / "R") == before


@pytest.mark.slow
def test_data_replaced_in_place_is_refused_for_the_whole_report_and_nothing_is_archived(
    tmp_path, inputs):
  """The npz replaced at the same path: the finished Q1 is not redone on the new data (its old
  outputs archived) before Q2 would refuse it; the report refuses at once, naming the data."""
  root = tmp_path
  shutil.copy(inputs / "tiny.npz", root / "tiny.npz")
  first = run_cli("experiments.report", *REPORT, "--intel_data_path=tiny.npz", "--workdir=R",
                  cwd=root)
  assert first.returncode == 0, first.stderr[-2000:]
  write_npz(root / "tiny.npz", n_train=24, n_val=6, n_test=6, seed=7)     # other images
  before = checksums(root / "R")
  proc = run_cli("experiments.report", "--parts=q1,q2", "--quick", "--intel_data_path=tiny.npz",
                 "--workdir=R", cwd=root)
  assert_clean_failure(proc, "holds a finished Q1", "intel_fingerprint")
  assert checksums(root / "R") == before and not (root / "R" / "archive").exists()


@pytest.mark.slow
@pytest.mark.parametrize("cli", ["hopfield", "report"])
def test_a_cli_whose_jax_cannot_start_leaves_no_workdir(tmp_path, inputs, cli):
  """BUILD.md: nothing is touched when JAX cannot start its backend; the folders the run would
  have made are not left behind empty."""
  proc = subprocess.run([sys.executable, "-m", f"experiments.{cli}",
                         *command(cli, inputs)[1:-1], "--workdir=new/W"], cwd=tmp_path,
                        env={**cli_env(tmp_path), "JAX_PLATFORMS": "tpu"}, capture_output=True,
                        text=True, timeout=300)
  assert_clean_failure(proc, "JAX_PLATFORMS=tpu: no such platform here")
  assert not (tmp_path / "new").exists()


# -- sweeps: every rate's folder checked first; never nested in a single run's folder ----------


@pytest.mark.slow
def test_a_sweep_checks_every_rates_folder_before_it_trains_the_first(tmp_path, inputs):
  """lr 0.01's folder holds a run on other data: the sweep refuses before training lr 0.1."""
  write_npz(tmp_path / "other.npz", n_train=24, n_val=6, n_test=6, seed=5)
  first = run_cli("experiments.cnn", f"--data_path={inputs / 'tiny.npz'}", *CNN,
                  "--workdir=S/lr_0.01", cwd=tmp_path)
  assert first.returncode == 0, first.stderr[-2000:]
  proc = run_cli("experiments.cnn", "--data_path=other.npz", *CNN, "--lr=0.1,0.01",
                 "--workdir=S", cwd=tmp_path)
  assert_clean_failure(proc, "S/lr_0.01 holds a run made from other settings or data")
  assert sorted(p.name for p in (tmp_path / "S").iterdir()) == ["lr_0.01"]


@pytest.mark.slow
def test_a_sweep_into_a_single_runs_folder_is_refused(tmp_path, inputs):
  first = run_cli("experiments.cnn", f"--data_path={inputs / 'tiny.npz'}", *CNN, "--workdir=W",
                  cwd=tmp_path)
  assert first.returncode == 0, first.stderr[-2000:]
  before = checksums(tmp_path / "W")
  proc = run_cli("experiments.cnn", f"--data_path={inputs / 'tiny.npz'}", *CNN,
                 "--lr=0.1,0.01", "--workdir=W", cwd=tmp_path)
  assert_clean_failure(proc, "W holds a single run (its checkpoints/)")
  assert checksums(tmp_path / "W") == before
