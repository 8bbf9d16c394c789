"""The speed benchmarks' --profile writes per-op tables of both frameworks, named by layer."""

import pytest

from helpers import run_cli

pytest.importorskip("torch")


@pytest.mark.slow
def test_cnn_speed_profile_names_the_kernels_of_both_frameworks(tmp_path):
  proc = run_cli("benchmarks.cnn_speed", "--n_images=16", "--repeats=1", "--models=vanilla",
                 "--profile=prof", cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr
  assert "threads: XLA" in proc.stdout and "PyTorch" in proc.stdout
  jax_table = (tmp_path / "prof/vanilla_jax_ops.txt").read_text()
  torch_table = (tmp_path / "prof/vanilla_torch_ops.txt").read_text()
  assert "ms/step over 2 steps" in jax_table and "ms/step over 2 steps" in torch_table
  assert "fc0" in jax_table and "convolution" in jax_table     # kernels named from the HLO
  assert "aten::" in torch_table


def test_benchmarks_refuse_zero_repeats(tmp_path):
  proc = run_cli("benchmarks.cnn_speed", "--repeats=0", "--torch=false", cwd=tmp_path)
  assert proc.returncode == 2 and "--repeats" in proc.stderr
  assert "Traceback" not in proc.stderr
