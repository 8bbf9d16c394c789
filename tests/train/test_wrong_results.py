"""Issue 28's wrong-results cases: runs and resumes that finished without complaint but whose
results were wrong.

4. A run whose weights end NaN (the validation loss NaN, the training loss still finite) was
   reported as completed, its NaN epoch the best (a P2G run decoded the test set with them); a rate that is 0 in float32 (1e-300) trained
   nothing under its own name. Non-finite weights or validation loss now end the run as
   diverged (never the best epoch), and such rates are refused.
6. An edited checkpoint meta (history, best, identity...) was trusted on resume: the meta now
   carries a fingerprint of itself, and an edited one is damage (set aside, previous one used).
7a. A float32 run resumed under JAX_ENABLE_X64=1 went on in float64: refused in one line.
"""

import dataclasses
import json
import math
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from helpers import (assert_clean_failure, best_epoch, checksums, cli_env, fit_in,
                     new_cnn_state as new_state, p2g_summary, write_npz, write_p2g_folder)
from hw2jax.data import sources
from hw2jax.errors import UserError
from hw2jax.recipes import cnn, p2g, p2g_evaluation
from hw2jax.models import cnn as cnn_model
from hw2jax.train import run as run_lib
from hw2jax.train import trainer as trainer_lib

QUIET = lambda line: None


def run_fit(trainer, model, data, workdir, epochs, *, lr=0.05, evaluate=None, log=QUIET,
            config=None):
  def real_evaluate(s):
    m = trainer.evaluate(s, data["val"])
    return {"val_loss": m["loss"], "val_accuracy": m["accuracy"]}
  return fit_in(workdir, trainer, new_state(model, lr=lr), data["train"], epochs=epochs,
                evaluate=evaluate or real_evaluate, log=log, config=config)


# -- 4. NaN weights are a diverged run, not a completed one -------------------------------------


@pytest.fixture(scope="module")
def one_step_trainer():
  """One batch holds the whole (100-example) training set: an epoch is one update, and its
  training loss is that of the weights before it."""
  return trainer_lib.Trainer(cnn_model.loss_fn, cnn_model.eval_fn, batch_size=100,
                             eval_batch_size=16, epoch_mode="loop")


def test_an_update_that_leaves_the_validation_loss_nan_ends_the_run_as_diverged(
    one_step_trainer, model, data, tmp_path):
  """lr=1e30 for one update: the training loss (before it) is finite, the weights after it
  give a NaN validation loss. Today: 'completed', that epoch the best."""
  logs = []
  result = run_fit(one_step_trainer, model, data, tmp_path, epochs=3, lr=1e30, log=logs.append)
  assert result.diverged_at == 1 and result.status(3) == "diverged at epoch 1"
  assert len(result.history) == 1 and result.best is None
  record = run_lib.read_metrics(tmp_path)[0]
  assert record["diverged"] is True and math.isfinite(record["train_loss"])
  assert record.get("val_accuracy") is None                  # no accuracy of NaN outputs
  assert any("diverged at epoch 1: val_loss is nan" in line for line in logs), logs
  assert best_epoch(tmp_path) is None
  again = run_fit(one_step_trainer, model, data, tmp_path, epochs=3, lr=1e30)
  assert again.diverged_at == 1 and len(again.history) == 1   # a rerun stays stopped


def test_a_non_finite_validation_loss_is_never_the_best_epoch(trainer, model, data, tmp_path):
  """Epoch 2's validation loss is inf with the best accuracy of the run: the run ends there
  and epoch 1 stays the best, in the result and in the checkpoints."""
  scores = {1: (0.9, 0.3), 2: (math.inf, 0.95)}

  def evaluate(s):
    loss, accuracy = scores.get(int(s.step) // 13, (0.9, 0.5))
    return {"val_loss": loss, "val_accuracy": accuracy}
  result = run_fit(trainer, model, data, tmp_path, epochs=3, evaluate=evaluate)
  assert result.diverged_at == 2 and result.best["epoch"] == 1
  assert best_epoch(tmp_path) == 1


class NanAfterEpoch:
  """A trainer whose epoch `epoch` leaves one weight NaN and reports a finite loss."""

  def __init__(self, trainer, epoch):
    self.trainer, self.epoch, self.batch_size = trainer, epoch, trainer.batch_size

  def train_epoch(self, state, data, epoch, meter=None):
    state, metrics = self.trainer.train_epoch(state, data, epoch, meter)
    if epoch + 1 == self.epoch:
      leaves, tree = jax.tree_util.tree_flatten(state.params)
      leaves[0] = leaves[0].at[(0,) * leaves[0].ndim].set(jnp.nan)
      state = state.replace(params=jax.tree_util.tree_unflatten(tree, leaves))
    return state, metrics


def test_non_finite_weights_end_the_run_even_when_every_number_looks_finite(
    trainer, model, data, tmp_path):
  """Checked once per epoch on the state itself: an evaluation that does not see the NaN
  weight (here one that returns fixed numbers) cannot make it a completed run."""
  logs = []
  result = fit_in(tmp_path, NanAfterEpoch(trainer, 2), new_state(model), data["train"],
                  epochs=3, evaluate=lambda s: {"val_loss": 1.0, "val_accuracy": 0.5},
                  log=logs.append)
  assert result.diverged_at == 2 and result.best["epoch"] == 1
  assert any("diverged at epoch 2: its weights are not finite" in line for line in logs), logs


def test_the_cli_reports_an_update_to_nan_weights_as_diverged_not_completed(tmp_path):
  """The issue's command: one update of lr=1e30 (--batch_size = the 96 training images)."""
  write_npz(tmp_path / "tiny.npz")
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.cnn", "--data_path=tiny.npz", "--workdir=w",
       "--lr=1e30", "--batch_size=96", "--epochs=1", "--channels=4,8,16", "--notensorboard"],
      cwd=tmp_path, env=cli_env(tmp_path), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
  assert "diverged at epoch 1; final val acc —, test acc —" in proc.stdout, proc.stdout
  assert "completed" not in proc.stdout
  summary = json.loads((tmp_path / "w" / run_lib.SUMMARY).read_text())
  assert summary["status"] == "diverged at epoch 1" and summary["diverged_at"] == 1
  assert summary["best_val"] is None


