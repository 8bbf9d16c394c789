"""Checkpoints never lose or wedge a run: damaged steps are set aside and the previous one used,
the older two-manager layout is refused, a full disk is one line, lost checkpoints are refused."""

import errno
import json
import shutil
import subprocess

import jax.numpy as jnp
import orbax.checkpoint as ocp
import pytest

from helpers import (assert_clean_failure, checksums, run_cli, trained_files, write_npz,
                     write_p2g_folder)
from hw2jax.data import sources
from hw2jax.recipes import cnn, p2g
from hw2jax.train import checkpoints, optimizer as optimizer_lib, trainer as trainer_lib
from hw2jax.errors import UserError

QUIET = lambda line: None
TINY_CNN = dict(channels=(4, 8, 16), batch_size=8)


def _data_files(step):
  """Every data file of the step's OCDBT stores (the merged one and the per-process one). All
  are damaged: which of them holds an array's bytes (or a superseded copy that is never read
  again) depends on its size and on how the write went."""
  return [f for f in step.glob("state/**/d/*") if f.is_file()]


def truncate(step):
  for f in _data_files(step):
    f.write_bytes(f.read_bytes()[:f.stat().st_size // 2])


def flip_bytes(step):
  for f in _data_files(step):
    data = bytearray(f.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 8):
      data[i] ^= 0xFF
    f.write_bytes(bytes(data))


def empty_meta(step):
  (step / "meta" / "metadata").write_bytes(b"")


# How to damage a step, and whether its data are lost (set aside, previous step used) or
# intact (Orbax only needs its own metadata to find it: the step is used as it is).
DAMAGE = {
    "truncate a data file": (truncate, "set aside"),
    "delete _METADATA": (lambda step: (step / "state" / "_METADATA").unlink(), "set aside"),
    "empty the meta file": (empty_meta, "set aside"),
    "garbage card": (lambda step: (step / "card" / "metadata").write_text("{not json"),
                     "set aside"),
    "delete the card": (lambda step: shutil.rmtree(step / "card"), "set aside"),
    "flip bytes": (flip_bytes, "set aside"),
    "delete the step's directory": (shutil.rmtree, "gone"),
    "delete _CHECKPOINT_METADATA": (lambda step: (step / "_CHECKPOINT_METADATA").unlink(),
                                    "intact"),
}


@pytest.fixture(scope="module")
def intel_data(tmp_path_factory):
  path = write_npz(tmp_path_factory.mktemp("data") / "tiny.npz", n_train=40, n_val=12,
                   n_test=12)
  return sources.load_intel(path, log=QUIET)


@pytest.fixture(scope="module")
def train(intel_data):
  """cnn.train_and_evaluate(epochs, workdir) sharing one trainer and device copy of the data
  (as a sweep does), so that the programs compile once for the whole module."""
  trainer = cnn.make_trainer(cnn.Config(**TINY_CNN))
  arrays = cnn.device_data(intel_data, trainer)

  def run(epochs, workdir, log=QUIET):
    return cnn.train_and_evaluate(cnn.Config(epochs=epochs, **TINY_CNN), intel_data, workdir,
                                 arrays=arrays, trainer=trainer, log=log)
  return run


@pytest.fixture(scope="module")
def undamaged(train, tmp_path_factory):
  return train(4, tmp_path_factory.mktemp("ref"))


def strip(summary):
  return {k: v for k, v in summary.to_json().items()
          if k in ("final", "best_val", "epochs_done", "status", "trainable_params")}


@pytest.mark.parametrize("how", list(DAMAGE))
def test_a_damaged_latest_checkpoint_is_set_aside_and_the_run_ends_as_if_undamaged(
    how, train, undamaged, tmp_path):
  train(3, tmp_path)
  damage, outcome = DAMAGE[how]
  damage(tmp_path / "checkpoints" / "3")
  logs = []
  resumed = train(4, tmp_path, logs.append)
  assert strip(resumed) == strip(undamaged)                 # bit-identical on CPU
  metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in metrics] == [1, 2, 3, 4]
  resumed_from = 3 if outcome == "intact" else 2
  assert any(f"resuming from the checkpoint of epoch {resumed_from}" in line for line in logs)
  kept = list((tmp_path / "checkpoints" / checkpoints.CORRUPT).glob("3-*"))
  if outcome == "set aside":
    assert len(kept) == 1 and any(f.is_file() for f in kept[0].rglob("*"))
    assert sum("checkpoint of epoch 3 is unreadable" in line for line in logs) == 1, logs
  else:
    assert not kept
  # A third call finds a clean workdir: nothing more to set aside or train.
  trained = lambda: trained_files(checksums(tmp_path))
  before = trained()
  again = []
  train(4, tmp_path, again.append)
  assert not any("unreadable" in line for line in again), again
  assert trained() == before


def test_a_damaged_p2g_checkpoint_is_set_aside_too(tmp_path):
  data = sources.load_p2g(write_p2g_folder(tmp_path / "p2g", n_train=24, n_valid=6, n_test=6))
  config = dict(hidden_size=8, batch_size=8, widths=1)
  reference = p2g.train_and_evaluate(p2g.Config(epochs=3, **config), data, tmp_path / "ref",
                                    log=QUIET)
  run = tmp_path / "run"
  p2g.train_and_evaluate(p2g.Config(epochs=2, **config), data, run, log=QUIET)
  truncate(run / "checkpoints" / "2")
  logs = []
  resumed = p2g.train_and_evaluate(p2g.Config(epochs=3, **config), data, run, log=logs.append)
  assert resumed.test == reference.test and resumed.best_val == reference.best_val
  assert any("checkpoint of epoch 2 is unreadable" in line for line in logs)
  assert len(list((run / "checkpoints" / checkpoints.CORRUPT).iterdir())) == 1


def test_the_cli_sets_a_damaged_checkpoint_aside_and_refuses_lost_ones(tmp_path):
  data = write_npz(tmp_path / "tiny.npz", n_train=24, n_val=6, n_test=6)
  args = [f"--data_path={data}", "--workdir=run", "--channels=4,8,16"]
  assert run_cli("experiments.cnn", *args, "--epochs=2", cwd=tmp_path).returncode == 0
  truncate(tmp_path / "run" / "checkpoints" / "2")
  proc = run_cli("experiments.cnn", *args, "--epochs=3", cwd=tmp_path)
  assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
  lines = [line for line in proc.stdout.splitlines() if "unreadable" in line]
  assert len(lines) == 1 and "moved it to" in lines[0] and "corrupt/2-" in lines[0]

  # Deleted checkpoints: refused, nothing changed; --fresh archives and starts over.
  shutil.rmtree(tmp_path / "run" / "checkpoints")
  before = checksums(tmp_path / "run")
  proc = run_cli("experiments.cnn", *args, "--epochs=3", cwd=tmp_path)
  assert_clean_failure(proc, "results of 3 finished epochs but no readable checkpoint", "--fresh")
  assert checksums(tmp_path / "run") == before
  fresh = run_cli("experiments.cnn", *args, "--epochs=1", "--fresh", cwd=tmp_path)
  assert fresh.returncode == 0, fresh.stderr
  archived = list((tmp_path / "run" / "archive").iterdir())
  assert len(archived) == 1 and (archived[0] / "summary.json").is_file()


def test_a_run_killed_while_writing_its_first_checkpoint_starts_again(train, tmp_path):
  """At most the newest logged epoch can lack its checkpoint (saves wait for the previous one):
  that epoch is simply trained again."""
  train(1, tmp_path)
  shutil.rmtree(tmp_path / "checkpoints")
  (tmp_path / "summary.json").unlink()                     # killed before the summary
  assert train(1, tmp_path).epochs_done == 1


def test_the_layout_before_december_2_is_refused_in_one_line_and_left_as_it_is(train,
                                                                               tmp_path):
  """checkpoints/latest/ and checkpoints/best/ (two Orbax managers, hw2jax before 2026-12-02):
  refused with what to do, nothing moved (the migration that adopted them is gone)."""
  train(1, tmp_path)
  for name in ("latest", "best"):
    (tmp_path / "checkpoints" / name / "1").mkdir(parents=True)
  before = checksums(tmp_path)
  with pytest.raises(UserError, match=r"layout before 2026-12-02 \(latest/, best/\).*--fresh"):
    train(2, tmp_path)
  assert checksums(tmp_path) == before


def _template():
  config = cnn.Config(**TINY_CNN)
  example = (jnp.zeros((1, 48, 48, 3), jnp.uint8),)
  return trainer_lib.create_train_state(config.build_model(), example,
                                     optimizer_lib.make_optimizer("sgd", 0.01), config.seed,
                                     train=False)


def test_disk_full_while_saving_is_one_line_and_keeps_the_previous_checkpoint(
    train, undamaged, tmp_path, monkeypatch):
  real_save = ocp.CheckpointManager.save

  def full_at_epoch_3(self, step, *args, **kwargs):
    if step == 3:
      raise OSError(errno.ENOSPC, "No space left on device", str(self.directory / "3"))
    return real_save(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", full_at_epoch_3)
  with pytest.raises(UserError, match=r"disk full while writing .* resumes from epoch 2"):
    train(4, tmp_path)
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1", "2"]
  monkeypatch.undo()
  assert strip(train(4, tmp_path)) == strip(undamaged)


@pytest.fixture
def small_filesystem(tmp_path):
  """A 5 MiB tmpfs (two checkpoints of the tiny BN+GAP model fit, a third does not) (root only; skipped where mounting is not allowed), grown by calling it."""
  mount = tmp_path / "small"
  mount.mkdir()
  proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(mount)],
                        capture_output=True, text=True)
  if proc.returncode != 0:
    pytest.skip(f"cannot mount a small file system here ({proc.stderr.strip()})")

  def grow():
    subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)

  yield mount, grow
  subprocess.run(["umount", str(mount)], check=False)


