"""Where the data comes from: the order of discovery, Kaggle notebook inputs at any depth, the
kagglehub download (a fake one: no network in tests), explicit paths, dispatch by source."""

import sys

import numpy as np
import pytest

from helpers import write_kaggle_folder, write_kaggle_zip, write_npz
from hw2jax import UserError
from hw2jax.data import sources


def quiet(line):
  del line


def test_discovery_order(tmp_path):
  explicit = write_npz(tmp_path / "explicit.npz")
  env_dir = tmp_path / "env"
  env_dir.mkdir()
  env_npz = write_npz(env_dir / "intel_landscapes.v2.npz")
  cwd = tmp_path / "cwd"
  (cwd / "data").mkdir(parents=True)
  local = write_kaggle_zip(cwd / "data" / "intel-image-classification.zip")
  kaggle = tmp_path / "kaggle_input"
  mount = write_kaggle_folder(kaggle / "intel-image-classification")
  env = {"HW2JAX_DATA": str(env_dir), "HW2JAX_KAGGLE_INPUT": str(kaggle)}
  no_env = {"HW2JAX_KAGGLE_INPUT": str(kaggle)}
  assert sources.discover_intel(explicit, environ=env, cwd=cwd) == explicit
  assert sources.discover_intel(None, environ=env, cwd=cwd) == env_npz
  assert sources.discover_intel(None, environ=no_env, cwd=cwd) == local
  assert sources.discover_intel(None, environ=no_env, cwd=tmp_path / "nowhere") == mount


@pytest.mark.parametrize("nested", ["intel-image-classification",
                                    "datasets/puneet6060/intel-image-classification",
                                    "some-other-name/v2"])
def test_kaggle_inputs_are_searched_a_few_levels_deep(tmp_path, nested):
  """Kaggle has mounted datasets at /kaggle/input/<slug> and /kaggle/input/datasets/<owner>/
  <slug>: the layout is found wherever it sits, up to three levels down."""
  root = tmp_path / "input"
  (root / "aaa-unrelated" / "files").mkdir(parents=True)
  folder = write_kaggle_folder(root / nested)
  assert sources.discover_intel(None, environ={"HW2JAX_KAGGLE_INPUT": str(root)},
                        cwd=tmp_path / "nowhere") == folder
  levels = nested.count("/") + 1
  assert sources.find_kaggle_layout(root, depth=levels) == folder
  assert sources.find_kaggle_layout(root, depth=levels - 1) is None


def test_discovery_finds_npz_and_folder_in_data(tmp_path):
  (tmp_path / "a/data").mkdir(parents=True)
  npz = write_npz(tmp_path / "a/data/intel_landscapes.v2.npz")
  assert sources.discover_intel(None, environ={}, cwd=tmp_path / "a") == npz
  write_kaggle_folder(tmp_path / "b/data")
  assert sources.discover_intel(None, environ={}, cwd=tmp_path / "b") == tmp_path / "b/data"


def test_nothing_found_lists_every_option(tmp_path):
  absent = tmp_path / "absent"
  with pytest.raises(UserError) as e:
    sources.discover_intel(None, environ={"HW2JAX_KAGGLE_INPUT": str(absent)}, cwd=tmp_path)
  message = str(e.value)
  for part in ("--data_path", "$HW2JAX_DATA", "./data/", str(absent), "--download=auto",
               "https://www.kaggle.com/datasets/puneet6060/intel-image-classification"):
    assert part in message
  assert "\n" not in message


class FakeKagglehub:
  """kagglehub's dataset_download, without a network: 'downloads' a fixture folder."""

  def __init__(self, folder=None, error=None):
    self.folder, self.error, self.calls = folder, error, []

  def dataset_download(self, handle, **kwargs):
    self.calls.append(handle)
    if self.error is not None:
      raise self.error
    return str(self.folder)


