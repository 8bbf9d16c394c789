r"""Hopfield retrieval throughput: JAX (this project) against PyTorch, on one device, one run.

  python -m benchmarks.hopfield_speed           # N=65,536, D=64, 1,024 queries, 10 steps
  python -m benchmarks.hopfield_speed --n=8192 --queries=256 --steps=5     # a CPU-sized run
  python -m benchmarks.hopfield_speed --dtype=bfloat16 --peak_gbps=3350

Every variant runs `steps` CCCP updates Q <- softmax(beta Q X^T) X of all queries at once and is
timed after a warm-up call (compilation), median of --repeats. Throughput is queries x steps per
second. Memory traffic per step, two models:
  compulsory: X read twice (X q and X^T p) + the queries read and written, 2 N D + 2 B D elements:
              what a fused (flash-attention style) kernel moves;
  unfused:    compulsory + the (B, N) association written and read twice (logits, then
              probabilities), 4 B N elements more: what separate matmul / softmax kernels move.
XLA's own estimate of one step (cost analysis, 'bytes accessed') is printed beside them. The
achieved fraction of the peak bandwidth uses a table of known devices, --peak_gbps, or (CPU) a
measured copy bandwidth. PyTorch runs the same update on the same device (CUDA only when JAX is
on a GPU too), eagerly and with scaled_dot_product_attention. --out appends a JSON line.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from benchmarks import ratios
from hw2jax import cli
from hw2jax.errors import UserError
from hw2jax.models import hopfield as hf
from hw2jax.train import trainer as trainer_lib

flags.DEFINE_integer("n", 65_536, "Stored patterns N.")
flags.DEFINE_integer("d", 64, "Pattern dimension D.")
flags.DEFINE_integer("queries", 1024, "Queries B retrieved at once.")
flags.DEFINE_integer("steps", 10, "CCCP updates per call.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Dtype of X and the queries.")
flags.DEFINE_integer("repeats", 5, "Timed calls per variant (after one warm-up call).")
flags.DEFINE_float("peak_gbps", None, "Peak memory bandwidth in GB/s (default: known devices, "
                   "else the measured copy bandwidth).")
flags.DEFINE_bool("torch", True, "Also time PyTorch.")
flags.DEFINE_string("out", None, "Append the results as one JSON line to this file.")
FLAGS = flags.FLAGS

# HBM bandwidth of accelerators (GB/s, vendor data sheets), matched against device_kind.
PEAK_GBPS = (("H200", 4800.0), ("H100 PCIe", 2000.0), ("H100 NVL", 3900.0), ("H100", 3350.0),
             ("A100-SXM4-80GB", 2039.0), ("A100 80GB PCIe", 1935.0), ("A100", 1555.0),
             ("L4", 300.0), ("T4", 320.0), ("V100", 900.0))


def peak_bandwidth(device_kind: str) -> float | None:
  for name, gbps in PEAK_GBPS:
    if name.lower() in device_kind.lower():
      return gbps
  return None


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
  """(median seconds of `repeats` calls, seconds of the first call incl. compilation).

  `fn` must return only once the device has finished (block_until_ready / synchronize).
  """
  start = time.perf_counter()
  fn()
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times), first


def copy_bandwidth_gbps(repeats: int) -> float:
  """Measured read + write bandwidth of a 256 MiB elementwise op on the default device.

  The input is donated, so the output reuses its buffer: a fresh 256 MiB allocation per call
  would time page faults on CPU, not memory traffic.
  """
  f = jax.jit(lambda a: a * 1.0001, donate_argnums=0)
  state = {"x": jnp.ones((64 * 1024 * 1024,), jnp.float32)}

  def step():
    state["x"] = f(state["x"])
    state["x"].block_until_ready()

  seconds, _ = timed(step, repeats)
  return 2 * state["x"].size * 4 / seconds / 1e9


def jax_variants(X, Q, beta: float, steps: int) -> dict[str, Callable]:
  """Jitted retrievals: the library's scan of `update`, and a scan of dot_product_attention."""
  retrieve = jax.jit(lambda X, Q: hf.retrieve(X, Q, beta, steps))

  def dpa(X, Q):
    def step(q, _):
      out = jax.nn.dot_product_attention(q[None, :, None], X[None, :, None], X[None, :, None],
                                         scale=beta)
      return out[0, :, 0], None
    return jax.lax.scan(step, Q, length=steps)[0]

  dpa = jax.jit(dpa)
  return {"jax scan(update)": lambda: retrieve(X, Q).block_until_ready(),
          "jax scan(dot_product_attention)": lambda: dpa(X, Q).block_until_ready()}


def xla_bytes_per_step(X, Q, beta: float) -> float | None:
  """XLA's estimate of the bytes one compiled update reads and writes, if it gives one."""
  try:
    cost = jax.jit(lambda X, Q: hf.update(X, Q, beta)).lower(X, Q).compile().cost_analysis()
  except Exception:                        # cost analysis is best effort on some backends
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  value = (cost or {}).get("bytes accessed")
  return float(value) if value else None


def torch_variants(X: np.ndarray, Q: np.ndarray, beta: float, steps: int, dtype: str,
                   device: str) -> dict[str, Callable]:
  import torch
  tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
  tx = torch.from_numpy(X.copy()).to(device=device, dtype=tdtype)
  tq = torch.from_numpy(Q.copy()).to(device=device, dtype=tdtype)
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

  @torch.no_grad()
  def eager():
    q = tq
    for _ in range(steps):
      q = torch.softmax(beta * (q @ tx.T), dim=-1) @ tx
    sync()
    return q

  @torch.no_grad()
  def sdpa():
    q, kv = tq[None, None], tx[None, None]
    for _ in range(steps):
      q = torch.nn.functional.scaled_dot_product_attention(q, kv, kv, scale=beta)
    sync()
    return q[0, 0]

  return {"torch eager": eager, "torch scaled_dot_product_attention": sdpa}


