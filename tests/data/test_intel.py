"""Intel loaders: course npz in every layout, Kaggle folder and zip, cache, discovery, bad input."""

import errno
import os
import subprocess
import zipfile

import numpy as np
import pytest

from helpers import (kaggle_files, learnable_images, write_kaggle_folder, write_kaggle_zip,
                      write_npz)
from hw2jax import UserError
from hw2jax import files as fileslib
from hw2jax.data import intel, intel_kaggle, sources
from hw2jax.data.images import ImageData


def quiet(_):
  pass


# ---------------------------------------------------------------- npz


def test_npz_hwc_loads_as_is(npz_path):
  data = intel.load_npz(npz_path)
  raw = np.load(npz_path)
  assert data.sizes() == {"train": 96, "val": 24, "test": 24}
  np.testing.assert_array_equal(data.train_images, raw["train_images"])
  assert data.train_images.dtype == np.uint8 and data.train_labels.dtype == np.int32


def test_npz_chw_is_detected_and_transposed(tmp_path):
  xs, ys = learnable_images(12)
  chw = xs.transpose(0, 3, 1, 2)
  path = write_npz(tmp_path / "d.npz", train_images=chw, train_labels=ys, n_train=12)
  data = intel.load_npz(path)
  np.testing.assert_array_equal(data.train_images, xs)


@pytest.mark.parametrize("layout", ["hwc", "chw"])
def test_npz_flat_follows_layout_flag(tmp_path, layout):
  xs, ys = learnable_images(12)
  flat = (xs if layout == "hwc" else xs.transpose(0, 3, 1, 2)).reshape(12, -1)
  path = write_npz(tmp_path / "d.npz", train_images=flat, train_labels=ys, n_train=12)
  np.testing.assert_array_equal(intel.load_npz(path, layout=layout).train_images, xs)
  other = "chw" if layout == "hwc" else "hwc"
  assert not np.array_equal(intel.load_npz(path, layout=other).train_images, xs)


@pytest.mark.parametrize("overrides, message", [
    (dict(val_labels=None), "lacks keys val_labels"),
    (dict(train_images=np.zeros((5, 32, 32, 3), np.uint8), train_labels=np.zeros(5, np.int64)),
     "val_images are (48, 48, 3), the other splits' (32, 32, 3)"),
    (dict(train_images=np.zeros((5, 32, 32, 2), np.uint8), train_labels=np.zeros(5, np.int64)),
     "has shape (5, 32, 32, 2); expected (N, H, W, C) with C = 1 or 3"),
    (dict(train_labels=np.full(96, 7)), "another dataset of 48x48x3 images names its classes"),
    (dict(train_images=np.zeros((4, 48, 48, 3), np.float32), train_labels=np.zeros(4, np.int64)),
     "dtype float32"),
    (dict(train_labels=np.full(96, 6)), "labels in 6..6; expected 0..5"),
    (dict(train_labels=np.full(96, -1)), "expected 0..5"),
    (dict(train_labels=np.zeros(95, np.int64)), "96 images but train_labels has 95"),
    (dict(test_labels=np.zeros((24, 6))), "expected a 1-D integer array"),
])
def test_npz_bad_content_is_one_clear_line(tmp_path, overrides, message):
  path = write_npz(tmp_path / "bad.npz", **overrides)
  with pytest.raises(UserError, match=None) as e:
    intel.load_npz(path)
  assert message in str(e.value) and "\n" not in str(e.value)


def test_npz_int_pixels_in_range_are_accepted(tmp_path):
  xs, ys = learnable_images(6)
  path = write_npz(tmp_path / "d.npz", train_images=xs.astype(np.int64), train_labels=ys,
                   n_train=6)
  np.testing.assert_array_equal(intel.load_npz(path).train_images, xs)


def test_corrupt_npz(tmp_path):
  path = tmp_path / "corrupt.npz"
  path.write_bytes(b"PK\x03\x04 this is not a real archive")
  with pytest.raises(UserError, match="is a damaged npz"):
    intel.load_npz(path)


def test_a_text_file_named_npz_is_not_blamed_on_pickles(tmp_path):
  path = tmp_path / "notes.npz"
  path.write_text("train_images = ...\n")
  with pytest.raises(UserError, match="is not an npz file") as e:
    intel.load_npz(path)
  assert "pickle" not in str(e.value)


def test_bad_layout_value(npz_path):
  with pytest.raises(UserError, match="layout 'nchw' is not valid"):
    intel.load_npz(npz_path, layout="nchw")


# ---------------------------------------------------------------- Kaggle folder and zip


