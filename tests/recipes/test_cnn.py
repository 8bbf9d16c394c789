"""experiments.cnn end to end in subprocesses: outputs, resume, sweep, --fresh, bad input."""

import json
import shutil

import numpy as np
import pytest

from helpers import (assert_clean_failure, checksums, cnn_summary, learnable_images, run_cli,
                      trained_files, write_kaggle_folder, write_npz)
from hw2jax.errors import UserError
from hw2jax.recipes import cnn, cnn_tables, sweep

pytestmark = pytest.mark.slow


def lines(path):
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def life(tmp_path_factory):
  """One workdir through the life of a run, each step a CLI call: 2 epochs, the same command
  with --epochs=3, other settings, then those settings with --fresh. Returns the folder and,
  per step, (the process, the files as they were right after it)."""
  root = tmp_path_factory.mktemp("life")
  data = write_npz(root / "tiny.npz", n_train=40, n_val=12, n_test=12)
  args = [f"--data_path={data}", "--workdir=run", "--batch_size=8"]
  other = ["--epochs=3", "--lr=0.1", "--pixels=course"]
  steps = {}
  for name, extra in (("first", ["--epochs=2"]), ("resumed", ["--epochs=3"]),
                      ("other settings", other), ("fresh", [*other[1:], "--epochs=1", "--fresh"])):
    proc = run_cli("experiments.cnn", *args, *extra, cwd=root)
    steps[name] = (proc, checksums(root / "run"), lines(root / "run" / "metrics.jsonl"),
                   json.loads((root / "run" / "summary.json").read_text()))
  return root / "run", steps


@pytest.mark.xdist_group("cnn_life")     # one worker runs the `life` fixture once
def test_a_run_writes_its_metrics_summary_curves_settings_and_a_checkpoint_per_epoch(life):
  run, steps = life
  proc, files, metrics, summary = steps["first"]
  assert proc.returncode == 0, proc.stderr
  assert {"metrics.jsonl", "summary.json", "curves.png", "config.json"} <= set(files)
  assert {f.split("/")[1] for f in files if f.startswith("checkpoints/")} == {"1", "2"}
  assert [r["epoch"] for r in metrics] == [1, 2]
  assert summary["trainable_params"] == 5_340_742
  assert summary["status"] == "completed" and summary["epochs_done"] == 2
  assert 0.0 <= summary["final"]["test_accuracy"] <= 1.0
  assert summary["seed_report"] == {"test_accuracy": 0.6907, "val_accuracy": 0.7123}
  assert summary["train_seconds_total"] >= summary["train_seconds_this_call"] > 0
  # What the terminal shows: the model's size, and a progress line with an ETA per epoch.
  assert "5,340,742 trainable parameters" in proc.stdout and "ETA" in proc.stdout


@pytest.mark.xdist_group("cnn_life")     # one worker runs the `life` fixture once
def test_the_same_command_with_more_epochs_trains_only_the_new_ones(life):
  run, steps = life
  proc, files, metrics, summary = steps["resumed"]
  assert proc.returncode == 0, proc.stderr
  assert metrics[:2] == steps["first"][2] and [r["epoch"] for r in metrics] == [1, 2, 3]
  assert summary["epochs_done"] == 3
  assert summary["train_seconds_total"] > summary["train_seconds_this_call"]
  assert "resuming from the checkpoint of epoch 2" in proc.stdout


@pytest.mark.xdist_group("cnn_life")     # one worker runs the `life` fixture once
def test_other_settings_on_a_finished_run_are_one_line_and_change_nothing(life):
  run, steps = life
  proc, files, _, _ = steps["other settings"]
  assert_clean_failure(proc, "learning_rate=0.01 (now 0.1); pixels='correct' (now 'course')",
                       "For a separate run use --workdir=<another folder>; to replace that "
                       "run, --fresh")
  assert files == steps["resumed"][1]


@pytest.mark.xdist_group("cnn_life")     # one worker runs the `life` fixture once
def test_fresh_archives_the_finished_run_and_trains_the_new_settings(life):
  run, steps = life
  proc, files, metrics, summary = steps["fresh"]
  assert proc.returncode == 0, proc.stderr
  (archived,) = list((run / "archive").iterdir())
  assert lines(archived / "metrics.jsonl") == steps["resumed"][2]
  assert [r["epoch"] for r in metrics] == [1]
  assert summary["config"]["pixels"] == "course" and summary["config"]["learning_rate"] == 0.1
  assert "vanilla lr=0.1, course pixels: completed" in proc.stdout


