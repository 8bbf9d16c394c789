"""A labelled image dataset in memory: three splits of uint8 NHWC images with int labels, the
names of its classes and where it came from. The image experiment reads everything it needs of
a dataset (image shape, number and names of classes, splits) from here, so a new dataset is a
loader that returns an `ImageData`, not an edit of the experiment (Intel's: `hw2jax.data.intel`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class ImageData:
  """Images (N, H, W, C) uint8 and labels (N,) int32 in 0..len(classes)-1, per split."""
  train_images: np.ndarray
  train_labels: np.ndarray
  val_images: np.ndarray
  val_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  source: str
  classes: tuple[str, ...]
  skipped: int = 0                 # unreadable files left out while loading

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """(H, W, C) of every image."""
    return tuple(int(d) for d in self.train_images.shape[1:])

  @property
  def num_classes(self) -> int:
    return len(self.classes)

  def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of 'train', 'val' or 'test'."""
    return getattr(self, f"{name}_images"), getattr(self, f"{name}_labels")

  def sizes(self) -> dict[str, int]:
    return {name: int(self.split(name)[1].shape[0]) for name in SPLITS}

  def subset(self, n_train: int | None, n_eval: int | None, seed: int = 0) -> "ImageData":
    """A seeded random subset of each split (Kaggle's train split is ordered by class, so the
    first n images would hold one class), for quick runs; None keeps a whole split. Its source
    names the subset, so runs on it never mix with runs on all the data."""
    if n_train is None and n_eval is None:
      return self
    rng = np.random.default_rng(seed)
    cut = {}
    for name, n in (("train", n_train), ("val", n_eval), ("test", n_eval)):
      images, labels = self.split(name)
      idx = np.sort(rng.permutation(len(labels))[:n]) if n is not None else slice(None)
      cut[f"{name}_images"], cut[f"{name}_labels"] = images[idx], labels[idx]
    sizes = " / ".join(str(len(cut[f"{name}_labels"])) for name in SPLITS)
    return dataclasses.replace(self, **cut,
                               source=f"{self.source}; random subset {sizes} (seed {seed})")
