"""What the hardware can do: the best square-matmul rate JAX reaches here, and peak memory in use.

The matmul rate is the yardstick for achieved GFLOP/s: a convolution network cannot beat a large dense
matmul on the same backend and dtype, so "achieved / peak" says how much of the machine a trainer uses.
On CPU we measure float32; on GPU the benchmark passes bfloat16 (what tensor cores are fast at).
"""

from __future__ import annotations

import resource
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp

from jaxcell.training.autotune import host_cpu

# Square sizes worth trying per backend: big enough to amortise dispatch, small enough to stay in cache
# on CPU (where 512-2048 usually wins) and to saturate the GPU's tensor cores.
CANDIDATE_SIZES = {"cpu": (512, 1024, 2048), "gpu": (4096, 8192), "tpu": (4096, 8192)}


def _best_rate(size: int, dtype: Any, seconds: float) -> float:
  """Best GFLOP/s of single jitted size x size matmuls, timed one call at a time for about `seconds`."""
  key_a, key_b = jax.random.split(jax.random.key(0))
  a = jax.random.normal(key_a, (size, size), dtype)
  b = jax.random.normal(key_b, (size, size), dtype)
  matmul = jax.jit(jnp.matmul)
  matmul(a, b).block_until_ready()  # Compile and warm up outside the timing.
  fastest = float("inf")
  deadline = time.perf_counter() + seconds
  while True:
    start = time.perf_counter()
    matmul(a, b).block_until_ready()
    now = time.perf_counter()
    fastest = min(fastest, now - start)
    if now >= deadline:
      break
  return 2.0 * size**3 / fastest / 1e9


def measure_matmul_peak(dtype: Any = jnp.float32, size: int | None = None, seconds: float = 2.0) -> dict[str, Any]:
  """Best achieved GFLOP/s of a jitted square matmul on the default device.

  With `size=None` every candidate size for the backend is tried, sharing `seconds` between them, and the
  best one is reported. The rate is from the fastest single call (2 * size**3 FLOPs), i.e. what the
  hardware demonstrably reaches, not an average diluted by other processes on a shared machine.
  Returns {'gflops', 'size', 'dtype', 'backend', 'device_kind', 'host_cpu'} (see `host_cpu`).
  """
  if size is not None and size < 1:
    raise ValueError(f"size must be a positive int or None (try the backend's candidates), got {size}.")
  if not seconds > 0:
    raise ValueError(f"seconds must be > 0, got {seconds}.")
  backend = jax.default_backend()
  sizes = (size,) if size is not None else CANDIDATE_SIZES.get(backend, CANDIDATE_SIZES["gpu"])
  rates = {s: _best_rate(s, dtype, seconds / len(sizes)) for s in sizes}
  best_size = max(rates, key=rates.get)
  return {
    "gflops": rates[best_size],
    "size": best_size,
    "dtype": jnp.dtype(dtype).name,
    "backend": backend,
    "device_kind": jax.devices()[0].device_kind,
    "host_cpu": host_cpu(),
  }


def peak_memory_bytes() -> dict[str, Any]:
  """Peak memory in use, in bytes: {'bytes': int, 'source': 'device' | 'process_max_rss'}.

  'device' is the default device's `memory_stats()['peak_bytes_in_use']` (GPU/TPU allocators report it);
  where the backend reports nothing (CPU), it is the whole process's maximum resident set size from
  `resource.getrusage`, which includes Python, the libraries and anything else the process ever held.
  """
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return {"bytes": int(stats["peak_bytes_in_use"]), "source": "device"}
  max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  # Linux reports ru_maxrss in KiB, macOS in bytes.
  return {"bytes": int(max_rss if sys.platform == "darwin" else max_rss * 1024), "source": "process_max_rss"}
