"""Intel Image Classification from Kaggle's layout, a folder or its zip: seg_train -> train and
a seeded validation split, seg_test -> test, every image decoded and resized to 48x48, and the
conversion cached (an npz keyed by the source and its modification times).

The arrays are an `images.ImageData`, checked as the course npz is (`intel.checked_splits`).
Hostile files cost neither memory nor a crash: a file (or zip member) too large to be an image,
or an image whose header declares too many pixels, is skipped unread and named in one line;
members zip cannot read (encrypted, an unknown method) are skipped and counted as unreadable, as
are bzip2 and LZMA members (zipfile decompresses those without a bound: see `decode_members`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import io
import json
import os
import threading
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from hw2jax import cache, files
from hw2jax.data.images import ImageData
from hw2jax.data.intel import (CHANNELS, CLASSES, ENTRY_RE, IMAGE_SIZE, NPZ_KEYS, checked_splits,
                               printable)
from hw2jax.errors import UserError

VAL_FRACTION = 0.1
SPLIT_SEED = 42
# Bumped whenever the conversion changes, so stale caches are never reused.
_CACHE_VERSION = 3
_CACHE_PREFIX = "intel48-"
# What is decoded at all (Kaggle's images are 150x150 JPEGs of about 10 KB; a photo from any
# camera fits both): a file larger, or an image whose header declares more pixels, is skipped
# unread, so that a decompression bomb costs no memory.
MAX_FILE_BYTES = 128 << 20
MAX_PIXELS = 50_000_000
_CHUNK_BYTES = 64 << 20        # the files read at once hold at most this (and one file more)
_CHUNK_FILES = 1024
_LARGE_PIXELS = 4_000_000      # images above this decode one at a time: bounded memory
_LARGE = threading.Lock()
# What reading a zip member may raise when it is damaged or zip cannot read it (flags of a
# method zip lacks: NotImplementedError).
_MEMBER_ERRORS = (zipfile.BadZipFile, OSError, EOFError, zlib.error, NotImplementedError)
# The methods read: zipfile decompresses these at most as far as it is asked to read.
_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)


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
      infos = {i.filename: i for i in zf.infolist()}
      decoded = decode_members(zf, [infos[e.name] for e in entries])
  else:
    decoded = decode_paths([path / e.name for e in entries])
  images, ok, skipped = decoded.images, decoded.ok, decoded.skipped
  for line in decoded.skip_lines([e.name for e in entries], "intel data"):
    log(line)
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
      raise UserError(f"{printable(source)}: unknown class folder '{printable(cls)}' in "
                      f"{printable(name)}; expected {', '.join(CLASSES)}")
    entries.append(_Entry(split, CLASSES.index(cls), name))
  entries.sort(key=lambda e: (e.split, e.label, e.name))
  if not any(e.split == "train" for e in entries):
    raise UserError(f"{source} holds no seg_train/seg_train/<class>/ images: not the Kaggle Intel "
                    "layout")
  return entries


class TooLarge(Exception):
  """An image whose header declares more than MAX_PIXELS; the message says how many."""


def decode_image(data: bytes, size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE)
                 ) -> np.ndarray | None:
  """Image bytes (JPEG, PNG, ...) -> (*size, 3) uint8 (height, width), resized with PIL
  bilinear; None if unreadable. 16-bit, 32-bit integer and float pixels are scaled to 0..255,
  not clipped (see `_eight_bits`). Raises TooLarge, before decoding, for an image over MAX_PIXELS."""
  try:
    with Image.open(io.BytesIO(data)) as im:
      width, height = im.size
      if width * height > MAX_PIXELS:
        raise TooLarge(f"{width}x{height} pixels")
      with _LARGE if width * height > _LARGE_PIXELS else contextlib.nullcontext():
        im = _eight_bits(im)
        if im is None:
          return None
        im = im.convert("RGB")
        if im.size != size[::-1]:
          im = im.resize(size[::-1], Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8)
  except Image.DecompressionBombError:
    raise TooLarge("over PIL's decompression-bomb limit") from None
  except (OSError, ValueError, SyntaxError):
    return None


def _eight_bits(im: Image.Image) -> Image.Image | None:
  """`im` with 8-bit channels. Grey deeper than 8 bits (PIL's convert would clip it at 255) is
  scaled by its range: 16-bit ('I;16*') 0..65535; 32-bit integer ('I') 0..255 as is, else
  0..65535; float ('F') 0..1, else 0..255. None for pixels outside those (or not finite)."""
  if im.mode not in ("I", "F") and not im.mode.startswith("I;16"):
    return im
  pixels = np.asarray(im)
  if not pixels.size or not np.isfinite(pixels).all() or pixels.min() < 0:
    return None
  top = pixels.max()
  if im.mode == "F":
    full = 1.0 if top <= 1 else 255.0 if top <= 255 else None
  else:
    full = 255 if top <= 255 and im.mode == "I" else 65535 if top <= 65535 else None
  if full is None:
    return None
  return Image.fromarray(np.rint(pixels.astype(np.float32) * (255 / full)).astype(np.uint8), "L")


@dataclasses.dataclass(frozen=True)
class Decoded:
  """What `decode_files` made of n files: images (n, 48, 48, 3), which decoded (ok), and those
  too large to be images ({index: how large})."""
  images: np.ndarray
  ok: np.ndarray
  too_large: dict[int, str]

  @property
  def skipped(self) -> int:
    return int((~self.ok).sum())

  def skip_lines(self, names: Sequence[str], prefix: str) -> list[str]:
    """The log lines of the skipped files (`names` as the user knows them): those too large,
    with the limits, then the unreadable ones; one example each."""
    lines = []
    if self.too_large:
      first = min(self.too_large)
      lines.append(f"{prefix}: skipped {len(self.too_large)} file(s) too large to be an image "
                   f"(e.g. {printable(names[first])}: {self.too_large[first]}; the limits are "
                   f"{MAX_FILE_BYTES >> 20} MiB a file, {MAX_PIXELS // 10**6} megapixels)")
    bad = [i for i in np.flatnonzero(~self.ok) if i not in self.too_large]
    if bad:
      lines.append(f"{prefix}: skipped {len(bad)} unreadable or non-image files "
                   f"(e.g. {printable(names[bad[0]])})")
    return lines


def decode_files(sizes: Sequence[int], read: Callable[[int], bytes],
                 size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE)) -> Decoded:
  """Decodes files 0..n-1 (`decode_image`, in threads: PIL releases the GIL). File i, of
  `sizes[i]` bytes (a zip member's declared size), is read by `read(i)`: at most
  MAX_FILE_BYTES + 1 bytes, b"" if it cannot be. Memory stays bounded whatever the files hold: a
  file over MAX_FILE_BYTES is not read, one chunk holds files of at most _CHUNK_BYTES (and one
  file more), and an image over MAX_PIXELS is not decoded."""
  n = len(sizes)
  images = np.zeros((n, *size, CHANNELS), np.uint8)
  ok = np.zeros(n, bool)
  too_large = {}
  # PIL warns (two lines on stderr) on opening 89 to 179 megapixels; decode_image refuses them
  # itself, in one line. One process-wide filter for that category: warnings.catch_warnings is
  # not thread-safe, and decoding runs in threads.
  warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
  i = 0
  with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
    while i < n:
      chunk, held = [], 0
      while i < n and len(chunk) < _CHUNK_FILES and held < _CHUNK_BYTES:
        data = read(i) if sizes[i] <= MAX_FILE_BYTES else None
        if data is None:
          too_large[i] = _bytes_text(sizes[i])
        elif len(data) > MAX_FILE_BYTES:             # a file that grew since it was listed
          too_large[i] = f"over {MAX_FILE_BYTES >> 20} MiB"
        else:
          chunk.append((i, data))
          held += len(data)
        i += 1
      attempts = pool.map(functools.partial(_attempt, size=size), [data for _, data in chunk])
      for (j, _), image in zip(chunk, attempts):
        if isinstance(image, str):
          too_large[j] = image
        elif image is not None:
          images[j], ok[j] = image, True
  return Decoded(images, ok, too_large)


def decode_paths(paths: Sequence[Path], size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE)
                 ) -> Decoded:
  """`decode_files` of files on disk, at `size` (height, width)."""
  def read(i: int) -> bytes:
    try:
      with open(paths[i], "rb") as f:
        return f.read(MAX_FILE_BYTES + 1)
    except OSError:
      return b""
  return decode_files([_size(p) for p in paths], read, size)


def decode_members(zf: zipfile.ZipFile, infos: Sequence[zipfile.ZipInfo]) -> Decoded:
  """`decode_files` of zip members, each read no further than its declared size allows (zip
  stops there: a member that lies about its size fails its CRC). A member zip cannot read
  (damaged, encrypted, an unknown compression method) reads as no bytes: unreadable. So does
  one compressed with bzip2 or LZMA: zipfile decompresses all it reads of those at once and
  only then cuts the output to the declared size, so 785 bytes of bzip2 that declare 1 KB would
  still fill 1 GiB (images are stored or deflated: Kaggle's zip, and any zip tool's default)."""
  def read(i: int) -> bytes:
    if infos[i].flag_bits & 0x1 or infos[i].compress_type not in _METHODS:
      return b""                                   # encrypted (no password to give), or above
    try:
      with zf.open(infos[i]) as f:
        return f.read(MAX_FILE_BYTES + 1)
    except _MEMBER_ERRORS:
      return b""
  return decode_files([i.file_size for i in infos], read)


def _attempt(data: bytes, size: tuple[int, int]) -> np.ndarray | str | None:
  """decode_image's image, None if unreadable, or how much too large it is."""
  try:
    return decode_image(data, size)
  except TooLarge as e:
    return str(e)


def _size(path: Path) -> int:
  try:
    return path.stat().st_size
  except OSError:
    return 0


def _bytes_text(n: int) -> str:
  return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


# ----------------------------------------------------------------------------------------------
# Conversion cache


def _cache_root(cache_dir, environ) -> Path:
  return Path(cache_dir) if cache_dir is not None else cache.cache_root(environ) / "intel"


def _open_cache(path: Path, log: Callable[[str], None]) -> bool:
  """Whether the run may read and write the cache file `path`. Temp files that killed runs left
  beside it go first. Something else than a file at `path` (a folder) is not ours to delete:
  the run goes on without the cache, rather than leak a temp file it cannot rename there."""
  removed = files.remove_stale_temps(path.parent, _CACHE_PREFIX)
  if removed:
    log(f"intel data: removed {len(removed)} unfinished cache file(s) of interrupted runs "
        f"({', '.join(p.name for p in removed)})")
  if path.exists() and not path.is_file():
    log(f"intel data: WARNING: the conversion cache {path} is not a file (a folder?); continuing "
        "without the cache (remove it to cache the conversion)")
    return False
  return True


def _read_cache(path: Path, n_entries: int, log: Callable[[str], None]) -> ImageData | None:
  """The cached conversion, checked like the course npz (`checked_splits`), against the
  source's image count and against the digest of its arrays written with them (arrays of the
  same shapes rewritten by anything else): a damaged or foreign cache is deleted (it is ours to
  rebuild), never trusted. None if there is none."""
  if not path.is_file():
    return None
  try:
    if not zipfile.is_zipfile(path):  # np.load would try it as a pickle, and blame pickles
      raise UserError("not an npz archive")
    with np.load(path, allow_pickle=False) as npz:
      arrays = {k: npz[k] for k in (*NPZ_KEYS, "skipped", "digest")}
    data = ImageData(**checked_splits(arrays, "hwc", ""), source="", classes=CLASSES,
                     skipped=int(arrays["skipped"]), name="intel")
    held = sum(data.sizes().values()) + data.skipped
    if held != n_entries:
      raise UserError(f"it accounts for {held} images, the source has {n_entries}")
    if not np.array_equal(arrays["digest"], _digest(arrays)):
      raise UserError("its arrays are not the ones it was written with")
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
  temp file stays behind (`files.write_atomically`)."""
  arrays = {k: getattr(data, k) for k in NPZ_KEYS}
  arrays["skipped"] = np.int64(data.skipped)
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_atomically(path, lambda f: np.savez(f, **arrays, digest=_digest(arrays)))
  except Exception as e:
    log(f"intel data: WARNING: could not write the conversion cache {path} ({_reason(e)}); "
        "continuing without it")


def _digest(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
  """SHA-256 of the cached arrays (NPZ_KEYS and skipped: dtype, shape and bytes), as 32 uint8."""
  h = hashlib.sha256()
  for key in (*NPZ_KEYS, "skipped"):
    a = np.ascontiguousarray(arrays[key])
    h.update(json.dumps([key, a.dtype.str, a.shape]).encode())
    h.update(a.data)
  return np.frombuffer(h.digest(), np.uint8)


def _reason(e: BaseException) -> str:
  """An exception in a few words: an OSError's strerror ('No space left on device')."""
  if isinstance(e, OSError) and e.strerror:
    return e.strerror
  return _one_line(f"{type(e).__name__}: {e}")


def _one_line(text) -> str:
  return " ".join(str(text).split())
