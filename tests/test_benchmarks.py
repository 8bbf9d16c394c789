"""The benchmarks run, and their PyTorch baselines are the same architectures as ours."""

import json

import pytest

from helpers import run_cli

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("batch_norm, expected", [(False, 5_340_742), (True, 755_718)])
def test_torch_cnn_has_the_same_parameter_count(batch_norm, expected):
  from benchmarks import torch_baselines
  assert torch_baselines.count_params(torch_baselines.TorchCNN(batch_norm=batch_norm)) == expected


@pytest.mark.slow
def test_cnn_speed_benchmark_runs_and_reports_a_ratio(tmp_path):
  out = tmp_path / "cnn.jsonl"
  proc = run_cli("benchmarks.cnn_speed", "--n_images=24", "--epochs=1", "--models=bn_gap",
                 f"--out={out}", cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr
  assert "JAX is" in proc.stdout
  result = json.loads(out.read_text())
  assert result["model"] == "bn_gap" and result["n_images"] == 24
  assert result["jax_epoch_s"] > 0 and result["torch_epoch_s"] > 0
  assert result["speedup"] == pytest.approx(result["torch_epoch_s"] / result["jax_epoch_s"])
