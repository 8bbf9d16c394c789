"""Runs know what they were made from (issue 17): every checkpoint carries the run's settings,
its data's fingerprint and (P2G) vocabularies; a rerun on other settings or data is refused with
nothing moved or rewritten, the restored input resumes bit-identically, a lost config.json is
rebuilt from the checkpoint, and commands that only read work on a read-only workdir and leave
damaged checkpoints where they are."""

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import pytest

from helpers import (assert_clean_failure, checksums, open_run, run_cli, run_read_only, write_npz,
                     write_p2g_folder)
from hw2jax.data import sources
from hw2jax.errors import UserError
from hw2jax.recipes import cnn, p2g, p2g_predict
from hw2jax.train import checkpoints as ckpt_lib
from hw2jax.train import run as run_lib

pytestmark = pytest.mark.slow
quiet = lambda line: None


def history(run):
  """metrics.jsonl without the wall times: what an uninterrupted run must equal."""
  return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
          for line in (run / "metrics.jsonl").read_text().splitlines()]


def cnn_config(epochs):
  return cnn.Config(epochs=epochs, channels=(4, 8), tensorboard=False, epoch_mode="loop")


def test_every_checkpoint_carries_the_settings_and_data_it_was_made_from(tmp_path):
  data = sources.load_intel(write_npz(tmp_path / "a.npz", n_train=24, n_val=12, n_test=12),
                            log=quiet)
  cnn.train_and_evaluate(cnn_config(1), data, tmp_path / "run", log=quiet)
  stored = ckpt_lib.newest(tmp_path / "run" / ckpt_lib.FOLDER, with_card=True)
  assert stored.epoch == 1 and stored.card["config"]["learning_rate"] == 0.01
  assert {s: f["count"] for s, f in stored.card["fingerprint"].items()} == {
      "train": 24, "val": 12, "test": 12}


def test_a_run_from_before_a_setting_existed_resumes_with_that_settings_old_value(tmp_path):
  """--pixels came after runs were written: their identity lacks it and meant 'correct'."""
  now = cnn.Config().to_json()
  older = {k: v for k, v in now.items() if k != "pixels"}
  run = run_lib.ensure(tmp_path / "run")
  (run / run_lib.CONFIG).write_text(json.dumps(run_lib.Card(older, "npz a.npz").identity()))
  prepare = lambda config: open_run(run, config, "npz a.npz", run_files=cnn.RUN_FILES,
                                    added_settings=cnn.ADDED_SETTINGS)
  with pytest.raises(UserError, match=r"pixels='correct' \(now 'course'\)"):
    prepare({**now, "pixels": "course"})
  prepare(now)
  assert json.loads((run / run_lib.CONFIG).read_text())["config"]["pixels"] == "correct"


def test_replaced_cnn_data_is_refused_untouched_and_the_restored_data_resumes_bit_identically(
    tmp_path):
  path = write_npz(tmp_path / "a.npz", n_train=24, n_val=12, n_test=12)
  original = path.read_bytes()
  load = lambda: sources.load_intel(path, log=quiet)
  run = tmp_path / "run"
  cnn.train_and_evaluate(cnn_config(2), load(), run, log=quiet)
  before = checksums(run)
  write_npz(path, n_train=24, n_val=12, n_test=12, seed=7)           # same path, other images
  with pytest.raises(UserError, match=r"train split: the same 24 items in number, other "
                     r"content; val split.*For a separate run use --workdir"):
    cnn.train_and_evaluate(cnn_config(3), load(), run, log=quiet)
  write_npz(path, n_train=36, n_val=12, n_test=12)
  with pytest.raises(UserError, match=r"train split of 24 items \(now 36\)"):
    cnn.train_and_evaluate(cnn_config(3), load(), run, log=quiet)
  assert checksums(run) == before

  path.write_bytes(original)
  (run / run_lib.CONFIG).unlink()                 # and the settings' copy is lost too
  with pytest.raises(UserError, match=r"learning_rate=0.01 \(now 0.5\)"):
    cnn.train_and_evaluate(dataclasses.replace(cnn_config(3), learning_rate=0.5), load(),
                           run, log=quiet)
  logs = []
  resumed = cnn.train_and_evaluate(cnn_config(3), load(), run, log=logs.append)
  assert any("config.json was missing or damaged; rebuilt it from the checkpoint of epoch 2"
             in line for line in logs), logs
  straight = cnn.train_and_evaluate(cnn_config(3), load(), tmp_path / "straight", log=quiet)
  assert history(run) == history(tmp_path / "straight")
  assert resumed.final == straight.final
  assert json.loads((run / "config.json").read_text())["config"]["learning_rate"] == 0.01


