"""Data parallelism on 8 fake CPU devices (subprocesses) equals one device; --distributed."""

import json
import math
import subprocess
import sys
import textwrap

import pytest

from helpers import REPO, cli_env, write_npz

pytestmark = pytest.mark.slow
EIGHT = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}

WORKER = textwrap.dedent("""
    import json, re, sys
    sys.path.insert(0, sys.argv[1])
    import jax, jax.numpy as jnp, numpy as np
    from helpers import learnable_images
    from hw2jax import UserError
    from hw2jax.models import cnn
    from hw2jax.train import optimizer as optimizer_lib, sharding, trainer as trainer_lib

    assert jax.device_count() == 8, jax.devices()
    # Sharding is the subject: XLA's default CPU kernels on both sides. (With the CPU option's
    # Eigen convolutions, batches of 2 per device round differently from one batch of 16, and
    # BatchNorm on these near-constant images magnifies that to ~4e-3 in 10 steps.)
    trainer_lib.compiler_options = lambda backend=None: None
    # Noise all over: BatchNorm on the squares' near-constant channels magnifies any rounding
    # difference (the two sides sum in other orders) ~1,000x in 10 steps, so far that the
    # random bits' program (fused one way or another) decided whether 2e-4 held.
    images, labels = learnable_images(72, 0)
    noise = np.random.default_rng(0).integers(-40, 41, images.shape)
    images = np.clip(images.astype(np.int32) + noise, 0, 255).astype(np.uint8)
    model = cnn.CNN(batch_norm=True, init_scheme="flax", channels=(4, 8, 16), hidden=(32, 16))
    example = (jnp.zeros((1, 48, 48, 3), jnp.uint8),)
    out = {}
    for mode in ("loop", "scan"):
      runs = {}
      for name, mesh in (("one", None), ("eight", sharding.data_mesh())):
        tr = trainer_lib.Trainer(cnn.loss_fn, cnn.eval_fn, batch_size=16, eval_batch_size=20,
                                 epoch_mode=mode, mesh=mesh)
        st = tr.put(trainer_lib.create_train_state(
            model, example, optimizer_lib.make_optimizer("sgd", 0.01), 0, train=False))
        data = tr.put(cnn.as_dataset(images, labels.astype(np.int32)))
        losses = []
        for e in range(2):
          st, m = tr.train_epoch(st, data, e)
          losses.append(m["loss"])
        runs[name] = (st, losses, tr.evaluate(st, data))
        if mesh is not None and mode == "loop":
          # The pure step of the trainer, on one batch of 16 split over the 8 devices.
          step = jax.jit(lambda s, b, m: trainer_lib.train_step(s, b, m, loss_fn=cnn.loss_fn,
                                                                 mesh=mesh))
          batch = trainer_lib.gather(data, jnp.arange(16))
          hlo = step.lower(st, batch, jnp.ones((16,), bool)).compile().as_text()
          out["all_reduces"] = len(re.findall(r"all-reduce\\(", hlo))
          out["per_device_conv_batch"] = sorted(set(re.findall(r"f32\\[(\\d+),48,48,4\\]", hlo)))
          out["eval_batch_size"] = tr.eval_batch_size
      (s1, l1, v1), (s8, l8, v8) = runs["one"], runs["eight"]
      out[mode] = {
          "param_diff": max(float(jnp.max(jnp.abs(a - b))) for a, b in
                            zip(jax.tree.leaves(s1.params), jax.tree.leaves(s8.params))),
          "stats_diff": max(float(jnp.max(jnp.abs(a - b))) for a, b in
                            zip(jax.tree.leaves(s1.batch_stats), jax.tree.leaves(s8.batch_stats))),
          "losses": [l1, l8], "val": [v1["loss"], v8["loss"]],
          "replicated": all(a.sharding.is_fully_replicated and len(a.sharding.device_set) == 8
                            for a in jax.tree.leaves(s8.params))}
    try:
      trainer_lib.Trainer(cnn.loss_fn, cnn.eval_fn, batch_size=12, mesh=sharding.data_mesh())
    except UserError as e:
      out["bad_batch"] = str(e)
    # --devices=N as experiments.cnn builds its trainer: a part of the machine, or a clear no.
    from hw2jax.recipes import cnn as cnn_experiment
    for devices in (2, 3, 9):
      try:
        trainer = cnn_experiment.make_trainer(cnn_experiment.Config(devices=devices))
        out[f"devices={devices}"] = sharding.device_name(trainer.mesh)
      except UserError as e:
        out[f"devices={devices}"] = str(e)
    print(json.dumps(out))
""")


