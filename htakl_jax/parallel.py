"""Data parallelism: one 'data' mesh axis over every device of every host.

A training step is written per device (it sees its shard of the batch) and wrapped by
`data_parallel` in `jax.shard_map`: batch arguments are sharded P('data'), everything else
(parameters, optimizer state, teacher variables) is replicated P(). Inside the step, gradients are
averaged with `lax.pmean(..., DATA_AXIS)` and BatchNorm statistics are global because the models
are built with `bn_axis_name=DATA_AXIS`; so a step over N devices equals a 1-device step on the same
global batch. One device is the same code on a 1-device mesh.

Multi-host: `maybe_initialize_distributed` runs `jax.distributed.initialize()` when configured, each
process loads only its part of the global batch, and `global_batch` assembles the global array with
`jax.make_array_from_process_local_data`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from htakl_jax.data.batching import process_slice

DATA_AXIS = "data"
# When to call jax.distributed.initialize() (the `distributed.initialize` config key).
INIT_MODES = ("auto", "yes", "no")

# Environment variables that mean "this process is one of several": jax.distributed.initialize()
# can read its arguments from them (explicitly, or through its cluster auto-detection).
_DISTRIBUTED_ENV = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS")


def maybe_initialize_distributed(
    mode: str = "auto",
    *,
    coordinator_address: str = "",
    num_processes: int = -1,
    process_id: int = -1,
) -> bool:
    """Calls `jax.distributed.initialize` if asked to; returns whether it did.

    mode: 'yes' always initializes; 'no' never; 'auto' initializes when a coordinator address is
    given or found in the environment (JAX_COORDINATOR_ADDRESS), or when SLURM runs several tasks.
    Must run before any other JAX call that touches devices.
    """
    if mode not in INIT_MODES:
        raise ValueError(f"distributed.initialize must be one of {INIT_MODES}, got {mode!r}")
    if mode == "no":
        return False
    env_present = any(os.environ.get(k) for k in _DISTRIBUTED_ENV)
    slurm_multi = int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1
    if mode == "auto" and not (coordinator_address or env_present or slurm_multi):
        return False
    kwargs: dict[str, Any] = {}
    address = coordinator_address or next(
        (os.environ[k] for k in _DISTRIBUTED_ENV if os.environ.get(k)), ""
    )
    if address:
        kwargs["coordinator_address"] = address
    if num_processes > 0:
        kwargs["num_processes"] = num_processes
    elif os.environ.get("JAX_NUM_PROCESSES"):
        kwargs["num_processes"] = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id >= 0:
        kwargs["process_id"] = process_id
    elif os.environ.get("JAX_PROCESS_ID"):
        kwargs["process_id"] = int(os.environ["JAX_PROCESS_ID"])
    jax.distributed.initialize(**kwargs)
    logging.info(
        "jax.distributed initialized: process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis 'data' over `devices` (default: all devices of all processes)."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("make_mesh: `devices` is empty")
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that keeps a full copy on every device of `mesh`."""
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Sharding that splits the leading (batch) axis over the 'data' axis of `mesh`."""
    return NamedSharding(mesh, P(DATA_AXIS))


def local_rows(global_rows: np.ndarray) -> np.ndarray:
    """This process's contiguous part of the rows [B] of a global batch (`data.process_slice`)."""
    return process_slice(global_rows, jax.process_index(), jax.process_count())


def global_batch(local_tree: Any, mesh: Mesh) -> Any:
    """Assembles process-local host arrays [B_local, ...] into global arrays [B, ...] on `mesh`.

    Each process passes its own contiguous part of the global batch (in process order).
    """
    sharding = batch_sharded(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_tree
    )


# XLA:CPU's memory-optimised instruction scheduler. Its default (concurrency-optimised) scheduler
# starts every zero-filled lax.scan output buffer (one per LIF and per LIF backward, when T is
# above neurons.MAX_UNROLLED_T) at the top of the program, so they are all live at once and
# rematerialisation saves little memory.
XLA_CPU_MEMORY_SCHEDULER = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}
# XLA:CPU hands convolutions to YNNPACK by default; for this project's 3x3 convolutions its
# forward+backward ran 1.5-2.4x slower than XLA's own (Eigen) kernels, and ResNet-19 student steps
# 1.6x slower (benchmarks/step.py). This keeps YNNPACK for elementwise and reduction fusions only.
XLA_CPU_EIGEN_CONVOLUTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_ELTWISE,LIBRARY_FUSION_TYPE_REDUCE"
}


def cpu_compiler_options(*, memory_schedule: bool = False) -> dict[str, str] | None:
    """XLA options for the training and evaluation steps: None off CPU; on CPU the Eigen
    convolutions (JAX >= 0.10, whose XLA has the option) and, with `memory_schedule` (remat), the
    memory-optimised schedule."""
    if jax.default_backend() != "cpu":
        return None
    options = dict(XLA_CPU_EIGEN_CONVOLUTIONS) if jax.__version_info__ >= (0, 10) else {}
    if memory_schedule:
        options |= XLA_CPU_MEMORY_SCHEDULER
    return options


def data_parallel(
    step_fn: Callable[..., Any],
    mesh: Mesh,
    *,
    num_replicated: int,
    num_sharded: int,
    donate_first: bool = True,
    compiler_options: dict[str, Any] | None = None,
) -> Callable[..., Any]:
    """Jits `step_fn(*replicated_args, *sharded_args)` as an SPMD step over `mesh`.

    The first `num_replicated` arguments are replicated P(), the next `num_sharded` are split on
    their leading axis P('data'); all outputs are replicated (the step must reduce them with
    pmean/psum over 'data'). With donate_first the first argument's buffers (the train state) are
    donated. `compiler_options` go to XLA (e.g. `XLA_CPU_MEMORY_SCHEDULER`).
    """
    in_specs = (P(),) * num_replicated + (P(DATA_AXIS),) * num_sharded
    # check_vma=False gives pmap's semantics: the gradient of replicated parameters is the local
    # one and the step averages it with an explicit pmean. With check_vma=True JAX would insert
    # the cross-device sum into the transpose itself and the pmean would no longer average.
    mapped = jax.shard_map(step_fn, mesh=mesh, in_specs=in_specs, out_specs=P(), check_vma=False)
    return jax.jit(
        mapped, donate_argnums=(0,) if donate_first else (), compiler_options=compiler_options
    )
