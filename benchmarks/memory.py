"""Peak memory of a student training step vs T, with and without neuron remat, and vs SpikingJelly.

Same step and network as ``benchmarks/step.py`` (resnet20 by default, 32x32, 10 classes).

- Ours: XLA's memory analysis of the compiled step (``temp``: the peak of intermediate buffers,
  i.e. activations saved for the backward and workspace; ``args``: parameters, BN statistics and
  optimizer state, donated so the outputs reuse them). ``remat=True`` on every LIF keeps only the
  LIF inputs for its backward instead of the membranes ``h`` and recomputes ``h``. The two steps
  are also timed round-robin (``remat / plain`` time ratio).
- SpikingJelly: the same network (``step.py``'s builder): the bytes of the distinct tensors autograd
  saves for the backward of one step (``torch.autograd.graph.saved_tensors_hooks``, parameters
  excluded), i.e. its activation memory. (Peak RSS was tried first: at these small sizes the step
  never rises above the RSS peak of importing torch.) XLA's temp also counts workspace and the
  gradients, so it is an upper bound on the comparable figure.

Goal (issue 6): at T = 6, remat cuts our peak (temp) by >= 40% at < 25% extra step time.

  python benchmarks/memory.py --out memory.json
"""

from __future__ import annotations

import argparse
import os
import sys

import jax

sys.path.insert(0, os.path.dirname(__file__))
from _common import print_table, time_interleaved, try_import_torch, write_json  # noqa: E402
from step import _jax_runner, _jax_step, _sj_runner  # noqa: E402

MIB = 2**20


def _ours(name: str, t: int, width: float, batch: int, remat: bool):
    step, state = _jax_step(name, spiking=True, timesteps=t, width=width, batch=batch, remat=remat)
    mem = step.lower(state).compile().memory_analysis()
    return mem, _jax_runner(step, state)


def _sj_saved_mib(name: str, t: int, width: float, batch: int) -> float | None:
    """MiB of distinct tensors autograd saves for the backward of one SpikingJelly step (the
    activation memory; parameters excluded), counted with ``saved_tensors_hooks``."""
    peer = try_import_torch()
    if peer is None:
        return None
    torch, _ = peer
    run = _sj_runner(peer, name, timesteps=t, width=width, batch=batch)
    seen: dict[int, int] = {}

    def pack(x):
        if not isinstance(x, torch.nn.Parameter):
            storage = x.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        run()
    return sum(seen.values()) / MIB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet20"])
    parser.add_argument("--timesteps", type=int, nargs="+", default=[1, 2, 4, 6])
    parser.add_argument("--width-mult", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-peer", action="store_true", help="skip SpikingJelly")
    parser.add_argument("--out", default=None, help="write results as JSON here")
    args = parser.parse_args()
    peer = not args.no_peer and try_import_torch() is not None
    print(f"device={jax.devices()[0].device_kind} batch={args.batch} width={args.width_mult}")
    rows = []
    for name in args.models:
        for t in args.timesteps:
            plain_mem, plain_run = _ours(name, t, args.width_mult, args.batch, remat=False)
            remat_mem, remat_run = _ours(name, t, args.width_mult, args.batch, remat=True)
            times = time_interleaved({"plain": plain_run, "remat": remat_run}, repeats=args.repeats)
            row = {
                "model": name,
                "T": t,
                "temp MiB": plain_mem.temp_size_in_bytes / MIB,
                "temp MiB remat": remat_mem.temp_size_in_bytes / MIB,
                "args MiB": plain_mem.argument_size_in_bytes / MIB,
                "remat saves %": 100
                * (1 - remat_mem.temp_size_in_bytes / plain_mem.temp_size_in_bytes),
                "step ms": 1e3 * times["plain"],
                "remat / plain time": times["remat"] / times["plain"],
                "sj saved MiB": _sj_saved_mib(name, t, args.width_mult, args.batch)
                if peer
                else None,
            }
            rows.append(row)
            print(row, flush=True)
    print_table(
        rows,
        [
            "model",
            "T",
            "temp MiB",
            "temp MiB remat",
            "remat saves %",
            "args MiB",
            "step ms",
            "remat / plain time",
            "sj saved MiB",
        ],
    )
    write_json(args.out, {"benchmark": "memory", "rows": rows, "args": vars(args)})


if __name__ == "__main__":
    main()
