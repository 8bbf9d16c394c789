"""What --predict reads and writes, in-process: the parts of --predict (lists longer than a file
name, FIFOs, parts it may not read, nothing at all), and a CSV that never replaces a file, even
one made while the images were classified, whatever bytes the file names hold."""

import json
import os

import pytest

from hw2jax.data import intel
from hw2jax.errors import UserError
from hw2jax.recipes import cnn_predict
from hw2jax.recipes.cnn_predict import Prediction, Predictions

PREDICTIONS = Predictions(("cool", "warm"), [Prediction("a.jpg", (0.25, 0.75))], [])


def test_a_list_longer_than_a_file_name_is_split_and_each_part_found_or_named(tmp_path):
  for i in range(60):
    (tmp_path / f"{i}.jpg").write_bytes(b"x")
  spec = ",".join(str(tmp_path / f"{i}.jpg") for i in range(60)) + "," + "y" * 300
  found, problems = cnn_predict.image_paths(spec)
  assert found == [tmp_path / f"{i}.jpg" for i in range(60)]
  assert len(problems) == 1 and problems[0].startswith("y" * 300 + ": cannot be read")


def test_only_regular_files_are_read(tmp_path):
  os.mkfifo(tmp_path / "fifo.jpg")
  (tmp_path / "real.jpg").write_bytes(b"x")
  found, problems = cnn_predict.image_paths(f"{tmp_path}/fifo.jpg,/dev/null,{tmp_path}")
  assert found == [tmp_path / "real.jpg"]                 # the folder's FIFO is passed over
  assert [p.split(": ", 1)[1] for p in problems] == [
      "not a regular file (a FIFO, a device or a socket is not read)"] * 2


def test_a_part_it_may_not_look_into_is_a_line_of_its_own(tmp_path):
  if os.geteuid() == 0:
    pytest.skip("root may read anywhere")
  (tmp_path / "secret").mkdir()
  (tmp_path / "secret" / "a.jpg").write_bytes(b"x")
  (tmp_path / "b.jpg").write_bytes(b"x")
  (tmp_path / "secret").chmod(0)
  try:
    found, problems = cnn_predict.image_paths(f"{tmp_path}/secret/a.jpg,{tmp_path}/b.jpg")
  finally:
    (tmp_path / "secret").chmod(0o755)
  assert found == [tmp_path / "b.jpg"] and "cannot be read" in problems[0]


@pytest.mark.parametrize("spec", [",", ",,,", " , "])
def test_a_predict_that_names_nothing_is_refused(spec):
  with pytest.raises(UserError, match="names no file"):
    cnn_predict.image_paths(spec)


def test_a_csv_made_meanwhile_is_never_replaced(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  target = cnn_predict.output_path(None)
  assert target.name == "predictions.csv"
  target.write_text("another command's predictions")     # made while this one classified
  written = cnn_predict.write_csv(PREDICTIONS, target, chosen=False)
  assert written.name == "predictions_2.csv"
  assert target.read_text() == "another command's predictions"
  assert written.read_text().splitlines() == ["path,class,probability,cool,warm",
                                              "a.jpg,warm,0.750000,0.250000,0.750000"]
  chosen = cnn_predict.output_path("mine.csv")
  chosen.write_text("someone else's")
  with pytest.raises(UserError, match="was made by someone else"):
    cnn_predict.write_csv(PREDICTIONS, chosen, chosen=True)
  assert chosen.read_text() == "someone else's"
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      "mine.csv", "predictions.csv", "predictions_2.csv"]   # no temp file left


def test_a_file_name_that_is_not_utf8_keeps_its_bytes_in_the_csv(tmp_path):
  name = os.fsdecode(b"caf\xe9.jpg")
  predictions = Predictions(("cool", "warm"), [Prediction(name, (0.5, 0.5))], [])
  written = cnn_predict.write_csv(predictions, tmp_path / "p.csv", chosen=True)
  assert b"caf\xe9.jpg,cool,0.500000" in written.read_bytes()


@pytest.mark.parametrize("out, fragment", [
    ("", "--out is empty"), ("taken.csv", "already exists"),
    ("taken.csv/x.csv", "is not a folder"), ("missing/x.csv", "is not a folder")])
def test_an_out_it_cannot_write_is_refused_before_anything_is_read(tmp_path, monkeypatch, out,
                                                                   fragment):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "taken.csv").write_text("kept")
  with pytest.raises(UserError, match=fragment):
    cnn_predict.output_path(out)
  assert (tmp_path / "taken.csv").read_text() == "kept"


def test_a_run_older_than_recorded_image_shapes_reads_as_intel_only_if_its_classes_are(tmp_path):
  from hw2jax.recipes import cnn
  assert cnn.images_of({"shape": [32, 32, 1], "classes": ["a", "b"]}, tmp_path) == (
      (32, 32, 1), ("a", "b"))
  assert cnn.images_of(None, tmp_path) == (cnn.INTEL_SHAPE, intel.CLASSES)   # no summary
  (tmp_path / "summary.json").write_text(json.dumps({"data": {"classes": list(intel.CLASSES)}}))
  assert cnn.images_of(None, tmp_path) == (cnn.INTEL_SHAPE, intel.CLASSES)
  (tmp_path / "summary.json").write_text(json.dumps({"data": {"classes": ["a", "b"]}}))
  with pytest.raises(UserError, match="trained on 2-class data before runs recorded"):
    cnn.images_of(None, tmp_path)