def run(args, cwd, **env):
  return subprocess.run(args, cwd=cwd, env={**cli_env(cwd), **env}, capture_output=True,
                        text=True, timeout=600)


def test_eight_devices_train_like_one(tmp_path):
  (tmp_path / "worker.py").write_text(WORKER)
  proc = run([sys.executable, "worker.py", str(REPO / "tests")], tmp_path, **EIGHT)
  assert proc.returncode == 0, proc.stderr
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  # The batch of 16 really is split: each device convolves 2 images and gradients are summed.
  assert out["per_device_conv_batch"] == ["2"] and out["all_reduces"] >= 1
  assert out["eval_batch_size"] == 24                      # 20 rounded up to a multiple of 8
  for mode in ("loop", "scan"):
    r = out[mode]
    assert r["replicated"] is True
    assert r["param_diff"] < 2e-4 and r["stats_diff"] < 2e-4, r  # BN at batch 16: rounding grows
    for a, b in zip(*r["losses"]):
      assert a == pytest.approx(b, rel=1e-5)
    assert r["val"][0] == pytest.approx(r["val"][1], rel=1e-5)
  assert "--batch_size=12 does not split over 8 devices" in out["bad_batch"]
  assert out["devices=2"].endswith("x2")
  assert "--batch_size=8 does not split over 3 devices" in out["devices=3"]
  assert "this machine has 8 device(s)" in out["devices=9"]


def test_cli_on_eight_devices(tmp_path):
  """The CLI's run over 8 devices (that its numbers equal one device's: the worker test above,
  and through the CLI over two devices and two processes, tests/train/test_multiprocess.py)."""
  data = write_npz(tmp_path / "tiny.npz", n_train=32, n_val=8, n_test=8)
  base = [sys.executable, "-m", "experiments.cnn", f"--data_path={data}", "--epochs=1",
          "--channels=4,8,16", "--model=bn_gap"]
  bad = run(base + ["--batch_size=12", "--workdir=bad"], tmp_path, **EIGHT)
  assert bad.returncode == 2 and "Traceback" not in bad.stderr
  assert "does not split over 8 devices" in bad.stderr and not (tmp_path / "bad").exists()
  eight = run(base + ["--workdir=eight"], tmp_path, **EIGHT)
  assert eight.returncode == 0, eight.stderr
  summary = json.loads((tmp_path / "eight" / "summary.json").read_text())
  assert "x8" in summary["device"] and summary["status"] == "completed"
  assert all(math.isfinite(summary["final"][k]) for k in ("train_loss", "val_loss", "test_loss"))


def test_distributed_without_a_coordinator_is_one_line(tmp_path):
  """(Two real processes: tests/train/test_multiprocess.py.)"""
  data = write_npz(tmp_path / "tiny.npz", n_train=16, n_val=8, n_test=8)
  args = [sys.executable, "-m", "experiments.cnn", f"--data_path={data}", "--epochs=1",
          "--channels=4,8,16", "--distributed", "--workdir=run"]
  lost = run(args, tmp_path)                  # no cluster, no coordinator: one clear line
  assert lost.returncode == 2 and "Traceback" not in lost.stderr
  assert "JAX_COORDINATOR_ADDRESS" in lost.stderr
