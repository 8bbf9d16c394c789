"""Progress inside an epoch: steps finished, examples per second, the ETA of the epoch and of the
run. On a terminal one line rewritten in place (at most every TTY_SECONDS); elsewhere (a log
file, a pipe, a notebook) a plain line at most every PLAIN_SECONDS.

It adds no device sync: a step counts as finished once an array it outputs `is_ready()`, a query
that never blocks. The steps still in flight when an epoch's last one is dispatched are waited
for in order, which the epoch's metrics do anyway. Our own few lines rather than tqdm: a step is
done when the device says so, not when Python dispatched it, and the run's ETA spans epochs.
"""

from __future__ import annotations

import collections
import shutil
import sys
import threading
import time
from typing import Any, TextIO

from hw2jax.markdown import format_seconds
from hw2jax.train.sharding import primary

TTY_SECONDS, PLAIN_SECONDS = 0.2, 10.0
_PENDING_MAX = 256          # steps held before the finished ones are counted (memory stays flat)
# The stream showing a live (unfinished) line, if any: another thread's lines clear it first.
_LIVE_LOCK = threading.Lock()
_live: list[TextIO] = []


class Meter:
  """Reports the epochs of one run: `fit` calls `start(epoch, epochs)`, the trainer
  `begin(steps)`, `step(count, output)` after dispatching each step (or chunk of steps) and
  `wait()` after the last; `phase(text)` names what follows the steps (validation), `clear()`
  removes the live line before the epoch's own line is printed."""

  def __init__(self, *, unit: str, batch_size: int, enabled: bool = True,
               stream: TextIO | None = None, prefix: str = "", tty: bool | None = None):
    """`stream`: default stdout; `tty`: whether it is a terminal (default: ask it)."""
    self.stream = stream or sys.stdout
    self.enabled = enabled and primary()
    self.tty = self.enabled and (_isatty(self.stream) if tty is None else tty)
    self.interval = TTY_SECONDS if self.tty else PLAIN_SECONDS
    self.unit, self.batch_size, self.prefix = unit, batch_size, prefix
    self._epoch_seconds: list[float] = []    # whole epochs (training, validation, saving) seen
    self._started: float | None = None

  def start(self, epoch: int, epochs: int) -> None:
    """Epoch `epoch` (0-based) of `epochs` begins."""
    now = time.perf_counter()
    if self._started is not None:
      self._epoch_seconds.append(now - self._started)
    self._started, self._epoch, self._epochs = now, epoch, epochs
    self._steps, self._done, self._first = 0, 0, None
    self._pending: collections.deque = collections.deque()
    self._shown, self._text = now, None

  def begin(self, steps: int) -> None:
    """The epoch has `steps` optimizer steps; on a terminal the line appears at once (the first
    step may compile for a while)."""
    self._steps = steps
    if self.tty:
      self._show(time.perf_counter())

  def step(self, count: int, output: Any) -> None:
    """Steps 1..`count` are dispatched; `output` is an array the last of them returns."""
    if not self.enabled:
      return
    self._pending.append((count, output))
    now = time.perf_counter()
    if now - self._shown >= self.interval:
      self._collect(now)
      self._show(now)
    elif len(self._pending) >= _PENDING_MAX:
      self._collect(now)

  def wait(self) -> None:
    """Waits for the dispatched steps in order, showing them as they finish."""
    if not self.enabled:
      return
    while self._pending:
      count, output = self._pending.popleft()
      output.block_until_ready()
      now = time.perf_counter()
      self._finished(count, now)
      if now - self._shown >= self.interval:
        self._show(now)

  def phase(self, text: str) -> None:
    """What the epoch does after its steps (e.g. 'validating'), on a terminal."""
    if self.tty:
      self._text = f"{self._head()}  {text}"
      self._write(self._text)

  def clear(self) -> None:
    if self.tty:
      clear_live()

  # -- internals --------------------------------------------------------------------------------

  def _collect(self, now: float) -> None:
    """Counts the steps found finished at `now` (the device runs them in order)."""
    count = None
    while self._pending and self._pending[0][1].is_ready():
      count = self._pending.popleft()[0]
    if count is not None:
      self._finished(count, now)

  def _finished(self, count: int, now: float) -> None:
    if self._first is None:
      self._first = (now, count)     # the rate is timed from here: compilation left out
    self._done = count

  def _show(self, now: float) -> None:
    self._shown = now
    text = self.line(now)
    if text != self._text:             # (no frame twice: nothing finished while compiling)
      self._text = text
      self._write(text)

  def _head(self) -> str:
    return f"{self.prefix}epoch {self._epoch + 1}/{self._epochs}"

  def line(self, now: float) -> str:
    """'epoch e/E  step s/S  r <unit>/s  ETA t (run T)'."""
    parts = [self._head(), f"step {self._done}/{self._steps}"]
    rate = self._rate(now)
    if rate:
      left = (self._steps - self._done) / rate
      later = self._epochs - self._epoch - 1
      # Later epochs take what whole epochs took (the first, which compiled, left out when
      # there are others), or before one has ended what this epoch's steps take.
      steady = self._epoch_seconds[1:] or self._epoch_seconds or [self._steps / rate]
      run = left + later * sum(steady) / len(steady)
      parts += [f"{rate * self.batch_size:,.0f} {self.unit}/s",
                f"ETA {format_seconds(left)} (run {format_seconds(run)})"]
    return "  ".join(parts)

  def _rate(self, now: float) -> float | None:
    """Steps per second since the first finished step (None until there is a second)."""
    if self._first is None or self._done <= self._first[1] or now <= self._first[0]:
      return None
    return (self._done - self._first[1]) / (now - self._first[0])

  def _write(self, text: str) -> None:
    with _LIVE_LOCK:
      if self.tty:
        width = shutil.get_terminal_size((100, 20)).columns - 1   # a full line would wrap
        self.stream.write("\r" + text[:max(width, 1)] + "\x1b[K")
        _live[:] = [self.stream]
      else:
        self.stream.write(text + "\n")
      self.stream.flush()


def clear_live() -> None:
  """Erases a live progress line, so that the next line printed starts at the margin."""
  with _LIVE_LOCK:
    for stream in _live:
      stream.write("\r\x1b[K")
      stream.flush()
    _live.clear()


def _isatty(stream: TextIO) -> bool:
  try:
    return stream.isatty()
  except (AttributeError, ValueError):
    return False