def test_edited_p2g_data_is_refused_with_checkpoints_and_vocab_untouched_and_still_predicts(
    tmp_path):
  folder = write_p2g_folder(tmp_path / "data", n_train=24, n_valid=6, n_test=6)
  train = folder / "train.tsv"
  original = train.read_bytes()
  config = lambda epochs: p2g.Config(epochs=epochs, hidden_size=8, batch_size=8, widths=1,
                                     tensorboard=False)
  run = tmp_path / "run"
  p2g.train_and_evaluate(config(2), sources.load_p2g(folder), run, log=quiet)
  before = checksums(run)
  with train.open("a", encoding="utf-8") as f:
    f.write("ʒ ʒ\tzz\n")                                # one line with a new symbol
  with pytest.raises(UserError, match=r"train split of 24 items \(now 25\)"):
    p2g.train_and_evaluate(config(3), sources.load_p2g(folder), run, log=quiet)
  train.write_bytes(original)
  with pytest.raises(UserError, match=r"learning_rate=0.003 \(now 0.01\).*--fresh"):
    p2g.train_and_evaluate(dataclasses.replace(config(3), learning_rate=0.01),
                           sources.load_p2g(folder), run, log=quiet)
  assert checksums(run) == before
  with train.open("a", encoding="utf-8") as f:
    f.write("ʒ ʒ\tzz\n")
  (run / p2g.VOCAB).write_text('{"source": ["<pad>"], "target": []}')   # shortened by hand
  words = [p for p, _ in sources.load_p2g(folder).test[:2]]
  assert len(p2g_predict.predict(run, words, log=quiet)) == 2      # vocabularies from the checkpoint
  with pytest.raises(UserError, match=r"word 2.*'ʒ', 'q'"):
    p2g_predict.predict(run, [["k", "æ"], ["ʒ", "q", "ŋ"]], log=quiet)
  assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["1", "2"]

  train.write_bytes(original)
  p2g.train_and_evaluate(config(3), sources.load_p2g(folder), run, log=quiet)
  p2g.train_and_evaluate(config(3), sources.load_p2g(folder), tmp_path / "straight", log=quiet)
  assert history(run) == history(tmp_path / "straight")
  assert (run / p2g.VOCAB).read_text() == (tmp_path / "straight" / p2g.VOCAB).read_text()


def test_a_read_only_workdir_predicts_and_exports_and_changed_data_is_one_line(tmp_path):
  """Through the CLI: --predict and --to_torch on a workdir mounted read-only change nothing
  and work; then one new line in train.tsv: exit 2, one line naming it, no file changed."""
  pytest.importorskip("torch")
  folder = write_p2g_folder(tmp_path / "data", n_train=24, n_valid=6, n_test=6)
  args = ["--data_path=data", "--workdir=run", "--hidden_size=8", "--batch_size=8"]
  trained = run_cli("experiments.p2g", *args, "--epochs=1", cwd=tmp_path)
  assert trained.returncode == 0, trained.stderr
  run = tmp_path / "run"
  before = checksums(run)
  word = json.loads((run / p2g.VOCAB).read_text())["source"][4]
  py = [sys.executable, "-m", "experiments.p2g", *args]
  predicted = run_read_only(run, [*py, f"--predict={word}"], tmp_path)
  assert predicted.returncode == 0, predicted.stdout + predicted.stderr
  assert "greedy" in predicted.stdout
  exported = run_read_only(run, [*py, "--to_torch=out.pt"], tmp_path)
  assert exported.returncode == 0, exported.stdout + exported.stderr
  assert (tmp_path / "out.pt").is_file() and checksums(run) == before

  with (folder / "train.tsv").open("a", encoding="utf-8") as f:
    f.write("ʒ ʒ\tzz\n")
  before = checksums(tmp_path)
  assert_clean_failure(run_cli("experiments.p2g", *args, "--epochs=2", cwd=tmp_path),
                       "holds a run made from other settings or data (the checkpoint of epoch "
                       "1): train split of 24 items (now 25)", "--fresh")
  assert checksums(tmp_path) == before