def test_learning_rate_sweep_writes_table_and_one_figure_per_rate(tmp_path):
  data = write_npz(tmp_path / "tiny.npz", n_train=24, n_val=12, n_test=12)
  proc = run_cli("experiments.cnn", f"--data_path={data}", "--workdir=sweep", "--model=bn_gap",
                 "--lr=0.01,0.05", "--epochs=1", "--channels=8,16,32", cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr
  sweep = tmp_path / "sweep"
  table = (sweep / "table_2_1.md").read_text()
  assert table.count("| BN+GAP |") == 2 and "0.7440" in table      # the seed's BN+GAP number
  for lr in ("0.01", "0.05"):
    assert (sweep / f"lr_{lr}" / "curves.png").is_file()
    assert (sweep / f"lr_{lr}" / "summary.json").is_file()
  assert len(json.loads((sweep / "sweep.json").read_text())) == 2


def test_the_readmes_q2_sequence_trains_each_configuration_once(tmp_path):
  """--lr=0.01, then the sweep --lr=0.1,0.01,0.001, then BN+GAP: four configurations, four
  trainings (the sweep finds lr 0.01 finished in the folder the single run used: its metrics
  and checkpoints stay as they are)."""
  data = write_npz(tmp_path / "tiny.npz", n_train=24, n_val=12, n_test=12)
  common = [f"--data_path={data}", "--epochs=1", "--channels=8,16,32"]
  runs = tmp_path / "runs" / "cnn"
  single = run_cli("experiments.cnn", *common, "--lr=0.01", cwd=tmp_path)
  assert single.returncode == 0, single.stderr
  trained = lambda: trained_files(checksums(runs / "vanilla-lr0.01-ch8_16_32"))
  trained_once = trained()
  sweep = run_cli("experiments.cnn", *common, "--lr=0.1,0.01,0.001", cwd=tmp_path)
  bn_gap = run_cli("experiments.cnn", *common, "--model=bn_gap", "--lr=0.01", cwd=tmp_path)
  for proc in (sweep, bn_gap):
    assert proc.returncode == 0, proc.stderr
  assert trained() == trained_once
  assert "1 of 1 epochs already trained in runs/cnn/vanilla-lr0.01-ch8_16_32" in sweep.stdout
  assert sorted(p.name for p in runs.iterdir()) == [
      "bn_gap-lr0.01-ch8_16_32", "vanilla-lr0.001-ch8_16_32", "vanilla-lr0.01-ch8_16_32",
      "vanilla-lr0.1-ch8_16_32", "vanilla-sweep-ch8_16_32"]
  for run in ("bn_gap-lr0.01", "vanilla-lr0.001", "vanilla-lr0.1"):
    assert len(lines(runs / f"{run}-ch8_16_32" / "metrics.jsonl")) == 1, run
  table = (runs / "vanilla-sweep-ch8_16_32" / "table_2_1.md").read_text()
  links = [part.split(")")[0] for part in table.split("[curves](")[1:]]
  assert links == [f"../vanilla-lr{lr}-ch8_16_32/curves.png" for lr in ("0.1", "0.01", "0.001")]
  assert all((runs / "vanilla-sweep-ch8_16_32" / link).is_file() for link in links)


LOWERED = "/jax/core/compile/jaxpr_to_mlir_module_duration"     # once per program compiled


def test_each_learning_rate_compiles_once(tmp_path):
  """A sweep's second rate compiles no program: it reuses the first one's model, optimizer and
  init, because `cnn._model`, `optimizer._optimizer` and `trainer._jitted_init` hand back equal
  objects, on which jit keys its programs (without any one of them: 5, 5 and 1 programs)."""
  import jax
  from hw2jax.data import sources
  lowered, starts = [], []

  def listen(event, seconds, **_):
    if event == LOWERED:
      lowered.append(seconds)

  data = sources.load_intel(write_npz(tmp_path / "tiny.npz", n_train=24, n_val=12, n_test=12))
  config = cnn.Config(channels=(3, 6, 9), epochs=1)     # widths no other test compiles
  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    sweep.sweep(config, [0.01, 0.02], data, tmp_path / "sweep",
                log=lambda line: starts.append(len(lowered)) if line.startswith("== ") else None)
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)
  first, second = starts[1] - starts[0], len(lowered) - starts[1]
  assert first > 0 and second == 0, (first, second)


def test_sweep_run_dirs_are_the_single_runs_folders_and_distinct():
  config = cnn.Config(model="bn_gap", kernel_size=5)
  dirs = sweep.run_dirs(config, [0.1, 0.01], None)
  assert {lr: p.as_posix() for lr, p in dirs.items()} == {
      0.1: "runs/cnn/bn_gap-lr0.1-k5", 0.01: "runs/cnn/bn_gap-lr0.01-k5"}
  assert sweep.run_dirs(config, [0.1], "mine")[0.1].as_posix() == "mine/lr_0.1"
  for workdir in (None, "mine"):
    with pytest.raises(UserError, match="0.0001 and 0.00010000001 both name the folder"):
      sweep.run_dirs(config, [0.0001, 0.00010000001], workdir)


