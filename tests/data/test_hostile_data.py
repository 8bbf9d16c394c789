"""Issue 28's hostile data files: a zip decompression bomb and other files too large to be an
image, encrypted and unknown-method zip members, stray files and odd names in Kaggle's layout, a
conversion cache rewritten with other pixels, 16-bit and float images, a TSV line of one TAB."""

import base64
import bz2
import io
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import cli_env, jpeg_bytes, kaggle_files, write_kaggle_folder, write_kaggle_zip
from hw2jax import UserError
from hw2jax.data import intel, intel_kaggle, phonemes, sources

GIB = 1 << 30


def quiet(_):
  pass


# ---------------------------------------------------------------- zips written byte by byte


def member(name: str, data: bytes, *, method: int = 0, flags: int = 0) -> tuple:
  """A zip member stored as is (method 0) unless `method` says otherwise (`data` is then taken
  as already compressed); `flags` is the general purpose bit field (bit 0: encrypted)."""
  return name, data, zlib.crc32(data), len(data), method, flags


def raw_zip(path: Path, members: list[tuple]) -> Path:
  """A zip of (name, stored bytes, crc, uncompressed size, method, flags) members, its local and
  central headers written here, so a member may claim anything."""
  out, central = bytearray(), bytearray()
  for name, stored, crc, size, method, flags in members:
    raw = name.encode()
    central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, flags, method, 0, 0x21, crc,
                           len(stored), size, len(raw), 0, 0, 0, 0, 0, len(out)) + raw
    out += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, flags, method, 0, 0x21, crc, len(stored),
                       size, len(raw), 0) + raw + stored
  end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central),
                    len(out), 0)
  path.write_bytes(bytes(out + central + end))
  return path


def deflated_zeros(size: int, block: int = 1 << 24) -> tuple:
  """A member of `size` zero bytes (a multiple of `block`), deflated: one block compressed and
  fully flushed (so it stands alone), repeated, then deflate's final empty block."""
  c = zlib.compressobj(9, zlib.DEFLATED, -15)
  piece = c.compress(bytes(block)) + c.flush(zlib.Z_FULL_FLUSH)
  crc, zeros = 0, bytes(block)
  for _ in range(size // block):
    crc = zlib.crc32(zeros, crc)
  stream = piece * (size // block) + zlib.compressobj(9, zlib.DEFLATED, -15).flush()
  return stream, crc, size, zipfile.ZIP_DEFLATED, 0


# bz2.compress(bytes(1 << 30), 9): 785 bytes, but 6 s to make.
BZIP2_GIB = base64.b64decode(
    "QlpoOTFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcx"
    "QVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZ"
    "Dgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8B"
    "X45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADA"
    "AAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAA"
    "MIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZC"
    "oCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqA"
    "lzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkm"
    "U1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni"
    "3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45A"
    "AMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1lIfF/JAIpSyADAAAAE"
    "AAggADDMBSmmkSJDYUSJDxdyRThQkPaI5AI=")


def png_header(width: int, height: int) -> bytes:
  """A grey PNG whose header declares width x height pixels, with one row of pixel data."""
  def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0,
                                                           0, 0))
          + chunk(b"IDAT", zlib.compress(bytes(width + 1))) + chunk(b"IEND", b""))


def kaggle_zip_with(path: Path, *extra: tuple) -> Path:
  return raw_zip(path, [member(n, d) for n, d in kaggle_files().items()] + list(extra))


# ---------------------------------------------------------------- item 2: bombs, bounded memory

CHILD = """
import sys
from hw2jax.data import class_folders, intel_kaggle
kind, path, cache = sys.argv[1:]
if kind == "class folders":
  data = class_folders.load_class_folders(path)
else:
  data = intel_kaggle.load_kaggle(path, cache_dir=cache)
print("result", sum(data.sizes().values()), data.skipped)
# VmHWM, not getrusage's ru_maxrss: the latter keeps the peak of the parent it was forked from
# (a pytest worker that ran the CLIs), the former is this process image's own.
print("peak_kib", next(line.split()[1] for line in open("/proc/self/status")
                       if line.startswith("VmHWM:")))
"""
BOMB = "seg_train/seg_train/forest/bomb.jpg"


