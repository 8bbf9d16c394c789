"""Intel Image Classification at 48x48: the course npz, Kaggle's folder or zip, the split checks
and the conversion cache. (Where the data is found, or downloaded: `hw2jax.data.sources`.)

Everything ends as uint8 NHWC numpy arrays (N, 48, 48, 3) with int32 labels in 0..5; moving them
onto the device is the trainer's job (once per run). Bad input raises `UserError` with one line
that names the file it is about.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import io
import json
import os
import re
import zipfile
import zlib
from pathlib import Path
from typing import Callable, Iterable, Mapping

import einops
import numpy as np
from PIL import Image

from hw2jax import cache
from hw2jax.errors import UserError

CLASSES = ("buildings", "forest", "glacier", "mountain", "sea", "street")
IMAGE_SIZE = 48
CHANNELS = 3
VAL_FRACTION = 0.1
SPLIT_SEED = 42
NPZ_KEYS = ("train_images", "train_labels", "val_images", "val_labels", "test_images",
            "test_labels")
SPLITS = ("train", "val", "test")
# Bumped whenever the conversion changes, so stale caches are never reused.
_CACHE_VERSION = 2
_ENTRY_RE = re.compile(r"(?:^|/)seg_(train|test)/(?:seg_(?:train|test)/)?([^/]+)/([^/]+)$")


@dataclasses.dataclass(frozen=True)
class IntelData:
  """The three splits as numpy arrays: images (N, 48, 48, 3) uint8 NHWC, labels (N,) int32."""
  train_images: np.ndarray
  train_labels: np.ndarray
  val_images: np.ndarray
  val_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  source: str
  skipped: int = 0

  def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of 'train', 'val' or 'test'."""
    return getattr(self, f"{name}_images"), getattr(self, f"{name}_labels")

  def sizes(self) -> dict[str, int]:
    return {name: int(self.split(name)[1].shape[0]) for name in SPLITS}

  def subset(self, n_train: int | None, n_eval: int | None, seed: int = 0) -> "IntelData":
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


# ----------------------------------------------------------------------------------------------
# Sources


def resolve(path: Path, origin: str) -> Path:
  """The Intel source `path` names (an npz, a zip, or the one inside a folder); `origin` says
  how the user gave it (e.g. '--data_path'), for the message if it is none."""
  if path.is_dir():
    found = find_in_folder(path)
    if found is None:
      raise UserError(f"{origin} {path} holds no Intel data: expected seg_train/seg_train/<class>/ "
                      "folders, an Intel npz or the Kaggle zip")
    return found
  if path.suffix.lower() not in (".npz", ".zip"):
    raise UserError(f"{origin} {path} is neither an .npz, a .zip nor a folder")
  return path


def find_in_folder(folder: Path) -> Path | None:
  """The Intel source inside `folder`: Kaggle layout first, then one npz, then one zip."""
  if (folder / "seg_train").is_dir():
    return folder
  for pattern in ("intel_landscapes*.npz", "*.npz", "intel-image-classification.zip", "*.zip"):
    matches = sorted(folder.glob(pattern))
    if pattern == "*.zip":
      matches = [m for m in matches if _zip_has_layout(m)]
    if len(matches) == 1:
      return matches[0]
    if len(matches) > 1:
      raise UserError(f"{folder} holds several candidates ({', '.join(m.name for m in matches)}); "
                      "pick one with --data_path")
  return None


def _zip_has_layout(path: Path) -> bool:
  try:
    with zipfile.ZipFile(path) as zf:
      return any(_ENTRY_RE.search(n) for n in zf.namelist())
  except (zipfile.BadZipFile, OSError):
    return False


# ----------------------------------------------------------------------------------------------
# Loading


def check_splits(data: IntelData, log: Callable[[str], None] = print) -> IntelData:
  """Every split must hold images, and validation and test every class that training has (a
  class missing from training is allowed, with a warning line): found when the data is
  loaded, not after the last epoch."""
  kaggle = not data.source.startswith("npz")
  where = {"train": "seg_train/seg_train/<class>/", "val": "seg_train (10% of it)",
           "test": "seg_test/seg_test/<class>/"} if kaggle else {
               s: f"{s}_images / {s}_labels" for s in SPLITS}
  for split in SPLITS:
    if data.sizes()[split] == 0:
      raise UserError(f"{data.source}: the {split} split is empty (no images in {where[split]}); "
                      "every split needs images")
  present = {split: set(np.unique(data.split(split)[1]).tolist()) for split in SPLITS}
  absent = [CLASSES[c] for c in range(len(CLASSES)) if c not in present["train"]]
  if absent:
    log(f"intel data: WARNING: no training image of class {', '.join(absent)} (an empty "
        f"folder?); training on {len(CLASSES) - len(absent)} classes")
  for split in ("val", "test"):
    lacking = [CLASSES[c] for c in sorted(present["train"] - present[split])]
    if lacking:
      raise UserError(f"{data.source}: the {split} split has no image of class "
                      f"{', '.join(lacking)}, which the training split has; its accuracy would "
                      "not measure that class")
  return data


