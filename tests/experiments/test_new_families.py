"""A new model family and a new image dataset are defined here, in a few lines, with no library
file changed: both train and evaluate through the library path the CLI uses
(`experiments.cnn.train_and_evaluate`), and the tables show the family by its label and size."""

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from hw2jax.data.images import ImageData
from hw2jax.errors import UserError
from hw2jax.experiments import cnn
from hw2jax.models import registry

QUIET = lambda line: None


class TinyMLP(nn.Module):
  """A new family: flatten -> Dense 16 -> ReLU -> dropout -> logits."""
  num_classes: int
  dropout: float

  @nn.compact
  def __call__(self, images, *, train, mask=None):
    x = images.astype(jnp.float32).reshape(images.shape[0], -1) / 255.0
    x = nn.Dropout(self.dropout, deterministic=not train)(nn.relu(nn.Dense(16)(x)))
    return nn.Dense(self.num_classes)(x)


TINY_MLP = registry.ModelFamily(
    "tiny_mlp", "tiny MLP", lambda num_classes, dropout, **unused: TinyMLP(num_classes, dropout))


@pytest.fixture
def tiny_mlp(monkeypatch):
  """The family registered for one test (the registry is the process's)."""
  monkeypatch.setitem(registry.FAMILIES, TINY_MLP.name, TINY_MLP)
  return TINY_MLP


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


def test_a_family_and_a_dataset_defined_in_a_test_train_and_show_in_the_tables(tiny_mlp,
                                                                              tmp_path):
  data = stripes()
  assert data.image_shape == (12, 12, 1) and data.num_classes == 3
  config = cnn.Config(model="tiny_mlp", learning_rate=0.1, epochs=3, tensorboard=False)
  summary = cnn.train_and_evaluate(config, data, tmp_path / "mlp", log=QUIET)
  assert summary.status == "completed" and summary.data.train == 48
  assert summary.trainable_params == 12 * 12 * 16 + 16 + 16 * 3 + 3
  assert summary.trainable_params == cnn.param_count(config, data.image_shape, data.num_classes)
  assert summary.final.test_accuracy > 0.6                      # it learned the stripes
  state = cnn.new_state(config, data.image_shape, data.num_classes)
  logits = config.build_model(3).apply(state.variables(), data.test_images, train=False)
  chex.assert_shape(logits, (12, 3))

  table_2_1 = cnn.table_2_1([cnn.TableRow("tiny_mlp", 0.1, [summary])])
  assert "| tiny MLP | 0.1 |" in table_2_1
  table_2_3 = cnn.table_2_3({"vanilla": 5_340_742, "tiny_mlp": summary.trainable_params})
  assert "| vanilla | 5,340,742 | 5,340,742 | yes |" in table_2_3
  assert "| tiny MLP | 2,371 | — | — |" in table_2_3
  assert "tiny_mlp" not in cnn.course_models()           # the course fixes no size for it


def test_a_course_family_trains_on_the_new_dataset_with_its_shape_and_classes(tmp_path):
  data = stripes()
  config = cnn.Config(model="bn_gap", channels=(4, 8), epochs=1, tensorboard=False)
  summary = cnn.train_and_evaluate(config, data, tmp_path / "bn_gap", log=QUIET)
  assert summary.status == "completed"
  # One input channel and three classes: the first kernel and the logits shrink accordingly.
  assert summary.trainable_params == cnn.param_count(config, (12, 12, 1), 3)
  assert summary.trainable_params != cnn.param_count(config)             # Intel's 48x48x3, 6


def test_settings_are_checked_against_the_datasets_images_and_the_registry(tiny_mlp):
  five_blocks = cnn.Config(channels=(4, 4, 4, 4, 4)).validate()      # fits 48x48 ...
  with pytest.raises(UserError, match="shrink a 12x12 image to nothing; use at most 4 blocks"):
    five_blocks.check_data(stripes())                                # ... not 12x12
  with pytest.raises(UserError, match="--model='resnet' is not one of vanilla, bn_gap, tiny_mlp"):
    cnn.Config(model="resnet").validate()
  with pytest.raises(ValueError, match="registered already"):
    registry.register(TINY_MLP)


def test_the_pytorch_converters_refuse_a_family_the_courses_torchcnn_cannot_hold(tiny_mlp,
                                                                                tmp_path):
  """--from_torch and --to_torch read and write the course's TorchCNN: a family it does not
  hold is one line naming the ones it does, before any file is read or written."""
  pytest.importorskip("torch")
  from hw2jax.experiments import torch_checkpoints
  config = cnn.Config(model="tiny_mlp", learning_rate=0.1, epochs=1, tensorboard=False)
  with pytest.raises(UserError, match="--model=tiny_mlp has no PyTorch counterpart: the "
                                      "course's TorchCNN holds vanilla, bn_gap"):
    torch_checkpoints.check_torch_cnn(config)
  cnn.train_and_evaluate(config, stripes(), tmp_path / "mlp", log=QUIET)
  with pytest.raises(UserError, match="--model=tiny_mlp has no PyTorch counterpart"):
    torch_checkpoints.export_cnn(tmp_path / "mlp", tmp_path / "mlp.pt", log=QUIET)
  assert not (tmp_path / "mlp.pt").exists()
