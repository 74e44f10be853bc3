"""Peak memory of a student training step vs T for each remat mode, and vs SpikingJelly.

Same step and network as ``benchmarks/step.py`` (resnet20 by default, 32x32, 10 classes), built
with ``get_model(..., remat=mode)``:

- ``none``: plain backward;
- ``neuron``: every LIF keeps only its input and recomputes its membrane ``h`` in its backward;
- ``block``: every residual block / conv-BN-LIF unit keeps its input and conv outputs and
  recomputes BN, membranes and spikes in the backward (``htakl_jax.models.remat``);
- ``block, save nothing``: the same with ``jax.checkpoint_policies.nothing_saveable`` (convs
  recomputed too), to show what the conv-saving policy trades.

Peak memory (ours): XLA's memory analysis of the compiled step, ``temp`` = the peak of intermediate
buffers (activations saved for the backward, workspace, gradients); ``args`` = parameters, BN
statistics and optimizer state (donated, so the outputs reuse them). On CPU the step is compiled
with XLA:CPU's memory-optimised scheduler (``xla_cpu_scheduler_type``): its default,
concurrency-optimised scheduler starts every zero-filled ``lax.scan`` output buffer (one per LIF
call and per LIF backward) at the top of the program, so they are all alive at once whatever the
model saves; ``temp default sched`` reports that schedule at the timed T for reference. Step time
(``none`` and ``block`` with the memory-optimised schedule, and ``none`` with the default one) is
timed round-robin at ``--time-at``. ``htakl_jax.steps`` compiles remat-free steps with the default
schedule and remat steps with the memory-optimised one, so "block saves % vs default" and
"block / none default time" are what turning ``model.remat = "block"`` on changes in training.

SpikingJelly: the same network (``step.py``'s builder): the bytes of the distinct tensors autograd
saves for the backward of one step (``torch.autograd.graph.saved_tensors_hooks``, parameters
excluded), i.e. its activation memory. (Peak RSS was tried first: at these small sizes the step
never rises above the RSS peak of importing torch.) XLA's temp also counts workspace and the
gradients, so it is an upper bound on the comparable figure.

Goal (issue 6): at T = 6, remat cuts our peak (temp) by >= 40% at < 25% extra step time.

  python benchmarks/memory.py --batch 16 --out memory.json
"""

from __future__ import annotations

import argparse
import contextlib

import jax

from htakl_jax.models import base
from htakl_jax.parallel import cpu_compiler_options

from common import print_table, time_interleaved, try_import_torch, write_json
from step import jax_runner, jax_step, sj_runner

MIB = 2**20
# (column label, get_model remat mode, block policy override)
VARIANTS = (
    ("none", "none", None),
    ("neuron", "neuron", None),
    ("block", "block", None),
    ("block, save nothing", "block", jax.checkpoint_policies.nothing_saveable),
)


@contextlib.contextmanager
def _block_policy(policy):
    """Temporarily replace the policy of remat blocks (read when the model is traced)."""
    saved = base.BLOCK_REMAT_POLICY
    if policy is not None:
        base.BLOCK_REMAT_POLICY = policy
    try:
        yield
    finally:
        base.BLOCK_REMAT_POLICY = saved


def _ours(name: str, t: int, width: float, batch: int, remat: str, policy, options: dict):
    """(memory analysis, zero-argument runner) of one compiled training step."""
    step, state = jax_step(name, spiking=True, timesteps=t, width=width, batch=batch, remat=remat)
    with _block_policy(policy):
        lowered = step.lower(state)
    compiled = lowered.compile(options)
    return compiled.memory_analysis(), jax_runner(compiled, state)


def _sj_saved_mib(name: str, t: int, width: float, batch: int) -> float | None:
    """MiB of distinct tensors autograd saves for the backward of one SpikingJelly step (the
    activation memory; parameters excluded), counted with ``saved_tensors_hooks``."""
    peer = try_import_torch()
    if peer is None:
        return None
    torch, _ = peer
    run = sj_runner(peer, name, timesteps=t, width=width, batch=batch)
    seen: dict[int, int] = {}

    def pack(x):
        if not isinstance(x, torch.nn.Parameter):
            storage = x.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        run()
    return sum(seen.values()) / MIB


