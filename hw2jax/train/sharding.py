"""Data parallelism: a 1-D device mesh, replicated state and data, batches split along 'data'.

With several devices (a TPU v5e-8, multi-GPU, several hosts) the whole dataset and the train
state are replicated on every device, and every global batch is split along the mesh axis
`data`: each device gathers its slice of the batch from its own copy of the data, XLA's SPMD
partitioner all-reduces the gradients, and BatchNorm statistics, being means over the batch
axis, are global. The same jitted programs run on one device (mesh None) or many.

Beyond one host, `initialize_distributed()` must run before anything else touches JAX; every
process then computes the same epoch permutation, each device gathers its own slice of every
global batch, and only process 0 writes logs, plots and metadata (`primary`).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hw2jax.errors import UserError

DATA_AXIS = "data"


def primary() -> bool:
  """Only process 0 of a multi-host run writes files and prints progress."""
  return jax.process_index() == 0


def data_mesh(devices=None) -> Mesh | None:
  """A 1-D mesh over all devices (axis 'data'), or None when there is only one device."""
  devices = jax.devices() if devices is None else list(devices)
  if len(devices) < 2:
    return None
  return Mesh(np.array(devices), (DATA_AXIS,))


def device_name(mesh: Mesh | None) -> str:
  """'<platform>:<kind> x<devices a batch is split over>', as summaries record it."""
  d = jax.devices()[0]
  count = 1 if mesh is None else mesh.devices.size
  return f"{d.platform}:{getattr(d, 'device_kind', '')} x{count}"


def select_devices(count: int = 0) -> list:
  """The first `count` devices (0: all). With several processes each contributes the same
  number, so `count` must be a multiple of the process count."""
  devices = jax.devices()
  if count < 0 or count > len(devices):
    raise UserError(f"--devices={count}: this machine has {len(devices)} device(s) "
                    f"({devices[0].platform}); use all or a number from 1 to {len(devices)}")
  if not count or count == len(devices):
    return devices
  processes = jax.process_count()
  if count % processes:
    raise UserError(f"--devices={count} does not split over {processes} processes; use a "
                    f"multiple of {processes}")
  per_process = count // processes
  return [d for p in range(processes)
          for d in [x for x in devices if x.process_index == p][:per_process]]


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def split_batch(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split across the mesh's devices."""
  return NamedSharding(mesh, P(DATA_AXIS))