@pytest.mark.parametrize("kind", ["folder", "zip", "zip_with_prefix"])
def test_kaggle_layouts_load_the_same(tmp_path, kind):
  if kind == "folder":
    src = write_kaggle_folder(tmp_path / "intel")
  else:
    prefix = "archive/" if kind == "zip_with_prefix" else ""
    src = write_kaggle_zip(tmp_path / "intel.zip", prefix=prefix)
  logs = []
  data = intel_kaggle.load_kaggle(src, log=logs.append)
  # 30 labelled train images (one corrupt JPEG + one text file skipped), 12 test images.
  assert data.skipped == 2
  assert any("skipped 2 unreadable" in line for line in logs)
  assert data.sizes() == {"train": 24, "val": 6, "test": 12}   # every class validated
  assert data.train_images.shape[1:] == (48, 48, 3) and data.train_images.dtype == np.uint8
  assert sorted(np.bincount(data.test_labels).tolist()) == [2] * 6
  # Uniform images of colour 20 * class survive the resize, odd sizes included.
  for images, labels in (data.split("train"), data.split("test")):
    np.testing.assert_allclose(images.mean(axis=(1, 2, 3)), 20 * labels, atol=2)


def test_validation_split_is_ten_percent_seeded_and_disjoint(tmp_path):
  src = write_kaggle_zip(tmp_path / "intel.zip", n_per_class_train=17)
  a = intel_kaggle.load_kaggle(src, log=quiet, cache_dir=tmp_path / "c1")
  b = intel_kaggle.load_kaggle(src, log=quiet, cache_dir=tmp_path / "c2")
  n = 6 * 17
  # 10%, plus one image of each class the draw left out (small data only).
  assert int(np.ceil(0.1 * n)) <= a.sizes()["val"] <= int(np.ceil(0.1 * n)) + 6
  assert a.sizes()["train"] == n - a.sizes()["val"]
  assert sorted(set(a.val_labels.tolist())) == list(range(6))
  np.testing.assert_array_equal(a.val_labels, b.val_labels)
  np.testing.assert_array_equal(a.val_images, b.val_images)
  c = intel_kaggle.load_kaggle(src, log=quiet, cache_dir=tmp_path / "c3", split_seed=1)
  assert not np.array_equal(np.sort(a.val_images.reshape(len(a.val_images), -1).sum(1)),
                            np.sort(c.val_images.reshape(len(c.val_images), -1).sum(1))) or \
      not np.array_equal(a.val_labels, c.val_labels)


def test_validation_split_is_exactly_ten_percent_when_every_class_was_drawn(tmp_path):
  src = write_kaggle_zip(tmp_path / "intel.zip", n_per_class_train=40, n_per_class_test=1)
  data = intel_kaggle.load_kaggle(src, log=quiet)
  assert sorted(set(data.val_labels.tolist())) == list(range(6))
  assert data.sizes()["val"] == int(np.ceil(0.1 * 240))


def test_conversion_is_cached_and_invalidated_on_change(tmp_path, monkeypatch):
  src = write_kaggle_zip(tmp_path / "intel.zip")
  first = intel_kaggle.load_kaggle(src, log=quiet)
  calls = []
  monkeypatch.setattr(intel_kaggle, "decode_image", lambda b: calls.append(1))
  logs = []
  second = intel_kaggle.load_kaggle(src, log=logs.append)
  assert not calls and any("cached conversion" in line for line in logs)
  np.testing.assert_array_equal(first.train_images, second.train_images)
  assert second.skipped == first.skipped
  monkeypatch.undo()
  os.utime(src, ns=(1, 1))
  logs = []
  intel_kaggle.load_kaggle(src, log=logs.append)
  assert any("converting" in line for line in logs)


def test_damaged_cache_is_rebuilt(tmp_path):
  src = write_kaggle_zip(tmp_path / "intel.zip")
  cache = tmp_path / "cache"
  intel_kaggle.load_kaggle(src, log=quiet, cache_dir=cache)
  for f in cache.glob("*.npz"):
    f.write_bytes(b"garbage")
  logs = []
  data = intel_kaggle.load_kaggle(src, log=logs.append, cache_dir=cache)
  assert data.sizes()["test"] == 12
  assert any("is invalid (not an npz archive); deleted it" in line
             for line in logs), logs


# ---------------------------------------------------------------- the cache when things go wrong


def cached_conversion(tmp_path):
  """(source zip, cache folder, its one cache file, the data) after a first conversion."""
  src = write_kaggle_zip(tmp_path / "intel.zip")
  folder = tmp_path / "cache"
  data = intel_kaggle.load_kaggle(src, log=quiet, cache_dir=folder)
  (cache_file,) = folder.iterdir()
  return src, folder, cache_file, data


