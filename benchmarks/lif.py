"""Benchmark the multi-step LIF: fused custom_vjp vs autodiff-through-scan, with and without remat.

Reports, per implementation, the compiled forward+backward's temporary memory (XLA memory analysis,
MiB) and median wall time (ms) for ``x [T, B, C, H, W]``-sized inputs, and SpikingJelly's
``LIFNode`` when it is installed (torch, CPU or CUDA).

  python benchmarks/lif.py --T 4 --batch 32 --features 64 32 32 --repeats 20
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from htakl_jax import neurons, surrogate
from htakl_jax.neurons import _lif_autodiff, _make_config


def _loss_fns(spike):
    cfg = _make_config(
        tau=2.0,
        v_threshold=1.0,
        v_reset=0.0,
        decay_input=True,
        detach_reset=False,
        surrogate_fn=spike,
    )
    return {
        "fused": lambda x, w: jnp.sum(neurons.lif(x, surrogate_fn=spike) * w),
        "fused_remat": lambda x, w: jnp.sum(neurons.lif(x, surrogate_fn=spike, remat=True) * w),
        "autodiff": lambda x, w: jnp.sum(_lif_autodiff(cfg, x) * w),
        "autodiff_remat": lambda x, w: jnp.sum(_lif_autodiff(cfg, x, remat=True) * w),
    }


def _time(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile + warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _spikingjelly_ms(shape, repeats: int) -> float | None:
    try:
        import torch
        from spikingjelly.activation_based import neuron
        from spikingjelly.activation_based import surrogate as sj_surrogate
    except ImportError:
        return None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    node = neuron.LIFNode(
        tau=2.0, surrogate_function=sj_surrogate.Sigmoid(alpha=4.0), step_mode="m"
    )
    x = torch.randn(shape, device=device) + 1.0
    w = torch.randn(shape, device=device)

    def step():
        node.reset()
        xg = x.detach().requires_grad_(True)
        (node(xg) * w).sum().backward()
        if device == "cuda":
            torch.cuda.synchronize()

    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--features", type=int, nargs="+", default=[32, 16, 16])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    shape = (args.T, args.batch, *args.features)
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, shape) + 1.0
    w = jax.random.normal(kw, shape)
    print(
        f"device={jax.devices()[0].device_kind} shape={shape} (float32, {x.nbytes / 2**20:.1f} MiB)"
    )
    print(f"{'impl':<16}{'temp MiB':>10}{'fwd+bwd ms':>12}")
    for name, loss in _loss_fns(surrogate.sigmoid(4.0)).items():
        grad = jax.jit(jax.grad(loss))
        mem = grad.lower(x, w).compile().memory_analysis()
        temp = f"{mem.temp_size_in_bytes / 2**20:10.1f}" if mem is not None else f"{'n/a':>10}"
        print(f"{name:<16}{temp}{_time(grad, x, w, repeats=args.repeats):12.2f}")
    sj = _spikingjelly_ms(shape, args.repeats)
    if sj is not None:
        print(f"{'spikingjelly':<16}{'':>10}{sj:12.2f}")


if __name__ == "__main__":
    main()