def test_nothing_found_downloads_with_kagglehub_and_converts(tmp_path, monkeypatch):
  versions = tmp_path / "kagglehub/datasets/puneet6060/intel-image-classification/versions/2"
  write_kaggle_folder(versions)
  fake = FakeKagglehub(versions)
  monkeypatch.setitem(sys.modules, "kagglehub", fake)
  logs = []
  data = sources.load_intel(None, environ={"KAGGLEHUB_CACHE": str(tmp_path / "kagglehub")},
                    log=logs.append, download="auto")
  assert fake.calls == ["puneet6060/intel-image-classification"]
  assert data.sizes() == {"train": 24, "val": 6, "test": 12}
  line = next(line for line in logs if "downloading" in line)
  assert "about 360 MB" in line and str(tmp_path / "kagglehub") in line
  assert any("converting" in line for line in logs)


# What requests raises for kagglehub when the machine has no DNS (no network).
OFFLINE = ("HTTPSConnectionPool(host='api.kaggle.com', port=443): Max retries exceeded with url: "
           "/v1/datasets.DatasetApiService/GetDataset (Caused by NameResolutionError(\"HTTPS"
           "Connection(host='api.kaggle.com', port=443): Failed to resolve 'api.kaggle.com' "
           "([Errno -2] Name or service not known)\"))")


def test_a_failed_download_is_one_short_line_saying_what_was_wrong_and_what_to_do(
    tmp_path, monkeypatch):
  fake = FakeKagglehub(error=ConnectionError(OFFLINE))
  monkeypatch.setitem(sys.modules, "kagglehub", fake)
  with pytest.raises(UserError) as e:
    sources.discover_intel(None, environ={"HW2JAX_KAGGLE_INPUT": str(tmp_path / "input")},
                           cwd=tmp_path, download="auto", log=quiet, origin="--intel_data_path")
  message = str(e.value)
  as_on_a_laptop = message.replace(str(tmp_path / "input"), "/kaggle/input")
  assert "\n" not in message and len(as_on_a_laptop) < 350, message
  assert message.startswith("no Intel image data found in $HW2JAX_DATA (unset), ./data/ or "
                            f"{tmp_path / 'input'}, and downloading it with kagglehub failed "
                            "(ConnectionError: could not resolve api.kaggle.com, no internet?); ")
  assert message.endswith("download it by hand from https://www.kaggle.com/datasets/puneet6060/"
                          "intel-image-classification and pass --intel_data_path=<the zip> or "
                          "put it in ./data/")
  assert "--download=never" not in message      # it would only print the same error


def test_a_cause_is_shortened_between_words():
  assert sources.short_cause(ConnectionError(OFFLINE)) == (
      "ConnectionError: could not resolve api.kaggle.com, no internet?")
  timeout = OFFLINE.replace("NameResolutionError", "ConnectTimeoutError").replace(
      "Failed to resolve 'api.kaggle.com'", "timed out")
  assert sources.short_cause(ConnectionError(timeout)) == (
      "ConnectionError: ConnectTimeoutError reaching api.kaggle.com")
  long = OSError("the cache folder /home/someone/.cache/kagglehub/datasets is on a disk that "
                 "is full and\nthe download of 360 MB cannot be written there: free some space")
  cause = sources.short_cause(long)
  assert cause.startswith("OSError: the cache folder /home/someone/.cache/kagglehub/datasets is ")
  assert cause.endswith(" ...") and len(cause) <= len("OSError: ") + sources.CAUSE_CHARS + 4
  assert cause[:-4] in "OSError: " + " ".join(str(long).split())   # whole words only
  assert sources.short_cause(RuntimeError()) == "RuntimeError"


def test_no_kagglehub_says_so_in_the_same_line(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "kagglehub", None)           # import kagglehub fails
  with pytest.raises(UserError) as e:
    sources.discover_intel(None, environ={}, cwd=tmp_path, download="auto", log=quiet)
  assert "kagglehub, which would download it, is not installed (pip install kagglehub)" in \
      str(e.value) and "--download=never" not in str(e.value)