def _row(name: str, t: int, args, options: dict, peer: bool) -> dict:
    mems, runs = {}, {}
    for label, remat, policy in VARIANTS:
        mems[label], runs[label] = _ours(
            name, t, args.width_mult, args.batch, remat, policy, options
        )
    temp = {label: m.temp_size_in_bytes for label, m in mems.items()}
    row = {
        "model": name,
        "T": t,
        "args MiB": mems["none"].argument_size_in_bytes / MIB,
        **{f"temp MiB {label}": temp[label] / MIB for label in temp},
        "block saves %": 100 * (1 - temp["block"] / temp["none"]),
        "block, save nothing saves %": 100 * (1 - temp["block, save nothing"] / temp["none"]),
        "neuron saves %": 100 * (1 - temp["neuron"] / temp["none"]),
    }
    if t in args.time_at:
        timed = {"none": runs["none"], "block": runs["block"]}
        if options:
            default = cpu_compiler_options()
            # The default XLA:CPU schedule, for reference; htakl_jax.steps compiles remat-free steps
            # with it, so "none default sched" -> "block" is what turning remat on changes.
            for label in ("none", "block"):
                mem, run = _ours(name, t, args.width_mult, args.batch, label, None, default)
                row[f"temp MiB {label} default sched"] = mem.temp_size_in_bytes / MIB
                if label == "none":
                    timed["none default sched"] = run
        times = time_interleaved(timed, repeats=args.repeats)
        row["none ms"] = 1e3 * times["none"]
        row["block ms"] = 1e3 * times["block"]
        row["block / none time"] = times["block"] / times["none"]
        if options:
            row["none default sched ms"] = 1e3 * times["none default sched"]
            base = row["temp MiB none default sched"]
            row["block saves % vs default"] = 100 * (1 - row["temp MiB block"] / base)
            row["block / none default time"] = times["block"] / times["none default sched"]
    row["sj saved MiB"] = _sj_saved_mib(name, t, args.width_mult, args.batch) if peer else None
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet20"])
    parser.add_argument("--timesteps", type=int, nargs="+", default=[1, 2, 4, 6])
    parser.add_argument("--time-at", type=int, nargs="*", default=[6], help="T values to time")
    parser.add_argument("--width-mult", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-peer", action="store_true", help="skip SpikingJelly")
    parser.add_argument("--out", default=None, help="write results as JSON here")
    args = parser.parse_args()
    peer = not args.no_peer and try_import_torch() is not None
    cpu = jax.default_backend() == "cpu"
    options = cpu_compiler_options(memory_schedule=True) if cpu else {}
    print(
        f"device={jax.devices()[0].device_kind} batch={args.batch} width={args.width_mult} "
        f"peak = XLA temp size{', memory-optimised CPU scheduler' if cpu else ''}"
    )
    rows = []
    for name in args.models:
        for t in args.timesteps:
            rows.append(_row(name, t, args, options, peer))
            print(rows[-1], flush=True)
    print_table(
        rows,
        [
            "model",
            "T",
            *(f"temp MiB {label}" for label, _, _ in VARIANTS),
            "neuron saves %",
            "block saves %",
            "block, save nothing saves %",
            "args MiB",
            "sj saved MiB",
        ],
    )
    timed = [r for r in rows if "none ms" in r]
    if timed:
        print()
        cols = ["model", "T", "none ms", "block ms", "block / none time", "block saves %"]
        if cpu:
            cols += [
                "temp MiB none default sched",
                "temp MiB block default sched",
                "none default sched ms",
                "block saves % vs default",
                "block / none default time",
            ]
        print_table(timed, cols)
        for r in timed:
            print(
                f"{r['model']} T={r['T']}: block remat saves {r['block saves %']:.1f}% of the "
                f"peak (goal >= 40%) at {100 * (r['block / none time'] - 1):+.1f}% step time "
                "(goal < +25%), same schedule"
            )
            if cpu:
                print(
                    f"  vs the remat-free step as training compiles it (default schedule): "
                    f"{r['block saves % vs default']:.1f}% saved at "
                    f"{100 * (r['block / none default time'] - 1):+.1f}% step time"
                )
    write_json(args.out, {"benchmark": "memory", "rows": rows, "args": vars(args)})


if __name__ == "__main__":
    main()
