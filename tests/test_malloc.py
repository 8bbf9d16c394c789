"""Every CLI keeps glibc's malloc from handing memory back between steps (hw2jax.malloc): a
10 MB block then comes from the heap, not from a fresh mapping, unless the user's environment
sets glibc's own variables."""

import ctypes
import subprocess
import sys
import textwrap

import pytest

from helpers import REPO, cli_env

glibc = pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "mallinfo2"),
                           reason="glibc 2.33+ (mallinfo2) only")

# In a fresh process: cli.run (every CLI's entry) around a main that allocates 10 MB and says
# how many bytes glibc mapped for it (the growth of mallinfo2's hblkhd).
PROBE = textwrap.dedent("""
    import ctypes, sys
    from hw2jax import cli

    class Info(ctypes.Structure):
      _fields_ = [(name, ctypes.c_size_t) for name in (
          "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
          "fordblks", "keepcost")]

    def main(argv):
      libc = ctypes.CDLL(None)
      libc.mallinfo2.restype, libc.malloc.restype = Info, ctypes.c_void_p
      before = libc.mallinfo2().hblkhd
      block = libc.malloc(10 << 20)
      print(libc.mallinfo2().hblkhd - before)
      libc.free(ctypes.c_void_p(block))

    cli.run(main)
""")


def mapped_bytes(tmp_path, **env):
  proc = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, capture_output=True,
                        text=True, env={**cli_env(REPO), **env}, timeout=120)
  assert proc.returncode == 0, proc.stderr
  return int(proc.stdout.split()[-1])


@glibc
def test_a_cli_takes_a_10_mb_block_from_the_heap(tmp_path):
  assert mapped_bytes(tmp_path) == 0


@glibc
def test_glibcs_own_variables_leave_glibcs_behaviour(tmp_path):
  assert mapped_bytes(tmp_path, MALLOC_TOP_PAD_="131072") >= 10 << 20
