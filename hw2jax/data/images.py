"""A labelled image dataset in memory: three splits of uint8 NHWC images with int labels, the
names of its classes and where it came from. The image experiment reads everything it needs of
a dataset (image shape, number and names of classes, splits) from here, so a new dataset is a
loader that returns an `ImageData`, not an edit of the experiment (Intel's: `hw2jax.data.intel`;
any dataset in the course's npz layout: `from_arrays`; a folder of class folders:
`hw2jax.data.class_folders`).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

from hw2jax.errors import UserError

SPLITS = ("train", "val", "test")
CHANNELS = (1, 3)                  # grey or RGB


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
  name: str = "images"             # what logs call the dataset ("intel data: ...")

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


  def limit_train(self, n: int, seed: int) -> "ImageData":
    """The data with `n` training images (0, or n at least the split's size: all of them), a
    seeded draw that keeps each class's share (largest remainders) and the split's order;
    validation and test are kept whole, so that scores stay comparable."""
    images, labels = self.split("train")
    if not 0 < n < len(labels):
      return self
    classes, counts = np.unique(labels, return_counts=True)
    share = counts * n / len(labels)
    take = np.floor(share).astype(int)
    take[np.argsort(take - share, kind="stable")[:n - take.sum()]] += 1
    rng = np.random.default_rng(seed)
    idx = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:k]
                                  for c, k in zip(classes, take)]))
    return dataclasses.replace(self, train_images=images[idx], train_labels=labels[idx],
                               source=f"{self.source}; {n} training images (seed {seed})")


def from_arrays(arrays: Mapping[str, np.ndarray], source: str, name: str) -> ImageData:
  """The course's npz layout for any dataset: `<split>_images` (N, H, W, C) with C = 1 or 3, or
  (N, H, W) grey, uint8; `<split>_labels` class ids 0..K-1; an optional `class_names` array of K
  names (else 'class 0', 'class 1', ...). One UserError line naming the array otherwise."""
  out, shape = {}, None
  for split in SPLITS:
    images = _pixels(np.asarray(arrays[f"{split}_images"]), f"{source}: {split}_images")
    labels = np.asarray(arrays[f"{split}_labels"])
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
      raise UserError(f"{source}: {split}_labels has shape {labels.shape} and dtype "
                      f"{labels.dtype}; expected a 1-D integer array of class ids")
    if len(images) != len(labels):
      raise UserError(f"{source}: {split}_images has {len(images)} images but {split}_labels "
                      f"has {len(labels)} labels")
    if len(images) and shape is not None and images.shape[1:] != shape:
      raise UserError(f"{source}: {split}_images are {images.shape[1:]}, the other splits' "
                      f"{shape}; every split needs one image size")
    shape = images.shape[1:] if len(images) else shape
    out[f"{split}_images"], out[f"{split}_labels"] = images, labels.astype(np.int32)
  classes = _class_names(arrays, out, source)
  return ImageData(**out, source=source, classes=classes, name=name)


def _pixels(images: np.ndarray, what: str) -> np.ndarray:
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or images.shape[-1] not in CHANNELS:
    raise UserError(f"{what} has shape {images.shape}; expected (N, H, W, C) with C = 1 or 3, "
                    "or (N, H, W)")
  if images.dtype != np.uint8:
    if not (np.issubdtype(images.dtype, np.integer)
            and (not images.size or (images.min() >= 0 and images.max() <= 255))):
      raise UserError(f"{what} has dtype {images.dtype}; expected uint8 pixels in 0..255")
    images = images.astype(np.uint8)
  return images


def _class_names(arrays: Mapping[str, np.ndarray], splits: dict, source: str
                 ) -> tuple[str, ...]:
  """The K class names: `class_names` if the file has it, else 'class <k>' up to the largest
  label; every label must name one of them."""
  labels = np.concatenate([splits[f"{s}_labels"] for s in SPLITS])
  if "class_names" in arrays:
    names = np.asarray(arrays["class_names"])
    if names.ndim != 1 or not len(names) or names.dtype.kind not in "US":
      raise UserError(f"{source}: class_names has shape {names.shape} and dtype {names.dtype}; "
                      "expected a 1-D array of strings, one per class")
    classes = tuple(str(n) for n in names)
    if len(set(classes)) != len(classes):
      raise UserError(f"{source}: class_names repeats a name; give each class its own")
  else:
    classes = tuple(f"class {k}" for k in range(int(labels.max()) + 1 if labels.size else 0))
  if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
    raise UserError(f"{source}: labels run {labels.min()}..{labels.max()}; expected 0.."
                    f"{len(classes) - 1}, one per class name")
  return classes
