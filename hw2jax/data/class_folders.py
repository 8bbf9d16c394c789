"""Any labelled image dataset kept as a folder of class folders (the names and number of classes
are the folders'): <root>/<class>/<image>, split here (seeded, per class: 10% test, then 10% of
the rest validation), or <root>/train/<class>/<image> beside test/ and optionally val/ (else
10% of train validates). Images are decoded and resized to 48x48 as Kaggle's Intel images are
(`intel_kaggle.decode_paths`: files too large to be images are skipped unread), and kept grey
(one channel) when every image is; files that are not images are skipped and counted. A class
folder whose name holds a line break (or another control character) is refused. Read on every run
(the Intel data's conversion cache is its own)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from hw2jax.data import intel_kaggle
from hw2jax.data.images import SPLITS, ImageData
from hw2jax.data.intel import printable
from hw2jax.errors import UserError

TEST_FRACTION = intel_kaggle.VAL_FRACTION
SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}


def is_class_folders(path: Path) -> bool:
  """Whether `path` is such a dataset: a folder whose class folders (or train/'s) hold files."""
  root = path / "train" if (path / "train").is_dir() else path
  return path.is_dir() and any(_files(folder) for folder in _subfolders(root))


def load_class_folders(path: str | os.PathLike, *, log: Callable[[str], None] = print,
                       seed: int = intel_kaggle.SPLIT_SEED) -> ImageData:
  """The dataset at `path` (see the module's docstring) as an ImageData named after the folder."""
  path = Path(path).resolve()
  if not is_class_folders(path):
    raise UserError(f"{path} holds no class folders of images: expected <class>/<image> or "
                    "train/<class>/<image> inside it")
  files = _listed(path)                        # (split or None, class, file)
  classes = tuple(sorted({c for _, c, _ in files}))
  odd = next((c for c in classes if printable(c) != c), None)
  if odd is not None:
    raise UserError(f"{printable(path)}: the class folder '{printable(odd)}' has a line break or "
                    "another control character in its name; rename it")
  log(f"{printable(path.name)} data: decoding {len(files)} images of {len(classes)} classes from "
      f"{printable(path)} at 48x48")
  decoded = intel_kaggle.decode_paths([f for _, _, f in files])
  images, ok, skipped = decoded.images, decoded.ok, decoded.skipped
  for line in decoded.skip_lines([str(f) for _, _, f in files], f"{printable(path.name)} data"):
    log(line)
  if ok.any() and (images[ok][..., :1] == images[ok]).all():
    images = images[..., :1]                   # every image grey: one channel
  labels = np.array([classes.index(c) for _, c, _ in files], np.int32)
  idx = _split_indices(np.array([s for s, _, _ in files], object), labels, ok, seed)
  return ImageData(**{f"{s}_{k}": a[idx[s]] for s in SPLITS
                      for k, a in (("images", images), ("labels", labels))},
                   source=f"class folders {path}", classes=classes, skipped=skipped,
                   name=path.name)


def _subfolders(folder: Path) -> list[Path]:
  return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _files(folder: Path) -> list[Path]:
  return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def _listed(path: Path) -> list[tuple[str | None, str, Path]]:
  if not (path / "train").is_dir():
    return [(None, c.name, f) for c in _subfolders(path) for f in _files(c)]
  listed = []
  for split, names in SPLIT_FOLDERS.items():
    folder = next((path / n for n in names if (path / n).is_dir()), None)
    if folder is not None:
      listed += [(split, c.name, f) for c in _subfolders(folder) for f in _files(c)]
  return listed


def _split_indices(splits: np.ndarray, labels: np.ndarray, ok: np.ndarray, seed: int
                   ) -> dict[str, np.ndarray]:
  """Indices of each split: the folders' own, else seeded stratified draws (see the docstring)."""
  given = {s: np.flatnonzero((splits == s) & ok) for s in SPLITS}
  if not len(given["train"]):                  # <root>/<class>/ only
    test, rest = intel_kaggle.split_validation(np.flatnonzero(ok), labels, TEST_FRACTION, seed)
    given = {"train": rest, "val": np.zeros(0, np.int64), "test": test}
  if not len(given["val"]):
    given["val"], given["train"] = intel_kaggle.split_validation(
        given["train"], labels, intel_kaggle.VAL_FRACTION, seed)
  return given
