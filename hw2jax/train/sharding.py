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

import os

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


def initialize_distributed() -> None:
  """`jax.distributed.initialize()` for multi-host runs (TPU pod slices, GPU clusters).

  Cluster environments (Cloud TPU, SLURM, Open MPI, Kubernetes) are detected by JAX itself;
  elsewhere set JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES and JAX_PROCESS_ID.
  """
  kwargs = {}
  if os.environ.get("JAX_NUM_PROCESSES"):
    kwargs["num_processes"] = int(os.environ["JAX_NUM_PROCESSES"])
  if os.environ.get("JAX_PROCESS_ID"):
    kwargs["process_id"] = int(os.environ["JAX_PROCESS_ID"])
  try:
    jax.distributed.initialize(**kwargs)
  except (RuntimeError, ValueError) as e:
    raise UserError(f"--distributed: jax.distributed.initialize() failed ({str(e).splitlines()[0]}"
                    "); on a plain machine set JAX_COORDINATOR_ADDRESS=host:port, "
                    "JAX_NUM_PROCESSES and JAX_PROCESS_ID") from None
