"""Progress inside an epoch (hw2jax.train.meter) on a clock of the test's own: what a terminal
line and a plain line say, how often they come, that a step counts once the device finished it,
and that an epoch shown in chunks trains exactly as one shown not at all."""

import io
import re

import chex
import jax
import pytest

from helpers import TINY_CNN, new_cnn_state
from hw2jax.models import cnn
from hw2jax.train import meter as meter_lib, trainer as trainer_lib


class Clock:
  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


class Output:
  """An array the device finishes when the test says (`done`)."""
  def __init__(self, done=True):
    self.done = done

  def is_ready(self):
    return self.done

  def block_until_ready(self):
    self.done = True
    return self


class Stream(io.StringIO):
  def __init__(self, tty):
    super().__init__()
    self.tty = tty

  def isatty(self):
    return self.tty


@pytest.fixture
def clock(monkeypatch):
  clock = Clock()
  monkeypatch.setattr(meter_lib.time, "perf_counter", clock)
  return clock


def run_epoch(meter, clock, steps, seconds_per_step, epoch=0, epochs=3):
  """One epoch of `steps` steps, each finished `seconds_per_step` after the previous."""
  meter.start(epoch, epochs)
  meter.begin(steps)
  for count in range(1, steps + 1):
    clock.now += seconds_per_step
    meter.step(count, Output())
  meter.wait()
  meter.phase("validating")
  meter.clear()


def test_a_terminal_line_is_rewritten_in_place_with_steps_rate_and_both_etas(clock):
  stream = Stream(tty=True)
  meter = meter_lib.Meter(unit="images", batch_size=8, stream=stream)
  run_epoch(meter, clock, steps=100, seconds_per_step=0.01)
  text = stream.getvalue()
  assert "\n" not in text                          # never a new line: updates in place
  updates = [u for u in text.split("\r") if u]
  steps = [int(m.group(1)) for m in (re.search(r"step (\d+)/100", u) for u in updates) if m]
  assert steps[0] == 0 and steps == sorted(steps) and steps[-1] >= 80
  assert len(updates) == len(set(updates))         # no frame written twice in a row
  assert 4 <= len(steps) <= 8                      # every 0.2 s of a 1-s epoch
  last = [u for u in updates if "/s" in u][-1]
  # 100 steps a second at 8 images a step; this epoch's end and two more epochs like it.
  assert "800 images/s" in last and re.search(r"ETA 0s \(run 2s\)", last), last
  assert "epoch 1/3  validating" in text
  assert text.endswith("\r\x1b[K")                 # cleared for the epoch's own line


def test_elsewhere_a_plain_line_comes_at_most_every_ten_seconds(clock):
  stream = Stream(tty=False)
  meter = meter_lib.Meter(unit="words", batch_size=64, stream=stream)
  run_epoch(meter, clock, steps=6000, seconds_per_step=0.01)       # a 60-s epoch
  lines = stream.getvalue().splitlines()
  assert 5 <= len(lines) <= 6 and "\r" not in stream.getvalue() and "\x1b" not in stream.getvalue()
  assert all(re.fullmatch(r"epoch 1/3  step \d+/6000  6,400 words/s  ETA \S+ \(run \S+\)", line)
             for line in lines), lines


def test_later_epochs_take_the_time_whole_epochs_took(clock):
  stream = Stream(tty=True)
  meter = meter_lib.Meter(unit="images", batch_size=8, stream=stream)
  for epoch in range(3):
    run_epoch(meter, clock, steps=100, seconds_per_step=0.01, epoch=epoch, epochs=10)
    clock.now += 9.0                               # validation and saving: 9 s an epoch
  stream.truncate(0)
  meter.start(3, 10)
  meter.begin(100)
  for count in range(1, 51):
    clock.now += 0.01
    meter.step(count, Output())
  # Under a second of this epoch left, then 6 epochs of 10 s each (training 1 s, the rest 9).
  assert re.search(r"ETA [01]s \(run 1m0[01]s\)", stream.getvalue().split("\r")[-1])