def test_a_p2g_run_whose_weights_overflow_ends_as_diverged(tmp_path):
  data = sources.load_p2g(write_p2g_folder(tmp_path / "p2g", n_train=24, n_valid=6, n_test=6))
  config = p2g.Config(epochs=2, hidden_size=8, batch_size=24, widths=1, learning_rate=1e30,
                      tensorboard=False)
  logs = []
  summary = p2g.train_and_evaluate(config, data, tmp_path / "run", log=logs.append)
  assert summary.status == "diverged at epoch 1" and summary.best_val is None
  # Its NaN weights spell nothing: no test scores, no predictions, dashes in its table.
  assert summary.test == {} and summary.evaluated_checkpoint == "none (diverged)"
  assert not (tmp_path / "run" / p2g_evaluation.PREDICTIONS).exists()
  assert "diverged at epoch 1; test CER — WER —" in "\n".join(logs)
  greedy_row = (tmp_path / "run" / p2g.TABLES).read_text().splitlines()[2]
  assert greedy_row.split("|")[4:6] == [" — ", " — "], greedy_row


def test_a_diverged_seed_leaves_the_other_seeds_scores_in_table_3():
  diverged = dataclasses.replace(p2g_summary(attention=True), test={}, diverged_at=1)
  fine = p2g_summary(attention=True, seed=7, greedy=(0.25, 0.5), beam=(0.2, 0.4),
                     nucleus=(0.3, 0.6, 0.1))
  table = p2g.tables_3([p2g.TableRow(attention=True, runs=[diverged, fine])])
  assert "| greedy | 0.2500 | 0.5000 |" in table, table
  assert "| beam 5 (best beam) | 0.2000 | 0.4000 |" in table, table
  assert "| nucleus p=0.8, 3 samples | 0.3000 | 0.6000 | 0.1000 |" in table, table


ZERO_OR_INFINITE_IN_FLOAT32 = [1e-300, 1e-46, 1e39]


@pytest.mark.parametrize("rate", ZERO_OR_INFINITE_IN_FLOAT32)
@pytest.mark.parametrize("config", [cnn.Config(), p2g.Config()], ids=["cnn", "p2g"])
def test_a_learning_rate_that_float32_cannot_hold_is_refused(config, rate):
  with pytest.raises(UserError, match=re.escape(f"--lr={rate:g} is ") + ".* in float32"):
    dataclasses.replace(config, learning_rate=rate).validate()
  dataclasses.replace(config, learning_rate=1e-30).validate()   # small, but a float32


def test_the_cli_refuses_lr_1e_300_in_one_line(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "experiments.cnn", "--lr=1e-300",
                         "--data_path=none.npz"], cwd=tmp_path, env=cli_env(tmp_path),
                        capture_output=True, text=True, timeout=600)
  assert_clean_failure(proc, "--lr=1e-300", "float32")


# -- 6. the meta of a checkpoint is covered by its fingerprint -----------------------------------


def edit_history(meta, card):
  meta["history"][0]["val_accuracy"] = 0.99


def edit_best(meta, card):
  meta["best"] = {**meta["history"][-1], "val_accuracy": 0.99}


def edit_diverged_at(meta, card):
  meta["diverged_at"] = meta["epoch"]


def edit_the_card(meta, card):
  card["config"]["dropout"] = 0.2


def drop_the_dtype_setting(meta, card):
  meta.pop("jax_enable_x64", None)


@pytest.mark.parametrize("edit", [edit_history, edit_best, edit_diverged_at, edit_the_card,
                                  drop_the_dtype_setting], ids=lambda f: f.__name__)
