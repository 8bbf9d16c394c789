"""The edge between users and the library: flag errors and `UserError`s become one line + exit 2;
the flags several CLIs share are defined here once. (Only experiments/ imports this module: the
library itself never reads absl flags.)"""

from __future__ import annotations

import errno
import os
import re
import sys
from typing import Callable, Sequence

from absl import app, flags, logging

EXIT_USAGE = 2

try:                      # JAX reads its JAX_* settings from the environment as it is imported
  import jax
  import jax.extend.backend
except ValueError as e:   # JAX_ENABLE_X64=maybe, JAX_DEFAULT_MATMUL_PRECISION=garbage, ...
  print(f"error: {e}; fix or unset it", file=sys.stderr, flush=True)
  sys.exit(EXIT_USAGE)

from hw2jax.cache import enable_compilation_cache  # noqa: E402  (after jax's settings are read)
from hw2jax.malloc import keep_freed_memory  # noqa: E402
from hw2jax.errors import AbandonedWorkError, UserError  # noqa: E402
from hw2jax.train import sharding  # noqa: E402
from hw2jax.train.trainer import EPOCH_MODES  # noqa: E402


def fail(message: str) -> None:
  """Prints `error: message` (one line) to stderr and exits with status 2."""
  print(error_line(message), file=sys.stderr, flush=True)
  sys.exit(EXIT_USAGE)


def error_line(message: str, limit: int = 2000) -> str:
  """'error: message' as one printable line: control characters (a newline or a terminal escape
  in a file name or a flag) shown escaped, a message longer than `limit` cut in its middle (it
  may echo a huge argument; its end says what to do)."""
  text = "".join(c if c.isprintable() or c == " " else ascii(c)[1:-1] for c in str(message))
  if len(text) > limit:
    text = f"{text[:limit * 2 // 3]} [... {len(text) - limit:,} characters ...] " \
           f"{text[-limit // 3:]}"
  return f"error: {text}"


FLAGFILE_MAX_BYTES = 1 << 20


def _check_flagfiles(argv: Sequence[str]) -> None:
  """absl reads a --flagfile whole: /dev/zero or a FIFO would take all memory or wait forever."""
  for i, arg in enumerate(argv):
    name, eq, path = arg.partition("=")
    if name in ("--flagfile", "-flagfile") and not eq and i + 1 < len(argv):
      path = argv[i + 1]
    elif name not in ("--flagfile", "-flagfile"):
      continue
    if os.path.exists(path) and (not os.path.isfile(path)
                                 or os.path.getsize(path) > FLAGFILE_MAX_BYTES):
      fail(f"--flagfile={path} is not a file of flags (a folder, a device, or over "
           f"{FLAGFILE_MAX_BYTES >> 20} MiB); give a text file with one --name=value a line")


def _not_from_orbax(record) -> bool:
  """False for Orbax's own log records and asyncio's reports of its unretrieved tasks."""
  if "/orbax/" in record.pathname.replace("\\", "/"):
    return False
  return not (record.name == "asyncio" and "orbax" in record.getMessage())


def _parse_flags(argv: Sequence[str]) -> list[str]:
  _check_flagfiles(argv)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    text = re.sub(r"^ERROR:+ *", "", str(e))      # absl's own prefix, and its tuple of a reason
    text = re.sub(r": \('([^']*)', '([^']*)'\)", r": \1 (\2)", text)
    fail(f"{text.rstrip('.')}. See --helpfull for the flags")
  except SystemExit as e:
    # Only absl's --help, --helpshort, --helpfull and --helpxml exit while flags are parsed:
    # they print what was asked for and exit 1. Help that was asked for is a success.
    sys.exit(0 if e.code == 1 else e.code)