def load_npz(path: str | os.PathLike, *, layout: str = "hwc") -> IntelData:
  """Reads the course's npz. Images may be (N,48,48,3), (N,3,48,48) or flat (N,6912).

  Flat images are ambiguous, so `layout` ('hwc' or 'chw') says how to read them; 4-D images are
  recognised from their shape and never reinterpreted.
  """
  path = Path(path)
  if layout not in ("hwc", "chw"):
    raise UserError(f"layout {layout!r} is not valid; use hwc or chw")
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
      arrays = {k: npz[k] for k in NPZ_KEYS}
  except UserError:
    raise
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise UserError(f"{path} is not a readable npz file ({type(e).__name__}: {e}); "
                    "re-download it") from None
  out = {}
  for split in SPLITS:
    images = _to_nhwc(arrays[f"{split}_images"], layout, f"{path.name}:{split}_images")
    labels = _check_labels(arrays[f"{split}_labels"], f"{path.name}:{split}_labels")
    if images.shape[0] != labels.shape[0]:
      raise UserError(f"{path.name}: {split}_images has {images.shape[0]} images but "
                      f"{split}_labels has {labels.shape[0]} labels")
    out[f"{split}_images"], out[f"{split}_labels"] = images, labels
  return IntelData(**out, source=f"npz {path}")


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
                    f"({', '.join(CLASSES)})")
  return labels.astype(np.int32)


# ----------------------------------------------------------------------------------------------
# Kaggle folder or zip


@dataclasses.dataclass(frozen=True)
class _Entry:
  split: str    # "train" or "test"
  label: int
  name: str     # path inside the zip or relative to the folder


def load_kaggle(path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                val_fraction: float = VAL_FRACTION, split_seed: int = SPLIT_SEED,
                log: Callable[[str], None] = print,
                environ: Mapping[str, str] | None = None) -> IntelData:
  """Reads Kaggle's layout (folder or zip): seg_train -> train + seeded val split, seg_test -> test.

  Images of any size are resized to 48x48 (PIL bilinear); unreadable files are skipped and counted.
  The arrays are cached, keyed by the source and its modification times.
  """
  path = Path(path).resolve()
  is_zip = path.is_file()
  if is_zip:
    try:
      zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
      raise UserError(f"{path} is not a readable zip ({e}); re-download it") from None
    with zf:
      infos = [i for i in zf.infolist() if not i.is_dir()]
      entries = _entries((i.filename for i in infos), path)
      fingerprint = [str(path), path.stat().st_size, path.stat().st_mtime_ns]
  else:
    files = sorted(p for p in path.rglob("*") if p.is_file())
    rel = [p.relative_to(path).as_posix() for p in files]
    entries = _entries(rel, path)
    stats = [(r, p.stat().st_size, p.stat().st_mtime_ns) for r, p in zip(rel, files)
             if _ENTRY_RE.search(r)]
    fingerprint = [str(path), stats]
  key = hashlib.sha256(json.dumps([_CACHE_VERSION, fingerprint, val_fraction, split_seed])
                       .encode()).hexdigest()[:24]
  cache = _cache_root(cache_dir, environ) / f"intel48-{key}.npz"
  cached = _read_cache(cache, log)
  if cached is not None:
    log(f"intel data: using cached conversion {cache}")
    return dataclasses.replace(cached, source=f"{'zip' if is_zip else 'folder'} {path}")
  log(f"intel data: converting {len(entries)} images from {path} to 48x48 (cached afterwards)")
  if is_zip:
    with zipfile.ZipFile(path) as zf:
      images, ok = _decode_all(_tolerant(zf.read), entries)
  else:
    images, ok = _decode_all(lambda name: (path / name).read_bytes(), entries)
  skipped = int((~ok).sum())
  if skipped:
    bad = [e.name for e, good in zip(entries, ok) if not good]
    log(f"intel data: skipped {skipped} unreadable or non-image files (e.g. {bad[0]})")
  labels = np.array([e.label for e in entries], np.int32)
  is_train = np.array([e.split == "train" for e in entries])
  train_idx = np.flatnonzero(is_train & ok)
  test_idx = np.flatnonzero(~is_train & ok)
  if not len(train_idx):
    raise UserError(f"{path} holds no readable seg_train images")
  val_idx, train_idx = _split_validation(train_idx, labels, val_fraction, split_seed)
  data = IntelData(
      train_images=images[train_idx], train_labels=labels[train_idx],
      val_images=images[val_idx], val_labels=labels[val_idx],
      test_images=images[test_idx], test_labels=labels[test_idx],
      source=f"{'zip' if is_zip else 'folder'} {path}", skipped=skipped)
  _write_cache(cache, data, log)
  return data


