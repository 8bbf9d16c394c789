"""The epoch loop: resume is bit-identical, the best epoch is kept, damaged checkpoints are set
aside, divergence stops cleanly, lost checkpoints are refused; two runs save from two threads."""

import json
import threading

import chex
import jax.numpy as jnp
import pytest

from helpers import checksums, fit_in, new_cnn_state as new_state
from hw2jax.errors import UserError
from hw2jax import files
from hw2jax.train import checkpoints, run as run_lib


def run_fit(model, trainer, data, workdir, epochs, lr=0.05, log=lambda line: None):
  def evaluate(s):
    m = trainer.evaluate(s, data["val"])
    return {"val_loss": m["loss"], "val_accuracy": m["accuracy"]}
  return fit_in(workdir, trainer, new_state(model, lr=lr), data["train"], epochs=epochs,
                evaluate=evaluate, log=log)


def test_a_rerun_says_in_one_line_whether_it_resumes_or_has_nothing_to_train(
    model, trainer, data, tmp_path):
  """'resuming from the checkpoint of epoch k' only when there is an epoch to train; a workdir
  that holds as many epochs as asked, or more, says that instead (and which epoch it reports)."""
  def said(epochs):
    lines = []
    run_fit(model, trainer, data, tmp_path, epochs=epochs, log=lines.append)
    return [line for line in lines if "epoch " not in line[:8]]   # not the per-epoch lines
  assert said(1) == []
  assert said(2) == [f"resuming from the checkpoint of epoch 1 in {tmp_path / 'checkpoints'}"]
  assert said(2) == [f"2 of 2 epochs already trained in {tmp_path}; nothing more to train"]
  assert said(1) == [f"2 epochs already trained in {tmp_path}, more than the 1 asked for; its "
                     "results are those of epoch 2 (--fresh trains 1 from scratch)"]


def test_resume_is_bit_identical(model, trainer, data, tmp_path):
  straight = run_fit(model, trainer, data, tmp_path / "a", epochs=3)
  run_fit(model, trainer, data, tmp_path / "b", epochs=2)
  resumed = run_fit(model, trainer, data, tmp_path / "b", epochs=3)
  assert resumed.resumed_from == 2 and len(resumed.history) == 3
  chex.assert_trees_all_equal(straight.state.params, resumed.state.params)
  chex.assert_trees_all_equal(straight.state.batch_stats, resumed.state.batch_stats)
  chex.assert_trees_all_equal(straight.state.opt_state, resumed.state.opt_state)
  strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]
  assert strip(straight.history) == strip(resumed.history)
  assert strip(run_lib.read_metrics(tmp_path / "b")) == strip(straight.history)
  # A finished run resumed again trains nothing.
  again = run_fit(model, trainer, data, tmp_path / "b", epochs=3)
  assert again.resumed_from == 3
  chex.assert_trees_all_equal(again.state.params, straight.state.params)


def test_a_resume_at_another_learning_rate_is_refused_not_trained_at_the_stored_one(
    model, trainer, data, tmp_path):
  run_fit(model, trainer, data, tmp_path, epochs=1, lr=0.05)
  before = checksums(tmp_path)
  with pytest.raises(UserError, match=r"learning_rate=0.05 \(now 0.1\)"):
    run_fit(model, trainer, data, tmp_path, epochs=2, lr=0.1)
  assert checksums(tmp_path) == before


def test_best_checkpoint_holds_the_best_epoch(model, trainer, data, tmp_path):
  result = run_fit(model, trainer, data, tmp_path, epochs=3)
  best = max(result.history, key=lambda r: r["val_accuracy"])
  assert result.best["epoch"] == best["epoch"]
  with run_lib.Run.read(tmp_path, log=lambda line: None) as run:
    restored = run.best_state(new_state(model))
  m = trainer.evaluate(restored, data["val"])
  assert m["accuracy"] == pytest.approx(best["val_accuracy"])
  # The best epoch is kept (once) beside the two latest ones.
  kept = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert kept == sorted({best["epoch"], 2, 3})


def test_unreadable_latest_checkpoint_is_set_aside_and_the_previous_used(model, trainer, data,
                                                                         tmp_path):
  run_fit(model, trainer, data, tmp_path, epochs=3)
  latest = tmp_path / "checkpoints" / "3"
  for f in latest.rglob("*"):
    if f.is_file():
      f.write_bytes(b"\x00garbage")
  logs = []
  template = new_state(model)
  ck = checkpoints.Checkpoints(tmp_path, log=logs.append)
  state, meta = ck.restore(template)
  ck.close()
  assert meta["epoch"] == 2 and int(state.step) == 2 * 13
  assert any("checkpoint of epoch 3 is unreadable" in line and "corrupt/3-" in line
             for line in logs), logs
  assert not latest.exists() and len(list((tmp_path / "checkpoints/corrupt").iterdir())) == 1


def test_divergence_stops_the_run_cleanly(model, trainer, data, tmp_path):
  result = run_fit(model, trainer, data, tmp_path, epochs=4, lr=1e6)
  assert result.diverged_at == 1 and len(result.history) == 1
  record = run_lib.read_metrics(tmp_path)[0]
  assert record["diverged"] is True and record["train_loss"] is None
  again = run_fit(model, trainer, data, tmp_path, epochs=4, lr=1e6)
  assert again.diverged_at == 1 and len(again.history) == 1
  json.dumps(files.finite(record), allow_nan=False)


def test_all_checkpoints_unreadable_is_an_error_not_a_fresh_start(model, trainer, data,
                                                                   tmp_path):
  run_fit(model, trainer, data, tmp_path, epochs=2)
  for f in (tmp_path / "checkpoints").rglob("*"):
    if f.is_file():
      f.write_bytes(b"\x00garbage")
  with pytest.raises(UserError, match="results of 2 finished epochs but no readable checkpoint"):
    run_fit(model, trainer, data, tmp_path, epochs=3)
  # Both damaged steps are kept aside, the metrics untouched.
  assert len(list((tmp_path / "checkpoints/corrupt").iterdir())) == 2
  assert [r["epoch"] for r in run_lib.read_metrics(tmp_path)] == [1, 2]


def test_checkpoints_of_two_runs_in_two_threads(model, tmp_path):
  """The report trains Q3 in a thread beside Q2: Orbax's process-global save state must not let
  their saves collide (without the lock in hw2jax.checkpoints this fails within a few epochs)."""
  base = new_state(model)
  errors, barrier = [], threading.Barrier(4)

  def run(i):
    try:
      ck = checkpoints.Checkpoints(tmp_path / f"run{i}", log=lambda line: None)
      barrier.wait()
      for epoch in range(1, 16):
        state = base.replace(step=jnp.asarray(100 * i + epoch, jnp.int32))
        best = {"epoch": 6 if epoch >= 6 else epoch}
        ck.save(epoch, state, {"epoch": epoch, "run": i, "best": best}, {"run": i})
      ck.wait()
      for restore, epoch in ((ck.restore, 15), (ck.restore_best, 6)):
        state, meta = restore(base)
        assert meta["epoch"] == epoch and meta["run"] == i
        assert int(state.step) == 100 * i + epoch
      assert ck.epochs() == [6, 14, 15]
      ck.close()
    except BaseException as e:  # reported by the main thread
      errors.append(e)

  threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors, errors