def to_host(x) -> np.ndarray:
  """A replicated array on the host, also when it spans several processes (each holds a full
  copy; `np.asarray` of the whole would fail there). Host values pass through."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    x = x.addressable_data(0)
  return np.asarray(x)


def check_batch_size(batch_size: int, mesh: Mesh | None, flag: str = "--batch_size") -> None:
  """A global batch must split evenly over the devices."""
  if mesh is None:
    return
  n = mesh.devices.size
  if batch_size % n:
    raise UserError(f"{flag}={batch_size} does not split over {n} devices; use a multiple of "
                    f"{n} (e.g. {n * max(1, round(batch_size / n))})")


def put_replicated(tree, mesh: Mesh | None):
  """Numpy or device arrays -> global arrays replicated on every device of `mesh`.

  Built from each process's own copy, so it also works when the mesh spans several hosts.
  """
  if mesh is None:
    return jax.tree_util.tree_map(jax.device_put, tree)
  sharding = replicated(mesh)

  def put(x):
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

  return jax.tree_util.tree_map(put, tree)


# Seconds before the coordination service gives up on a process that stopped sending
# heartbeats (JAX's default: 100) and before a process that cannot reach the coordinator, or
# whose peers do not all arrive, stops waiting (JAX's default: 300). Shorter, so that a run
# whose peer died ends in under two minutes; $HW2JAX_HEARTBEAT_TIMEOUT and
# $HW2JAX_INIT_TIMEOUT override them.
HEARTBEAT_TIMEOUT = 45
INIT_TIMEOUT = 90


def initialize_distributed() -> None:
  """`jax.distributed.initialize()` for multi-host runs (TPU pod slices, GPU clusters).

  Cluster environments (Cloud TPU, SLURM, Open MPI, Kubernetes) are detected by JAX itself;
  elsewhere set JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES and JAX_PROCESS_ID. On
  CPU, JAX's collectives between processes go over gloo (TCP).
  """
  kwargs = {"heartbeat_timeout_seconds": _seconds("HW2JAX_HEARTBEAT_TIMEOUT", HEARTBEAT_TIMEOUT),
            "initialization_timeout": _seconds("HW2JAX_INIT_TIMEOUT", INIT_TIMEOUT)}
  address = os.environ.get("JAX_COORDINATOR_ADDRESS", "")
  host, _, port = address.rpartition(":")
  if address and not (host and " " not in host and port.isdigit() and 0 < int(port) < 65536):
    raise UserError(f"JAX_COORDINATOR_ADDRESS={address!r} must be host:port (a port 1..65535), "
                    "e.g. 10.0.0.1:1234")
  for name, key in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
    if os.environ.get(name):
      try:
        kwargs[key] = int(os.environ[name])
      except ValueError:
        raise UserError(f"{name}={os.environ[name]!r} must be a whole number") from None
  n, i = kwargs.get("num_processes"), kwargs.get("process_id")
  if (n is not None and n < 1) or (i is not None and (i < 0 or (n is not None and i >= n))):
    raise UserError(f"JAX_PROCESS_ID={i} with JAX_NUM_PROCESSES={n}: the processes are "
                    "numbered 0..JAX_NUM_PROCESSES-1 (and there is at least one)")
  if address and kwargs.get("process_id", 0) != 0:
    _wait_for_coordinator(host, int(port), kwargs["initialization_timeout"])
  try:
    jax.distributed.initialize(**kwargs)
  except (RuntimeError, ValueError) as e:
    raise UserError(f"--distributed: jax.distributed.initialize() failed ({str(e).splitlines()[0]}"
                    "); on a plain machine set JAX_COORDINATOR_ADDRESS=host:port, "
                    "JAX_NUM_PROCESSES and JAX_PROCESS_ID") from None


def _wait_for_coordinator(host: str, port: int, timeout: int) -> None:
  """Waits until process 0's coordinator accepts connections. JAX's own client, given an
  address nobody answers, aborts the process (a C++ check, exit 134) once its timeout ends."""
  deadline = time.monotonic() + timeout
  while True:
    try:
      socket.create_connection((host.strip("[]"), port), timeout=5).close()
      return
    except OSError as e:
      if time.monotonic() >= deadline:
        raise UserError(f"--distributed: no coordinator answers at {host}:{port} after "
                        f"{timeout} s ({e.strerror or e}); start process 0 first, or check "
                        "JAX_COORDINATOR_ADDRESS") from None
      time.sleep(0.5)


def _seconds(name: str, default: int) -> int:
  text = os.environ.get(name, "")
  if not text:
    return default
  if not text.isdigit() or int(text) < 1:
    raise UserError(f"{name}={text!r} must be a whole number of seconds >= 1")
  return int(text)


# What a collective or the coordination service says when another process went away.
_PEER_LOST = ("Gloo", "Connection reset by peer", "Connection closed by peer",
              "stopped sending heartbeats", "Barrier timed out", "DEADLINE_EXCEEDED",
              "coordination service")


def lost_peer(e: BaseException) -> str | None:
  """The one line for a multi-process run whose collective failed because another process
  stopped (killed, crashed, its host gone), or None when `e` is something else."""
  # The exception first: asking JAX for the process count starts a backend, which may be
  # the very thing that failed (JAX_PLATFORMS naming a platform this machine lacks).
  text = str(e)
  if not (isinstance(e, jax.errors.JaxRuntimeError) and any(c in text for c in _PEER_LOST)):
    return None
  if jax.process_count() < 2:
    return None
  me, n = jax.process_index(), jax.process_count()
  who = f"process {1 - me}" if n == 2 else "another process"
  detail = text.rsplit("Error dispatching computation: ", 1)[-1].splitlines()[0][:160]
  return (f"process {me} of {n}: {who} of this run stopped ({detail}); nothing after the last "
          "complete checkpoint is lost: start every process again with the same command to "
          "resume")


def same_everywhere(description: dict, what: str) -> None:
  """Refuses (UserError, in every process) a multi-process run whose processes were started
  with other `description`s (settings, data fingerprints) or told another JAX_NUM_PROCESSES:
  they would train different things in lockstep. One all-gather of a 32-byte digest, before
  anything is written."""
  if jax.process_count() < 2:
    return
  from jax.experimental import multihost_utils
  told = {"description": description, "processes": os.environ.get("JAX_NUM_PROCESSES")}
  mine = hashlib.sha256(json.dumps(told, sort_keys=True, default=str).encode()).digest()
  every = np.asarray(multihost_utils.process_allgather(np.frombuffer(mine, np.uint8)))
  differ = [p for p in range(every.shape[0]) if bytes(every[p]) != bytes(every[0])]
  if differ:
    raise UserError(f"process {jax.process_index()} of {jax.process_count()}: process(es) "
                    f"{', '.join(map(str, differ))} started with other {what} than process 0; "
                    "start every process with the same command and the same data")


def from_process_0(text: str, size: int = 1024) -> str:
  """Process 0's `text` in every process (a broadcast of at most `size` UTF-8 bytes), so that
  a decision only process 0 can make (the workdir lock) is taken by all; `text` itself with a
  single process."""
  if jax.process_count() < 2:
    return text
  from jax.experimental import multihost_utils
  data = np.zeros(size, np.uint8)
  raw = text.encode()[:size]
  data[:len(raw)] = np.frombuffer(raw, np.uint8)
  got = np.asarray(multihost_utils.broadcast_one_to_all(data))
  return bytes(got).rstrip(b"\0").decode(errors="replace")
