"""Reading and writing PyTorch state_dict files (.pt): the files of `--from_torch` and
`--to_torch` (hw2jax.recipes.torch_checkpoints).

This is the only module that imports torch, inside the functions that need it, so the rest of
hw2jax runs without it. A bad file is a one-line `UserError` that names it: missing, not a
regular file (a named pipe is never opened), unreadable, pickled code or objects, weights that
are not finite floating-point numbers; an export never overwrites and never leaves a
half-written file.
"""

from __future__ import annotations

import os
import pickle
import pickletools
import re
import stat
import warnings
import zipfile
from pathlib import Path
from typing import Mapping

import numpy as np

from hw2jax import files
from hw2jax.errors import UserError
from hw2jax.models import torch_port

# PyTorch's CPU-only wheels (launch.sh installs from it too).
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def import_torch(flag: str):
  """The torch module; a UserError saying how to install PyTorch (for `flag`) without it."""
  try:
    import torch
  except ImportError:
    raise UserError(f"{flag} needs PyTorch, which is not installed: run the command through "
                    "./launch.sh (it installs the build that fits the machine), or install it "
                    f"yourself; on a CPU-only machine: pip install torch --index-url "
                    f"{TORCH_CPU_INDEX} (a plain `pip install torch` on Linux takes the ~3 GB "
                    "CUDA build)") from None
  return torch


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
  """The state_dict saved at `path` (torch.save(model.state_dict(), path)) as numpy arrays.

  Read with `weights_only=True`: tensors and plain containers only, never arbitrary pickled
  code. A missing or non-regular file (never opened: a named pipe would block), a file torch
  cannot read or refuses, anything but a dict of tensors (a whole pickled model, a training
  checkpoint with an optimizer), and weights that are not finite floating-point numbers are
  each a one-line UserError; torch's warnings about the file are not printed."""
  path = _regular_file(path)
  torch = import_torch("--from_torch")
  with warnings.catch_warnings(record=True) as warned:   # they would follow the error line
    warnings.simplefilter("always")
    try:
      obj = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:
      raise UserError(f"--from_torch={path} cannot be read ({e.strerror or e})") from None
    except Exception as e:      # torch reports a foreign file as KeyError, RuntimeError, EOF...
      raise _unreadable(path, e, [str(w.message) for w in warned]) from None
  if not isinstance(obj, Mapping) or not obj:
    kind = "an empty" if isinstance(obj, Mapping) else "a"
    raise UserError(f"--from_torch={path} holds {kind} {type(obj).__name__}, not a state_dict; "
                    "save model.state_dict()")
  return {key: _weights(path, key, value, torch) for key, value in obj.items()}


def _regular_file(path: str | Path) -> Path:
  """`path` if it is a regular file (links followed), else a UserError saying what it is.
  Only stat()ed, never opened: opening a named pipe waits for a writer forever."""
  path = Path(path)
  try:
    mode = path.stat().st_mode
  except FileNotFoundError:
    raise UserError(f"--from_torch={path}: no such file") from None
  except OSError as e:
    raise UserError(f"--from_torch={path} cannot be read ({e.strerror or e})") from None
  if stat.S_ISDIR(mode):
    raise UserError(f"--from_torch={path}: is a folder, not a file")
  if not stat.S_ISREG(mode):
    kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a special file")
    raise UserError(f"--from_torch={path}: is {kind}, not a regular file; give a file saved "
                    "with torch.save")
  return path


# Modules whose globals in a pickle are calls of code, not data (torch blocks the first four;
# it names builtins without their module, e.g. `eval`).
CODE_MODULES = ("os", "posix", "nt", "sys", "subprocess", "shutil", "socket", "importlib",
                "runpy", "pty", "ctypes", "builtins")


def _unreadable(path: Path, e: Exception, warned: list[str]) -> UserError:
  """The one line for a file torch.load(weights_only=True) failed on: code it refused to run
  (named when torch names it), pickled objects, a pickle protocol it cannot read, or else no
  PyTorch file at all."""
  text = str(e)
  found = (re.search(r"GLOBAL (\S+) whose module \S+ is blocked", text)
           or re.search(r"Unsupported global: GLOBAL (\S+)", text))
  name = found[1] if found else next(
      (g for g in _raw_pickle_globals(path) if g.split(".")[0] in CODE_MODULES), "")
  if name and ("." not in name or name.split(".")[0] in CODE_MODULES):
    return UserError(f"--from_torch={path} holds code (it calls {name}), which "
                     "torch.load(weights_only=True) refused to run; only tensors are read: "
                     "save model.state_dict() with torch.save")
  if name:
    return UserError(f"--from_torch={path} holds pickled Python objects ({name}), not only "
                     "tensors (a whole model?); save model.state_dict() with torch.save")
  protocol = next((m[1] for w in warned if (m := re.search(r"pickle protocol (\d+)", w))), None)
  if protocol and "Unsupported operand" in text:
    return UserError(f"--from_torch={path} was pickled with protocol {protocol}, which "
                     "torch.load(weights_only=True) cannot read; save it with torch.save's "
                     "default pickle_protocol")
  detail = ("" if isinstance(e, pickle.UnpicklingError)           # its text is about pickles
            else f": {_first_line(e)}")
  return UserError(f"--from_torch={path} is not a PyTorch file torch.load can read "
                   f"({type(e).__name__}{detail})")


