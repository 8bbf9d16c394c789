"""The CNN's --predict: classify image files with a trained run's best checkpoint.

Each file is decoded and resized as the run's data was (PIL bilinear to the run's image size,
`intel_kaggle.decode_paths`, with its limits on what an image may be), put through the run's
pixel pipeline (`--pixels` of the run) and classified in eval mode. The workdir is only read (a
shared lock; it may be read-only); the predictions go to a CSV file that is never an existing
one. A file that cannot be classified is one line of its own; the others are still classified.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import glob
import io
import os
from pathlib import Path
from typing import Callable, Sequence

import jax
import numpy as np

from hw2jax import files
from hw2jax.data import intel, intel_kaggle
from hw2jax.data.intel import printable
from hw2jax.errors import UserError
from hw2jax.recipes import cnn

PREDICTIONS = "predictions.csv"
BATCH = 256                        # images classified per call (one compiled program)


@dataclasses.dataclass(frozen=True)
class Prediction:
  """One image: its path as given and the probability of each class (the run's class order)."""
  path: str
  probabilities: tuple[float, ...]

  def top(self, classes: Sequence[str], k: int) -> list[tuple[str, float]]:
    order = np.argsort(-np.asarray(self.probabilities), kind="stable")[:k]
    return [(classes[i], self.probabilities[i]) for i in order]


@dataclasses.dataclass(frozen=True)
class Predictions:
  """What --predict found: the classified images (the run's class names) and a line per file
  or part of --predict it could not classify."""
  classes: tuple[str, ...]
  images: list[Prediction]
  problems: list[str]


def image_paths(spec: str) -> tuple[list[Path], list[str]]:
  """The files `spec` names (an image file, a folder: the files in it, a glob, or several of
  those separated by commas) in order, and a line for each part that names none it can read.
  Only regular files are read: a FIFO or a device would block or never end."""
  parts = [spec] if _is_file(Path(spec)) else [p.strip() for p in spec.split(",") if p.strip()]
  if not parts:
    raise UserError(f"--predict={printable(spec)} names no file; give image files, a folder "
                    "or a glob")
  found, problems = [], []
  for part in parts:
    paths, problem = _part(part)
    found += paths
    if problem:
      problems.append(f"{printable(part)}: {problem}")
  return list(dict.fromkeys(found)), problems


def _part(part: str) -> tuple[list[Path], str | None]:
  """The files one part of --predict names, or why it names none."""
  path = Path(part)
  try:
    if path.is_dir():
      inside = sorted(p for p in path.iterdir() if not p.name.startswith(".") and _is_file(p))
      return inside, None if inside else "a folder with no files in it"
    if path.exists():
      return ([path], None) if _is_file(path) else (
          [], "not a regular file (a FIFO, a device or a socket is not read)")
    if glob.has_magic(part):
      matches = sorted(Path(m) for m in glob.glob(part) if _is_file(Path(m)))
      return matches, None if matches else "matches no file"
    return [], "no such file or folder"
  except OSError as e:       # no permission to look, a name too long, ...
    return [], f"cannot be read ({e.strerror or e})"


def _is_file(path: Path) -> bool:
  try:
    return path.is_file()
  except OSError:
    return False


def classify(trained: cnn.TrainedCnn, images: np.ndarray) -> np.ndarray:
  """(N, H, W, C) uint8 images as the run stores them -> (N, classes) probabilities."""
  pixels = intel.model_pixels(images, trained.config.pixels)
  model = trained.config.build_model(len(trained.classes))
  out = []
  for start in range(0, len(pixels), BATCH):
    batch = pixels[start:start + BATCH]
    padded = np.concatenate([batch, np.zeros((BATCH - len(batch), *batch.shape[1:]),
                                             batch.dtype)])
    out.append(np.asarray(_probabilities(model, trained.variables, padded))[:len(batch)])
  return np.concatenate(out) if out else np.zeros((0, len(trained.classes)), np.float32)


@functools.partial(jax.jit, static_argnums=0)
def _probabilities(model, variables, images):
  return jax.nn.softmax(model.apply(variables, images, train=False), axis=-1)


def decode(paths: Sequence[Path], shape: tuple[int, int, int]
           ) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
  """(images (N, H, W, C) uint8, which decoded, {index: why it did not}) of `paths`, read as the
  run's data was: colour resized to H x W, grey to one channel where the run's is."""
  decoded = intel_kaggle.decode_paths(paths, size=shape[:2])
  why = {}
  for i in np.flatnonzero(~decoded.ok):
    path = paths[i]
    if i in decoded.too_large:
      why[i] = (f"too large to be an image ({decoded.too_large[i]}; the limits are "
                f"{intel_kaggle.MAX_FILE_BYTES >> 20} MiB a file, "
                f"{intel_kaggle.MAX_PIXELS // 10**6} megapixels)")
    elif not _is_file(path) or not _readable(path):
      why[i] = "cannot be read (no permission, or gone)"
    else:
      why[i] = "not an image PIL can read whole (a truncated or damaged file, or another kind)"
  images = decoded.images
  if shape[2] == 1:                     # grey data: the luminance, as PIL converts
    images = np.rint(images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
    images = images.clip(0, 255).astype(np.uint8)[..., None]
  return images, decoded.ok, why


def _readable(path: Path) -> bool:
  try:
    with open(path, "rb"):
      return True
  except OSError:
    return False


def output_path(out: str | None) -> Path:
  """Where the CSV goes, checked before anything is read: `out` if nothing is there yet (else
  a UserError), or predictions.csv in the current folder, predictions_2.csv, ... (the first
  that does not exist); its folder must be one this process can write to."""
  if out is not None:
    path = Path(out)
    if not out.strip():
      raise UserError("--out is empty; give a file name")
    if path.exists() or path.is_symlink():
      raise UserError(f"--out={printable(out)} already exists; give a new file name "
                      "(--predict never overwrites)")
  else:
    path = _free_name()
  folder = path.parent
  if not folder.is_dir():
    raise UserError(f"--out={printable(out)}: {printable(folder)} is not a folder")
  if not os.access(folder, os.W_OK | os.X_OK):
    raise UserError(f"cannot write {printable(path)}: no permission to write into "
                    f"{printable(folder.resolve())}; give --out in a folder you can write to")
  return path


def _free_name() -> Path:
  path, n = Path(PREDICTIONS), 1
  while path.exists() or path.is_symlink():
    n += 1
    path = Path(f"{Path(PREDICTIONS).stem}_{n}.csv")
  return path


def csv_text(classes: Sequence[str], images: Sequence[Prediction]) -> str:
  """path, class, probability, then one probability column per class."""
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(["path", "class", "probability", *classes])
  for p in images:
    best = int(np.argmax(p.probabilities))
    writer.writerow([p.path, classes[best], f"{p.probabilities[best]:.6f}",
                     *(f"{x:.6f}" for x in p.probabilities)])
  return buffer.getvalue()


def write_csv(predictions: "Predictions", path: Path, chosen: bool) -> Path:
  """The CSV of `predictions` as the new file `path`, never replacing one: if `path` was taken
  meanwhile (another --predict in the same folder), the next free default name, or with a
  `chosen` --out a UserError. File names that are not UTF-8 keep their bytes."""
  data = csv_text(predictions.classes, predictions.images).encode("utf-8", "surrogateescape")
  while True:
    try:
      files.write_atomically(path, lambda f: f.write(data), new=True)
      return path
    except FileExistsError:
      if chosen:
        raise UserError(f"--out={printable(path)} was made by someone else while the images "
                        "were classified; nothing written, give a new file name") from None
      path = _free_name()


def predict(workdir: str | Path, spec: str, *, top: int = 3,
            log: Callable[[str], None] = print) -> "Predictions":
  """Classifies the images `spec` names (see `image_paths`) with the best checkpoint of the
  run in `workdir` and prints each one's `top` classes; `write_csv` writes them."""
  trained = cnn.trained_run(workdir, log=log)
  paths, problems = image_paths(spec)
  images, ok, why = decode(paths, trained.image_shape)
  probabilities = classify(trained, images[ok])
  results = [Prediction(str(p), tuple(float(x) for x in row))
             for p, row in zip((p for p, good in zip(paths, ok) if good), probabilities)]
  problems += [f"{printable(paths[i])}: {why[i]}" for i in sorted(why)]
  for r in results:
    log(f"{printable(r.path)}  " + "  ".join(f"{printable(c)} {p:.3f}"
                                              for c, p in r.top(trained.classes, top)))
  return Predictions(trained.classes, results, problems)