def assert_same_data(a, b):
  for key in intel.NPZ_KEYS:
    np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)
  assert a.skipped == b.skipped


def warnings_in(logs):
  return [line for line in logs if "WARNING" in line]


@pytest.mark.parametrize("failing", ["savez", "replace"])
def test_a_full_disk_while_caching_warns_once_leaves_nothing_and_the_run_goes_on(
    tmp_path, monkeypatch, failing):
  src, folder, cache_file, fresh = cached_conversion(tmp_path)
  cache_file.unlink()

  def no_space(*args, **kwargs):
    if failing == "savez":
      args[0].write(b"x" * 100_000)                   # part of the 40 MB, then the disk is full
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  monkeypatch.setattr(np if failing == "savez" else os, failing, no_space)
  for _ in range(2):                                  # a rerun fails the same way, no worse
    logs = []
    data = intel_kaggle.load_kaggle(src, log=logs.append, cache_dir=folder)
    assert_same_data(data, fresh)
    assert warnings_in(logs) == [
        f"intel data: WARNING: could not write the conversion cache {cache_file} (No space left "
        "on device); continuing without it"]
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("naming", ["current", "earlier versions'"])
def test_the_orphan_of_a_killed_conversion_is_removed_by_the_next_run(tmp_path, naming):
  src, folder, cache_file, fresh = cached_conversion(tmp_path)
  cache_file.unlink()
  proc = subprocess.Popen(["true"])                   # kill -9 during the write: its pid is dead
  proc.wait()
  if naming == "current":
    name = fileslib.temp_path(cache_file).name.replace(f"-{os.getpid()}.", f"-{proc.pid}.")
  else:
    name = f"{cache_file.stem}.tmp{proc.pid}.npz"
  orphan = folder / name
  orphan.write_bytes(b"x" * 100_000)
  logs = []
  assert_same_data(intel_kaggle.load_kaggle(src, log=logs.append, cache_dir=folder), fresh)
  assert sorted(folder.iterdir()) == [cache_file]
  assert any(f"removed 1 unfinished cache file(s) of interrupted runs ({orphan.name})" in line
             for line in logs), logs


def test_a_folder_at_the_cache_path_is_one_warning_and_leaks_no_temp_file(tmp_path):
  src, folder, cache_file, fresh = cached_conversion(tmp_path)
  cache_file.unlink()
  cache_file.mkdir()
  for _ in range(2):
    logs = []
    assert_same_data(intel_kaggle.load_kaggle(src, log=logs.append, cache_dir=folder), fresh)
    assert warnings_in(logs) == [
        f"intel data: WARNING: the conversion cache {cache_file} is not a file (a folder?); "
        "continuing without the cache (remove it to cache the conversion)"]
    assert list(folder.iterdir()) == [cache_file] and list(cache_file.iterdir()) == []


@pytest.mark.parametrize("tamper, reason", [
    (lambda a: a["train_labels"].__setitem__(0, 7), "train_labels holds labels in 0..7"),
    (lambda a: a.update(train_images=a["train_images"][:, :32, :32]),
     "train_images has shape (24, 32, 32, 3)"),
    (lambda a: a.update(val_labels=a["val_labels"][:-1]), "val_images has 6 images but"),
    (lambda a: a.update(test_images=a["test_images"][:-1], test_labels=a["test_labels"][:-1]),
     "it accounts for 43 images, the source has 44"),
    (lambda a: a.pop("skipped"), "unreadable: KeyError"),
])
def test_an_invalid_cache_is_deleted_and_the_data_converted_again(tmp_path, tamper, reason):
  src, folder, cache_file, fresh = cached_conversion(tmp_path)
  arrays = dict(np.load(cache_file))
  tamper(arrays)
  with open(cache_file, "wb") as f:
    np.savez(f, **arrays)
  logs = []
  assert_same_data(intel_kaggle.load_kaggle(src, log=logs.append, cache_dir=folder), fresh)
  (warning,) = warnings_in(logs)
  assert warning.startswith(f"intel data: WARNING: the conversion cache {cache_file} is invalid (")
  assert reason in warning and warning.endswith("); deleted it, converting again"), warning
  logs = []
  assert_same_data(intel_kaggle.load_kaggle(src, log=logs.append, cache_dir=folder), fresh)
  assert any("using cached conversion" in line for line in logs)     # rewritten, valid


def test_unknown_class_folder(tmp_path):
  src = write_kaggle_folder(tmp_path / "intel")
  (src / "seg_train/seg_train/volcano").mkdir()
  (src / "seg_train/seg_train/volcano/1.jpg").write_bytes(b"x")
  with pytest.raises(UserError, match="unknown class folder 'volcano'"):
    intel_kaggle.load_kaggle(src, log=quiet)