def _raw_pickle_globals(path: Path) -> list[str]:
  """The globals ('module.name') a plain pickle file (not torch.save's zip) names, read from
  its opcodes without running any: torch's loader fails on some raw pickles (protocol 4 and up)
  before it says which globals they call."""
  if zipfile.is_zipfile(path):
    return []
  names, strings = [], []
  try:
    with open(path, "rb") as f:
      for op, arg, _ in pickletools.genops(f):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
          strings.append(arg)
        elif op.name in ("GLOBAL", "INST"):
          names.append(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
          names.append(f"{strings[-2]}.{strings[-1]}")
  except Exception:  # not a pickle after all: what was read so far is all there is
    pass
  return names


FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
INT_DTYPES = ("int64", "int32", "int16", "int8", "uint8")
BN_COUNTER = torch_port.BN_COUNTER     # PyTorch's int64 BatchNorm step count (ignored on import)


def _weights(path: Path, key, value, torch) -> np.ndarray:
  """Entry `key` of a loaded state_dict as a numpy array; a UserError unless it is a dense
  tensor of finite float16/bfloat16/float32/float64 values (an integer BatchNorm
  num_batches_tracked too): an int or complex tensor would be cast silently to other weights,
  a NaN would be evaluated into NaN scores."""
  if not isinstance(key, str):
    raise UserError(f"--from_torch={path}: entry key {key!r} ({type(key).__name__}) is not a "
                    "parameter name, so this is no state_dict; save model.state_dict()")
  if not torch.is_tensor(value):
    raise UserError(f"--from_torch={path}: entry {key!r} is of type {type(value).__name__}, "
                    "not a tensor, so this is no state_dict; save model.state_dict()")
  dtype = str(value.dtype).removeprefix("torch.")
  counter = key.endswith(f".{BN_COUNTER}") and dtype in INT_DTYPES
  if dtype not in FLOAT_DTYPES and not counter:
    raise UserError(f"--from_torch={path}: entry {key!r} is {dtype}; expected floating-point "
                    f"weights ({', '.join(FLOAT_DTYPES)})")
  if value.layout != torch.strided or value.is_meta:
    kind = "meta tensor (no data)" if value.is_meta else (
        f"{str(value.layout).removeprefix('torch.')} tensor")
    raise UserError(f"--from_torch={path}: entry {key!r} is a {kind}; expected dense weights")
  value = value.detach().cpu()
  if not counter and not bool(torch.isfinite(value).all()):
    bad = int((~torch.isfinite(value)).sum())
    raise UserError(f"--from_torch={path}: entry {key!r} holds NaN/inf ({bad} of "
                    f"{value.numel()} values); expected finite weights (a diverged run?)")
  return (value.float() if value.dtype == torch.bfloat16 else value).numpy()


def _first_line(e: Exception) -> str:
  text = str(e).strip().splitlines()
  return (text[0][:160] if text else "") or "empty or cut short"


def write_state_dict(arrays: Mapping[str, np.ndarray], path: str | Path) -> Path:
  """Saves `arrays` as a PyTorch state_dict at `path`: never over an existing file, atomically
  (a temp file renamed into place, so no half-written file is ever left), parents created.
  The temp file `.<name>.tmp-<pid>` says which process writes it: it is removed when the write
  fails, and one left by a process that died (kill -9) is removed by the next export."""
  path = check_new_file(path)
  torch = import_torch("--to_torch")
  path.parent.mkdir(parents=True, exist_ok=True)
  _remove_stale_temps(path)
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  try:
    # np.array copies (writable, C order) and keeps 0-d entries such as num_batches_tracked 0-d.
    state = {k: torch.from_numpy(np.array(v, order="C")) for k, v in arrays.items()}
    with files.create_new(tmp) as f:          # never through a link planted at the temp name
      torch.save(state, f)
    os.replace(tmp, path)
  except RuntimeError as e:     # how torch.save reports a full disk ("unexpected pos ...")
    raise UserError(f"--to_torch={path} could not be written (torch.save: {_first_line(e)}); "
                    f"check the free space in {path.parent}") from None
  finally:
    tmp.unlink(missing_ok=True)
  return path


def _remove_stale_temps(path: Path) -> list[Path]:
  """Removes the temp files of exports to `path` whose process is gone (also the
  `.<name>.tmp<pid>` of older versions); a live process's is its write in progress."""
  pattern = re.compile(rf"\.{re.escape(path.name)}\.tmp-?(\d+)")
  stale = [p for p in path.parent.iterdir()
           if (m := pattern.fullmatch(p.name)) and not files.pid_running(int(m[1]))]
  for p in stale:
    p.unlink(missing_ok=True)
  return stale


def check_new_file(path: str | Path) -> Path:
  """`path` if nothing is there yet (an export never replaces a file); else a UserError."""
  path = Path(path)
  if path.exists() or path.is_symlink():
    raise UserError(f"--to_torch={path} already exists; give a new file name (an export never "
                    "overwrites)")
  return path
