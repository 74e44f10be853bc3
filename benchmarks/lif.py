"""Benchmark the multi-step LIF forward+backward against SpikingJelly and a plain array copy.

For ``x [T, B, C, H, W]`` (default 4 x 64 x 64 x 32 x 32, float32) it times, round-robin in one
process: our fused ``custom_vjp`` LIF (and with ``remat=True``), autodiff through the scan, a jitted
array copy (the memory-bandwidth ceiling), and SpikingJelly's ``LIFNode(step_mode='m')`` on torch,
on the GPU when JAX runs on one (skipped with a message when absent). It reports medians, ratios
to SpikingJelly, the XLA temp memory of each compiled gradient, and the effective bandwidth of the
fused LIF: a fused fwd+bwd has to move at least 5 arrays (read x, write h; read h and the
cotangent, write dx), a copy moves 2.

  python benchmarks/lif.py --out lif.json
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from htakl_jax import neurons, surrogate
from htakl_jax.neurons import lif_autodiff, neuron_config

from common import (
    print_table,
    time_interleaved,
    torch_device,
    torch_sync,
    try_import_torch,
    write_json,
)

# Arrays a fused LIF fwd+bwd must read or write at least once (see module docstring).
_LIF_MIN_ARRAYS = 5


def _jax_grads(spike) -> dict:
    cfg = neuron_config(
        tau=2.0,
        v_threshold=1.0,
        v_reset=0.0,
        decay_input=True,
        detach_reset=False,
        surrogate_fn=spike,
    )
    losses = {
        "ours fused": lambda x, w: jnp.sum(neurons.lif(x, surrogate_fn=spike) * w),
        "ours fused remat": lambda x, w: jnp.sum(
            neurons.lif(x, surrogate_fn=spike, remat=True) * w
        ),
        "ours autodiff scan": lambda x, w: jnp.sum(lif_autodiff(cfg, x) * w),
    }
    return {name: jax.jit(jax.grad(loss)) for name, loss in losses.items()}


def _spikingjelly_step(shape: tuple[int, ...], seed: int = 0):
    peer = try_import_torch()
    if peer is None:
        return None
    torch, sj = peer
    node = sj.neuron.LIFNode(
        tau=2.0, surrogate_function=sj.surrogate.Sigmoid(alpha=4.0), step_mode="m"
    )
    device = torch_device(torch)
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen) + 1.0).to(device)
    w = torch.randn(shape, generator=gen).to(device)

    def step():
        node.reset()
        xg = x.detach().requires_grad_(True)
        (node(xg) * w).sum().backward()
        torch_sync(torch, device)
        return xg.grad

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--features", type=int, nargs="+", default=[64, 32, 32], help="C H W")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default=None, help="write results as JSON here")
    args = parser.parse_args()

    shape = (args.T, args.batch, *args.features)
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, shape) + 1.0
    w = jax.random.normal(kw, shape)
    mib = x.nbytes / 2**20
    print(f"device={jax.devices()[0].device_kind} shape={shape} float32, {mib:.1f} MiB per array")

    grads = _jax_grads(surrogate.sigmoid(4.0))
    temp_mib = {}
    for name, grad in grads.items():
        mem = grad.lower(x, w).compile().memory_analysis()
        temp_mib[name] = None if mem is None else mem.temp_size_in_bytes / 2**20
    copy = jax.jit(lambda a: a + 0.0)  # a real copy (identity would be elided)
    fns = {name: (lambda g=g: jax.block_until_ready(g(x, w))) for name, g in grads.items()}
    fns["array copy"] = lambda: jax.block_until_ready(copy(x))
    sj = _spikingjelly_step(shape)
    if sj is not None:
        fns["spikingjelly LIFNode"] = sj
        import torch

        where = torch_device(torch)
        print(f"torch {torch.__version__} on {where}, {torch.get_num_threads()} threads")
    times = time_interleaved(fns, repeats=args.repeats)

    copy_gbs = 2 * x.nbytes / times["array copy"] / 1e9
    rows = []
    for name, t in times.items():
        row = {"impl": name, "ms": 1e3 * t, "temp MiB": temp_mib.get(name)}
        if sj is not None:
            row["speedup vs SJ"] = times["spikingjelly LIFNode"] / t
        if name.startswith("ours"):
            row["eff. GB/s"] = _LIF_MIN_ARRAYS * x.nbytes / t / 1e9
            row["% of copy BW"] = 100 * row["eff. GB/s"] / copy_gbs
        if name == "array copy":
            row["eff. GB/s"] = copy_gbs
        rows.append(row)
    cols = ["impl", "ms", "speedup vs SJ", "temp MiB", "eff. GB/s", "% of copy BW"]
    print_table(rows, cols)
    if sj is not None:
        ratio = times["spikingjelly LIFNode"] / times["ours fused"]
        verdict = "met" if ratio >= 2.5 else "NOT met"
        print(f"goal >= 2.5x faster than SpikingJelly: {ratio:.2f}x -> {verdict}")
    write_json(
        args.out, {"benchmark": "lif", "shape": list(shape), "rows": rows, "args": vars(args)}
    )


if __name__ == "__main__":
    main()
