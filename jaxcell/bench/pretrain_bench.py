"""The pretraining benchmark (`python -m jaxcell.bench --modes pretrain`): one CellNet step, jaxcell vs PyTorch.

jaxcell runs its data-parallel pretraining step (jaxcell/pretraining/steps.py: the global batch split over every
device of the mesh, fused chunks) for BioNIC's channel-identity task on a ResNet-18; the reference is a PyTorch
training step of the same network, batch and optimiser on the same one-channel images (one process; on one CPU
host PyTorch's DistributedDataParallel with one process is this same step). Both augment with flips (PyTorch also
with quarter turns, which are cheaper than jaxcell's bilinear warp); picking each site's channel happens outside
PyTorch's timing and inside jaxcell's step. Reported: images/s, achieved GFLOP/s and their share of the matmul
peak measured in the same run (bf16 MFU against the nominal peak on a known accelerator).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import jax
import numpy as np

from jaxcell import config as config_lib
from jaxcell.bench import flops as flops_lib
from jaxcell.data import synthetic
from jaxcell.pretraining import backbone, steps
from jaxcell.training import augment as augment_lib
from jaxcell.training import mesh as mesh_lib
from jaxcell.training import trainer

CHANNELS = 5  # RxRx19a's channel count: the task has 5 classes.


def pretrain_config(image_size: int, batch_size: int, width: float, dtype: str):
  c = config_lib.pretrain_config()
  c.data.source, c.data.channels, c.data.image_size = "synthetic", CHANNELS, image_size
  c.model.name, c.model.width = "resnet18", width
  c.pretrain.batch_size = batch_size
  c.pretrain.compute_dtype = dtype
  c.augment.rotation_degrees = 0.0
  return c


def run_pretrain_case(
  image_size: int,
  batch_size: int,
  width: float,
  steps_per_chunk: int,
  repeats: int,
  dtype: str,
  peak_gflops: float,
  with_torch: bool = True,
) -> dict[str, Any]:
  c = pretrain_config(image_size, batch_size, width, dtype)
  data = synthetic.make_synthetic_cells(32, image_size, 0, channels=CHANNELS, collection="screen")
  mesh = steps.data_mesh()
  if batch_size % mesh.shape[mesh_lib.DATA]:
    raise ValueError(f"--batch_size {batch_size} must be a multiple of the {jax.device_count()} devices.")
  setup = steps.Setup(
    model=backbone.build_model(c, data.num_classes),
    tx=steps.make_optimizer(c.pretrain),
    objective="channel_identity",
    batch_size=batch_size,
    augment=augment_lib.AugmentConfig.from_config(c.augment),
    temperature=0.1,
    batch_sharding=steps.batch_sharding(mesh),
  )
  mean, std = backbone.input_normalisation("channel_identity", data.images)
  device_data = mesh_lib.put_replicated(trainer.DeviceData(data.images, data.labels, mean, std), mesh)
  idx = mesh_lib.put_replicated(np.arange(len(data.labels), dtype=np.int32), mesh)
  key = mesh_lib.put_replicated(np.asarray(jax.random.key_data(jax.random.key(0))), mesh)
  state = steps.init_state(setup, jax.random.key(1), (image_size, image_size, 1))
  state = mesh_lib.put_replicated(jax.device_get(state), mesh)
  chunk = steps.compile_chunk(setup, steps_per_chunk, mesh)
  start = time.perf_counter()
  state, metrics = chunk(state, key, device_data, idx)
  jax.block_until_ready(metrics)
  compile_seconds = time.perf_counter() - start
  timings = []
  for _ in range(repeats):
    start = time.perf_counter()
    state, metrics = chunk(state, key, device_data, idx)
    jax.block_until_ready(metrics)
    timings.append((time.perf_counter() - start) / steps_per_chunk)
  step_seconds = statistics.median(timings)
  flops = flops_lib.flops_per_image_resnet18(image_size, width, in_channels=1, num_classes=CHANNELS)
  images_per_s = batch_size / step_seconds
  result = {
    "case": f"pretrain channel_identity {image_size}px batch {batch_size}",
    "devices": jax.device_count(),
    "dtype": backbone.compute_dtype(c),
    "jaxcell": {
      "step_seconds": step_seconds,
      "images_per_s": images_per_s,
      "gflops": flops * images_per_s / 1e9,
      "fraction_of_matmul_peak": flops * images_per_s / 1e9 / peak_gflops,
      "compile_seconds": compile_seconds,
      "final_loss": float(np.asarray(metrics["loss"])[-1]),
    },
    "torch": None,
  }
  if with_torch:
    result["torch"] = _torch_step(data, image_size, batch_size, width, steps_per_chunk * repeats + 1, dtype)
    if result["torch"]:
      result["jaxcell"]["speedup_vs_torch"] = images_per_s / result["torch"]["images_per_s"]
  return result


def _torch_step(data, image_size: int, batch_size: int, width: float, total_steps: int, dtype: str) -> dict | None:
  try:
    from jaxcell.bench import torch_reference  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  sites = data.images  # [N, H, W, 5]: every channel of every site as a one-channel image, labelled by its channel.
  images = np.concatenate([sites[..., c : c + 1] for c in range(CHANNELS)])
  labels = np.repeat(np.arange(CHANNELS), len(sites))
  out = torch_reference.train_models_sequentially(
    images,
    labels,
    num_models=1,
    steps=total_steps,
    batch_size=batch_size,
    width=width,
    frozen_trunk=False,
    dtype="bfloat16" if dtype == "bfloat16" else "float32",
  )
  return {"images_per_s": out["images_per_s"], "threads": out["threads"], "torch_version": out["torch_version"]}