def test_download_never_does_not_call_kagglehub(tmp_path, monkeypatch):
  fake = FakeKagglehub(tmp_path)
  monkeypatch.setitem(sys.modules, "kagglehub", fake)
  with pytest.raises(UserError, match="no Intel image data found"):
    sources.discover_intel(None, environ={}, cwd=tmp_path, download="never")
  assert fake.calls == []


@pytest.mark.parametrize("setup, message", [
    ("missing", "does not exist"),
    ("txt", "neither an .npz, a .zip nor a folder"),
    ("empty_dir", "holds no Intel data"),
    ("two_npz", r"none is complete: a.npz \(the test split has no image of class forest"),
])
def test_bad_data_paths(tmp_path, setup, message):
  target = tmp_path / "x"
  if setup == "txt":
    target = tmp_path / "x.txt"
    target.write_text("hi")
  elif setup == "empty_dir":
    target.mkdir()
  elif setup == "two_npz":
    target.mkdir()
    write_npz(target / "a.npz", test_labels=np.zeros(24, np.int64))
    write_npz(target / "b.npz", n_test=0)
  with pytest.raises(UserError, match=message):
    sources.discover_intel(target, environ={})


def test_data_prefers_a_complete_dataset_and_names_the_others(tmp_path):
  """./data/ with the course sample (its test split holds one class: Q2 refuses it) and Kaggle's
  zip: the zip is used, the line says so and names the sample; with two complete sources the
  preferred one (the course npz) is used. A missing class is named when none is complete."""
  data = tmp_path / "data"
  data.mkdir()
  write_npz(data / "intel_landscapes_sample.npz", test_labels=np.zeros(24, np.int64))
  zipped = write_kaggle_zip(data / "intel48_kaggle_layout.zip")
  lines = []
  assert sources.discover_intel(None, environ={}, cwd=tmp_path, log=lines.append) == zipped
  assert lines == ["intel data: ./data/ holds 2 candidates; using intel48_kaggle_layout.zip, the "
                   "first complete one (also there: intel_landscapes_sample.npz; pick one with "
                   "--data_path=<path>)"]
  complete = write_npz(data / "intel_landscapes.v2.npz")
  assert sources.discover_intel(None, environ={}, cwd=tmp_path, log=quiet) == complete
  (data / "intel_landscapes.v2.npz").unlink()
  zipped.unlink()
  write_npz(data / "other.npz", n_val=0)
  with pytest.raises(UserError) as e:
    sources.discover_intel(None, environ={}, cwd=tmp_path, log=quiet)
  assert str(e.value) == (
      "./data/ holds 2 Intel candidates and none is complete: intel_landscapes_sample.npz (the "
      "test split has no image of class forest, glacier, mountain, sea, street, which the "
      "training split has; its accuracy would not measure that class); other.npz (the val split "
      "is empty (no images in val_images / val_labels); every split needs images); give a "
      "complete one with --data_path=<path>")


def test_training_images_alone_serve_a_caller_that_uses_only_them(tmp_path):
  """Q1's retrieval reads training images only: an npz whose test split Q2 would refuse loads."""
  path = write_npz(tmp_path / "sample.npz", test_labels=np.zeros(24, np.int64))
  with pytest.raises(UserError, match="the test split has no image of class forest"):
    sources.load_intel(path, log=quiet)
  assert sources.load_intel(path, log=quiet, splits=("train",)).sizes()["train"] == 96


def test_env_path_that_does_not_exist(tmp_path):
  with pytest.raises(UserError, match=r"\$HW2JAX_DATA"):
    sources.discover_intel(None, environ={"HW2JAX_DATA": str(tmp_path / "gone")}, cwd=tmp_path)


def test_load_dispatches_on_source(tmp_path, npz_path):
  assert sources.load_intel(npz_path, log=quiet).source.startswith("npz")
  zipped = sources.load_intel(write_kaggle_zip(tmp_path / "k.zip"), log=quiet)
  assert zipped.source.startswith("zip")
