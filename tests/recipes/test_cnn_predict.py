"""experiments.cnn --predict through the front door: real photos (the Intel sample's JPEGs,
tinted warm or cool: an easy fixture a tiny run learns) classified by a trained run; folders,
globs and lists; broken files among good ones; a read-only workdir; a --pixels=course run."""

import csv
import io
import shutil
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from helpers import (assert_clean_failure, checksums, photos, run_cli, run_read_only,
                     write_tinted)
from hw2jax.data import intel
from hw2jax.recipes import cnn, cnn_predict

pytestmark = pytest.mark.slow
TINY = ("--channels=4,8,16", "--optimizer=adam", "--lr=0.003", "--noprogress")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny run trained on 100 tinted photos of each tint, and 20 more photos of each tint it
  never saw (held/<tint>/), as 150x150 JPEGs."""
  root = tmp_path_factory.mktemp("predict")
  arrays = photos(120)
  write_tinted(root / "train", arrays[:100])
  write_tinted(root / "held", arrays[100:])
  proc = run_cli("experiments.cnn", "--data_path=train", "--workdir=run", "--epochs=6", *TINY,
                 cwd=root)
  assert proc.returncode == 0, proc.stderr
  return root


def rows(path):
  return list(csv.DictReader(io.StringIO(path.read_text())))


def predict(root, *args):
  return run_cli("experiments.cnn", "--workdir=run", *args, cwd=root)


def test_photos_it_never_saw_get_their_classes_with_probabilities_in_a_csv(trained):
  proc = predict(trained, "--predict=held/warm,held/cool", "--out=held.csv")
  assert proc.returncode == 0, proc.stderr
  table = rows(trained / "held.csv")
  assert len(table) == 40
  assert list(table[0]) == ["path", "class", "probability", "cool", "warm"]
  # held/<tint>/<i>.jpg; a tint barely shows on the sample's near-black photos, so a tiny CNN
  # may miss one or two (a broken pipeline, swapped channels say, misses about half or all).
  right = [row["class"] == row["path"].split("/")[1] for row in table]
  assert sum(right) >= 36, [row for row, ok in zip(table, right) if not ok]
  for row in table:
    assert float(row["probability"]) == max(float(row["cool"]), float(row["warm"]))
    assert abs(float(row["cool"]) + float(row["warm"]) - 1) < 1e-5
  # The terminal: a line per image with its top classes, then where the CSV went.
  assert proc.stdout.count("held/") == 40 and "predictions in held.csv" in proc.stdout


def test_a_folder_a_glob_and_a_list_of_files_name_the_same_images(trained):
  names = sorted(p.name for p in (trained / "held" / "warm").iterdir())
  listed = ",".join(f"held/warm/{n}" for n in names)
  tables = []
  for i, spec in enumerate(("held/warm", "held/warm/*.jpg", listed)):
    proc = predict(trained, f"--predict={spec}", f"--out=same{i}.csv")
    assert proc.returncode == 0, proc.stderr
    tables.append(sorted((r["path"].split("/")[-1], r["cool"]) for r in
                         rows(trained / f"same{i}.csv")))
  assert tables[0] == tables[1] == tables[2] and len(tables[0]) == 20


def test_broken_files_among_good_ones_are_a_line_each_and_exit_2_the_good_ones_classified(
    trained, tmp_path):
  folder = tmp_path / "mixed"
  shutil.copytree(trained / "held" / "cool", folder)
  good = (folder / "0.jpg").read_bytes()
  (folder / "truncated.jpg").write_bytes(good[:len(good) // 2])
  (folder / "notes.jpg").write_text("not an image")
  proc = predict(trained, f"--predict={folder},{tmp_path}/missing.png,{tmp_path}/none*.png",
                 f"--out={tmp_path}/mixed.csv")
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  errors = proc.stderr.splitlines()
  assert len(errors) == 4 and all(line.startswith("error: ") for line in errors), proc.stderr
  for fragment in ("truncated.jpg: not an image", "notes.jpg: not an image",
                   "missing.png: no such file", "none*.png: matches no file"):
    assert sum(fragment in line for line in errors) == 1, (fragment, proc.stderr)
  table = rows(tmp_path / "mixed.csv")
  assert len(table) == 20 and {r["class"] for r in table} == {"cool"}


def test_a_read_only_workdir_classifies_and_is_left_as_it_was(trained, tmp_path):
  workdir = trained / "run"
  before = checksums(workdir)
  proc = run_read_only(workdir, [sys.executable, "-m", "experiments.cnn", "--workdir=run",
                                 "--predict=held/cool/0.jpg", f"--out={tmp_path}/ro.csv"],
                       cwd=trained)
  assert proc.returncode == 0, proc.stderr
  assert rows(tmp_path / "ro.csv")[0]["class"] == "cool"
  assert checksums(workdir) == before


def test_no_csv_is_ever_overwritten(trained, tmp_path):
  here = tmp_path / "here"
  shutil.copytree(trained / "held" / "warm", here / "warm")
  shutil.copytree(trained / "run", here / "run")
  for expected in ("predictions.csv", "predictions_2.csv"):
    proc = predict(here, "--predict=warm/1.jpg")
    assert proc.returncode == 0, proc.stderr
    assert f"predictions in {expected}" in proc.stdout and (here / expected).is_file()
  before = (here / "predictions.csv").read_bytes()
  assert_clean_failure(predict(here, "--predict=warm/2.jpg", "--out=predictions.csv"),
                       "--out=predictions.csv already exists")
  assert (here / "predictions.csv").read_bytes() == before


@pytest.mark.parametrize("make, fragment", [
    ("nothing", "run holds no trained CNN run"), ("empty", "run holds no trained CNN run"),
    ("config only", "run has no readable best checkpoint")])       # started, killed before one
def test_a_workdir_that_never_trained_is_one_line_and_exit_2(trained, tmp_path, make, fragment):
  if make != "nothing":
    (tmp_path / "run").mkdir()
  if make == "config only":
    shutil.copy(trained / "run" / "config.json", tmp_path / "run")
  shutil.copy(trained / "held" / "cool" / "0.jpg", tmp_path)
  assert_clean_failure(predict(tmp_path, "--predict=0.jpg"), fragment)
  assert not (tmp_path / "predictions.csv").exists()


def test_a_course_pixels_run_classifies_through_its_own_pixel_pipeline(tmp_path):
  """The probabilities in the CSV are the model's on the course skeleton's reading of the
  image (lossless 48x48 PNGs: no resize), not on the image as stored."""
  arrays = [a[:48, :48] for a in photos(12)]
  write_tinted(tmp_path / "train", arrays)
  proc = run_cli("experiments.cnn", "--data_path=train", "--workdir=run", "--epochs=1",
                 "--pixels=course", *TINY, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr
  images = np.stack(arrays[:4])
  for i, image in enumerate(images):
    Image.fromarray(image).save(tmp_path / f"{i}.png")
  proc = run_cli("experiments.cnn", "--workdir=run", "--predict=0.png,1.png,2.png,3.png",
                 cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr
  written = np.array([[float(r["cool"]), float(r["warm"])] for r in
                      rows(tmp_path / "predictions.csv")])
  trained = cnn.trained_run(tmp_path / "run", log=lambda line: None)
  assert trained.config.pixels == "course" and trained.image_shape == (48, 48, 3)
  model = trained.config.build_model(2)

  def probabilities(pixels):
    return np.asarray(jax.nn.softmax(model.apply(trained.variables, pixels, train=False)))

  np.testing.assert_allclose(written, probabilities(intel.course_pixels(images)), atol=2e-6)
  assert np.abs(written - probabilities(images)).max() > 1e-3


def test_a_grey_run_reads_colour_photos_as_their_luminance(tmp_path):
  rgb = np.zeros((1, 150, 150, 3), np.uint8)
  rgb[..., 0] = 200
  path = tmp_path / "red.png"
  Image.fromarray(rgb[0]).save(path)
  images, ok, why = cnn_predict.decode([path], (32, 32, 1))
  assert ok.tolist() == [True] and not why and images.shape == (1, 32, 32, 1)
  assert int(images[0, 0, 0, 0]) == round(200 * 0.299)
