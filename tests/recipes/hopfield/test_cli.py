"""experiments.hopfield end to end in subprocesses: the check table, figures, fallback, errors."""

import importlib.util
import json

import numpy as np
import pytest

from helpers import assert_clean_failure, run_cli, write_npz

pytestmark = pytest.mark.slow

TINY = ["--num_patterns=6", "--num_show=2", "--betas=0.0003,0.03", "--steps=3", "--max_steps=20",
        "--capacity_dims=4,8", "--capacity_dim=8", "--capacity_betas=0.5,2",
        "--capacity_max_patterns=8", "--capacity_queries=8"]


def test_check_prints_the_table_of_claims_without_any_data(tmp_path):
  proc = run_cli("experiments.hopfield", "--check", cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr
  table = [line for line in proc.stdout.splitlines() if line.startswith(("Q1.", "control"))]
  assert len(table) == 8 and all(line.endswith("yes") for line in table), proc.stdout
  out = tmp_path / "runs/hopfield"
  summary = json.loads((out / "summary.json").read_text())
  assert summary["check"]["all_ok"] and set(summary) >= {"check", "config", "device"}
  assert "retrieval" not in summary and (out / "check.md").read_text().count("yes") == 8


def test_retrieval_and_capacity_figures_without_data(tmp_path):
  first = run_cli("experiments.hopfield", "--parts=retrieval,capacity", "--workdir=out", *TINY,
                  cwd=tmp_path)
  assert first.returncode == 0, first.stderr
  assert "no Intel data found" in first.stdout and "recall" in first.stdout
  out = tmp_path / "out"
  for name in ("summary.json", "retrieval_mask.png", "retrieval_noise.png", "energy.png",
               "capacity.png"):
    assert (out / name).is_file(), name
  summary = json.loads((out / "summary.json").read_text())
  retrieval = summary["retrieval"]
  assert retrieval["source"].startswith("random") and retrieval["dim"] == 48 * 48 * 3
  for kind in ("mask", "noise"):
    assert retrieval["results"][kind]["0.03"]["recall_rate"] == 1.0
    assert retrieval["results"][kind]["0.0003"]["recall_rate"] == 0.0     # metastable average
    for r in retrieval["results"][kind].values():
      assert r["energy_max_relative_increase"] <= 1e-5
  capacity = summary["capacity"]
  assert capacity["num_patterns"] == [2, 4, 8] and capacity["dims"] == [4, 8]
  assert set(capacity["per_beta"]) == {"0.5", "2"}


def test_retrieval_stores_training_images_of_a_file_q2_would_refuse(tmp_path):
  """The course sample's test split holds one class, so Q2 refuses it; retrieval reads only its
  training images and runs."""
  write_npz(tmp_path / "sample.npz", test_labels=np.zeros(24, np.int64))
  proc = run_cli("experiments.hopfield", "--parts=retrieval", "--data_path=sample.npz",
                 "--workdir=out", *TINY, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr
  assert json.loads((tmp_path / "out/summary.json").read_text())["retrieval"]["source"] == \
      "6 intel train images from npz sample.npz"


@pytest.mark.parametrize("args, fragments", [
    (["--betas=0.1,abc"], ["--betas=0.1,abc must be numbers", "e.g. --betas=0.1,0.01"]),
    (["--parts=check,plots"], ["--parts=check,plots"]),
    (["--parts=retrieval", "--data_path=missing.npz"], ["missing.npz does not exist"]),
    (["--parts=retrieval", "--patterns=intel"], ["no Intel image data found"]),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, fragments):
  proc = run_cli("experiments.hopfield", "--workdir=out", *args, cwd=tmp_path)
  assert_clean_failure(proc, *fragments)
  assert not (tmp_path / "out" / "summary.json").exists()


def test_speed_benchmark_runs_and_compares_with_pytorch(tmp_path):
  torch_flag = "--torch" if importlib.util.find_spec("torch") else "--notorch"
  proc = run_cli("benchmarks.hopfield_speed", "--n=64", "--d=8", "--queries=4", "--steps=2",
                 "--repeats=1", "--peak_gbps=10", "--out=bench.jsonl", torch_flag, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr
  result = json.loads((tmp_path / "bench.jsonl").read_text())
  assert result["bytes_compulsory"] == (2 * 64 * 8 + 2 * 4 * 8) * 4
  assert result["bytes_unfused"] == result["bytes_compulsory"] + 4 * 4 * 64 * 4
  for r in result["variants"].values():
    assert r["max_abs_difference_to_first"] < 1e-4 and r["queries_steps_per_second"] > 0
  if torch_flag == "--torch":
    assert "JAX is" in proc.stdout and len(result["variants"]) == 4
