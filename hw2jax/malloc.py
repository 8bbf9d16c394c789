"""glibc's malloc kept from handing memory back between training steps.

A step of XLA:CPU allocates and frees many buffers of 0.1-30 MB. By default glibc maps large
ones afresh and returns freed memory to the system, so each step faults its pages in again: on
the 2-core AMD EPYC the P2G epoch took 3.9-4.2 s instead of 3.1-3.4 s, with three times the
system time (BUILD.md). Every CLI sets this (`hw2jax.cli.run`), PyTorch's baselines too.
"""

from __future__ import annotations

import ctypes
import os

# mallopt(3) parameters and the values set: allocations up to 32 MB (glibc's largest threshold)
# come from the heap, whose top is trimmed only past 256 MB free and grows 64 MB at a time.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
SETTINGS = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 256 << 20, M_TOP_PAD: 64 << 20}
# The same settings as environment variables: a user who set any of them keeps glibc's reading.
ENVIRONMENT = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def keep_freed_memory() -> bool:
  """Applies SETTINGS to this process's glibc malloc; False (nothing changed) where the C
  library is not glibc (macOS, musl) or the environment sets any of them."""
  if any(name in os.environ for name in ENVIRONMENT):
    return False
  try:
    libc = ctypes.CDLL(None)
    mallopt, _ = libc.mallopt, libc.gnu_get_libc_version     # glibc has both
  except (AttributeError, OSError):
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  return all(mallopt(parameter, value) == 1 for parameter, value in SETTINGS.items())