def define_run_flags(epoch_mode: str) -> None:
  """--epoch_mode (default: the experiment Config's), --progress, --fresh and --distributed,
  for the CLIs that train."""
  flags.DEFINE_enum("epoch_mode", epoch_mode, list(EPOCH_MODES),
                    "auto: one lax.scan per epoch on GPU/TPU, a Python loop of jitted steps on "
                    "CPU.")
  flags.DEFINE_bool("progress", True,
                    "Show the steps inside each epoch: on a terminal one line updated in place "
                    "(steps, examples per second, the ETA of the epoch and of the run), "
                    "elsewhere (a log file, a notebook) a plain line at most every 10 s.")
  flags.DEFINE_bool("fresh", False,
                    "Start over: move the previous run's files to <workdir>/archive/<time>/.")
  flags.DEFINE_bool("distributed", False,
                    "Multi-host run (TPU pod slice, GPU cluster): call "
                    "jax.distributed.initialize() first; see BUILD.md.")


def define_training_flags() -> None:
  """--tensorboard and --devices, for CLIs that train."""
  flags.DEFINE_bool("tensorboard", True,
                    "Also write TensorBoard event files into <workdir>/tb/ (view them with "
                    "`tensorboard --logdir runs`); metrics.jsonl is written either way.")
  flags.DEFINE_string("devices", "all",
                      "Data parallelism over all devices, or over the first N (e.g. 1 on a "
                      "machine whose batches are too small to be worth splitting).")


def parse_devices(text: str) -> int:
  """'all' -> 0, 'N' -> N (>= 1); a clear UserError otherwise."""
  if text.strip().lower() == "all":
    return 0
  try:
    count = int(text)
  except ValueError:
    count = -1
  if count < 1:
    raise UserError(f"--devices={text} must be all or a positive number")
  return count


def define_download_flag() -> None:
  """--download, for CLIs that read the Intel data: fetch it from Kaggle when none is found."""
  default = download_setting()
  flags.DEFINE_enum("download", default if default in ("auto", "never") else "auto",
                    ["auto", "never"],
                    "auto: when no Intel data is found, download the public Kaggle dataset "
                    "(about 360 MB) with kagglehub, cached in $KAGGLEHUB_CACHE (default "
                    "~/.cache/kagglehub); never: do not. Default: $HW2JAX_DOWNLOAD, else auto.")


INT_FLAG_MAX = 2**31 - 1


def _huge_integer_flag() -> str | None:
  """An integer flag no array, loop or count of this program can hold (2**40 beams, patterns or
  steps ended in a C++ abort, an overflow or an allocation traceback)."""
  for name in flags.FLAGS:
    value = flags.FLAGS[name].value
    if "seed" in name:              # checked as seeds: 32 bits
      continue
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT_FLAG_MAX:
      return f"--{name}={value} is beyond any size this program handles (at most {INT_FLAG_MAX:,})"
  return None


def download_setting() -> str:
  return os.environ.get("HW2JAX_DOWNLOAD", "auto").strip().lower()