# -- every setting outside workdir.RESUMABLE is part of a run's identity -----------------------


# The settings a resumed run may change: they change how long a run trains, how its epochs are
# computed or logged, not what it computes. Every other field of a Config is the run's identity.
RESUMABLE = ("epochs", "epoch_mode", "eval_batch_size", "tensorboard", "devices")


def fixed_settings(config_class):
  """The fields of `config_class` a resumed run may not change."""
  return [f.name for f in dataclasses.fields(config_class) if f.name not in RESUMABLE]


def test_the_library_lets_a_resumed_run_change_exactly_the_resumable_settings():
  assert sorted(run_lib.RESUMABLE) == sorted(RESUMABLE)
  for config_class in (cnn.Config, p2g.Config):
    assert set(RESUMABLE) <= {f.name for f in dataclasses.fields(config_class)}


@dataclasses.dataclass(frozen=True)
class Trained:
  """A tiny run trained once for this module: copy `workdir` (shutil.copytree) before use."""
  module: object               # hw2jax.recipes.cnn or .p2g
  config: object
  data: object
  data_path: object
  workdir: object


def test_a_p2g_run_at_the_former_default_widths_resumed_with_the_default_keeps_them(tmp_path):
  """The default went from 3 padded widths to 5; the report's Q3 runs, which ask the default,
  go on at 3 instead of being refused. A run at any other number is refused as before."""
  data = sources.load_p2g(write_p2g_folder(tmp_path / "data", n_train=24, n_valid=6, n_test=6))
  former = dataclasses.replace(P2G_RUN, widths=p2g.FORMER_WIDTHS)
  p2g.train_and_evaluate(former, data, tmp_path / "run", log=quiet)
  assert p2g.Config.widths != p2g.FORMER_WIDTHS
  said = []
  summary = p2g.train_and_evaluate(dataclasses.replace(P2G_RUN, widths=p2g.Config.widths,
                                                       epochs=2), data, tmp_path / "run",
                                   log=said.append)
  assert summary.config.widths == p2g.FORMER_WIDTHS and summary.epochs_done == 2
  assert any("--widths=3, the former default; it goes on with them" in line for line in said)
  p2g.train_and_evaluate(dataclasses.replace(P2G_RUN, widths=4), data, tmp_path / "four",
                         log=quiet)
  with pytest.raises(UserError, match=r"widths=4 \(now 5\)"):
    p2g.train_and_evaluate(dataclasses.replace(P2G_RUN, widths=p2g.Config.widths, epochs=2),
                           data, tmp_path / "four", log=quiet)