def test_zip_without_layout_and_corrupt_zip(tmp_path):
  path = tmp_path / "other.zip"
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("photos/1.jpg", b"x")
  with pytest.raises(UserError, match="not the Kaggle Intel layout"):
    intel_kaggle.load_kaggle(path, log=quiet)
  bad = tmp_path / "bad.zip"
  bad.write_bytes(b"not a zip")
  with pytest.raises(UserError, match="not a readable zip"):
    intel_kaggle.load_kaggle(bad, log=quiet)


# ---------------------------------------------------------------- discovery


def test_a_damaged_zip_member_is_skipped_and_counted(tmp_path):
  """A member whose bytes no longer match its CRC (zipfile.BadZipFile: Bad CRC-32)."""
  path = tmp_path / "intel.zip"
  with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
    for name, data in kaggle_files().items():
      zf.writestr(name, data)
  victim = "seg_train/seg_train/glacier/201.jpg"
  with zipfile.ZipFile(path) as zf:
    info = zf.getinfo(victim)
  raw = bytearray(path.read_bytes())
  start = info.header_offset + 30 + len(info.filename) + len(info.extra)
  raw[start + 100] ^= 0xFF
  path.write_bytes(bytes(raw))
  with zipfile.ZipFile(path) as zf, pytest.raises(zipfile.BadZipFile, match="CRC"):
    zf.read(victim)
  logs = []
  data = intel_kaggle.load_kaggle(path, log=logs.append)
  assert data.skipped == 3                         # the damaged member + the fixture's two
  assert any("skipped 3 unreadable" in line for line in logs)


def test_an_empty_class_folder_is_a_warning_and_a_missing_test_class_an_error(tmp_path):
  files = {k: v for k, v in kaggle_files().items() if "/sea/" not in k or "seg_test" in k}
  for rel, data in files.items():
    (tmp_path / "k" / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "k" / rel).write_bytes(data)
  (tmp_path / "k/seg_train/seg_train/sea").mkdir()
  logs = []
  data = sources.load_intel(tmp_path / "k", log=logs.append)
  assert any("WARNING: no training image of class sea" in line and "training on 5 classes" in line
             for line in logs), logs
  assert 4 not in set(data.train_labels.tolist())
  for f in (tmp_path / "k/seg_test/seg_test/street").iterdir():
    f.unlink()
  with pytest.raises(UserError, match="the test split has no image of class street"):
    sources.load_intel(tmp_path / "k", log=logs.append)


def test_a_subset_is_random_per_split_seeded_and_named():
  xs = np.arange(100)[:, None, None, None].astype(np.uint8) * np.ones((1, 48, 48, 3), np.uint8)
  labels = np.repeat(np.arange(5), 20).astype(np.int32)             # ordered by class
  data = ImageData(xs, labels, xs[:30], labels[:30], xs[:40], labels[:40], source="s",
                          classes=intel.CLASSES)
  assert data.subset(None, None) is data
  sub = data.subset(25, 10)
  assert sub.sizes() == {"train": 25, "val": 10, "test": 10}
  assert len(set(sub.train_labels.tolist())) == 5                  # not the first 25 (one class)
  assert np.array_equal(labels[sub.train_images[:, 0, 0, 0]], sub.train_labels)
  assert sub.source == "s; random subset 25 / 10 / 10 (seed 0)"
  assert data.subset(25, 10).source == sub.source                   # deterministic


def test_course_pixels_are_the_skeletons_flatten_divide_and_reshape():
  """--pixels=course against a plain transcription of the course skeleton's lines (numpy, no
  hw2jax code): X = images.reshape(N, -1) / 256; X = X.reshape(-1, 3, 48, 48), NCHW."""
  images = np.random.default_rng(0).integers(0, 256, (3, 48, 48, 3), dtype=np.uint8)
  skeleton = images.reshape(3, -1) / 256
  skeleton = skeleton.reshape(-1, 3, 48, 48)
  ours = intel.course_pixels(images)
  assert ours.shape == (3, 48, 48, 3) and ours.dtype == np.uint8
  np.testing.assert_array_equal(ours.transpose(0, 3, 1, 2) / 256, skeleton)
  # On HWC pixels the skeleton's first "channel" is the top third of the image, colours mixed.
  np.testing.assert_array_equal(ours[0, :, :, 0].ravel(), images[0].ravel()[:48 * 48])
  assert not np.array_equal(ours, images)
  np.testing.assert_array_equal(intel.model_pixels(images, "correct"), images)
  with pytest.raises(UserError, match="--pixels='scrambled' is not one of correct, course"):
    intel.model_pixels(images, "scrambled")