def _split_validation(idx: np.ndarray, labels: np.ndarray, fraction: float, seed: int
                      ) -> tuple[np.ndarray, np.ndarray]:
  """A seeded random `fraction` of `idx` for validation, the rest for training (both sorted).

  A class the random draw left out of validation (only on small data: on the full set every
  class has thousands of images) gets the first of its images in the draw's order, as long as
  training keeps one, so that validation measures every class training has.
  """
  perm = idx[np.random.default_rng(seed).permutation(len(idx))]
  n_val = int(np.ceil(fraction * len(idx)))
  val, train = list(perm[:n_val]), list(perm[n_val:])
  for c in np.unique(labels[idx]):
    in_train = [i for i in train if labels[i] == c]
    if not any(labels[i] == c for i in val) and len(in_train) >= 2:
      train.remove(in_train[0])
      val.append(in_train[0])
  return np.sort(np.array(val, np.int64)), np.sort(np.array(train, np.int64))


def _entries(names: Iterable[str], source: Path) -> list[_Entry]:
  entries = []
  for name in names:
    m = _ENTRY_RE.search(name)
    if not m or "/__MACOSX/" in f"/{name}":
      continue
    split, cls, _ = m.groups()
    if cls not in CLASSES:
      raise UserError(f"{source}: unknown class folder {cls!r} in {name}; expected "
                      f"{', '.join(CLASSES)}")
    entries.append(_Entry(split, CLASSES.index(cls), name))
  entries.sort(key=lambda e: (e.split, e.label, e.name))
  if not any(e.split == "train" for e in entries):
    raise UserError(f"{source} holds no seg_train/seg_train/<class>/ images: not the Kaggle Intel "
                    "layout")
  return entries


def decode_image(data: bytes) -> np.ndarray | None:
  """JPEG/PNG bytes -> (48, 48, 3) uint8, resized with PIL bilinear; None if unreadable."""
  try:
    with Image.open(io.BytesIO(data)) as im:
      im = im.convert("RGB")
      if im.size != (IMAGE_SIZE, IMAGE_SIZE):
        im = im.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
      return np.asarray(im, dtype=np.uint8)
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
    return None


def _tolerant(read: Callable[[str], bytes]) -> Callable[[str], bytes]:
  """`read`, with a damaged zip member (bad CRC, cut short) read as no bytes: it is then
  skipped and counted like any unreadable image."""
  def safe(name: str) -> bytes:
    try:
      return read(name)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error):
      return b""
  return safe


def _decode_all(read: Callable[[str], bytes], entries: list[_Entry],
                chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
  """Decodes every entry (threads: PIL releases the GIL) -> (images, ok mask)."""
  images = np.zeros((len(entries), IMAGE_SIZE, IMAGE_SIZE, CHANNELS), np.uint8)
  ok = np.zeros(len(entries), bool)
  workers = min(8, os.cpu_count() or 1)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    for start in range(0, len(entries), chunk):
      blobs = [read(e.name) for e in entries[start:start + chunk]]
      for i, img in enumerate(pool.map(decode_image, blobs), start):
        if img is not None:
          images[i], ok[i] = img, True
  return images, ok


# ----------------------------------------------------------------------------------------------
# Conversion cache


def _cache_root(cache_dir, environ) -> Path:
  return Path(cache_dir) if cache_dir is not None else cache.cache_root(environ) / "intel"


def _read_cache(path: Path, log) -> IntelData | None:
  if not path.exists():
    return None
  try:
    with np.load(path, allow_pickle=False) as npz:
      fields = {k: npz[k] for k in NPZ_KEYS}
      skipped = int(npz["skipped"])
    return IntelData(**fields, source="", skipped=skipped)
  except Exception as e:  # a damaged cache is rebuilt, never trusted
    log(f"intel data: ignoring unreadable cache {path} ({type(e).__name__})")
    return None


def _write_cache(path: Path, data: IntelData, log) -> None:
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
    np.savez(tmp, **{k: getattr(data, k) for k in NPZ_KEYS}, skipped=np.int64(data.skipped))
    os.replace(tmp, path)
  except OSError as e:
    log(f"intel data: could not write cache {path} ({e}); the next run converts again")