# The course's channels (32, 64, 128): the CNN run is a TorchCNN too, so --to_torch reads it.
CNN_RUN = cnn.Config(epochs=1, tensorboard=False, epoch_mode="loop")
P2G_RUN = p2g.Config(epochs=1, hidden_size=8, batch_size=8, widths=1, tensorboard=False)
# Another valid value (for the runs above, their tiny data and one CPU) of every setting outside
# RESUMABLE. A field added to a Config fails its test below until it has one here.
OTHER_VALUE = {
    cnn.Config: dict(model="bn_gap", learning_rate=0.5, batch_size=4, optimizer="adam",
                     l2_decay=1e-3, dropout=0.2, seed=7, kernel_size=5, maxpool=False,
                     channels=(32, 64), init="flax", pixels="course", max_train_images=12),
    p2g.Config: dict(attention=True, learning_rate=0.01, batch_size=4, hidden_size=16,
                     dropout=0.1, seed=7, max_train_words=12, widths=2, unroll=2),
}


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("cnn_run")
  path = write_npz(root / "a.npz", n_train=24, n_val=12, n_test=12)
  data = sources.load_intel(path, log=quiet)
  cnn.train_and_evaluate(CNN_RUN, data, root / "run", log=quiet)
  return Trained(cnn, CNN_RUN, data, path, root / "run")


@pytest.fixture(scope="module")
def p2g_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("p2g_run")
  folder = write_p2g_folder(root / "data", n_train=24, n_valid=6, n_test=6)
  data = sources.load_p2g(folder)
  p2g.train_and_evaluate(P2G_RUN, data, root / "run", log=quiet)
  return Trained(p2g, P2G_RUN, data, folder, root / "run")


@pytest.mark.parametrize("experiment,field", [
    pytest.param(name, field, id=f"{name}-{field}")
    for name, config_class in (("cnn", cnn.Config), ("p2g", p2g.Config))
    for field in fixed_settings(config_class)])
def test_a_rerun_changing_any_setting_outside_resumable_is_refused_naming_it_nothing_changed(
    experiment, field, request, tmp_path):
  trained = request.getfixturevalue(f"{experiment}_run")
  config_class = type(trained.config)
  assert field in OTHER_VALUE[config_class], (
      f"give {config_class.__module__}.Config.{field} another valid value in OTHER_VALUE")
  run = shutil.copytree(trained.workdir, tmp_path / "run")
  before = checksums(run)
  changed = dataclasses.replace(trained.config, **{field: OTHER_VALUE[config_class][field]})
  old, new = trained.config.to_json()[field], changed.to_json()[field]
  assert old != new
  with pytest.raises(UserError) as refused:
    trained.module.train_and_evaluate(changed, trained.data, run, log=quiet)
  said = str(refused.value)     # (another training subset also names the split it changes)
  assert (f"holds a run made from other settings or data (the checkpoint of epoch 1): "
          f"{field}={old!r} (now {new!r})" in said and ". For a separate run use --workdir"
          in said), said
  assert checksums(run) == before


def test_a_p2g_training_file_with_one_spelling_edited_is_refused_as_other_content(p2g_run,
                                                                                 tmp_path):
  """The same number of pairs and the same letters, one spelling written backwards: the pairs'
  content hash, not their count or vocabularies, tells."""
  run = shutil.copytree(p2g_run.workdir, tmp_path / "run")
  folder = shutil.copytree(p2g_run.data_path, tmp_path / "data")
  pairs = [line.split("\t") for line in
           (folder / "train.tsv").read_text(encoding="utf-8").splitlines()]
  i = next(i for i, (_, spelling) in enumerate(pairs) if spelling != spelling[::-1])
  pairs[i][1] = pairs[i][1][::-1]
  (folder / "train.tsv").write_text("".join(f"{p}\t{s}\n" for p, s in pairs), encoding="utf-8")
  edited = sources.load_p2g(folder)
  assert len(edited.train) == len(p2g_run.data.train) and edited.train != p2g_run.data.train
  assert sorted(edited.tgt_vocab.symbols) == sorted(p2g_run.data.tgt_vocab.symbols)
  before = checksums(run)
  with pytest.raises(UserError) as refused:
    p2g.train_and_evaluate(P2G_RUN, edited, run, log=quiet)
  assert ("(the checkpoint of epoch 1): train split: the same 24 items in number, other "
          "content. For a separate run" in str(refused.value)), str(refused.value)
  assert checksums(run) == before


