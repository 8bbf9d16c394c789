"""The benchmarks run, and their PyTorch baselines are the same architectures as ours."""

import json
import re

import pytest

from helpers import run_cli, write_npz, write_p2g_folder

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("batch_norm, expected", [(False, 5_340_742), (True, 755_718)])
def test_torch_cnn_has_the_same_parameter_count(batch_norm, expected):
  from benchmarks import torch_baselines
  assert torch_baselines.count_params(torch_baselines.TorchCNN(batch_norm=batch_norm)) == expected


@pytest.mark.parametrize("attention, expected", [(False, 257_117), (True, 322_781)])
def test_torch_seq2seq_has_the_course_parameter_count(attention, expected):
  from benchmarks import torch_baselines
  model = torch_baselines.Seq2Seq(107, 93, attention)     # the course's vocabulary sizes
  assert torch_baselines.count_params(model) == expected
  assert model.generator.weight is model.decoder.embedding.weight


@pytest.mark.slow
def test_cnn_speed_benchmark_runs_and_reports_a_ratio(tmp_path):
  out = tmp_path / "cnn.jsonl"
  proc = run_cli("benchmarks.cnn_speed", "--n_images=24", "--repeats=1", "--models=bn_gap",
                 f"--out={out}", cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr
  said = re.search(r"JAX is (\d+\.\d\d)x (faster|slower) than PyTorch", proc.stdout)
  assert said or "JAX is as fast as PyTorch" in proc.stdout, proc.stdout
  result = json.loads(out.read_text())
  assert result["model"] == "bn_gap" and result["n_images"] == 24
  assert result["jax_epoch_s"] > 0 and result["torch_epoch_s"] > 0
  assert result["speedup"] == pytest.approx(result["torch_epoch_s"] / result["jax_epoch_s"])
  assert result["epoch_flops"] > 0 and result["jax_matmul_gflops"] > 0
  assert re.search(r"JAX \d+\.\d GFLOP/s \(\d+% of its \d+ GFLOP/s matmul\); PyTorch "
                   r"\d+\.\d GFLOP/s", proc.stdout), proc.stdout
  if said:
    ratio = result["speedup"] if said.group(2) == "faster" else 1 / result["speedup"]
    assert float(said.group(1)) == pytest.approx(ratio, abs=0.006) and ratio > 1


def test_speed_ratios_say_slower_when_jax_is_slower():
  from benchmarks import ratios
  assert ratios.jax_versus(1.0, 1.18) == "JAX is 1.18x faster than PyTorch"
  assert ratios.jax_versus(1.18, 1.0) == "JAX is 1.18x slower than PyTorch"
  assert ratios.jax_versus(1.0, 1.001) == "JAX is as fast as PyTorch"
  assert ratios.jax_versus(2.0, 30.0, other="torch loop", digits=1) == (
      "JAX is 15.0x faster than torch loop")


@pytest.mark.slow
def test_torch_p2g_training_runs_an_epoch_and_saves_weights_hw2jax_reads(tmp_path):
  from benchmarks import torch_baselines
  from hw2jax.data import phonemes
  from hw2jax.models import seq2seq, torch_port
  data = write_p2g_folder(tmp_path / "p2g", n_train=48, n_valid=12, n_test=12)
  out, saved = tmp_path / "torch_p2g.json", tmp_path / "best.pt"
  proc = run_cli("benchmarks.torch_p2g_train", f"--data_path={data}", "--epochs=1",
                 "--attention", "--threads=1", f"--out={out}", f"--save={saved}", cwd=tmp_path,
                 timeout=120)
  assert proc.returncode == 0, proc.stderr
  result = json.loads(out.read_text())
  assert result["train_pairs"] == 48 and result["best_epoch"] == 1
  assert set(result["test"]) == {"greedy", "nucleus"}
  assert 0 <= result["test"]["nucleus"]["wer_at_k"] <= result["test"]["nucleus"]["wer"] <= 1
  # The saved state_dict is the course's: it loads strictly, and into hw2jax's sorted vocabulary.
  pairs = phonemes.load_tsv_folder(data).train
  course = phonemes.course_vocabs(pairs)
  state = torch.load(saved)
  net = torch_baselines.Seq2Seq(len(course[0]), len(course[1]), attention=True)
  net.load_state_dict(state, strict=True)
  ours = phonemes.P2GData(pairs, [], [], source="")
  orders = [torch_port.SymbolOrder(c.symbols, s.symbols)
            for c, s in zip(course, (ours.src_vocab, ours.tgt_vocab))]
  model = seq2seq.Seq2Seq(len(course[0]), len(course[1]), attention=True)
  params = torch_port.seq2seq_from_torch(model, {k: v.numpy() for k, v in state.items()}, *orders)
  assert params["tgt_embed"]["embedding"].shape == (len(course[1]), 128)


def test_the_torch_course_tensor_is_the_skeletons_flatten_divide_and_reshape():
  from benchmarks import torch_cnn_train
  import numpy as np
  images = np.random.default_rng(1).integers(0, 256, (2, 48, 48, 3), dtype=np.uint8)
  skeleton = (images.reshape(2, -1) / 256).reshape(-1, 3, 48, 48)
  np.testing.assert_allclose(torch_cnn_train.course_tensor(images).numpy(), skeleton)
  np.testing.assert_allclose(torch_cnn_train.correct_tensor(images).numpy(),
                             images.transpose(0, 3, 1, 2) / 256)


@pytest.mark.slow
def test_torch_cnn_training_with_course_pixels_scores_the_same_in_hw2jax(tmp_path):
  """The course loop's weights, evaluated by hw2jax with --pixels=course, give the accuracy
  PyTorch measured: both read the images the skeleton's way."""
  from hw2jax.data import sources
  from hw2jax.recipes import cnn, torch_checkpoints
  data_path = write_npz(tmp_path / "tiny.npz", n_train=24, n_val=12, n_test=12)
  out, saved = tmp_path / "vanilla.json", tmp_path / "vanilla.pt"
  args = ["benchmarks.torch_cnn_train", f"--data_path={data_path}", "--epochs=1",
          "--pixels=course", f"--out={out}"]
  proc = run_cli(*args, f"--save={saved}", cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr
  result = json.loads(out.read_text())
  assert result["status"] == "completed" and result["pixels"] == "course"
  assert result["sizes"] == {"train": 24, "val": 12, "test": 12}
  again = run_cli(*args, cwd=tmp_path)
  assert again.returncode == 2 and "never overwrites" in again.stderr
  checkpoint, state_dict = torch_checkpoints.read_checkpoint(str(saved))
  data = sources.load_intel(data_path, log=lambda line: None)
  scored = torch_checkpoints.evaluate_cnn(
      checkpoint, state_dict, cnn.Config(pixels="course"), data, tmp_path / "eval",
      log=lambda line: None)
  assert scored.pixels == "course"
  assert scored.val.accuracy == pytest.approx(result["final_val_accuracy"], abs=1e-6)
  assert scored.test.accuracy == pytest.approx(result["final_test_accuracy"], abs=1e-6)
  assert scored.val.loss == pytest.approx(result["history"][-1]["val_loss"], rel=1e-4)
