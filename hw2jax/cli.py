"""The edge between users and the library: flag errors and `UserError`s become one line + exit 2."""

from __future__ import annotations

import sys
from typing import Callable, Sequence

from absl import app, flags, logging

from hw2jax.cache import enable_compilation_cache
from hw2jax.errors import UserError

EXIT_USAGE = 2


def fail(message: str) -> None:
  """Prints `error: message` (one line) to stderr and exits with status 2."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(EXIT_USAGE)


def _parse_flags(argv: Sequence[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(f"{e}. See --helpfull for the flags")


def define_distributed_flag() -> None:
  """--distributed, for CLIs that train: jax.distributed.initialize() before anything else."""
  flags.DEFINE_bool("distributed", False,
                    "Multi-host run (TPU pod slice, GPU cluster): call "
                    "jax.distributed.initialize() first; see BUILD.md.")


def run(main: Callable[[Sequence[str]], None]) -> None:
  """`absl.app.run(main)`, with bad flags and `UserError` reported as one line and exit code 2."""

  def guarded(argv):
    # Orbax and JAX log every checkpoint step at INFO; users see progress lines instead.
    # absl's -v/--verbosity flag still turns them back on.
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
      fail(f"unexpected arguments {' '.join(argv[1:])}; flags look like --name=value")
    try:
      if "distributed" in flags.FLAGS and flags.FLAGS.distributed:
        from hw2jax import sharding
        sharding.initialize_distributed()
      enable_compilation_cache()
      main(argv)
    except UserError as e:
      fail(str(e))
    except KeyboardInterrupt:
      print("interrupted; rerun the same command to resume from the last checkpoint",
            file=sys.stderr, flush=True)
      sys.exit(130)

  app.run(guarded, flags_parser=_parse_flags)


def parse_floats(text: Sequence[str] | str, flag: str) -> list[float]:
  """'0.1,0.01' (or absl's list of strings) -> [0.1, 0.01]; a clear UserError otherwise."""
  items = text.split(",") if isinstance(text, str) else list(text)
  try:
    values = [float(x) for x in items if str(x).strip()]
  except ValueError:
    raise UserError(f"--{flag}={','.join(map(str, items))} must be numbers separated by "
                    "commas, e.g. --lr=0.1,0.01") from None
  if not values:
    raise UserError(f"--{flag} is empty; give at least one value")
  return values


def parse_ints(text: Sequence[str] | str, flag: str) -> list[int]:
  items = text.split(",") if isinstance(text, str) else list(text)
  try:
    return [int(x) for x in items if str(x).strip()]
  except ValueError:
    raise UserError(f"--{flag}={','.join(map(str, items))} must be integers separated by "
                    "commas") from None