def test_a_real_full_disk_is_one_line_and_the_rerun_resumes(tmp_path, small_filesystem):
  mount, grow = small_filesystem
  data = write_npz(tmp_path / "tiny.npz", n_train=24, n_val=6, n_test=6)
  args = [f"--data_path={data}", f"--workdir={mount}/run", "--channels=4,8,16", "--epochs=3",
          "--model=bn_gap"]
  full = run_cli("experiments.cnn", *args, cwd=tmp_path)
  assert_clean_failure(full, "disk full while writing")
  assert "rerun" in full.stderr
  grow()
  resumed = run_cli("experiments.cnn", *args, cwd=tmp_path)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  summary = json.loads((mount / "run" / "summary.json").read_text())
  assert summary["status"] == "completed" and summary["epochs_done"] == 3


def test_a_healthy_checkpoint_of_another_shape_is_refused_not_set_aside(train, tmp_path):
  """Arrays that do not fit the model (a wider layer) are not damage: one line, nothing moved
  to corrupt/ (issue 17: only bytes failing their own fingerprint are corrupt)."""
  train(1, tmp_path)
  before = checksums(tmp_path / "checkpoints")
  wider = cnn.new_state(cnn.Config(**{**TINY_CNN, "channels": (4, 8, 32)}))
  ckpts = checkpoints.Checkpoints(tmp_path, log=QUIET)
  try:
    with pytest.raises(UserError, match="holds arrays of another shape than this model's"):
      ckpts.restore(wider)
  finally:
    ckpts.close()
  assert checksums(tmp_path / "checkpoints") == before


