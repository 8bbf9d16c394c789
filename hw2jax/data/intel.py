"""Intel Image Classification at 48x48: the arrays, the course npz and the split checks.
(Kaggle's folder or zip and its conversion cache: `hw2jax.data.intel_kaggle`; where the data is
found, or downloaded: `hw2jax.data.sources`.)

Everything ends as uint8 NHWC numpy arrays (N, 48, 48, 3) with int32 labels in 0..5; moving them
onto the device is the trainer's job (once per run). Bad input raises `UserError` with one line
that names the file it is about.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path
from typing import Callable, Mapping

import einops
import numpy as np

from hw2jax.data import images
from hw2jax.data.images import ImageData
from hw2jax.errors import UserError

CLASSES = ("buildings", "forest", "glacier", "mountain", "sea", "street")
IMAGE_SIZE = 48
CHANNELS = 3
NPZ_KEYS = ("train_images", "train_labels", "val_images", "val_labels", "test_images",
            "test_labels")
SPLITS = images.SPLITS
# How pixels reach the model: correct (as stored, height-width-channel), or course (the course
# skeleton's reading: flattened and reinterpreted as channels-first; see `course_pixels`).
PIXELS = ("correct", "course")
# How flat (N, 6912) images are ordered: height-width-channel (decoded JPEGs) or channels-first.
LAYOUTS = ("hwc", "chw")
# A Kaggle image's path: seg_<split>/[seg_<split>/]<class>/<file>. A file beside the class
# folders (seg_test/seg_test/readme.txt) is none: its folder is a split's, not a class.
ENTRY_RE = re.compile(r"(?:^|/)seg_(train|test)/(?:seg_(?:train|test)/)?(?!seg_(?:train|test)/)"
                      r"([^/]+)/([^/]+)$")


def printable(text) -> str:
  """`text` with line breaks and other control characters written as Python escapes them
  ('\\n'), so a one-line message that quotes a file or folder name stays one line."""
  return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def course_pixels(images: np.ndarray) -> np.ndarray:
  """(N, 48, 48, 3) -> (N, 48, 48, 3): what the course skeleton feeds its model. It flattens each
  image and reshapes it to (3, 48, 48); on height-width-channel pixels (decoded JPEGs, the
  Kaggle data) each "channel" then holds a third of the image with R, G and B interleaved along
  its rows. Returned channels-last, as the models take it; a reproduction of the homework's
  numbers, not a reading of the images (the skeleton's /256 is the models' own scale)."""
  n = images.shape[0]
  return np.ascontiguousarray(einops.rearrange(images.reshape(n, -1), "n (c h w) -> n h w c",
                                               c=CHANNELS, h=IMAGE_SIZE))


def model_pixels(images: np.ndarray, pixels: str) -> np.ndarray:
  """The images as the model sees them under `pixels` (one of PIXELS)."""
  if pixels not in PIXELS:
    raise UserError(f"--pixels={pixels!r} is not one of {', '.join(PIXELS)}")
  return course_pixels(images) if pixels == "course" else images


# ----------------------------------------------------------------------------------------------
# Sources


def resolve(path: Path, origin: str) -> list[Path]:
  """The Intel sources `path` names: itself (an npz or a zip), or those inside a folder in the
  order `candidates` prefers them; `origin` says how the user gave it (e.g. '--data_path'), for
  the message if it names none."""
  if path.is_dir():
    found = candidates(path)
    if not found:
      raise UserError(f"{origin} {path} holds no Intel data: expected seg_train/seg_train/<class>/ "
                      "folders, an Intel npz or the Kaggle zip (or, for another dataset, its "
                      "npz or <class>/<image> folders)")
    return found
  if path.suffix.lower() not in (".npz", ".zip"):
    raise UserError(f"{origin} {path} is neither an .npz, a .zip nor a folder")
  return [path]


def candidates(folder: Path) -> list[Path]:
  """The Intel sources inside `folder`, preferred first: Kaggle's layout (the folder itself),
  the course npz, other npz files, Kaggle's zip, other zips that hold Kaggle's layout."""
  found = [folder] if (folder / "seg_train").is_dir() else []
  for pattern in ("intel_landscapes*.npz", "*.npz", "intel-image-classification.zip", "*.zip"):
    matches = sorted(folder.glob(pattern))
    if pattern == "*.zip":
      matches = [m for m in matches if _zip_has_layout(m)]
    found += [m for m in matches if m not in found and m.is_file()]
  return found


def _zip_has_layout(path: Path) -> bool:
  try:
    with zipfile.ZipFile(path) as zf:
      return any(ENTRY_RE.search(n) for n in zf.namelist())
  except (zipfile.BadZipFile, OSError):
    return False


# ----------------------------------------------------------------------------------------------
# Loading


def check_splits(data: ImageData, log: Callable[[str], None] = print,
                 splits: tuple[str, ...] = SPLITS) -> ImageData:
  """Every split the caller uses (`splits`; Q1's retrieval uses only train) must hold images,
  and validation and test every class that training has (a class missing from training is
  allowed, with a warning line): found when the data is loaded, not after the last epoch."""
  problem = split_problem(data, splits)
  if problem:
    raise UserError(f"{data.source}: {problem}")
  present = set(np.unique(data.split("train")[1]).tolist())
  absent = [i for i in range(len(data.classes)) if i not in present]
  if absent:
    log(f"{printable(data.name)} data: WARNING: no training image of class "
        f"{', '.join(_absence(data, i) for i in absent)}; training on "
        f"{len(data.classes) - len(absent)} classes")
  return data


def _absence(data: ImageData, label: int) -> str:
  """Class `label`, which training lacks, and why: the splits that hold its images (on little
  data the validation draw may take a class's only image), else an empty folder."""
  held = [s for s in SPLITS if s != "train" and (data.split(s)[1] == label).any()]
  where = (f"its images are all in the {' and '.join(held)} split{'s' if len(held) > 1 else ''}"
           if held else "an empty folder?")
  return f"{printable(data.classes[label])} ({where})"


def split_problem(data: ImageData, splits: tuple[str, ...] = SPLITS) -> str | None:
  """What makes `data` unusable for `splits` (see `check_splits`), None when nothing does."""
  where = ({"train": "seg_train/seg_train/<class>/", "val": "seg_train (10% of it)",
            "test": "seg_test/seg_test/<class>/"} if data.source.startswith(("zip", "folder"))
           else {s: f"{s}/<class>/ or <class>/" for s in SPLITS}
           if data.source.startswith("class folders")
           else {s: f"{s}_images / {s}_labels" for s in SPLITS})
  for split in splits:
    if data.sizes()[split] == 0:
      return f"the {split} split is empty (no images in {where[split]}); every split needs images"
  present = {split: set(np.unique(data.split(split)[1]).tolist()) for split in splits}
  for split in [s for s in ("val", "test") if s in splits]:
    lacking = [data.classes[c] for c in sorted(present["train"] - present[split])]
    if lacking:
      return (f"the {split} split has no image of class {', '.join(lacking)}, which the "
              "training split has; its accuracy would not measure that class")
  return None


def check_layout(layout: str) -> None:
  if layout not in LAYOUTS:
    raise UserError(f"layout {layout!r} is not valid; use {' or '.join(LAYOUTS)}")


def load_npz(path: str | os.PathLike, *, layout: str = "hwc") -> ImageData:
  """Reads an npz in the course's layout. The Intel data (48x48x3 images, no class_names): images
  (N,48,48,3), (N,3,48,48) or flat (N,6912), labels 0..5. Flat images are ambiguous, so `layout`
  ('hwc' or 'chw') says how to read them; 4-D images are recognised from their shape and never
  reinterpreted. Any other dataset (other image sizes or channels, or a `class_names` array):
  `images.from_arrays`, named after the file.
  """
  path = Path(path)
  check_layout(layout)
  if path.is_file() and not zipfile.is_zipfile(path):
    with open(path, "rb") as f:
      damaged = f.read(2) == b"PK"
    raise UserError(f"{path} is a damaged npz (its zip archive is cut short or broken); "
                    "re-download it" if damaged else
                    f"{path} is not an npz file (an npz is a zip archive of arrays); give the "
                    "course's intel_landscapes.v2.npz, the Kaggle zip or its folder")
  try:
    with np.load(path, allow_pickle=False) as npz:
      missing = [k for k in NPZ_KEYS if k not in npz.files]
      if missing:
        raise UserError(f"{path} lacks keys {', '.join(missing)} (has {', '.join(npz.files)}); "
                        f"an Intel npz needs {', '.join(NPZ_KEYS)}")
      arrays = {k: npz[k] for k in NPZ_KEYS + ("class_names",) if k in npz.files}
  except UserError:
    raise
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise UserError(f"{path} is not a readable npz file ({type(e).__name__}: {e}); "
                    "re-download it") from None
  if "class_names" in arrays or not is_intel_shaped(arrays["train_images"]):
    return images.from_arrays(arrays, f"npz {path}", name=path.stem)
  return ImageData(**checked_splits(arrays, layout, path.name), source=f"npz {path}",
                   classes=CLASSES, name="intel")


def is_intel_shaped(images: np.ndarray) -> bool:
  """Images Intel's npz may hold: (N,48,48,3), (N,3,48,48) or flat (N,6912)."""
  s, c = IMAGE_SIZE, CHANNELS
  return images.shape[1:] in ((s, s, c), (c, s, s)) or (images.ndim == 2
                                                       and images.shape[1] == s * s * c)


def checked_splits(arrays: Mapping[str, np.ndarray], layout: str, name: str
                    ) -> dict[str, np.ndarray]:
  """The NPZ_KEYS arrays as ImageData fields: (N,48,48,3) uint8 images, int32 labels in 0..5,
  as many labels as images; a UserError naming `name` (if any) otherwise. The one check of
  arrays read from a file: the course npz and our conversion cache alike."""
  where = f"{name}:" if name else ""
  out = {}
  for split in SPLITS:
    images = _to_nhwc(arrays[f"{split}_images"], layout, f"{where}{split}_images")
    labels = _check_labels(arrays[f"{split}_labels"], f"{where}{split}_labels")
    if images.shape[0] != labels.shape[0]:
      raise UserError(f"{name + ': ' if name else ''}{split}_images has {images.shape[0]} "
                      f"images but {split}_labels has {labels.shape[0]} labels")
    out[f"{split}_images"], out[f"{split}_labels"] = images, labels
  return out


def _to_nhwc(images: np.ndarray, layout: str, what: str) -> np.ndarray:
  if images.dtype != np.uint8:
    if np.issubdtype(images.dtype, np.integer) and images.size and (
        images.min() >= 0 and images.max() <= 255):
      images = images.astype(np.uint8)
    elif np.issubdtype(images.dtype, np.integer) and not images.size:
      images = images.astype(np.uint8)
    else:
      raise UserError(f"{what} has dtype {images.dtype}; expected uint8 pixels in 0..255")
  s, c = IMAGE_SIZE, CHANNELS
  if images.ndim == 4 and images.shape[1:] == (s, s, c):
    return images
  if images.ndim == 4 and images.shape[1:] == (c, s, s):
    return np.ascontiguousarray(einops.rearrange(images, "n c h w -> n h w c"))
  if images.ndim == 2 and images.shape[1] == s * s * c:
    if layout == "hwc":
      return images.reshape(-1, s, s, c)
    return np.ascontiguousarray(einops.rearrange(images, "n (c h w) -> n h w c", c=c, h=s))
  raise UserError(f"{what} has shape {images.shape}; expected (N,48,48,3), (N,3,48,48) or "
                  "(N,6912)")


def _check_labels(labels: np.ndarray, what: str) -> np.ndarray:
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise UserError(f"{what} has shape {labels.shape} and dtype {labels.dtype}; expected a 1-D "
                    "integer array of class ids")
  if labels.size and (labels.min() < 0 or labels.max() >= len(CLASSES)):
    raise UserError(f"{what} holds labels in {labels.min()}..{labels.max()}; expected 0..5 "
                    f"({', '.join(CLASSES)}) for the Intel data; another dataset of 48x48x3 "
                    "images names its classes in a class_names array")
  return labels.astype(np.int32)