def main(argv):
  del argv
  n, d, b, steps = FLAGS.n, FLAGS.d, FLAGS.queries, FLAGS.steps
  if min(n, d, b, steps, FLAGS.repeats) < 1:
    raise UserError("--n, --d, --queries, --steps and --repeats must be at least 1")
  if FLAGS.peak_gbps is not None and not FLAGS.peak_gbps > 0:
    raise UserError(f"--peak_gbps={FLAGS.peak_gbps} must be a positive number")
  device = jax.devices()[0]
  kind = getattr(device, "device_kind", device.platform)
  dtype = jnp.dtype(FLAGS.dtype)
  size = dtype.itemsize
  kx, kq = jax.random.split(trainer_lib.prng_key(0))
  X = jax.random.normal(kx, (n, d), jnp.float32)
  Q = X[jax.random.randint(kq, (b,), 0, n)] + 0.5 * jax.random.normal(kq, (b, d))
  X, Q = X.astype(dtype), Q.astype(dtype)
  beta = 1.0 / math.sqrt(d)

  peak, peak_source = FLAGS.peak_gbps, "--peak_gbps"
  if peak is None:
    peak, peak_source = peak_bandwidth(kind), "data sheet"
  if peak is None:
    peak, peak_source = copy_bandwidth_gbps(FLAGS.repeats), "measured copy bandwidth"
  compulsory = (2 * n * d + 2 * b * d) * size
  unfused = compulsory + 4 * b * n * size
  xla_bytes = xla_bytes_per_step(X, Q, beta)
  print(f"JAX {jax.__version__} on {device.platform}:{kind}; N={n:,} D={d} B={b:,} steps={steps} "
        f"{FLAGS.dtype}; peak {peak:.0f} GB/s ({peak_source})", flush=True)
  print(f"bytes per step: compulsory {compulsory / 1e6:.3g} MB (X twice + queries), unfused "
        f"{unfused / 1e6:.3g} MB (+ the (B, N) association 4x), XLA estimate "
        + (f"{xla_bytes / 1e6:.3g} MB" if xla_bytes else "n/a"), flush=True)

  results = {"device": f"{device.platform}:{kind}", "jax_version": jax.__version__, "n": n,
             "d": d, "queries": b, "steps": steps, "dtype": FLAGS.dtype, "peak_gbps": peak,
             "peak_source": peak_source, "bytes_compulsory": compulsory,
             "bytes_unfused": unfused, "bytes_xla": xla_bytes, "variants": {}}
  variants = jax_variants(X, Q, beta, steps)
  if FLAGS.torch:
    torch_device = _torch_device(device.platform)
    if torch_device is None:
      print("PyTorch baseline skipped: JAX runs on a GPU but this torch has no CUDA", flush=True)
    else:
      variants.update(torch_variants(np.asarray(X.astype(jnp.float32)),
                                     np.asarray(Q.astype(jnp.float32)), beta, steps,
                                     FLAGS.dtype, torch_device))
  flops = 4 * b * n * d * steps
  reference = None
  for name, fn in variants.items():
    try:
      seconds, first = timed(fn, FLAGS.repeats)
    except Exception as e:                  # e.g. a fused kernel this device does not support
      print(f"{name:36s} failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}", flush=True)
      continue
    out = _numpy(fn())
    reference = out if reference is None else reference
    per_step = seconds / steps
    r = {"seconds": seconds, "first_call_seconds": first,
         "max_abs_difference_to_first": float(np.max(np.abs(out - reference))),
         "queries_steps_per_second": b * steps / seconds, "tflops": flops / seconds / 1e12,
         "gbps_compulsory": compulsory / per_step / 1e9, "gbps_unfused": unfused / per_step / 1e9}
    r["fraction_of_peak_compulsory"] = r["gbps_compulsory"] / peak
    r["fraction_of_peak_unfused"] = r["gbps_unfused"] / peak
    results["variants"][name] = r
    print(f"{name:36s} {seconds * 1e3:9.2f} ms  {r['queries_steps_per_second']:12,.0f} "
          f"queries*steps/s  {r['tflops']:6.2f} TFLOP/s  bandwidth {r['gbps_compulsory']:7.1f} "
          f"GB/s compulsory ({100 * r['fraction_of_peak_compulsory']:.1f}% of peak), "
          f"{r['gbps_unfused']:7.1f} unfused ({100 * r['fraction_of_peak_unfused']:.1f}%); "
          f"max |diff| to the first {r['max_abs_difference_to_first']:.1e}", flush=True)
  base = results["variants"].get("jax scan(update)")
  for name, r in results["variants"].items():
    if name.startswith("torch") and base:
      r["jax_speedup"] = r["seconds"] / base["seconds"]
      print("jax scan(update): " + ratios.jax_versus(base["seconds"], r["seconds"], other=name),
            flush=True)
  if FLAGS.out:
    with open(FLAGS.out, "a") as f:
      f.write(json.dumps(results) + "\n")


def _numpy(x) -> np.ndarray:
  if hasattr(x, "detach"):
    return x.detach().float().cpu().numpy()
  return np.asarray(jnp.asarray(x, jnp.float32))


def _torch_device(platform: str) -> str | None:
  try:
    import torch
  except ImportError:
    raise UserError("PyTorch is not installed: pip install -e .[bench], or pass --notorch"
                    ) from None
  if platform == "gpu":
    return "cuda" if torch.cuda.is_available() else None
  return "cpu"


if __name__ == "__main__":
  cli.run(main)
