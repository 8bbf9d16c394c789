r"""What showing progress inside an epoch costs: training epochs with the meter on (the terminal
path: a line every 0.2 s, the scan path cut into chunks) against off, alternated in one process.

  python -m benchmarks.progress_cost                                  # BUILD.md's CPU table
  python -m benchmarks.progress_cost --workloads=cnn_loop --cnn_images=1000 --repeats=31
  python -m benchmarks.progress_cost --workloads=cnn_scan,p2g --cnn_scan_images=12630   # GPU

Workloads: cnn_loop and cnn_scan (the course's vanilla CNN at batch 8 on random 48x48 images,
each epoch runner), p2g (the attention model at batch 64 on --p2g_data_path, default CMUdict).
First the meter's own host time per step (200,000 calls on a ready output); then each
workload: each variant's first epoch (compilation) left out, --repeats pairs of epochs, off
and on in alternating order. Prints each variant's median seconds per epoch and the median of
the pairs' on/off ratios (1.00: no cost) with their range.
"""

from __future__ import annotations

import os
import statistics
import time

import jax
import numpy as np
from absl import flags

from hw2jax import cli
from hw2jax.data import sources
from hw2jax.errors import UserError
from hw2jax.models import cnn as cnn_model
from hw2jax.recipes import cnn, p2g
from hw2jax.train.meter import Meter

WORKLOADS = ("cnn_loop", "cnn_scan", "p2g")
flags.DEFINE_list("workloads", list(WORKLOADS), f"Any of {', '.join(WORKLOADS)}.")
flags.DEFINE_integer("cnn_images", 2000, "Training images of a CNN loop epoch.")
flags.DEFINE_integer("cnn_scan_images", 800, "Training images of a CNN scan epoch (the scan "
                     "path is slow on CPU).")
flags.DEFINE_string("p2g_data_path", None, "Course TSV folder (default: the CMUdict split).")
flags.DEFINE_integer("p2g_words", 8000, "Training pairs of a P2G epoch (0: all).")
flags.DEFINE_integer("repeats", 9, "Timed pairs of epochs (off and on).")
FLAGS = flags.FLAGS


def cnn_workload(mode: str, n: int):
  """(trainer, state, data, unit) of the vanilla CNN on `n` random images, `mode` epochs."""
  config = cnn.Config(epoch_mode=mode, devices=1)
  trainer = cnn.make_trainer(config)
  rng = np.random.default_rng(0)
  images, labels = (rng.integers(0, 256, (n, 48, 48, 3), dtype=np.uint8),
                    rng.integers(0, 6, n).astype(np.int32))
  data = trainer.put(cnn_model.as_dataset(images, labels))
  return trainer, trainer.put(cnn.new_state(config)), data, "images"


def p2g_workload():
  data = sources.load_p2g(FLAGS.p2g_data_path, FLAGS.p2g_words)
  config = p2g.Config(attention=True, devices=1)
  model = config.build_model(len(data.src_vocab), len(data.tgt_vocab))
  trainer = p2g.make_trainer(config)
  return trainer, trainer.put(p2g.new_state(config, model)), p2g.train_widths(
      config, data, trainer), "words"


def alternate(trainer, state, data, unit: str, repeats: int) -> tuple[list, list, str]:
  """Seconds per epoch with the meter off and on (terminal path, into /dev/null), in pairs
  whose order alternates (off-on, on-off, ...) so that a drift of the machine favours neither."""
  with open(os.devnull, "w") as sink:
    meter = Meter(unit=unit, batch_size=trainer.batch_size, stream=sink, tty=True)
    times = {False: [], True: []}
    epoch = 0
    for rep in range(repeats + 1):
      for on in ((False, True) if rep % 2 else (True, False)):
        if on:
          meter.start(epoch, 2 * (repeats + 1))
        start = time.perf_counter()
        state, _ = trainer.train_epoch(state, data, epoch, meter if on else None)
        if rep:                                   # the first of each variant compiles
          times[on].append(time.perf_counter() - start)
        epoch += 1
  return times[False], times[True], trainer.mode


def host_microseconds_per_step(steps: int = 200_000) -> float:
  """What `Meter.step` costs the Python thread per step (a ready output, the terminal path,
  lines into /dev/null): the part of the cost that no device can hide."""
  output = jax.numpy.zeros(()).block_until_ready()
  with open(os.devnull, "w") as sink:
    meter = Meter(unit="images", batch_size=8, stream=sink, tty=True)
    meter.start(0, 1)
    meter.begin(steps)
    start = time.perf_counter()
    for count in range(1, steps + 1):
      meter.step(count, output)
    meter.wait()
    return (time.perf_counter() - start) / steps * 1e6


def main(argv):
  del argv
  unknown = [w for w in FLAGS.workloads if w not in WORKLOADS]
  if unknown or FLAGS.repeats < 1:
    raise UserError(f"--workloads: unknown {unknown}; use {', '.join(WORKLOADS)}; --repeats >= 1"
                    if unknown else "--repeats must be at least 1")
  device = jax.devices()[0]
  print(f"JAX {jax.__version__} on {device.platform}:{device.device_kind}; median of "
        f"{FLAGS.repeats} epochs each, meter off and on alternated", flush=True)
  print(f"the meter's host time per step: {host_microseconds_per_step():.2f} us", flush=True)
  for name in FLAGS.workloads:
    if name == "p2g":
      setup = p2g_workload()
    else:
      mode = name.split("_")[1]
      setup = cnn_workload(mode, FLAGS.cnn_images if mode == "loop" else FLAGS.cnn_scan_images)
    off, on, mode = alternate(*setup, FLAGS.repeats)
    ratios = [b / a for a, b in zip(off, on)]
    print(f"{name:9s} ({mode}) off {statistics.median(off):.3f} s  on "
          f"{statistics.median(on):.3f} s per epoch; on/off, median of {len(ratios)} pairs "
          f"{statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f})",
          flush=True)

if __name__ == "__main__":
  cli.run(main)
