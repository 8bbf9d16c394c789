r"""One training epoch of the course CNN: JAX (this project) against the course's PyTorch loop.

  python -m benchmarks.cnn_speed                          # 12,630 images, batch 8, both models
  python -m benchmarks.cnn_speed --n_images=2000 --repeats=3     # BUILD.md's CPU table
  python -m benchmarks.cnn_speed --data_path=../shared/data/intel48_kaggle_layout.zip
  python -m benchmarks.cnn_speed --n_images=800 --profile=prof/   # per-op tables, both sides

Both run on the same device in the same process (JAX's default device; PyTorch on CUDA when
available), each with the threads it takes by default (printed). Times exclude compilation/
warm-up (the first epoch of each); the median of --repeats timed epochs is reported with the
PyTorch/JAX ratio, and each framework's achieved GFLOP/s beside what a 2048x2048 float32
matmul reaches in it in the same run (benchmarks/flops.py). --out appends one JSON line per
model; --profile writes <folder>/<model>_{jax,torch}_ops.txt from one more epoch of each
(benchmarks/profiling.py).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from benchmarks import flops, profiling, ratios
from hw2jax import cli
from hw2jax.data import sources
from hw2jax.errors import UserError
from hw2jax.models import cnn
from hw2jax.train import optimizer as optimizer_lib, trainer as trainer_lib

flags.DEFINE_list("models", ["vanilla", "bn_gap"], "Models to time: vanilla, bn_gap.")
flags.DEFINE_integer("n_images", 12_630, "Training images per epoch (the course's train split).")
flags.DEFINE_integer("batch_size", 8, "Batch size (the course's 8).")
flags.DEFINE_integer("repeats", 3, "Timed epochs per framework (after one warm-up epoch); the "
                     "median is reported.")
flags.DEFINE_string("data_path", None, "Intel data to time on; default random images.")
flags.DEFINE_enum("epoch_mode", "auto", ["auto", "scan", "loop"], "JAX epoch runner.")
flags.DEFINE_bool("torch", True, "Also time the PyTorch loop.")
flags.DEFINE_string("out", None, "Append the results as JSON lines to this file.")
flags.DEFINE_string("profile", None, "Write per-op time tables of one epoch of each framework "
                    "into this folder.")
FLAGS = flags.FLAGS


def images_and_labels(n: int, data_path: str | None) -> tuple[np.ndarray, np.ndarray]:
  if data_path:
    data = sources.load_intel(data_path)
    images, labels = data.train_images, data.train_labels
    reps = -(-n // len(labels))
    return np.tile(images, (reps, 1, 1, 1))[:n], np.tile(labels, reps)[:n]
  rng = np.random.default_rng(0)
  return (rng.integers(0, 256, (n, 48, 48, 3), dtype=np.uint8),
          rng.integers(0, 6, n).astype(np.int32))


def jax_epoch_seconds(images, labels, *, batch_norm: bool, batch_size: int, epochs: int,
                      epoch_mode: str, profile: Path | None = None
                      ) -> tuple[list[float], float, str, float]:
  """(timed epoch seconds, first-epoch seconds incl. compilation, epoch mode used, the epoch's
  floating-point operations as XLA counts them); with `profile`, one more epoch runs under the
  profiler into <profile>/<model>_jax_ops.txt."""
  model = cnn.CNN(batch_norm=batch_norm)
  trainer = trainer_lib.Trainer(cnn.loss_fn, cnn.eval_fn, batch_size=batch_size,
                                epoch_mode=epoch_mode)
  state = trainer_lib.create_train_state(model, (jnp.zeros((1, 48, 48, 3), jnp.uint8),),
                                      optimizer_lib.make_optimizer("sgd", 0.01), 42, train=False)
  data = trainer.put(cnn.as_dataset(images, labels.astype(np.int32)))
  epoch_flops = flops.epoch_flops(trainer, state, data)
  start = time.perf_counter()
  state, _ = trainer.train_epoch(state, data, 0)       # host floats: the epoch has finished
  first = time.perf_counter() - start
  times = []
  for epoch in range(1, epochs + 1):
    start = time.perf_counter()
    state, _ = trainer.train_epoch(state, data, epoch)
    times.append(time.perf_counter() - start)
  if profile:
    table = profiling.jax_table(lambda: trainer.train_epoch(state, data, epochs + 1),
                                trainer_lib.num_batches(len(labels), batch_size), profile / "hlo")
    (profile / f"{_name(batch_norm)}_jax_ops.txt").write_text(table)
  return times, first, trainer.mode, epoch_flops


def _name(batch_norm: bool) -> str:
  return "bn_gap" if batch_norm else "vanilla"


def torch_epoch_seconds(images, labels, *, batch_norm: bool, batch_size: int, epochs: int,
                        profile: Path | None = None) -> list[float]:
  """The course loop's timed epoch seconds (after one warm-up epoch); with `profile`, one more
  epoch under torch.profiler into <profile>/<model>_torch_ops.txt."""
  from benchmarks import torch_baselines
  times = torch_baselines.cnn_epoch_seconds(images, labels, batch_norm=batch_norm,
                                            batch_size=batch_size, epochs=epochs + 1)[1:]
  if profile:
    table = profiling.torch_table(
        lambda: torch_baselines.cnn_epoch_seconds(images, labels, batch_norm=batch_norm,
                                                  batch_size=batch_size, epochs=1),
        trainer_lib.num_batches(len(labels), batch_size))
    (profile / f"{_name(batch_norm)}_torch_ops.txt").write_text(table)
  return times


def main(argv):
  del argv
  for name in FLAGS.models:
    if name not in ("vanilla", "bn_gap"):
      raise UserError(f"--models: unknown model {name!r}; use vanilla, bn_gap")
  if FLAGS.n_images < 1 or FLAGS.repeats < 1 or FLAGS.batch_size < 1:
    raise UserError("--n_images, --repeats and --batch_size must be at least 1")
  profile = Path(FLAGS.profile).absolute() if FLAGS.profile else None
  if profile:
    profile.mkdir(parents=True, exist_ok=True)
    profiling.dump_hlo_to(profile / "hlo")
  images, labels = images_and_labels(FLAGS.n_images, FLAGS.data_path)
  device = jax.devices()[0]
  print(f"JAX {jax.__version__} on {device.platform}:{device.device_kind}; {FLAGS.n_images} "
        f"images, batch {FLAGS.batch_size}, SGD; median of {FLAGS.repeats} epochs", flush=True)
  if FLAGS.torch:
    print(profiling.threads(), flush=True)
  ceilings = flops.ceilings(with_torch=FLAGS.torch)
  print(f"ceiling: a {flops.MATMUL_N}x{flops.MATMUL_N} float32 matmul at "
        + ", ".join(f"{v:.0f} GFLOP/s in {'JAX' if k == 'jax' else 'PyTorch'}"
                    for k, v in ceilings.items()) + "; GFLOP/s below count the epoch's "
        "arithmetic as XLA does (the same work for both)", flush=True)
  for name in FLAGS.models:
    times, first, mode, epoch_flops = jax_epoch_seconds(images, labels, batch_norm=name == "bn_gap",
                                           batch_size=FLAGS.batch_size, epochs=FLAGS.repeats,
                                           epoch_mode=FLAGS.epoch_mode, profile=profile)
    result = {"model": name, "n_images": FLAGS.n_images, "batch_size": FLAGS.batch_size,
              "device": f"{device.platform}:{device.device_kind}", "jax_version": jax.__version__,
              "jax_epoch_mode": mode, "jax_epoch_s": statistics.median(times),
              "jax_epochs_s": times, "jax_first_epoch_s": first, "epoch_flops": epoch_flops,
              "jax_matmul_gflops": ceilings["jax"]}
    line = (f"{name:8s} JAX ({mode}) {result['jax_epoch_s']:.3f} s/epoch "
            f"(first epoch with compilation {first:.1f} s)")
    rates = [flops.achieved("JAX", epoch_flops, result["jax_epoch_s"], ceilings["jax"])]
    if FLAGS.torch:
      import torch
      t = torch_epoch_seconds(images, labels, batch_norm=name == "bn_gap",
                              batch_size=FLAGS.batch_size, epochs=FLAGS.repeats, profile=profile)
      result.update(torch_version=torch.__version__, torch_threads=torch.get_num_threads(),
                    torch_device="cuda" if torch.cuda.is_available() else "cpu",
                    torch_epoch_s=statistics.median(t), torch_epochs_s=t)
      result["speedup"] = result["torch_epoch_s"] / result["jax_epoch_s"]
      line += (f" | PyTorch {result['torch_epoch_s']:.3f} s/epoch | "
               + ratios.jax_versus(result["jax_epoch_s"], result["torch_epoch_s"]))
      result["torch_matmul_gflops"] = ceilings["torch"]
      rates.append(flops.achieved("PyTorch", epoch_flops, result["torch_epoch_s"],
                                  ceilings["torch"]))
    print(line, flush=True)
    print(f"{'':8s} {'; '.join(rates)}", flush=True)
    if FLAGS.out:
      with open(FLAGS.out, "a") as f:
        f.write(json.dumps(result) + "\n")
  if profile:
    print(f"per-op tables: {profile}/<model>_{{jax,torch}}_ops.txt", flush=True)


if __name__ == "__main__":
  cli.run(main)