def run(main: Callable[[Sequence[str]], None], *, memory_flags: str = "--batch_size") -> None:
  """`absl.app.run(main)`, with bad flags and `UserError` reported as one line and exit code 2.

  So are the failures a user fixes outside the program: a file system that refuses a write
  (full, read-only, no permission) and a device out of memory (`memory_flags` names the flags
  that make the program smaller).
  """

  def guarded(argv):
    # Orbax and JAX log every checkpoint step at INFO; users see progress lines instead.
    # absl's -v/--verbosity flag still turns them back on.
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)
      # Orbax logs every failure of its background threads as a traceback (hundreds of lines
      # for one full disk); the checkpoint layer re-raises them as one line of its own.
      logging.get_absl_handler().addFilter(_not_from_orbax)
    if len(argv) > 1:
      fail(f"unexpected arguments {' '.join(argv[1:])}; flags look like --name=value")
    try:
      problem = xla_flags_problem(os.environ.get("XLA_FLAGS", ""))
      problem = problem or _huge_integer_flag()
      if (not problem and "download" in flags.FLAGS and not flags.FLAGS["download"].present
              and download_setting() not in ("auto", "never")):
        problem = (f"HW2JAX_DOWNLOAD={os.environ['HW2JAX_DOWNLOAD']} is not auto or never; fix "
                   "or unset it")
      if problem:
        raise UserError(problem)
      if "distributed" in flags.FLAGS and flags.FLAGS.distributed:
        sharding.initialize_distributed()
        if not sharding.primary():    # process 0 prints the run's progress; errors stay
          sys.stdout.flush()
          os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
      enable_compilation_cache()
      keep_freed_memory()
      main(argv)
    except AbandonedWorkError as e:      # what the run keeps is on disk: do not wait
      print(error_line(str(e)), file=sys.stderr, flush=True)
      sys.stdout.flush()
      os._exit(EXIT_USAGE)
    except UserError as e:
      fail(str(e))
    except MemoryError as e:          # numpy's "Unable to allocate 150. GiB for an array ..."
      fail(f"out of host memory ({str(e).splitlines()[0] if str(e) else 'an allocation'}); "
           f"make the run smaller ({memory_flags}) or its data (a huge word, image or count?)")
    except OSError as e:
      fail(describe_os_error(e))
    except Exception as e:  # out-of-memory and a missing device are the user's to fix
      lost = sharding.lost_peer(e)
      if lost:
        # Not sys.exit: JAX's exit handler would wait at a shutdown barrier for the dead
        # process, then abort (exit 134) with a page of coordination-service logs.
        print(error_line(lost), file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(EXIT_USAGE)
      if platform_failure(e):
        fail(describe_platform_error(jax.config.jax_platforms, _platforms_here()))
      if "Unable to initialize backend" in str(e):
        fail(f"JAX could not start its backend ({str(e).splitlines()[0][:200]}); check "
             "XLA_FLAGS and JAX_PLATFORMS")
      if "RESOURCE_EXHAUSTED" not in str(e):
        raise
      fail(describe_out_of_memory(e, memory_flags))
    except KeyboardInterrupt:
      print("interrupted; rerun the same command to go on (training resumes from the last "
            "checkpoint)",
            file=sys.stderr, flush=True)
      sys.exit(130)

  for stream in (sys.stdout, sys.stderr):          # a name in any script, on any terminal
    if hasattr(stream, "reconfigure"):
      stream.reconfigure(errors="backslashreplace")
  sys.stdout = _Progress(sys.stdout)
  app.run(guarded, flags_parser=_parse_flags)


def xla_flags_problem(text: str) -> str | None:
  """XLA reads XLA_FLAGS when the backend starts and aborts the whole process (a C++ check and
  a page of flags) on a value it cannot parse: the values we know it aborts on, checked first."""
  for token in text.split():
    name, _, value = token.lstrip("-").partition("=")
    if name == "xla_force_host_platform_device_count" and not (
        value.isdigit() and int(value) >= 1):
      return (f"XLA_FLAGS: --{name}={value} must be a whole number of devices >= 1; fix or "
              "unset it")
  return None


class _Progress:
  """stdout for progress lines, which are a courtesy: a closed or full stdout (`| head`,
  /dev/full) must not stop a run, whose metrics and results go to its workdir. The first
  failed write says so once on stderr; later lines go nowhere."""

  def __init__(self, stream):
    self._stream = stream

  def write(self, text: str) -> int:
    try:
      return self._stream.write(text)
    except OSError as e:
      self._lost(e)
      return len(text)

  def flush(self) -> None:
    try:
      self._stream.flush()
    except OSError as e:
      self._lost(e)

  def __getattr__(self, name):
    return getattr(self._stream, name)

  def _lost(self, e: OSError) -> None:
    # fd 1 onto /dev/null: what is still buffered, and the flush at exit, go nowhere quietly.
    os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())
    self._stream = open(os.devnull, "w")
    print(f"warning: stdout failed ({e.strerror or e}); the run goes on, its metrics and "
          "results are in its workdir", file=sys.stderr, flush=True)