def test_a_step_counts_only_once_the_device_finished_it(clock):
  stream = Stream(tty=True)
  meter = meter_lib.Meter(unit="images", batch_size=8, stream=stream)
  meter.start(0, 1)
  meter.begin(10)
  outputs = [Output(done=i < 3) for i in range(10)]     # dispatched far ahead of the device
  for count, output in enumerate(outputs, 1):
    clock.now += 0.05
    meter.step(count, output)
  assert re.findall(r"step (\d+)/10", stream.getvalue())[-1] == "3"
  meter.wait()
  assert all(o.done for o in outputs)


def test_off_or_on_another_process_it_writes_nothing(clock, monkeypatch):
  stream = Stream(tty=True)
  run_epoch(meter_lib.Meter(unit="images", batch_size=8, stream=stream, enabled=False), clock,
            steps=100, seconds_per_step=0.01)
  monkeypatch.setattr(meter_lib, "primary", lambda: False)
  run_epoch(meter_lib.Meter(unit="images", batch_size=8, stream=stream), clock, steps=100,
            seconds_per_step=0.01)
  assert stream.getvalue() == ""


def test_a_line_of_another_thread_clears_the_live_line_first(clock):
  stream = Stream(tty=True)
  meter = meter_lib.Meter(unit="images", batch_size=8, stream=stream)
  meter.start(0, 1)
  meter.begin(10)
  meter_lib.clear_live()
  assert stream.getvalue().endswith("step 0/10\x1b[K\r\x1b[K")
  meter_lib.clear_live()                           # nothing live: nothing written
  assert stream.getvalue().count("\r\x1b[K") == 1


@pytest.mark.parametrize("steps", [1, 2, 3, 7, 8, 13, 16, 17, 97, 100, 1755, 1753])
def test_scan_chunks_cover_an_epoch_once_in_at_most_two_lengths(steps):
  chunks = trainer_lib.scan_chunks(steps)
  starts = [s for s, _ in chunks]
  assert starts == sorted(starts) and starts[0] == 0
  assert [s + n for s, n in chunks[:-1]] == starts[1:] and sum(n for _, n in chunks) == steps
  assert len({n for _, n in chunks}) <= 2 and len(chunks) <= 2 * trainer_lib.SCAN_CHUNKS
  if steps >= 16:
    assert len(chunks) >= 4
  assert trainer_lib.scan_chunks(steps, chunks=1) == [(0, steps)]


@pytest.mark.parametrize("mode", ["scan", "loop"])
def test_an_epoch_shown_step_by_step_trains_exactly_as_one_shown_not_at_all(data, mode, clock):
  """Bit-identical weights and metrics; shown on the scan path, an epoch of 13 steps is 13
  one-step scans, compiled once, and a second epoch compiles nothing."""
  model = cnn.CNN(batch_norm=True, init_scheme="flax", **TINY_CNN)
  trainer = trainer_lib.Trainer(cnn.loss_fn, cnn.eval_fn, batch_size=8, epoch_mode=mode)
  stream = Stream(tty=True)
  meter = meter_lib.Meter(unit="images", batch_size=8, stream=stream)
  results, compiled = [], {}
  for shown in (None, meter):
    state = new_cnn_state(model)
    for epoch in range(2):
      if shown is not None:
        shown.start(epoch, 2)
      with Lowered() as lowered:
        state, metrics = trainer.train_epoch(state, data["train"], epoch, shown)
      compiled[shown is not None, epoch] = lowered.count
    results.append((state, metrics))
  chex.assert_trees_all_equal(results[0][0].params, results[1][0].params)
  chex.assert_trees_all_equal(results[0][0].batch_stats, results[1][0].batch_stats)
  assert results[0][1] == results[1][1] and int(results[1][0].step) == 26
  assert "step 0/13" in stream.getvalue()
  assert compiled[True, 1] == compiled[False, 1] == 0
  assert compiled[True, 0] == (1 if mode == "scan" else 0)      # the 1-step scan
  assert trainer_lib.scan_chunks(13) == [(i, 1) for i in range(13)]


class Lowered:
  """Counts the programs JAX compiles inside a `with` block."""
  EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"

  def __enter__(self):
    self.count = 0
    jax.monitoring.register_event_duration_secs_listener(self._listen)
    return self

  def _listen(self, event, seconds, **_):
    self.count += event == self.EVENT

  def __exit__(self, *exc):
    jax.monitoring.unregister_event_duration_listener(self._listen)
