"""The house grows through its front door. A new model family is one module dropped into a copy
of the package, nothing else changed: the CLI lists it, trains, sweeps, resumes and reports it,
the report's Table 2.3 counts it, and the PyTorch converters refuse it in one line. A new dataset
is a loader returning an `ImageData`: the course families train on it, sized from its images."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from helpers import REPO, assert_clean_failure, cli_env, run_cli, write_npz
from hw2jax.data.images import ImageData
from hw2jax.errors import UserError
from hw2jax.recipes import cnn

QUIET = lambda line: None

TINY_MLP = '''"""A family of the test's: flatten -> Dense 16 -> ReLU -> dropout -> logits."""
import jax.numpy as jnp
from flax import linen as nn

from hw2jax.models import registry


class TinyMLP(nn.Module):
  num_classes: int
  dropout: float

  @nn.compact
  def __call__(self, images, *, train, mask=None):
    x = images.astype(jnp.float32).reshape(images.shape[0], -1) / 255.0
    x = nn.Dropout(self.dropout, deterministic=not train)(nn.relu(nn.Dense(16)(x)))
    return nn.Dense(self.num_classes)(x)


registry.register(registry.ModelFamily(
    "tiny_mlp", "tiny MLP", lambda num_classes, dropout, **unused: TinyMLP(num_classes, dropout)))