# -- commands that only read leave damaged checkpoints and leftovers where they are ------------

LEFT_IN_PLACE = "skipped (left in place: this command only reads)"


def killed_save_leftover(checkpoints):
  """What a run killed while saving epoch 2 leaves: Orbax's temporary folder of that step."""
  shutil.copytree(checkpoints / "1", checkpoints / "2.orbax-checkpoint-tmp-1700000000")


def cut_short(step):
  """Every data file of the step's arrays cut to half (Orbax cannot read them)."""
  for f in step.glob("state/**/d/*"):
    if f.is_file():
      f.write_bytes(f.read_bytes()[:f.stat().st_size // 2])


def test_predict_beside_a_killed_saves_leftover_folder_predicts_and_leaves_it(p2g_run, tmp_path):
  run = shutil.copytree(p2g_run.workdir, tmp_path / "run")
  killed_save_leftover(run / "checkpoints")
  before = checksums(run)
  words = [p for p, _ in p2g_run.data.test[:2]]
  assert len(p2g_predict.predict(run, words, log=quiet)) == 2
  assert checksums(run) == before


def test_predict_on_a_damaged_best_checkpoint_says_it_left_it_in_place_and_moves_nothing(
    p2g_run, tmp_path):
  run = shutil.copytree(p2g_run.workdir, tmp_path / "run")
  cut_short(run / "checkpoints" / "1")
  before = checksums(run)
  logs = []
  with pytest.raises(UserError, match="has no readable best checkpoint"):
    p2g_predict.predict(run, [p for p, _ in p2g_run.data.test[:2]], log=logs.append)
  said = [line for line in logs if "checkpoint of epoch 1 is unreadable" in line]
  assert len(said) == 1 and said[0].endswith(LEFT_IN_PLACE), logs
  assert checksums(run) == before
  assert not (run / "checkpoints" / ckpt_lib.CORRUPT).exists()


def test_to_torch_on_a_damaged_best_cnn_checkpoint_says_it_left_it_in_place_and_moves_nothing(
    cnn_run, tmp_path):
  pytest.importorskip("torch")
  from hw2jax.recipes import torch_checkpoints
  run = shutil.copytree(cnn_run.workdir, tmp_path / "run")
  killed_save_leftover(run / "checkpoints")
  cut_short(run / "checkpoints" / "1")
  before = checksums(run)
  logs = []
  with pytest.raises(UserError, match="has no readable best checkpoint"):
    torch_checkpoints.export_cnn(run, tmp_path / "out.pt", log=logs.append)
  said = [line for line in logs if "checkpoint of epoch 1 is unreadable" in line]
  assert len(said) == 1 and said[0].endswith(LEFT_IN_PLACE), logs
  assert checksums(run) == before and not (tmp_path / "out.pt").exists()


OLD_RUN = Path(__file__).parents[1] / "fixtures" / "p2g_workdir_1cb5fe3"


@pytest.mark.parametrize("damaged", ["metrics/metrics", "_CHECKPOINT_METADATA"])
def test_predict_beside_a_step_orbax_cannot_list_is_one_line_and_moves_nothing(
    damaged, p2g_run, tmp_path):
  """Orbax reads every step's metadata (and metrics, which runs before cards wrote: the
  fixture of commit 1cb5fe3) when it opens the folder: a reader cannot set a damaged one aside,
  so it stops with one line saying what to do (training moves it)."""
  old = damaged.startswith("metrics")
  run = shutil.copytree(OLD_RUN if old else p2g_run.workdir, tmp_path / "run")
  (run / "checkpoints" / "1" / damaged).write_text("{not json")
  before = checksums(run)
  with pytest.raises(UserError, match=rf"epoch 1 in .* is damaged \({damaged}: JSONDecodeError\) "
                                      "and this command only reads"):
    p2g_predict.predict(run, [p for p, _ in p2g_run.data.test[:2]], log=quiet)
  assert checksums(run) == before
