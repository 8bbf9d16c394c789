"""Issue 28's own adversarial pass: runs that meet another run's files. A training CLI in a
folder that holds experiments.hopfield's results (and the reverse) overwrote or archived the
other run's summary; the report reused a Q1 summary it had not written and rendered a hand-edited
report.json into REPORT.md; a rerun asking fewer epochs than trained relabelled the run. Each
case runs the CLIs as a user would and asserts on the files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helpers import (TINY_CLI_FLAGS, assert_clean_failure, checksums, run_cli,
                     write_tiny_inputs)

@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
  return write_tiny_inputs(tmp_path_factory.mktemp("inputs"))


def command(cli: str, inputs: Path, *extra: str) -> tuple[str, ...]:
  """A tiny run of `cli` into W (the report's Q1 on the tiny images)."""
  data = {"cnn": (f"--data_path={inputs / 'tiny.npz'}",), "p2g": (f"--data_path={inputs / 'p2g'}",),
          "report": (f"--intel_data_path={inputs / 'tiny.npz'}",)}.get(cli, ())
  return (f"experiments.{cli}", *data, *TINY_CLI_FLAGS[cli], "--workdir=W", *extra)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, inputs) -> dict[str, Path]:
  """A finished workdir of each CLI (copied by the cases, never changed)."""
  runs = {}
  for cli in ("cnn", "p2g", "hopfield", "report"):
    cwd = tmp_path_factory.mktemp(f"finished-{cli}")
    proc = run_cli(*command(cli, inputs), cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs[cli] = cwd / "W"
  return runs


@pytest.mark.slow
@pytest.mark.parametrize("cli", ["cnn", "p2g"])
def test_a_training_run_refuses_a_folder_holding_hopfields_results(tmp_path, inputs, finished,
                                                                    cli):
  shutil.copytree(finished["hopfield"], tmp_path / "W")
  before = checksums(tmp_path / "W")
  proc = run_cli(*command(cli, inputs), cwd=tmp_path)
  assert_clean_failure(proc, "holds the summary.json of another kind of run", "--workdir")
  assert checksums(tmp_path / "W") == before


@pytest.mark.slow
def test_from_torch_into_hopfields_folder_writes_nothing_there(tmp_path, inputs, finished):
  torch = pytest.importorskip("torch")
  from benchmarks import torch_baselines
  torch.manual_seed(0)
  torch.save(torch_baselines.TorchCNN(batch_norm=False).state_dict(), tmp_path / "w.pt")
  shutil.copytree(finished["hopfield"], tmp_path / "W")
  before = checksums(tmp_path / "W")
  proc = run_cli("experiments.cnn", f"--data_path={inputs / 'tiny.npz'}",
                 f"--from_torch={tmp_path / 'w.pt'}", "--workdir=W", cwd=tmp_path)
  assert_clean_failure(proc, "holds the summary.json of another kind of run")
  assert checksums(tmp_path / "W") == before


@pytest.mark.slow
@pytest.mark.parametrize("cli", ["cnn", "p2g"])
def test_hopfield_refuses_a_training_runs_folder(tmp_path, finished, cli):
  shutil.copytree(finished[cli], tmp_path / "W")
  before = checksums(tmp_path / "W")
  proc = run_cli(*command("hopfield", tmp_path), cwd=tmp_path)
  assert_clean_failure(proc, "holds a training run (checkpoints, config.json)",
                       "experiments.hopfield writes into a folder of its own")
  assert checksums(tmp_path / "W") == before


@pytest.mark.slow
@pytest.mark.parametrize("how", ["edited", "not a record", "another run's"])
def test_the_report_reuses_only_the_q1_summary_it_wrote(tmp_path, inputs, finished, how):
  shutil.copytree(finished["report"], tmp_path / "W")
  summary = tmp_path / "W" / "q1" / "summary.json"
  if how == "edited":
    data = json.loads(summary.read_text())
    data["check"]["rows"][0]["value"] = 0.5
    summary.write_text(json.dumps(data))
  elif how == "not a record":
    summary.write_text("[]")
  else:   # experiments.hopfield run into the report's q1 with other settings
    proc = run_cli("experiments.hopfield", "--check", "--check_trials=2", "--workdir=W/q1",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
  planted = summary.read_bytes()
  proc = run_cli(*command("report", inputs), cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Q1: reusing the finished run" not in proc.stdout
  assert summary.read_bytes() != planted
  archived = list((tmp_path / "W" / "q1" / "archive").glob("*/summary.json"))
  assert planted in [p.read_bytes() for p in archived]     # kept, not lost
  again = run_cli(*command("report", inputs), cwd=tmp_path)       # its own: reused
  assert "Q1: reusing the finished run" in again.stdout, again.stdout[-2000:]


@pytest.mark.slow
def test_an_edited_report_json_is_refused_not_rendered(tmp_path, inputs, finished):
  shutil.copytree(finished["report"], tmp_path / "W")
  path = tmp_path / "W" / "report.json"
  data = json.loads(path.read_text())
  data["q1"]["summary"]["config"]["seed"] = 7
  path.write_text(json.dumps(data))
  before = checksums(tmp_path / "W")
  proc = run_cli(*command("report", inputs), cwd=tmp_path)
  assert_clean_failure(proc, "report.json was changed after the report wrote it", "--fresh")
  assert checksums(tmp_path / "W") == before


@pytest.mark.slow
def test_a_rerun_asking_fewer_epochs_than_trained_is_refused(tmp_path, inputs, finished):
  """Its summary would record --epochs=1 beside two trained epochs (and a report's table with a
  1-epoch caption would show a 2-epoch run)."""
  shutil.copytree(finished["cnn"], tmp_path / "W")
  proc = run_cli(*command("cnn", inputs, "--epochs=2"), cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-2000:]
  before = checksums(tmp_path / "W")
  proc = run_cli(*command("cnn", inputs, "--epochs=1"), cwd=tmp_path)
  assert_clean_failure(proc, "holds 2 trained epochs, more than the --epochs=1 asked for",
                       "--epochs=2")
  assert checksums(tmp_path / "W") == before


@pytest.mark.slow
def test_a_rerun_with_other_decoding_archives_the_previous_evaluation(tmp_path, inputs,
                                                                      finished):
  """A finished P2G run rerun with --beam=2: the evaluation without beams (its tables, summary
  and predictions) moves to archive/, not overwritten; the same options again archive nothing."""
  shutil.copytree(finished["p2g"], tmp_path / "W")
  names = ("summary.json", "tables.md", "test_predictions.tsv")
  before = {n: (tmp_path / "W" / n).read_bytes() for n in names}
  proc = run_cli(*command("p2g", inputs, "--beam=2"), cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "the test set was decoded with other options before" in proc.stdout
  (archive,) = (tmp_path / "W" / "archive").iterdir()
  assert {n: (archive / n).read_bytes() for n in names} == before
  assert "beam 2" in (tmp_path / "W" / "tables.md").read_text()
  again = run_cli(*command("p2g", inputs, "--beam=2"), cwd=tmp_path)
  assert again.returncode == 0 and len(list((tmp_path / "W" / "archive").iterdir())) == 1


@pytest.mark.parametrize("flag, value", [("beam", 2 ** 40), ("k", 2 ** 40), ("beam", 65),
                                         ("k", 0)])
def test_decoding_sizes_beyond_the_bounds_are_refused(flag, value):
  from hw2jax.errors import UserError
  from hw2jax.recipes import p2g_evaluation
  with pytest.raises(UserError, match=f"--{flag}={value} must be in "):
    p2g_evaluation.Decoding(top_p=0.8, **{flag: value}).validate()