def test_the_printed_parameter_count_is_table_2_3s_for_the_course_model_on_intel_data(tmp_path):
  write_npz(tmp_path / "tiny.npz", n_train=24, n_val=12, n_test=12)
  proc = run_cli("experiments.cnn", "--model=bn_gap", "--data_path=tiny.npz", "--epochs=1",
                 "--notensorboard", cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr
  assert "\nbn_gap: 755,718 trainable parameters (Table 2.3)\n" in proc.stdout


def _bad_data(root):
  """Data that fails when it is loaded (before any training or workdir)."""
  (root / "bad.npz").write_bytes(b"garbage")
  np.savez(root / "nokeys.npz", images=np.zeros((2, 48, 48, 3), np.uint8))
  empty = lambda: (np.zeros((0, 48, 48, 3), np.uint8), np.zeros((0,), np.int64))
  write_npz(root / "emptyval.npz", n_train=12, n_val=6, n_test=6,
            val_images=empty()[0], val_labels=empty()[1])
  write_npz(root / "zero.npz", train_images=empty()[0], train_labels=empty()[1],
            val_images=empty()[0], val_labels=empty()[1], test_images=empty()[0],
            test_labels=empty()[1])
  images, labels = learnable_images(12, 5)
  write_npz(root / "nosea.npz", n_train=12, n_val=6, n_test=12, test_images=images[labels != 4],
            test_labels=labels[labels != 4])
  kaggle = write_kaggle_folder(root / "notest")
  shutil.rmtree(kaggle / "seg_test")


@pytest.mark.parametrize("args, fragments", [
    (["--lr=0.1,abc"], ["--lr=0.1,abc must be numbers", "e.g. --lr=0.1,0.01"]),
    (["--lr=-1"], ["--lr=-1.0 must be a positive number"]),
    (["--lr=0.01,0.01"], ["repeats a learning rate"]),
    (["--lr=0.0001,0.00010000001"], ["0.0001 and 0.00010000001 both name the folder"]),
    (["--lr=0.0001,0.00010000001", "--workdir=w"], ["both name the folder w/lr_0.0001"]),
    (["--model=no_such_family"], ["--model='no_such_family' is not one of vanilla, bn_gap"]),
    (["--kernel_size=4"], ["--kernel_size=4 must be a positive odd number"]),
    (["--kernel_size=99"], ["larger than the smallest feature map", "use at most 11"]),
    (["--kernel_size=99", "--nomaxpool"], ["(48x48); use at most 47"]),
    (["--channels=8,8,8,8,8,8,8"], ["7 blocks with 2x2 max-pooling"]),
    (["--data_path=bad.npz"], ["bad.npz is not an npz file"]),
    (["--data_path=nokeys.npz"], ["lacks keys"]),
    (["--data_path=emptyval.npz"], ["the val split is empty"]),
    (["--data_path=zero.npz"], ["the train split is empty"]),
    (["--data_path=nosea.npz"], ["the test split has no image of class sea"]),
    (["--data_path=notest"], ["the test split is empty", "seg_test"]),
    (["--data_path=emptyval.npz", "--batch_size=100000"], ["the val split is empty"]),
    (["--data_path=nokeys.npz", "--kernel_size=99"], ["--kernel_size=99"]),
    (["--data_path=tiny.npz", "--batch_size=100000"],
     ["--batch_size=100000 is larger than the training set (12 images)"]),
    (["--data_path=tiny.npz", "--batch_size=8", "--max_train_images=6"],
     ["--batch_size=8 is larger than the training set (6 images)"]),
    (["--max_train_images=-1"], ["--max_train_images=-1 must be >= 0 (0: all)"]),
    (["--max_train_images=6", "--to_torch=x.pt"], ["--from_torch and --to_torch train nothing"]),
    (["--out=x.csv"], ["--out names the CSV of --predict"]),
    (["--predict="], ["--predict is empty"]),
    (["--predict=a.jpg", "--to_torch=x.pt"], ["--to_torch and --predict cannot be combined"]),
    (["--predict=a.jpg", "--fresh"], ["--fresh does not apply to it"]),
    (["--predict=a.jpg", "--lr=0.1,0.01"], ["--predict classifies with one run"]),
    (["--predict=a.jpg", "--workdir=runs"], ["runs holds no trained CNN run"]),
    ([], ["no Intel image data found", "download it by hand", "--download=auto"]),
    (["stray"], ["unexpected arguments stray"]),
])
def test_bad_input_is_one_line_and_exit_2_before_anything_changes(tmp_path, args, fragments):
  _bad_data(tmp_path)
  write_npz(tmp_path / "tiny.npz", n_train=12, n_val=6, n_test=6)
  (tmp_path / "runs").mkdir()
  before = checksums(tmp_path)
  assert_clean_failure(run_cli("experiments.cnn", *args, cwd=tmp_path), *fragments)
  after = checksums(tmp_path)
  assert {k: v for k, v in after.items() if not k.startswith("cache/")} == before


def test_default_workdirs_name_every_changed_setting_so_the_readme_runs_in_order():
  names = [cnn.Config(model="bn_gap", learning_rate=0.01).run_name(),
           cnn.Config(model="bn_gap", kernel_size=5).run_name(),
           cnn.Config(model="bn_gap", kernel_size=5, maxpool=False).run_name(),
           cnn.Config(epochs=3, epoch_mode="loop").run_name(),
           cnn.Config(channels=(16, 32)).run_name(sweep=True),
           cnn.Config(pixels="course").run_name(),
           cnn.Config(max_train_images=2000).run_name()]
  assert names == ["bn_gap-lr0.01", "bn_gap-lr0.01-k5", "bn_gap-lr0.01-k5-nopool",
                   "vanilla-lr0.01", "vanilla-sweep-ch16_32", "vanilla-lr0.01-pixels_course",
                   "vanilla-lr0.01-train2000"]


def test_a_quick_run_on_part_of_the_training_split_is_its_own_run(tmp_path):
  """--max_train_images: the run trains on that many images (each class's share kept), says so
  in its summary and default workdir, and a rerun without it is another run: refused."""
  write_npz(tmp_path / "tiny.npz", n_train=96, n_val=12, n_test=12)
  args = ["--data_path=tiny.npz", "--epochs=1", "--channels=4,8,16", "--notensorboard"]
  quick = run_cli("experiments.cnn", *args, "--max_train_images=30", cwd=tmp_path)
  assert quick.returncode == 0, quick.stderr[-2000:]
  run = tmp_path / "runs/cnn/vanilla-lr0.01-ch4_8_16-train30"
  summary = json.loads((run / "summary.json").read_text())
  assert summary["config"]["max_train_images"] == 30
  assert (summary["data"]["train"], summary["data"]["val"], summary["data"]["test"]) == \
      (30, 12, 12)
  before = checksums(run)
  whole = run_cli("experiments.cnn", *args, f"--workdir={run}", cwd=tmp_path)
  assert_clean_failure(whole, "max_train_images=30 (now 0)", "train split of 30 items (now 96)")
  assert checksums(run) == before


def test_the_parameter_line_names_table_2_3_only_for_the_course_architectures():
  assert cnn.describe_params(cnn.Config(model="bn_gap", learning_rate=0.1)) == \
      "bn_gap: 755,718 trainable parameters (Table 2.3)"
  assert cnn.describe_params(cnn.Config(model="bn_gap", kernel_size=5)) == \
      "bn_gap: 921,094 trainable parameters"


def test_data_is_discovered_in_dot_data(tmp_path):
  from helpers import write_kaggle_zip
  (tmp_path / "data").mkdir()
  write_kaggle_zip(tmp_path / "data" / "intel-image-classification.zip")
  proc = run_cli("experiments.cnn", "--epochs=1", "--channels=4,8,16", "--workdir=run",
                 cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr
  assert "skipped 2 unreadable or non-image files" in proc.stdout
  assert "-> train 24, val 6, test 12" in proc.stdout


# (TensorBoard events through kills and resumes: tests/train/test_kill_resume.py.)


def test_table_2_1_puts_mean_and_std_over_seeds_beside_the_seed_report():
  rows = [cnn_tables.TableRow("vanilla", 0.01, [cnn_summary(seed=42, val=0.7, test=0.6),
                                          cnn_summary(seed=43, val=0.8, test=0.7)],
                       "q2/vanilla-lr0.01/seed42/curves.png"),
          cnn_tables.TableRow("bn_gap", 0.05, [cnn_summary("bn_gap", 0.05, status="diverged at epoch 1")])]
  lines = cnn_tables.table_2_1(rows).splitlines()
  assert lines[2] == ("| vanilla | 0.01 | 0.7500 ± 0.0707 | 0.6500 ± 0.0707 | 0.7123 | 0.6907 | "
                      "0.6900 ± 0.0000 | completed | 3.0 ± 0.0 s | "
                      "[curves](q2/vanilla-lr0.01/seed42/curves.png) |")
  assert lines[3].startswith("| BN+GAP | 0.05 | 0.7000 | 0.6800 | — | — |")
  assert "seed 42: diverged at epoch 1" in lines[3] and lines[3].endswith("| — |")


def test_a_summary_survives_json():
  summary = cnn_summary("bn_gap")
  data = summary.to_json()
  assert data["seed_report"] == {"val_accuracy": 0.7279, "test_accuracy": 0.7440}
  assert data["config"]["channels"] == [32, 64, 128]
  assert cnn.CnnRunSummary.from_json(data) == summary
