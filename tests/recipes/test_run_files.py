"""What a run's own files may hold after a user or a crash touched them (issue 17, cases 6 and
8): valid JSON of the wrong type in config.json, summary.json or vocab.json is one line or is
correctly ignored, never a traceback; a diverged run reports no test accuracy of NaN weights."""

import json
import shutil
import warnings

import pytest

from helpers import checksums, write_npz
from hw2jax.data import sources
from hw2jax.errors import UserError
from hw2jax.recipes import cnn, cnn_tables, p2g, p2g_predict
from hw2jax.train import run as run_lib

pytestmark = pytest.mark.slow
quiet = lambda line: None
TINY = dict(channels=(4, 8), tensorboard=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  path = write_npz(tmp_path_factory.mktemp("data") / "a.npz", n_train=24, n_val=12, n_test=12)
  return sources.load_intel(path, log=quiet)


@pytest.fixture(scope="module")
def train(data):
  """cnn.train_and_evaluate sharing one trainer and device copy of the data, so that the module
  compiles its programs once."""
  trainer = cnn.make_trainer(cnn.Config(**TINY))
  arrays = cnn.device_data(data, trainer)
  return lambda config, workdir, log=quiet: cnn.train_and_evaluate(
      config, data, workdir, arrays=arrays, trainer=trainer, log=log)


@pytest.fixture(scope="module")
def trained(train, tmp_path_factory):
  run = tmp_path_factory.mktemp("trained")
  train(cnn.Config(epochs=1, **TINY), run)
  return run


@pytest.mark.parametrize("text", ["[1, 2, 3]", '{"config": null}', '"lr 0.01"', "{not json"])
def test_a_damaged_config_json_is_rebuilt_from_the_checkpoint(text, train, trained, tmp_path):
  run = tmp_path / "run"
  shutil.copytree(trained, run)
  (run / run_lib.CONFIG).write_text(text)
  logs = []
  summary = train(cnn.Config(epochs=1, **TINY), run, logs.append)
  assert summary.epochs_done == 1 and any("rebuilt it from the checkpoint of epoch 1" in line
                                          for line in logs)
  assert json.loads((run / run_lib.CONFIG).read_text())["config"]["channels"] == [4, 8]


@pytest.mark.parametrize("text", ["[1, 2, 3]", '{"config": null}', '{"data": "x"}'])
def test_a_damaged_config_json_with_no_checkpoint_to_rebuild_it_is_one_line(text, train,
                                                                            tmp_path):
  (tmp_path / run_lib.CONFIG).write_text(text)
  before = checksums(tmp_path)
  with pytest.raises(UserError, match=r"config.json is damaged \(not a run's settings\)"):
    train(cnn.Config(epochs=1, **TINY), tmp_path)
  assert checksums(tmp_path) == before


@pytest.mark.parametrize("text", ["[]", '{"epochs_done": "many"}', '{"epochs_done": true}'])
def test_a_summary_that_is_not_one_is_rewritten_by_the_resumed_run(text, train, trained,
                                                                  tmp_path):
  run = tmp_path / "run"
  shutil.copytree(trained, run)
  (run / "summary.json").write_text(text)
  summary = train(cnn.Config(epochs=2, **TINY), run)
  assert summary.epochs_done == 2
  assert json.loads((run / "summary.json").read_text())["epochs_done"] == 2


def test_a_damaged_vocab_json_of_an_old_run_is_one_line(tmp_path):
  """Runs of before vocabularies in checkpoints read vocab.json: `[1]` there is one line."""
  (tmp_path / "config.json").write_text(json.dumps(
      {"config": p2g.Config().to_json(), "data": "x"}))
  (tmp_path / p2g.VOCAB).write_text("[1]")
  with pytest.raises(UserError, match=r"vocab.json is damaged \(not the run's vocabularies\)"):
    p2g_predict.load_run(tmp_path, log=quiet)


def test_a_diverged_run_reports_no_test_accuracy_of_nan_weights(train, tmp_path):
  """...and draws its curves without a warning (a panel with nothing drawn has no legend)."""
  warnings.simplefilter("error")
  summary = train(cnn.Config(epochs=2, learning_rate=1e9, **TINY), tmp_path)
  assert summary.diverged_at is not None
  assert summary.final.test_accuracy is None and summary.final.test_loss is None
  row = cnn_tables.table_2_1([cnn_tables.TableRow("vanilla", 1e9, [summary])]).splitlines()[2]
  assert row.split("|")[4].strip() == "—"             # the test accuracy cell
