"""Shared helpers of the benchmarks: interleaved timing, machine record, table and JSON output.

Timings on a shared, noisy machine are only comparable side by side, so :func:`time_interleaved`
runs the candidates round-robin (A, B, C, A, B, C, ...) and reports each one's median; the scripts
report ratios of these medians taken in the same process.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from types import SimpleNamespace
from typing import Any


def try_import_torch() -> tuple[Any, Any] | None:
    """``(torch, SpikingJelly functional/layer/neuron/surrogate namespace)`` or None."""
    try:
        import torch
        from spikingjelly.activation_based import functional, layer, neuron, surrogate

        activation_based = SimpleNamespace(
            functional=functional, layer=layer, neuron=neuron, surrogate=surrogate
        )
    except ImportError as err:
        print(f"[skip] SpikingJelly/torch peer not available ({err}); skipping the peer columns")
        return None
    return torch, activation_based


def torch_device(torch: Any) -> str:
    """Where the torch peer runs: ``"cuda"`` when JAX runs on a GPU and torch sees one (so both
    sides use the same kind of device), else ``"cpu"``."""
    import jax

    return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def torch_sync(torch: Any, device: str) -> None:
    """Block until torch's queued work on ``device`` is done (CUDA runs asynchronously)."""
    if device == "cuda":
        torch.cuda.synchronize()


def time_interleaved(fns: Mapping[str, Callable[[], Any]], *, repeats: int) -> dict[str, float]:
    """Median wall time (seconds) of each zero-argument ``fn``; each is called once first (compile,
    warm-up) and then ``repeats`` times round-robin with the others. Each fn must block until its
    result is ready."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for fn in fns.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in samples.items()}


def machine_info() -> dict[str, Any]:
    """CPU model, core count, Python / JAX / torch versions, load average at the start."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
    except OSError:
        pass
    import jax

    info["jax"] = jax.__version__
    info["jax_device"] = str(jax.devices()[0].device_kind)
    if "torch" in sys.modules:
        info["torch"] = sys.modules["torch"].__version__
        info["torch_threads"] = sys.modules["torch"].get_num_threads()
    return info


def print_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """A Markdown table of ``rows`` restricted to ``columns`` (floats to 3 significant digits)."""

    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(fmt(row.get(c)) for c in columns) + " |")


def write_json(path: str | None, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` plus the machine record to ``path`` (no-op when None)."""
    if path is None:
        return
    with open(path, "w") as f:
        json.dump({"machine": machine_info(), **payload}, f, indent=2, default=str)
    print(f"wrote {path}")
