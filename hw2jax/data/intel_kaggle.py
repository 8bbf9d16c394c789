"""Intel Image Classification from Kaggle's layout, a folder or its zip: seg_train -> train and
a seeded validation split, seg_test -> test, every image decoded and resized to 48x48, and the
conversion cached (an npz keyed by the source and its modification times).

The arrays are an `images.ImageData`, checked as the course npz is (`intel.checked_splits`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import io
import json
import os
import zipfile
import zlib
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
from PIL import Image

from hw2jax import cache
from hw2jax.data.images import ImageData
from hw2jax.data.intel import CHANNELS, CLASSES, ENTRY_RE, IMAGE_SIZE, NPZ_KEYS, checked_splits
from hw2jax.errors import UserError

VAL_FRACTION = 0.1
SPLIT_SEED = 42
# Bumped whenever the conversion changes, so stale caches are never reused.
_CACHE_VERSION = 2
_CACHE_PREFIX = "intel48-"


@dataclasses.dataclass(frozen=True)
class _Entry:
  split: str    # "train" or "test"
  label: int
  name: str     # path inside the zip or relative to the folder


def load_kaggle(path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                val_fraction: float = VAL_FRACTION, split_seed: int = SPLIT_SEED,
                log: Callable[[str], None] = print,
                environ: Mapping[str, str] | None = None) -> ImageData:
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
             if ENTRY_RE.search(r)]
    fingerprint = [str(path), stats]
  key = hashlib.sha256(json.dumps([_CACHE_VERSION, fingerprint, val_fraction, split_seed])
                       .encode()).hexdigest()[:24]
  cache_file = _cache_root(cache_dir, environ) / f"{_CACHE_PREFIX}{key}.npz"
  use_cache = _open_cache(cache_file, log)
  cached = _read_cache(cache_file, len(entries), log) if use_cache else None
  if cached is not None:
    log(f"intel data: using cached conversion {cache_file}")
    return dataclasses.replace(cached, source=f"{'zip' if is_zip else 'folder'} {path}")
  log(f"intel data: converting {len(entries)} images from {path} to 48x48"
      f"{' (cached afterwards)' if use_cache else ''}")
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
  val_idx, train_idx = split_validation(train_idx, labels, val_fraction, split_seed)
  data = ImageData(
      train_images=images[train_idx], train_labels=labels[train_idx],
      val_images=images[val_idx], val_labels=labels[val_idx],
      test_images=images[test_idx], test_labels=labels[test_idx],
      source=f"{'zip' if is_zip else 'folder'} {path}", classes=CLASSES, skipped=skipped,
      name="intel")
  if use_cache:
    _write_cache(cache_file, data, log)
  return data


def split_validation(idx: np.ndarray, labels: np.ndarray, fraction: float, seed: int
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
    m = ENTRY_RE.search(name)
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


def _open_cache(path: Path, log: Callable[[str], None]) -> bool:
  """Whether the run may read and write the cache file `path`. Temp files that killed runs left
  beside it go first. Something else than a file at `path` (a folder) is not ours to delete:
  the run goes on without the cache, rather than leak a temp file it cannot rename there."""
  removed = cache.remove_stale_temps(path.parent, _CACHE_PREFIX)
  if removed:
    log(f"intel data: removed {len(removed)} unfinished cache file(s) of interrupted runs "
        f"({', '.join(p.name for p in removed)})")
  if path.exists() and not path.is_file():
    log(f"intel data: WARNING: the conversion cache {path} is not a file (a folder?); continuing "
        "without the cache (remove it to cache the conversion)")
    return False
  return True


def _read_cache(path: Path, n_entries: int, log: Callable[[str], None]) -> ImageData | None:
  """The cached conversion, checked like the course npz (`checked_splits`) and against the
  source's image count: a damaged or foreign cache is deleted (it is ours to rebuild), never
  trusted. None if there is none."""
  if not path.is_file():
    return None
  try:
    if not zipfile.is_zipfile(path):  # np.load would try it as a pickle, and blame pickles
      raise UserError("not an npz archive")
    with np.load(path, allow_pickle=False) as npz:
      arrays = {k: npz[k] for k in (*NPZ_KEYS, "skipped")}
    data = ImageData(**checked_splits(arrays, "hwc", ""), source="", classes=CLASSES,
                     skipped=int(arrays["skipped"]), name="intel")
    held = sum(data.sizes().values()) + data.skipped
    if held != n_entries:
      raise UserError(f"it accounts for {held} images, the source has {n_entries}")
    return data
  except Exception as e:
    _discard(path, e if isinstance(e, UserError) else f"unreadable: {_reason(e)}", log)
    return None


def _discard(path: Path, reason, log: Callable[[str], None]) -> None:
  """Deletes an invalid cache file: it is ours, rebuilt from the source, and left in place it
  would be read (and fail) again on every run."""
  try:
    path.unlink()
    done = "deleted it"
  except OSError:
    done = "ignoring it"
  log(f"intel data: WARNING: the conversion cache {path} is invalid ({_one_line(reason)}); "
      f"{done}, converting again")


def _write_cache(path: Path, data: ImageData, log: Callable[[str], None]) -> None:
  """Writes the conversion cache. A failure (full disk, no permission) costs only the next run
  a conversion, so it is a warning line: this run goes on with the arrays it converted. No
  temp file stays behind (`cache.write_atomically`)."""
  arrays = {k: getattr(data, k) for k in NPZ_KEYS}
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    cache.write_atomically(
        path, lambda f: np.savez(f, **arrays, skipped=np.int64(data.skipped)))
  except Exception as e:
    log(f"intel data: WARNING: could not write the conversion cache {path} ({_reason(e)}); "
        "continuing without it")


def _reason(e: BaseException) -> str:
  """An exception in a few words: an OSError's strerror ('No space left on device')."""
  if isinstance(e, OSError) and e.strerror:
    return e.strerror
  return _one_line(f"{type(e).__name__}: {e}")


def _one_line(text) -> str:
  return " ".join(str(text).split())
