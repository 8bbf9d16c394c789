"""Runs know what they were made from (issue 17): every checkpoint carries the run's settings,
its data's fingerprint and (P2G) vocabularies; a rerun on other settings or data is refused with
nothing moved or rewritten, the restored input resumes bit-identically, a lost config.json is
rebuilt from the checkpoint, and commands that only read work on a read-only workdir."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pytest

from helpers import (assert_clean_failure, checksums, cli_env, run_cli, write_npz,
                     write_p2g_folder)
from hw2jax.data import sources
from hw2jax.errors import UserError
from hw2jax.experiments import cnn, p2g
from hw2jax.train import checkpoints as ckpt_lib
from hw2jax.train import workdir as workdir_lib

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
  epoch, meta = ckpt_lib.newest_meta(tmp_path / "run", "identity")
  assert epoch == 1 and meta["identity"]["config"]["learning_rate"] == 0.01
  assert {s: f["count"] for s, f in meta["identity"]["fingerprint"].items()} == {
      "train": 24, "val": 12, "test": 12}


def test_a_run_from_before_a_setting_existed_resumes_with_that_settings_old_value(tmp_path):
  """--pixels came after runs were written: their identity lacks it and meant 'correct'."""
  now = cnn.Config().to_json()
  older = {k: v for k, v in now.items() if k != "pixels"}
  run = workdir_lib.ensure(tmp_path / "run")
  (run / workdir_lib.CONFIG).write_text(json.dumps(workdir_lib.identity(older, "npz a.npz")))
  prepare = lambda config: workdir_lib.prepare(run, config, "npz a.npz", fresh=False,
                                               run_files=cnn.RUN_FILES, log=quiet,
                                               added_settings=cnn.ADDED_SETTINGS)
  with pytest.raises(UserError, match=r"pixels='correct' \(now 'course'\)"):
    prepare({**now, "pixels": "course"})
  prepare(now)
  assert json.loads((run / workdir_lib.CONFIG).read_text())["config"]["pixels"] == "correct"


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
  (run / workdir_lib.CONFIG).unlink()                 # and the settings' copy is lost too
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
  assert len(p2g.predict(run, words, log=quiet)) == 2      # vocabularies from the checkpoint
  with pytest.raises(UserError, match=r"word 2.*'ʒ', 'q'"):
    p2g.predict(run, [["k", "æ"], ["ʒ", "q", "ŋ"]], log=quiet)
  assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["1", "2"]

  train.write_bytes(original)
  p2g.train_and_evaluate(config(3), sources.load_p2g(folder), run, log=quiet)
  p2g.train_and_evaluate(config(3), sources.load_p2g(folder), tmp_path / "straight", log=quiet)
  assert history(run) == history(tmp_path / "straight")
  assert (run / p2g.VOCAB).read_text() == (tmp_path / "straight" / p2g.VOCAB).read_text()


def _read_only(workdir, command, cwd):
  """`command` with `workdir` mounted read-only (root writes through chmod, so as root a
  private mount namespace makes the folder read-only; as another user chmod does)."""
  env = cli_env(cwd)
  if os.geteuid() != 0:
    subprocess.run(["chmod", "-R", "a-w", str(workdir)], check=True)
    try:
      return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=600)
    finally:
      subprocess.run(["chmod", "-R", "u+w", str(workdir)], check=True)
  if shutil.which("unshare") is None or subprocess.run(
      ["unshare", "-m", "true"], capture_output=True).returncode != 0:
    pytest.skip("root without unshare -m: no way to make a folder read-only for root here")
  script = (f'mount --bind -o ro "{workdir}" "{workdir}" && touch "{workdir}/probe" 2>/dev/null '
            '&& exit 99; exec "$@"')
  return subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", *command], cwd=cwd,
                        env=env, capture_output=True, text=True, timeout=600)


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
  predicted = _read_only(run, [*py, f"--predict={word}"], tmp_path)
  assert predicted.returncode == 0, predicted.stdout + predicted.stderr
  assert "greedy" in predicted.stdout
  exported = _read_only(run, [*py, "--to_torch=out.pt"], tmp_path)
  assert exported.returncode == 0, exported.stdout + exported.stderr
  assert (tmp_path / "out.pt").is_file() and checksums(run) == before

  with (folder / "train.tsv").open("a", encoding="utf-8") as f:
    f.write("ʒ ʒ\tzz\n")
  before = checksums(tmp_path)
  assert_clean_failure(run_cli("experiments.p2g", *args, "--epochs=2", cwd=tmp_path),
                       "holds a run made from other settings or data (the checkpoint of epoch "
                       "1): train split of 24 items (now 25)", "--fresh")
  assert checksums(tmp_path) == before
