"""TFDS builders (hw2jax.data.tfds): prepared from fixtures and read back without TensorFlow."""

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("tensorflow_datasets")
pytest.importorskip("array_record")

from helpers import (REPO, run_cli, write_kaggle_folder, write_kaggle_zip, write_npz,
                      write_p2g_folder)
import hw2jax.data
from hw2jax import UserError
from hw2jax.data import intel, intel_kaggle, phonemes, sources
from hw2jax.data.images import ImageData
from hw2jax.data import tfds as hw2tfds
import tensorflow_datasets as tfds


def quiet(_):
  pass


@pytest.fixture(autouse=True)
def _no_tensorflow():
  """Preparing and reading never import TensorFlow (which the venv does not even have)."""
  assert "tensorflow" not in sys.modules
  yield
  assert "tensorflow" not in sys.modules


def assert_same_intel(a: ImageData, b: ImageData):
  for key in intel.NPZ_KEYS:
    x, y = getattr(a, key), getattr(b, key)
    assert x.dtype == y.dtype and x.shape == y.shape, key
    np.testing.assert_array_equal(x, y, err_msg=key)
  assert a.skipped == b.skipped


def test_preparing_leaves_no_temp_folder_and_asks_no_bucket(tmp_path, monkeypatch):
  """TFDS asks GCS for the info of an unprepared dataset and leaves an empty mkdtemp folder."""
  scratch = tmp_path / "scratch"
  scratch.mkdir()
  monkeypatch.setattr("tempfile.tempdir", str(scratch))
  npz = write_npz(tmp_path / "intel.npz", n_train=12, n_val=6, n_test=6)
  hw2tfds.load_intel_tfds("intel48", tmp_path / "tfds", manual_dir=npz, log=quiet)
  assert list(scratch.iterdir()) == []


def test_intel_from_npz_reads_back_identical(tmp_path):
  npz = write_npz(tmp_path / "intel.npz", n_train=30, n_val=12, n_test=6)
  data_dir = tmp_path / "tfds"
  data = hw2tfds.load_intel_tfds("intel48", data_dir, manual_dir=npz, log=quiet)
  assert_same_intel(data, intel.load_npz(npz))
  assert data.source.startswith("tfds intel48 1.0.0") and str(npz.resolve()) in data.source
  files = sorted(p.name for p in (data_dir / "intel48" / "1.0.0").iterdir())
  assert "intel48-train.array_record-00000-of-00001" in files

  # The standard TFDS API reads it too (the builders register on import).
  source = tfds.data_source("intel48", data_dir=str(data_dir))
  assert sorted(source) == ["test", "train", "val"] and len(source["val"]) == 12
  record = source["train"][3]
  assert record["image"].dtype == np.uint8 and record["image"].shape == (48, 48, 3)
  np.testing.assert_array_equal(record["image"], data.train_images[3])
  info = tfds.builder("intel48", data_dir=str(data_dir)).info
  assert info.features["label"].names == list(intel.CLASSES)
  assert info.file_format.value == "array_record"

  # Prepared: a second load needs no source and does not prepare again.
  messages = []
  again = sources.load_intel("tfds:intel48", tfds_data_dir=data_dir, log=messages.append)
  assert_same_intel(again, data)
  assert not any("preparing" in m for m in messages)


@pytest.mark.parametrize("kind", ["zip", "folder"])
def test_intel_from_kaggle_keeps_the_seeded_validation_split(tmp_path, kind):
  source = (write_kaggle_zip(tmp_path / "intel.zip") if kind == "zip"
            else write_kaggle_folder(tmp_path / "kaggle"))
  messages = []
  data = sources.load_intel("tfds:intel48", tfds_data_dir=tmp_path / "tfds", tfds_manual_dir=source,
                    log=messages.append)
  direct = intel_kaggle.load_kaggle(source, log=quiet)
  assert_same_intel(data, direct)
  assert data.skipped == 2 and len(data.val_labels) == 6
  assert any(m.startswith("tfds: preparing intel48") for m in messages)
  assert any(m == "tfds: prepared intel48 1.0.0: train 24, val 6, test 12" for m in messages)


def test_p2g_reads_back_identical(tmp_path):
  folder = write_p2g_folder(tmp_path / "p2g", n_train=20, n_valid=6, n_test=6)
  data_dir = tmp_path / "tfds"
  data = hw2tfds.load_p2g_tfds("p2g", data_dir, manual_dir=folder, log=quiet)
  direct = phonemes.load_tsv_folder(folder)
  for split in phonemes.SPLITS:
    assert data.split(split) == direct.split(split), split
  assert data.src_vocab == direct.src_vocab and data.tgt_vocab == direct.tgt_vocab
  assert any("t͡ʃ" in p for p, _ in data.train)    # multi-character tokens survive

  source = tfds.data_source("p2g", data_dir=str(data_dir))
  assert sorted(source) == ["test", "train", "valid"]
  first = source["train"][0]
  assert [t.decode() for t in first["phonemes"]] == list(direct.train[0][0])
  assert first["spelling"].decode() == direct.train[0][1]

  limited = sources.load_p2g("tfds:p2g", 5, tfds_data_dir=data_dir)
  assert limited.train == direct.train[:5]