def hostile_source(tmp_path: Path, kind: str) -> tuple[Path, str, int]:
  """(source, the hostile file's name as logged, the images it holds beside it)."""
  if kind == "zip, 1.5 GiB of zeros":
    zeros = deflated_zeros(3 * GIB // 2)
    return kaggle_zip_with(tmp_path / "bomb.zip", (BOMB, *zeros)), BOMB, 42
  if kind == "zip, bzip2 lying about its size":                 # 1 GiB declared as 1 KB
    assert bz2.BZ2Decompressor().decompress(BZIP2_GIB, 16) == bytes(16)
    lie = (BOMB, BZIP2_GIB, zlib.crc32(bytes(1024)), 1024, zipfile.ZIP_BZIP2, 0)
    return kaggle_zip_with(tmp_path / "bomb.zip", lie), BOMB, 42
  if kind == "zip, 100 megapixels":
    name = "seg_train/seg_train/forest/huge.png"
    huge = member(name, png_header(10_000, 10_000))
    return kaggle_zip_with(tmp_path / "huge.zip", huge), name, 42
  if kind == "folder, 1.5 GiB file":
    root = write_kaggle_folder(tmp_path / "kaggle")
    with open(root / BOMB, "wb") as f:                         # sparse: no disk, no time
      f.truncate(3 * GIB // 2)
    return root, BOMB, 42
  root = tmp_path / "pets"                                      # class folders
  for c, cls in enumerate(("cat", "dog")):
    (root / cls).mkdir(parents=True)
    for i in range(10):
      (root / cls / f"{i}.jpg").write_bytes(jpeg_bytes(np.full((60, 60, 3), 90 * c, np.uint8)))
  with open(root / "cat/bomb.jpg", "wb") as f:
    f.truncate(3 * GIB // 2)
  return root, str(root / "cat/bomb.jpg"), 20


@pytest.mark.parametrize("kind", ["zip, 1.5 GiB of zeros", "zip, bzip2 lying about its size",
                                  "zip, 100 megapixels", "folder, 1.5 GiB file", "class folders"])
def test_a_file_too_large_to_be_an_image_is_one_line_in_bounded_memory(tmp_path, kind):
  source, name, images = hostile_source(tmp_path, kind)
  proc = subprocess.run([sys.executable, "-c", CHILD, kind, str(source), str(tmp_path / "c")],
                        env=cli_env(tmp_path), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert proc.stderr.strip() == ""                              # no PIL warning, no traceback
  lines = proc.stdout.splitlines()
  peak_mib = int(lines[-1].split()[1]) / 1024
  print(f"\n{kind}: peak RSS {peak_mib:.0f} MiB")
  assert peak_mib < 1024, f"{kind}: peak RSS {peak_mib:.0f} MiB"
  naming = [line for line in lines if name in line]
  said = "unreadable" if "lying" in kind else "too large"      # it can only fail its CRC
  assert len(naming) == 1 and said in naming[0], lines
  held, skipped = map(int, lines[-2].split()[1:])
  assert held == images                                         # the rest converted
  assert skipped == (3 if kind != "class folders" else 1)       # + kaggle_files' two bad files


# ---------------------------------------------------------------- item 10: members zip can't read


@pytest.mark.parametrize("flags, method", [(1, 0), (0, 77)], ids=["encrypted", "unknown method"])
def test_an_encrypted_or_unknown_method_member_is_skipped_and_counted(tmp_path, flags, method):
  victim = "seg_train/seg_train/glacier/secret.jpg"
  path = kaggle_zip_with(tmp_path / "intel.zip",
                         member(victim, jpeg_bytes(np.zeros((48, 48, 3), np.uint8)),
                                flags=flags, method=method))
  logs = []
  data = intel_kaggle.load_kaggle(path, log=logs.append, cache_dir=tmp_path / "c")
  assert data.skipped == 3                          # the victim + kaggle_files' two bad files
  assert sum(data.sizes().values()) == 42
  assert any("skipped 3 unreadable" in line for line in logs), logs


# ---------------------------------------------------------------- item 16: Kaggle folders


@pytest.mark.parametrize("kind", ["zip", "folder"])
def test_a_stray_file_beside_the_class_folders_is_ignored(tmp_path, kind):
  files = {**kaggle_files(), "seg_test/seg_test/readme.txt": b"hello",
           "seg_train/seg_train/.DS_Store": b"\0"}
  if kind == "zip":
    source = raw_zip(tmp_path / "intel.zip", [member(n, d) for n, d in files.items()])
  else:
    source = tmp_path / "intel"
    for rel, data in files.items():
      (source / rel).parent.mkdir(parents=True, exist_ok=True)
      (source / rel).write_bytes(data)
  data = intel_kaggle.load_kaggle(source, log=quiet, cache_dir=tmp_path / "c")
  assert sum(data.sizes().values()) == 42 and data.skipped == 2


def test_a_class_whose_only_image_was_drawn_for_validation_is_said_so(tmp_path):
  source = tmp_path / "intel"
  for rel, data in kaggle_files().items():         # mountain: one training image, 300.jpg
    if "seg_train/seg_train/mountain/" not in rel or rel.endswith("/300.jpg"):
      (source / rel).parent.mkdir(parents=True, exist_ok=True)
      (source / rel).write_bytes(data)
  mountain = intel.CLASSES.index("mountain")
  for seed in range(200):                          # a seed whose draw takes it for validation
    data = intel_kaggle.load_kaggle(source, log=quiet, split_seed=seed, cache_dir=tmp_path / "c")
    if mountain not in data.train_labels:
      break
  assert mountain in data.val_labels
  logs = []
  intel.check_splits(data, logs.append)
  (warning,) = [line for line in logs if "WARNING" in line]
  assert ("no training image of class mountain (its images are all in the val and test splits)"
          in warning)
  assert "empty folder" not in warning


@pytest.mark.parametrize("kind", ["zip", "folder", "class folders"])
def test_a_class_folder_named_with_a_line_break_is_one_line(tmp_path, kind):
  jpeg = jpeg_bytes(np.zeros((48, 48, 3), np.uint8))
  if kind == "class folders":
    source = tmp_path / "pets"
    for cls in ("cat", "big\ndog"):
      (source / cls).mkdir(parents=True)
      for i in range(10):
        (source / cls / f"{i}.jpg").write_bytes(jpeg)
  elif kind == "zip":
    source = kaggle_zip_with(tmp_path / "intel.zip",
                             member("seg_train/seg_train/for\nest/1.jpg", jpeg))
  else:
    source = write_kaggle_folder(tmp_path / "intel")
    (source / "seg_train/seg_train/for\nest").mkdir()
    (source / "seg_train/seg_train/for\nest/1.jpg").write_bytes(jpeg)
  logs = []
  with pytest.raises(UserError) as e:
    sources.load_intel(source, log=logs.append, cache_dir=tmp_path / "c")
  assert "\n" not in str(e.value) and "\\n" in str(e.value), str(e.value)
  assert not [line for line in logs if "\n" in line], logs


# ---------------------------------------------------------------- item 17a: the conversion cache


@pytest.mark.parametrize("tamper", [
    lambda a: a.update(train_images=255 - a["train_images"]),
    lambda a: a.update(test_labels=np.roll(a["test_labels"], 1)),
], ids=["other pixels", "other labels"])
def test_a_cache_rewritten_with_other_arrays_of_the_same_shapes_is_converted_again(tmp_path,
                                                                                   tamper):
  src = write_kaggle_zip(tmp_path / "intel.zip")
  folder = tmp_path / "cache"
  fresh = intel_kaggle.load_kaggle(src, log=quiet, cache_dir=folder)
  (cache_file,) = folder.iterdir()
  arrays = dict(np.load(cache_file))
  tamper(arrays)
  with open(cache_file, "wb") as f:
    np.savez(f, **arrays)
  logs = []
  data = intel_kaggle.load_kaggle(src, log=logs.append, cache_dir=folder)
  for key in intel.NPZ_KEYS:
    np.testing.assert_array_equal(getattr(data, key), getattr(fresh, key), err_msg=key)
  (warning,) = [line for line in logs if "WARNING" in line]
  assert warning.startswith(f"intel data: WARNING: the conversion cache {cache_file} is invalid (")
  assert warning.endswith("); deleted it, converting again"), warning


# ---------------------------------------------------------------- item 7b: 16-bit and float images


def encoded(array: np.ndarray, fmt: str) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format=fmt)              # uint16: I;16, int32: I, float32: F
  return buf.getvalue()


RAMP = np.arange(48 * 48).reshape(48, 48) / (48 * 48 - 1)          # 0..1 over the image


@pytest.mark.parametrize("array, fmt", [
    ((RAMP * 65535).round().astype(np.uint16), "PNG"),
    ((RAMP * 65535).round().astype(np.uint16), "TIFF"),
    ((RAMP * 65535).round().astype(np.int32), "TIFF"),
    (RAMP.astype(np.float32), "TIFF"),
], ids=["16-bit png", "16-bit tiff", "32-bit int tiff", "float tiff"])
def test_deep_images_are_scaled_to_8_bits_not_clipped(array, fmt):
  image = intel_kaggle.decode_image(encoded(array, fmt))
  assert image is not None and image.shape == (48, 48, 3)
  expected = (RAMP * 255).round()
  for channel in range(3):
    np.testing.assert_allclose(image[..., channel], expected, atol=1)


# ---------------------------------------------------------------- item 7c: a line of one TAB


@pytest.mark.parametrize("line, fragment", [("\t", "empty phoneme side"),
                                            (" \t ", "empty phoneme side"),
                                            ("\t\t", "2 TABs")])
def test_a_tsv_line_of_tabs_only_is_a_bad_line(tmp_path, line, fragment):
  path = tmp_path / "x.tsv"
  path.write_text(f"a b\tab\n{line}\nc\tc\n", encoding="utf-8")
  with pytest.raises(UserError, match=f"x.tsv:2: {fragment}"):
    phonemes.read_tsv(path)
