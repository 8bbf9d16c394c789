"""A dataset as class folders: any class names and count, split here or by its own train/val/
test folders, resized to 48x48, grey kept grey, non-images skipped and counted."""

import numpy as np
import pytest
from PIL import Image

from hw2jax.data import class_folders, sources
from hw2jax.errors import UserError

quiet = lambda line: None


def write_tree(root, classes=("circle", "square", "triangle"), per_class=20, size=(30, 20),
               mode="RGB"):
  rng = np.random.default_rng(0)
  for c in classes:
    (root / c).mkdir(parents=True)
    for i in range(per_class):
      shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
      Image.fromarray(rng.integers(0, 256, shape).astype(np.uint8)).save(root / c / f"{i}.png")
  return root


def test_class_folders_are_split_here_per_class_and_named_after_their_folders(tmp_path):
  root = write_tree(tmp_path / "shapes")
  (root / "square" / "notes.txt").write_text("not an image")
  logs = []
  data = class_folders.load_class_folders(root, log=logs.append)
  assert data.classes == ("circle", "square", "triangle") and data.name == "shapes"
  assert data.image_shape == (48, 48, 3) and data.skipped == 1
  assert data.sizes() == {"train": 48, "val": 6, "test": 6}
  for split in ("val", "test"):
    assert set(data.split(split)[1].tolist()) == {0, 1, 2}       # every class in every split
  assert any("skipped 1 unreadable or non-image files" in line for line in logs)
  again = class_folders.load_class_folders(root, log=quiet)
  np.testing.assert_array_equal(again.test_images, data.test_images)          # seeded


def test_grey_images_keep_one_channel_and_split_folders_are_used(tmp_path):
  root = tmp_path / "digits"
  write_tree(root / "train", classes=("0", "1"), per_class=10, mode="L")
  write_tree(root / "test", classes=("0", "1"), per_class=3, mode="L")
  data = class_folders.load_class_folders(root, log=quiet)
  assert data.image_shape == (48, 48, 1) and data.classes == ("0", "1")
  assert data.sizes() == {"train": 18, "val": 2, "test": 6}


def test_discovery_reads_class_folders_given_as_data_path_and_refuses_a_folder_of_nothing(
    tmp_path):
  root = write_tree(tmp_path / "shapes", per_class=10)
  assert sources.load_intel(root, log=quiet).classes == ("circle", "square", "triangle")
  (tmp_path / "empty" / "nothing").mkdir(parents=True)
  with pytest.raises(UserError, match="holds no Intel data"):
    sources.load_intel(tmp_path / "empty", log=quiet)