def test_default_manual_dir_and_a_different_source_later(tmp_path, monkeypatch):
  data_dir = tmp_path / "tfds"
  manual = data_dir / "downloads" / "manual"
  manual.mkdir(parents=True)
  npz = write_npz(manual / "intel_landscapes.v2.npz", n_train=12, n_val=6, n_test=6)
  data = hw2tfds.load_intel_tfds("tfds:intel48", data_dir, log=quiet)
  assert_same_intel(data, intel.load_npz(npz))

  monkeypatch.setenv("HW2JAX_DATA", "tfds:intel48")    # the environment variable works too
  assert_same_intel(sources.load_intel(tfds_data_dir=data_dir, log=quiet), data)

  other = write_npz(tmp_path / "other.npz", n_train=6, n_val=6, n_test=6, seed=1)
  messages = []
  again = hw2tfds.load_intel_tfds("intel48", data_dir, manual_dir=other, log=messages.append)
  assert_same_intel(again, data)
  assert len(messages) == 1 and "ignoring --tfds_manual_dir" in messages[0]


@pytest.mark.parametrize("call, fragment", [
    (lambda d, s: sources.load_intel("tfds:mnist", tfds_data_dir=d, log=quiet),
     "unknown TFDS dataset tfds:mnist; hw2jax builds tfds:intel48"),
    (lambda d, s: sources.load_intel("tfds:p2g", tfds_data_dir=d, log=quiet),
     "tfds:p2g holds phoneme-to-grapheme TSVs; this needs tfds:intel48"),
    (lambda d, s: sources.load_p2g("tfds:intel48", tfds_data_dir=d),
     "this needs tfds:p2g"),
    (lambda d, s: sources.load_intel("tfds:intel48", tfds_data_dir=d, log=quiet),
     "tfds:intel48 is not prepared in"),
    (lambda d, s: sources.load_p2g("tfds:p2g", tfds_data_dir=d),
     "adding --tfds_manual_dir=<a folder with train.tsv, valid.tsv, test.tsv>"),
    (lambda d, s: sources.load_intel("tfds:intel48", tfds_data_dir=d, tfds_manual_dir=s / "nope.zip"),
     "nope.zip does not exist"),
    (lambda d, s: sources.load_intel("tfds:intel48", tfds_data_dir=d, tfds_manual_dir=s),
     "holds no Intel data"),
    (lambda d, s: sources.load_p2g("tfds:p2g", tfds_data_dir=d, tfds_manual_dir=s),
     "train.tsv is missing"),
    (lambda d, s: sources.load_intel(s / "x.npz", tfds_data_dir=d, log=quiet),
     "only apply to --data_path=tfds:intel48"),
    (lambda d, s: sources.load_p2g(None, tfds_manual_dir=s),
     "only apply to --data_path=tfds:p2g"),
])
def test_bad_names_and_unprepared_data_are_one_line_user_errors(tmp_path, call, fragment):
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(UserError) as err:
    call(tmp_path / "tfds", empty)
  assert fragment in str(err.value) and "\n" not in str(err.value)
  assert not (tmp_path / "tfds" / "intel48" / "1.0.0").exists()   # nothing half-prepared


def test_loaders_import_tfds_only_when_used():
  code = ("import sys; from hw2jax.data import intel, phonemes; "
          "assert 'tensorflow_datasets' not in sys.modules and 'hw2jax.data.tfds' not in "
          "sys.modules, sorted(sys.modules)")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)


def test_without_tensorflow_datasets_installed(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  monkeypatch.delitem(sys.modules, "hw2jax.data.tfds")
  monkeypatch.delattr(hw2jax.data, "tfds")
  with pytest.raises(UserError, match=r"pip install 'hw2jax\[tfds\]'"):
    sources.load_intel("tfds:intel48")


@pytest.mark.slow
def test_cnn_cli_prepares_on_first_use_and_trains(tmp_path):
  npz = write_npz(tmp_path / "tiny.npz", n_train=24, n_val=8, n_test=8)
  common = ["--data_path=tfds:intel48", f"--tfds_data_dir={tmp_path / 'tfds'}", "--epochs=1",
            "--channels=4,8,16", "--batch_size=8"]
  missing = run_cli("experiments.cnn", *common, "--workdir=none", cwd=tmp_path)
  assert missing.returncode == 2, missing.stdout + missing.stderr
  assert missing.stderr.strip().splitlines() == [
      f"error: tfds:intel48 is not prepared in {tmp_path / 'tfds'}; prepare it once by adding "
      "--tfds_manual_dir=<the Intel npz, the Kaggle zip or its extracted folder> (or put it in "
      f"{tmp_path / 'tfds' / 'downloads' / 'manual'}/)"]

  proc = run_cli("experiments.cnn", *common, f"--tfds_manual_dir={npz}", "--workdir=run",
                 cwd=tmp_path)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert "tfds: prepared intel48 1.0.0: train 24, val 8, test 8" in proc.stdout
  assert "Downloading and preparing" not in proc.stdout and "%|" not in proc.stdout + proc.stderr
  summary = json.loads((tmp_path / "run" / "summary.json").read_text())
  assert summary["status"] == "completed" and summary["epochs_done"] == 1
