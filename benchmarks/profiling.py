"""Per-op time of one training epoch, JAX and PyTorch side by side (the benchmarks' --profile).

JAX: the epoch runs under `jax.profiler.trace`; each XLA kernel's self time (its duration less
the kernels it waits on) is summed over XLA's worker threads and named by what it computes, read
from the optimized HLO that `dump_hlo_to` makes XLA write (convolution / dot / rng / pool /
elementwise, forward or backward, output shape, the layer in the op name). PyTorch:
`torch.profiler` over the same epoch, its own per-operator table. Both as ms per step.
"""

from __future__ import annotations

import collections
import glob
import os
import re
import tempfile
from pathlib import Path
from typing import Callable

KINDS = ("convolution", "dot", "rng-bit-generator", "reduce-window", "select-and-scatter",
         "reduce", "gather", "scatter", "dynamic-update-slice", "copy", "transpose")


def dump_hlo_to(folder: Path) -> None:
  """Makes XLA write each training step's optimized HLO under `folder`; call it before JAX
  first compiles anything (XLA reads XLA_FLAGS when its backend starts)."""
  flags = os.environ.get("XLA_FLAGS", "")
  os.environ["XLA_FLAGS"] = (f"{flags} --xla_dump_to={folder} --xla_dump_hlo_as_text "
                             "--xla_dump_hlo_module_re=.*_loop_step.*").strip()


def kernel_names(folder: Path) -> dict[str, str]:
  """XLA kernel (instruction) name -> 'kind fwd|bwd shape layer', from the dumped HLO."""
  names = {}
  for path in glob.glob(str(folder / "*after_optimizations.txt")):
    text = Path(path).read_text()
    bodies = dict(re.findall(r"^%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}", text, re.S | re.M))
    for line in text.splitlines():
      m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ([\w\-]+)\(", line)
      if not m:
        continue
      name, shape, op = m.groups()
      called = re.search(r"calls=%?([\w.\-]+)", line)
      body = bodies.get(called.group(1), "") if called else line
      kind = next((k for k in KINDS if f" {k}(" in body), "elementwise" if called else op)
      op_name = re.search(r'op_name="([^"]*)"', line)
      op_name = op_name.group(1) if op_name else ""
      step = "bwd" if "transpose(" in op_name else "fwd"
      layer = re.sub(r"^jit\([^)]*\)/|(transpose|jvp)\(|\)", "", op_name)
      names.setdefault(name, f"{kind:12s} {step} {shape.split('{')[0]:22s} {layer[-60:]}")
  return names


def self_times(xplane: str) -> tuple[collections.Counter, collections.Counter]:
  """(ns, count) per event name on XLA's worker threads, each event less its nested ones."""
  from jax.profiler import ProfileData
  total, count = collections.Counter(), collections.Counter()
  for plane in ProfileData.from_file(xplane).planes:
    for line in plane.lines:
      if not line.name.startswith("tf_XLAEigen"):
        continue
      stack = []
      for start, end, name in sorted(((e.start_ns, e.end_ns, e.name) for e in line.events),
                                     key=lambda t: (t[0], -t[1])):
        while stack and stack[-1][0] <= start:
          stack.pop()
        if stack:
          total[stack[-1][1]] -= min(end, stack[-1][0]) - start
        total[name] += end - start
        count[name] += 1
        stack.append((end, name))
  return total, count


def jax_table(run_epoch: Callable[[], None], steps: int, hlo_folder: Path, top: int = 30) -> str:
  """Runs `run_epoch` under the JAX profiler; its kernels' self time per step, largest first."""
  import jax
  with tempfile.TemporaryDirectory() as trace:
    with jax.profiler.trace(trace):
      run_epoch()
    total, count = self_times(glob.glob(f"{trace}/**/*.xplane.pb", recursive=True)[0])
  names = kernel_names(hlo_folder)
  grand = sum(total.values())
  rows = [f"XLA kernels' self time, both worker threads summed: {grand / 1e6 / steps:.2f} "
          f"ms/step over {steps} steps", f"{'ms/step':>8s} {'share':>6s} {'calls':>6s}  kernel"]
  for name, ns in total.most_common(top):
    rows.append(f"{ns / 1e6 / steps:8.3f} {100 * ns / grand:5.1f}% {count[name] / steps:6.1f}  "
                f"{name:34s} {names.get(name, '')}")
  return "\n".join(rows) + "\n"


def torch_table(run_epoch: Callable[[], None], steps: int, top: int = 30) -> str:
  """Runs `run_epoch` under torch.profiler; its operators' self CPU time per step."""
  import torch
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    run_epoch()
  events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
  grand = sum(e.self_cpu_time_total for e in events)
  rows = [f"PyTorch operators' self CPU time: {grand / 1e3 / steps:.2f} ms/step over {steps} "
          f"steps ({torch.get_num_threads()} threads)",
          f"{'ms/step':>8s} {'share':>6s} {'calls':>6s}  operator"]
  for e in events[:top]:
    rows.append(f"{e.self_cpu_time_total / 1e3 / steps:8.3f} "
                f"{100 * e.self_cpu_time_total / grand:5.1f}% {e.count / steps:6.1f}  {e.key}")
  return "\n".join(rows) + "\n"


def threads() -> str:
  """What each framework runs on: XLA:CPU's pool has one thread per schedulable core."""
  import torch
  return (f"threads: XLA {len(os.sched_getaffinity(0))} (one per schedulable core), PyTorch "
          f"{torch.get_num_threads()} (torch.get_num_threads())")