def arrays_of_the_previous_epoch(step):
  """The step's arrays replaced by the previous epoch's: valid, of the same shapes, read by
  Orbax without complaint; only the fingerprint in the step's meta tells."""
  shutil.rmtree(step / "state")
  shutil.copytree(step.parent / str(int(step.name) - 1) / "state", step / "state")


def another_fingerprint_in_the_meta(step):
  path = step / "meta" / "metadata"
  meta = json.loads(path.read_text())
  meta["state_checksum"] = "0" * len(meta["state_checksum"])
  path.write_text(json.dumps(meta))


@pytest.mark.parametrize("damage", [arrays_of_the_previous_epoch,
                                    another_fingerprint_in_the_meta], ids=lambda f: f.__name__)
def test_arrays_that_orbax_reads_but_that_fail_their_fingerprint_are_set_aside(
    damage, train, undamaged, tmp_path):
  train(3, tmp_path)
  damage(tmp_path / "checkpoints" / "3")
  logs = []
  resumed = train(4, tmp_path, logs.append)
  said = [line for line in logs if "checkpoint of epoch 3 is unreadable" in line]
  assert len(said) == 1, logs
  assert "its arrays do not match the fingerprint saved with them" in said[0], said
  assert "moved it to" in said[0] and "corrupt/3-" in said[0], said
  kept = list((tmp_path / "checkpoints" / checkpoints.CORRUPT).glob("3-*"))
  assert len(kept) == 1 and (kept[0] / "meta" / "metadata").is_file()
  assert any("resuming from the checkpoint of epoch 2" in line for line in logs), logs
  assert strip(resumed) == strip(undamaged)                 # as if never damaged


def test_the_state_checksum_finds_a_flipped_bit_and_two_swapped_numbers(model):
  """The check a save writes is summed on the device (a few bytes reach the host, not the state):
  equal states agree, and the damage Orbax reads without complaint does not."""
  import jax
  import numpy as np
  from helpers import new_cnn_state
  state = new_cnn_state(model)
  same = checkpoints.checksum(state)
  leaves, tree = jax.tree_util.tree_flatten(state.params)
  copy = jax.tree_util.tree_unflatten(tree, [jnp.asarray(np.asarray(x)) for x in leaves])
  assert checkpoints.checksum(state.replace(params=copy)) == same

  k = max(range(len(leaves)), key=lambda i: leaves[i].size)     # a kernel: distinct numbers

  def changed(edit):
    kernel = np.asarray(leaves[k]).copy()
    edit(kernel.reshape(-1))
    params = jax.tree_util.tree_unflatten(tree, [*leaves[:k], jnp.asarray(kernel),
                                                 *leaves[k + 1:]])
    return checkpoints.checksum(state.replace(params=params))

  def flip(flat):
    flat.view(np.uint32)[3] ^= 1 << 7

  def swap(flat):
    flat[[0, 1]] = flat[[1, 0]]
  assert changed(flip) != same and changed(swap) != same
  assert checkpoints.checksum(state.replace(step=state.step + 1)) != same
  assert checkpoints.checksum(state.replace(key=trainer_lib.prng_key(1))) != same