def platform_failure(e: BaseException) -> bool:
  """Whether `e` is JAX failing to start the backend that JAX_PLATFORMS names (a device this
  machine lacks, a typo). Caught where it surfaces, not by starting the backend early: a CLI
  may still set XLA_FLAGS in its main (the benchmarks' --profile), read when it starts."""
  return bool(jax.config.jax_platforms) and "Unable to initialize backend" in str(e)


def _platforms_here() -> list[str]:
  """The platforms JAX finds when it is asked for none; [] if even that fails."""
  try:
    jax.config.update("jax_platforms", None)
    jax.extend.backend.clear_backends()
    return sorted({d.platform for d in jax.devices()})
  except Exception:     # only for the message: the run stops either way
    return []


def describe_platform_error(asked: str, available: Sequence[str]) -> str:
  """One line for a JAX_PLATFORMS that this machine cannot start."""
  here = f" (available: {', '.join(available)})" if available else ""
  return (f"JAX_PLATFORMS={asked}: no such platform here{here}; unset it, or install the jax "
          "extra for that device (pip install -e '.[gpu]' or '.[tpu]'; see BUILD.md)")


def describe_os_error(e: OSError) -> str:
  """One line for an OSError: what could not be done to which path, and what to do."""
  where = f" {e.filename}" if e.filename else ""
  if e.errno == errno.ENOENT and not e.filename and _cwd_deleted():
    return "the folder this command runs in was deleted; cd into one that exists and rerun"
  if e.errno == errno.ENOSPC:
    return (f"disk full while writing{where}; free space and rerun the same command: runs "
            "resume from their last checkpoint")
  if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
    return (f"no permission to write, move or remove{where} ({e.strerror}); use a folder you "
            "can write to")
  return f"{e.strerror or e}{':' + where if where else ''}"


def _cwd_deleted() -> bool:
  try:
    os.getcwd()
  except FileNotFoundError:
    return True
  return False


def describe_out_of_memory(e: Exception, flags_hint: str) -> str:
  """One line for XLA's RESOURCE_EXHAUSTED: the size it tried, and the flags that reduce it."""
  tried = re.search(r"allocat\w* (\d+) bytes", str(e))
  size = f" (it tried to allocate {int(tried.group(1)) / 2**30:,.1f} GiB)" if tried else ""
  return (f"out of device memory{size}; make the run smaller with {flags_hint}, or use a "
          "device with more memory")


def _items(text: Sequence[str] | str, flag: str) -> list[str]:
  """A list flag's items; an empty one ('8,,8', '0.1,') is a typo, not a value to drop."""
  items = text.split(",") if isinstance(text, str) else list(text)
  if len(items) > 1 and any(not str(x).strip() for x in items):
    raise UserError(f"--{flag}={','.join(map(str, items))} has an empty item; separate the "
                    "values by single commas")
  return items


def parse_floats(text: Sequence[str] | str, flag: str) -> list[float]:
  """'0.1,0.01' (or absl's list of strings) -> [0.1, 0.01]; a clear UserError otherwise."""
  items = _items(text, flag)
  try:
    values = [float(x) for x in items if str(x).strip()]
  except ValueError:
    raise UserError(f"--{flag}={','.join(map(str, items))} must be numbers separated by "
                    f"commas, e.g. --{flag}=0.1,0.01") from None
  if not values:
    raise UserError(f"--{flag} is empty; give at least one value")
  return values


def parse_ints(text: Sequence[str] | str, flag: str) -> list[int]:
  items = _items(text, flag)
  try:
    return [int(x) for x in items if str(x).strip()]
  except ValueError:
    raise UserError(f"--{flag}={','.join(map(str, items))} must be integers separated by "
                    "commas") from None
