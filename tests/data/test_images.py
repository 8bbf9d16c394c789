"""Any dataset in the course's npz layout (`images.from_arrays`, through `intel.load_npz`): its
own image size, grey or RGB, its class count and names; the Intel data keeps its own checks."""

import numpy as np
import pytest

from helpers import write_npz
from hw2jax.data import images as images_lib, intel
from hw2jax.errors import UserError


def dataset(path, shape, k, n=(30, 10, 10), **extra):
  rng = np.random.default_rng(0)
  arrays = {}
  for split, size in zip(("train", "val", "test"), n):
    arrays[f"{split}_images"] = rng.integers(0, 256, (size, *shape)).astype(np.uint8)
    arrays[f"{split}_labels"] = np.arange(size) % k
  np.savez(path, **{**arrays, **extra})
  return path


def test_a_cifar_like_npz_keeps_its_size_and_names_its_ten_classes(tmp_path):
  names = np.array(["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                    "truck"])
  data = intel.load_npz(dataset(tmp_path / "cifar.npz", (32, 32, 3), 10, class_names=names))
  assert data.image_shape == (32, 32, 3) and data.num_classes == 10
  assert data.classes == tuple(names) and data.name == "cifar"
  assert data.sizes() == {"train": 30, "val": 10, "test": 10}
  assert data.train_labels.dtype == np.int32


@pytest.mark.parametrize("shape", [(28, 28, 1), (28, 28)], ids=["NHWC", "NHW"])
def test_grey_images_get_one_channel_and_numbered_classes_without_names(tmp_path, shape):
  data = intel.load_npz(dataset(tmp_path / "digits.npz", shape, 4))
  assert data.image_shape == (28, 28, 1)
  assert data.classes == ("class 0", "class 1", "class 2", "class 3")


def test_the_intel_data_is_still_read_as_intel(tmp_path):
  data = intel.load_npz(write_npz(tmp_path / "intel.npz"))
  assert data.name == "intel" and data.classes == intel.CLASSES


@pytest.mark.parametrize("extra, message", [
    (dict(class_names=np.array(["a", "b", "a"])), "class_names repeats a name"),
    (dict(class_names=np.array(["a", "b"])), "labels run 0..2; expected 0..1"),
    (dict(class_names=np.zeros(3)), "class_names has shape (3,) and dtype float64"),
    (dict(val_images=np.zeros((10, 16, 16, 3), np.uint8)),
     "val_images are (16, 16, 3), the other splits' (32, 32, 3)"),
    (dict(test_labels=np.zeros(9, np.int64)), "test_images has 10 images but test_labels has 9"),
    (dict(train_images=np.full((30, 32, 32, 3), 300)), "dtype int64; expected uint8 pixels"),
])
def test_a_bad_dataset_is_one_line_naming_what_is_wrong(tmp_path, extra, message):
  path = dataset(tmp_path / "bad.npz", (32, 32, 3), 3, **extra)
  with pytest.raises(UserError) as e:
    intel.load_npz(path)
  assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def _labelled(counts, seed=0):
  """An ImageData whose training split holds counts[c] images of class c, shuffled."""
  labels = np.random.default_rng(seed).permutation(np.repeat(np.arange(len(counts)), counts))
  images = np.arange(len(labels), dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3),
                                                                                 np.uint8)
  small = (np.zeros((3, 2, 2, 3), np.uint8), np.arange(3) % len(counts))
  return images_lib.ImageData(images, labels.astype(np.int64), *small, *small, source="npz x",
                              classes=tuple(f"c{i}" for i in range(len(counts))), name="x")


@pytest.mark.parametrize("counts, n, expected", [((50, 30, 20), 10, [5, 3, 2]),
                                                 ((7, 7, 6), 5, [2, 2, 1]),
                                                 ((90, 9, 1), 20, [18, 2, 0])])
def test_a_training_subset_keeps_each_classs_share_the_splits_order_and_the_rest_whole(
    counts, n, expected):
  data = _labelled(counts)
  cut = data.limit_train(n, seed=42)
  images, labels = cut.split("train")
  assert np.bincount(labels, minlength=len(counts)).tolist() == expected
  order = images[:, 0, 0, 0].astype(int)                  # each image's index in the split
  assert (np.diff(order) > 0).all() and (data.train_labels[order] == labels).all()
  assert cut.val_images is data.val_images and cut.test_labels is data.test_labels
  assert cut.source == f"npz x; {n} training images (seed 42)"
  again, other = data.limit_train(n, seed=42), data.limit_train(n, seed=7)
  assert (again.train_images == images).all() and not (other.train_images == images).all()


def test_no_subset_or_one_as_large_as_the_split_is_the_data_itself():
  data = _labelled((5, 5))
  assert data.limit_train(0, seed=1) is data and data.limit_train(10, seed=1) is data
