"""A training run SIGKILLed at random moments (also mid-checkpoint) and rerun ends identically,
its TensorBoard events holding every epoch once."""

import json
import random
import signal
import subprocess
import sys
import time

import chex
import jax.numpy as jnp
import pytest

from helpers import cli_env, read_tensorboard, run_cli, write_npz
from hw2jax.recipes import cnn
from hw2jax.train import checkpoints, optimizer as optimizer_lib, trainer as trainer_lib

pytestmark = pytest.mark.slow
EPOCHS = 12


def command(data, workdir):
  return [sys.executable, "-m", "experiments.cnn", f"--data_path={data}", f"--epochs={EPOCHS}",
          "--channels=4,8,16", "--batch_size=8", f"--workdir={workdir}"]


def checkpoint_being_written(workdir):
  """True while Orbax has a temporary step folder; tolerant of folders vanishing mid-scan,
  since the run being watched renames and prunes them concurrently."""
  root = workdir / "checkpoints"
  try:
    return any("orbax-checkpoint-tmp" in p.name for p in root.glob("*/*"))
  except FileNotFoundError:
    return False


def epochs_logged(workdir):
  path = workdir / "metrics.jsonl"
  return len(path.read_text().splitlines()) if path.exists() else 0


def kill_at_random_moments(cmd, cwd, workdir, rng, max_kills):
  """Starts `cmd` until it finishes by itself, killing it up to `max_kills` times: alternately
  as soon as a checkpoint is being written, and at a random moment of training, once the
  checkpoint written after an epoch is complete. Returns the kill points hit."""
  kinds = []
  while True:
    proc = subprocess.Popen(cmd, cwd=cwd, env=cli_env(cwd), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    if len(kinds) < max_kills:
      mid_save, logged, saved = len(kinds) % 2 == 0, epochs_logged(workdir), False
      while proc.poll() is None:
        if mid_save and checkpoint_being_written(workdir):
          break
        if not mid_save and epochs_logged(workdir) > logged:
          saved = saved or checkpoint_being_written(workdir)
          if saved and not checkpoint_being_written(workdir):    # that epoch's save is done
            time.sleep(rng.uniform(0.0, 0.1))
            break
        time.sleep(0.0005)
      if proc.poll() is None:
        writing = checkpoint_being_written(workdir)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kinds.append("during checkpoint write" if writing else "at a random moment")
        continue
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out + err
    assert "Traceback" not in err
    return kinds


def strip(path):
  records = [json.loads(line) for line in path.read_text().splitlines()]
  return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def test_sigkill_and_rerun_equals_an_uninterrupted_run(tmp_path):
  # Epochs long beside a checkpoint's write, so that a random moment can miss the writes.
  data = write_npz(tmp_path / "tiny.npz", n_train=480, n_val=12, n_test=12)
  ref = run_cli("experiments.cnn", *command(data, "ref")[3:], "--notensorboard", cwd=tmp_path)
  assert ref.returncode == 0, ref.stderr
  assert not (tmp_path / "ref/tb").exists()
  kinds = kill_at_random_moments(command(data, "killed"), tmp_path, tmp_path / "killed",
                                 random.Random(0), max_kills=3)
  print("kill points:", kinds)
  assert len(kinds) >= 3 and set(kinds) == {"during checkpoint write", "at a random moment"}
  assert strip(tmp_path / "killed/metrics.jsonl") == strip(tmp_path / "ref/metrics.jsonl")
  a = json.loads((tmp_path / "ref/summary.json").read_text())
  b = json.loads((tmp_path / "killed/summary.json").read_text())
  assert a["final"] == b["final"] and b["status"] == "completed"
  # The killed runs' TensorBoard events: every epoch once, as metrics.jsonl has it.
  scalars = read_tensorboard(tmp_path / "killed/tb")
  for tag in ("train_loss", "val_loss", "val_accuracy", "seconds", "learning_rate"):
    assert [step for step, _ in scalars[tag]] == list(range(1, EPOCHS + 1)), (tag, scalars[tag])
  logged = strip(tmp_path / "killed/metrics.jsonl")
  assert [v for _, v in scalars["val_loss"]] == pytest.approx([r["val_loss"] for r in logged])
  assert scalars["learning_rate"][0][1] == pytest.approx(0.01)
  assert list((tmp_path / "killed/tb/hparams").rglob("events.out.tfevents.*")), \
      "the hyper-parameters and test metrics are written at the end"
  config = cnn.Config(channels=(4, 8, 16), epochs=EPOCHS)
  template = trainer_lib.create_train_state(
      config.build_model(), (jnp.zeros((1, 48, 48, 3), jnp.uint8),),
      optimizer_lib.make_optimizer("sgd", 0.01), config.seed, train=False)
  states = []
  for name in ("ref", "killed"):
    ck = checkpoints.Checkpoints(tmp_path / name, log=lambda line: None)
    states.append(ck.restore(template)[0])
    ck.close()
  chex.assert_trees_all_equal(states[0].params, states[1].params)
  chex.assert_trees_all_equal(states[0].opt_state, states[1].opt_state)