def test_an_edited_meta_is_set_aside_and_the_run_resumes_from_the_previous_checkpoint(
    edit, trainer, model, data, tmp_path):
  config = {"dropout": 0.1}
  straight = run_fit(trainer, model, data, tmp_path / "straight", epochs=3, config=config)
  run = tmp_path / "run"
  run_fit(trainer, model, data, run, epochs=2, config=config)
  paths = [run / "checkpoints" / "2" / item / "metadata" for item in ("meta", "card")]
  meta, card = (json.loads(path.read_text()) for path in paths)
  edit(meta, card)
  for path, content in zip(paths, (meta, card)):
    path.write_text(json.dumps(content))
  logs = []
  resumed = run_fit(trainer, model, data, run, epochs=3, config=config, log=logs.append)
  said = [line for line in logs if "checkpoint of epoch 2 is unreadable" in line]
  assert len(said) == 1 and "corrupt/2-" in said[0], logs
  assert ("its card is missing or does not match its metadata" if edit is edit_the_card else
          "its metadata does not match the fingerprint saved with it") in said[0], said
  assert any("resuming from the checkpoint of epoch 1" in line for line in logs), logs
  strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]
  assert strip(resumed.history) == strip(straight.history) and resumed.diverged_at is None
  assert resumed.best["epoch"] == straight.best["epoch"]


def test_the_best_kept_and_restored_is_the_one_the_fingerprinted_history_names(
    trainer, model, data, tmp_path):
  """Orbax's BestN ranks steps by <step>/metrics/metrics, which no fingerprint covers (an edited
  one picked the best and got the real best deleted): no step has one, and a planted one (as
  runs before cards wrote) changes neither what is kept nor what is restored."""
  scores = iter([0.9, 0.1, 0.2, 0.3, 0.4])
  evaluate = lambda s: {"val_loss": 1.0, "val_accuracy": next(scores)}
  run_fit(trainer, model, data, tmp_path, epochs=3, evaluate=evaluate)
  assert not list((tmp_path / "checkpoints").glob("*/metrics"))
  (tmp_path / "checkpoints" / "3" / "metrics").mkdir()
  (tmp_path / "checkpoints" / "3" / "metrics" / "metrics").write_text(
      json.dumps({"score": 5.0, "epoch": 3}))
  with run_lib.Run.read(tmp_path, log=QUIET) as run:
    assert run.checkpoints.restore_best(new_state(model))[1]["epoch"] == 1
  result = run_fit(trainer, model, data, tmp_path, epochs=5, evaluate=evaluate)
  assert result.best["epoch"] == 1
  assert sorted(int(p.name) for p in (tmp_path / "checkpoints").glob("[0-9]*")) == [1, 4, 5]


def test_an_identity_edited_in_the_newest_meta_does_not_let_other_settings_resume(tmp_path):
  """The check before a resume reads the identity from the newest checkpoint: an edited one
  is not trusted there either; the previous one's settings count."""
  data = sources.load_intel(write_npz(tmp_path / "a.npz", n_train=24, n_val=12, n_test=12),
                            log=QUIET)
  config = cnn.Config(epochs=2, channels=(4, 8, 16), tensorboard=False, epoch_mode="loop")
  run = tmp_path / "run"
  cnn.train_and_evaluate(config, data, run, log=QUIET)
  path = run / "checkpoints" / "2" / "card" / "metadata"
  card = json.loads(path.read_text())
  card["config"]["dropout"] = 0.2
  path.write_text(json.dumps(card))
  (run / "config.json").write_text(json.dumps({k: card[k] for k in ("config", "data")}))
  with pytest.raises(UserError, match=r"\(the checkpoint of epoch 1\): dropout=0.1 \(now 0.2\)"):
    cnn.train_and_evaluate(dataclasses.replace(config, epochs=3, dropout=0.2), data, run,
                           log=QUIET)


# -- 7a. the dtype setting is part of a checkpoint ------------------------------------------------


def test_a_float32_run_resumed_under_jax_enable_x64_is_refused_in_one_line_nothing_changed(
    tmp_path):
  write_npz(tmp_path / "tiny.npz", n_train=24, n_val=12, n_test=12)
  args = [sys.executable, "-m", "experiments.cnn", "--data_path=tiny.npz", "--workdir=w",
          "--channels=4,8,16", "--notensorboard"]
  env = {k: v for k, v in cli_env(tmp_path).items() if k != "JAX_ENABLE_X64"}
  first = subprocess.run([*args, "--epochs=1"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
  assert first.returncode == 0, first.stdout + first.stderr
  before = checksums(tmp_path / "w")
  resumed = subprocess.run([*args, "--epochs=2"], cwd=tmp_path,
                           env={**env, "JAX_ENABLE_X64": "1"}, capture_output=True, text=True,
                           timeout=600)
  assert_clean_failure(resumed, "trained with JAX_ENABLE_X64 unset (float32), this run has "
                       "JAX_ENABLE_X64=1")
  assert checksums(tmp_path / "w") == before        # config.json too: refused before it is written