'''
# Its size on Intel's 48x48x3 images and 6 classes: 6912 * 16 + 16 + 16 * 6 + 6.
TINY_MLP_PARAMS = 110_710


def copy_of_the_package(target):
  """The library and the CLIs as a user's checkout has them (no tests, no caches)."""
  for folder in ("hw2jax", "experiments"):
    shutil.copytree(REPO / folder, target / folder,
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
  return target


@pytest.fixture(scope="module")
def life(tmp_path_factory):
  """A copy of the package with one module added (hw2jax/models/tiny_mlp.py), then the life of
  its family through the CLIs, one call a step: --help, a two-rate sweep, a resume, the report's
  Table 2.3, --to_torch and --from_torch, and a module that does not import. Returns the folder
  the commands ran in and, per step, its process."""
  root = tmp_path_factory.mktemp("front_door")
  package = copy_of_the_package(root / "package")
  (package / "hw2jax" / "models" / "tiny_mlp.py").write_text(TINY_MLP)
  write_npz(root / "tiny.npz", n_train=24, n_val=12, n_test=12)
  env = {**cli_env(root), "PYTHONPATH": str(package)}

  def cli(name, *args):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", f"experiments.{name}", *args], cwd=root,
                          env=env, capture_output=True, text=True, timeout=600)

  data, mlp = "--data_path=tiny.npz", "--model=tiny_mlp"
  steps = {"help": cli("cnn", "--help"),
           "sweep": cli("cnn", mlp, data, "--lr=0.1,0.05", "--epochs=2", "--workdir=mlp"),
           "resume": cli("cnn", mlp, data, "--lr=0.1", "--epochs=3", "--workdir=mlp/lr_0.1"),
           "report": cli("report", "--parts=q2", "--quick", "--intel_data_path=tiny.npz",
                         "--workdir=report"),
           "to_torch": cli("cnn", "--workdir=mlp/lr_0.1", "--to_torch=mlp.pt"),
           "from_torch": cli("cnn", mlp, data, "--from_torch=mlp.pt")}
  (package / "hw2jax" / "models" / "half_written.py").write_text(
      'raise RuntimeError("not finished")\n')
  steps["broken"] = cli("cnn", "--model=half_written", data)
  steps["others"] = cli("cnn", data, "--epochs=1", "--channels=4,8,16", "--workdir=vanilla")
  return root, steps


def ok(proc):
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc


pytestmark = pytest.mark.slow
FRONT_DOOR = pytest.mark.xdist_group("front_door")     # one worker runs the `life` fixture once


@FRONT_DOOR
def test_the_new_module_is_a_choice_of_the_cli(life):
  _, steps = life
  assert "Model family: vanilla, bn_gap, tiny_mlp" in ok(steps["help"]).stdout


@FRONT_DOOR
def test_the_new_family_trains_a_sweep_with_its_own_count_and_label(life):
  root, steps = life
  out = ok(steps["sweep"]).stdout
  assert f"tiny_mlp: {TINY_MLP_PARAMS:,} trainable parameters\n" in out    # not Table 2.3's
  table = (root / "mlp" / "table_2_1.md").read_text()
  assert "| tiny MLP | 0.1 |" in table and "| tiny MLP | 0.05 |" in table


@FRONT_DOOR
def test_the_new_family_resumes_and_its_summary_says_what_it_is(life):
  root, steps = life
  assert "resuming from the checkpoint of epoch 2" in ok(steps["resume"]).stdout
  run = root / "mlp" / "lr_0.1"
  assert len((run / "metrics.jsonl").read_text().splitlines()) == 3
  summary = json.loads((run / "summary.json").read_text())
  assert summary["config"]["model"] == "tiny_mlp" and summary["status"] == "completed"
  assert summary["trainable_params"] == TINY_MLP_PARAMS


@FRONT_DOOR
def test_the_reports_table_2_3_counts_every_family_and_labels_only_the_courses(life):
  root, steps = life
  ok(steps["report"])
  report = (root / "report" / "REPORT.md").read_text()
  assert "| vanilla | 5,340,742 | 5,340,742 | yes |" in report
  assert "| BN+GAP | 755,718 | 755,718 | yes |" in report
  assert f"| tiny MLP | {TINY_MLP_PARAMS:,} | — | — |" in report


@FRONT_DOOR
def test_the_pytorch_converters_refuse_the_new_family_in_one_line(life):
  root, steps = life
  for step in ("to_torch", "from_torch"):
    assert_clean_failure(steps[step], "--model=tiny_mlp has no PyTorch counterpart: the "
                                      "course's TorchCNN holds vanilla, bn_gap")
  assert not (root / "mlp.pt").exists()


@FRONT_DOOR
def test_a_module_that_does_not_import_is_named_when_its_family_is_asked_for(life):
  """A half-written module breaks nothing else; asked for, it is named with its error."""
  _, steps = life
  assert_clean_failure(steps["broken"], "--model='half_written' is not one of vanilla, bn_gap, "
                       "tiny_mlp; hw2jax/models/half_written.py did not import (RuntimeError: "
                       "not finished)")
  assert "vanilla lr=0.01, channels 4-8-16: completed" in ok(steps["others"]).stdout


# -- a new dataset: a loader returning an ImageData ----------------------------------------------


def stripes(n_train=48, n_eval=12, seed=0) -> ImageData:
  """A new dataset: 12x12 grey images of horizontal or vertical stripes, or noise only."""
  rng = np.random.default_rng(seed)

  def split(n):
    labels = rng.integers(0, 3, n).astype(np.int32)
    images = rng.integers(0, 60, (n, 12, 12, 1))
    rows = (np.arange(12) % 3 == 0)
    images[labels == 0] += 180 * rows[None, :, None, None]
    images[labels == 1] += 180 * rows[None, None, :, None]
    return images.astype(np.uint8), labels

  (tx, ty), (vx, vy), (sx, sy) = split(n_train), split(n_eval), split(n_eval)
  return ImageData(tx, ty, vx, vy, sx, sy, source="stripes (test)",
                   classes=("horizontal", "vertical", "noise"))


def test_a_course_family_trains_on_the_new_dataset_with_its_shape_and_classes(tmp_path):
  data = stripes()
  assert data.image_shape == (12, 12, 1) and data.num_classes == 3
  config = cnn.Config(model="bn_gap", channels=(4, 8), epochs=3, learning_rate=0.1,
                      tensorboard=False)
  summary = cnn.train_and_evaluate(config, data, tmp_path / "bn_gap", log=QUIET)
  assert summary.status == "completed"
  # One input channel and three classes: the first kernel and the logits shrink accordingly.
  assert summary.trainable_params == cnn.param_count(config, (12, 12, 1), 3)
  assert summary.trainable_params != cnn.param_count(config)             # Intel's 48x48x3, 6
  assert cnn.describe_params(config, (12, 12, 1), 3) == (
      f"bn_gap: {summary.trainable_params:,} trainable parameters")       # not Table 2.3's


def test_settings_are_checked_against_the_datasets_images_and_the_families():
  five_blocks = cnn.Config(channels=(4, 4, 4, 4, 4)).validate()      # fits 48x48 ...
  with pytest.raises(UserError, match="shrink a 12x12 image to nothing; use at most 4 blocks"):
    five_blocks.check_data(stripes())                                # ... not 12x12
  with pytest.raises(UserError, match="--model='no_such_family' is not one of vanilla, bn_gap"):
    cnn.Config(model="no_such_family").validate()


# -- other datasets through the CLIs: the course CNNs sized from the data, named by it ----------


def write_dataset(path, shape, k, names=None):
  """A learnable npz: class k brightens the k-th band of rows."""
  rng = np.random.default_rng(0)
  arrays = {}
  for split, n in (("train", 40), ("val", 12), ("test", 12)):
    labels = np.arange(n) % k
    images = rng.integers(0, 60, (n, *shape))
    for i, label in enumerate(labels):
      images[i, label * shape[0] // k:(label + 1) * shape[0] // k] += 150
    arrays[f"{split}_images"], arrays[f"{split}_labels"] = images.astype(np.uint8), labels
  if names is not None:
    arrays["class_names"] = np.array(names)
  np.savez(path, **arrays)
  return path


def write_class_folders(root, classes=("ash", "birch", "cedar")):
  rng = np.random.default_rng(1)
  for k, name in enumerate(classes):
    (root / name).mkdir(parents=True)
    for i in range(12):
      image = rng.integers(0, 60, (40, 40, 3))
      image[k * 13:(k + 1) * 13] += 150
      Image.fromarray(image.astype(np.uint8)).save(root / name / f"{i}.png")
  return root


CIFAR_NAMES = [f"kind{k}" for k in range(10)]
DATASETS = {"cifar": ((32, 32, 3), 10, CIFAR_NAMES), "digits": ((28, 28, 1), 4, None),
            "trees": ((48, 48, 3), 3, ["ash", "birch", "cedar"])}


@pytest.fixture(scope="module")
def other_datasets(tmp_path_factory):
  """Both course CNNs trained one epoch through the CLI on a 32x32x3 10-class npz (class names
  in it), a 28x28x1 4-class npz (none), and a folder of three class folders; and Q1's retrieval
  on the first and the last. Returns the folder and {(dataset, model or 'hopfield'): process}."""
  root = tmp_path_factory.mktemp("other_datasets")
  write_dataset(root / "cifar.npz", (32, 32, 3), 10, CIFAR_NAMES)
  write_dataset(root / "digits.npz", (28, 28, 1), 4)
  write_class_folders(root / "trees")
  paths = {"cifar": "cifar.npz", "digits": "digits.npz", "trees": "trees"}
  procs = {}
  for name, path in paths.items():
    for model in ("vanilla", "bn_gap"):
      procs[name, model] = run_cli("experiments.cnn", f"--model={model}", f"--data_path={path}",
                                   "--epochs=1", f"--workdir={name}-{model}", "--notensorboard",
                                   cwd=root)
  procs["cifar", "to_torch"] = run_cli("experiments.cnn", "--workdir=cifar-vanilla",
                                      "--to_torch=cifar.pt", cwd=root)
  for name in ("cifar", "trees"):
    procs[name, "hopfield"] = run_cli("experiments.hopfield", "--parts=retrieval",
                                      f"--data_path={paths[name]}", "--num_patterns=6",
                                      "--num_show=2", "--betas=0.0003,0.03",
                                      f"--workdir={name}-hopfield", cwd=root)
  return root, procs


@pytest.mark.xdist_group("other_datasets")
@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("model", ["vanilla", "bn_gap"])
def test_the_course_cnns_train_on_other_datasets_sized_and_named_by_them(other_datasets,
                                                                        dataset, model):
  root, procs = other_datasets
  out = ok(procs[dataset, model]).stdout
  shape, k, names = DATASETS[dataset]
  names = names or [f"class {i}" for i in range(k)]
  count = cnn.param_count(cnn.Config(model=model), shape, k)
  assert f"\n{model}: {count:,} trainable parameters\n" in out          # the trained model's
  assert f"{dataset} data: " in out and f"{k} classes: {', '.join(names)}" in out
  summary = json.loads((root / f"{dataset}-{model}" / "summary.json").read_text())
  assert summary["data"]["classes"] == names and summary["trainable_params"] == count
  assert summary["status"] == "completed"


@pytest.mark.xdist_group("other_datasets")
@pytest.mark.parametrize("dataset", ["cifar", "trees"])
def test_q1_retrieval_stores_another_datasets_images(other_datasets, dataset):
  root, procs = other_datasets
  ok(procs[dataset, "hopfield"])
  retrieval = json.loads((root / f"{dataset}-hopfield" / "summary.json").read_text())["retrieval"]
  shape = DATASETS[dataset][0]
  assert retrieval["source"].startswith(f"6 {dataset} train images from ")
  assert retrieval["dim"] == shape[0] * shape[1] * shape[2]


@pytest.mark.xdist_group("other_datasets")
def test_the_pytorch_converters_refuse_other_datasets_in_one_line(other_datasets, tmp_path):
  """The course's TorchCNN reads 48x48x3 images of Intel's six classes: a run on other data is
  not exported (refused before PyTorch is needed), and other data is not evaluated."""
  root, procs = other_datasets
  refused = ("reads and writes the course's TorchCNN, which takes the Intel data (48x48x3 "
             "images, 6 classes)", "(10 classes)")
  assert_clean_failure(procs["cifar", "to_torch"], *refused)
  assert not (root / "cifar.pt").exists()
  torch = pytest.importorskip("torch")
  from benchmarks.torch_baselines import TorchCNN
  torch.save(TorchCNN(batch_norm=False).state_dict(), root / "vanilla.pt")
  before = sorted(p.name for p in root.iterdir())
  assert_clean_failure(run_cli("experiments.cnn", "--data_path=cifar.npz",
                               "--from_torch=vanilla.pt", cwd=root), *refused)
  assert sorted(p.name for p in root.iterdir()) == before                # no workdir made
