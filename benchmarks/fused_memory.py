"""Peak memory (and optionally time) of the fused-linear KD loss against the unfused path.

Both compute the value and the gradient with respect to the student's hidden states [N, H] and
output projection [H, V] (float32 by default) of the mean KD loss over N tokens:

- ``unfused``: ``method(hidden @ weight, teacher_logits).mean()`` with the library's defaults
  (``htakl_jax.losses``; on the CPU backend HTA-KL already maps over row blocks of its logits);
- ``fused``: ``fused_linear_kd(hidden, weight, teacher, reduction="none").mean()`` (per-token
  values, any cotangent);
- ``fused mean``: ``fused_linear_kd(..., reduction="mean")`` (a scalar; the same backward);
- ``fused mean fwd``: ``fused_linear_kd(..., reduction="mean", backward="forward")`` (the
  gradient computed in the forward pass into a float32 [H, V] accumulator).

The teacher comes as logits [N, V] (a jit argument: counted in neither side's temporaries) or,
with ``--teacher linear``, as hidden states [N, H'] and a projection [H', V] (the unfused path
then materialises its logits too). Peak memory is XLA's compiled memory analysis (``temp``: the
peak of intermediate buffers; compile only, nothing runs). ``--time`` also runs both side by
side (``common.time_interleaved``) and reports median times and their ratio.

Goals (issue 19): fused temp <= 15% of unfused temp at 4,096 tokens, hidden 512, vocabulary
32,000; time <= 1.3x unfused.

  python benchmarks/fused_memory.py --out fused_memory.json            # memory, compile only
  python benchmarks/fused_memory.py --time --repeats 5                  # and time
  python benchmarks/fused_memory.py --tokens 64 --vocab 100 --hidden 8 --time   # smoke test
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from htakl_jax import losses
from htakl_jax.losses import fused

from common import print_table, time_interleaved, write_json

MIB = 2**20
MEMORY_GOAL = 0.15
TIME_GOAL = 1.3
VARIANTS = ("unfused", "fused", "fused mean", "fused mean fwd")


def _kwargs(method: str, temperature: float) -> dict:
    kwargs = {"temperature": temperature}
    if method == "fixed_ratio":
        kwargs["head_ratio"] = 0.5
    return kwargs


def _unfused_loss(method: str, temperature: float) -> Callable:
    fns = {
        "fkl": losses.forward_kl,
        "rkl": losses.reverse_kl,
        "symmetric": losses.symmetric_kl,
        "fixed_ratio": losses.fixed_ratio_kl,
        "hta_kl": losses.hta_kl,
    }
    kwargs = _kwargs(method, temperature)

    def loss(hidden, weight, teacher):
        if isinstance(teacher, tuple):
            teacher = jax.lax.stop_gradient(teacher[0] @ teacher[1])
        return jnp.mean(fns[method](hidden @ weight, teacher, **kwargs))

    return loss


def _fused_loss(
    method: str, temperature: float, reduction: str, chunks: tuple, backward: str = "auto"
) -> Callable:
    kwargs = _kwargs(method, temperature)
    chunk_rows, chunk_cols = chunks

    def loss(hidden, weight, teacher):
        out = fused.fused_linear_kd(
            hidden,
            weight,
            teacher,
            method=method,
            chunk_rows=chunk_rows,
            chunk_cols=chunk_cols,
            reduction=reduction,
            backward=backward,
            **kwargs,
        )
        return out if reduction == "mean" else jnp.mean(out)

    return loss


def _steps(method: str, temperature: float, chunks: tuple) -> dict[str, Callable]:
    """Jitted value-and-grad (w.r.t. hidden and weight) of each variant."""
    fns = {
        "unfused": _unfused_loss(method, temperature),
        "fused": _fused_loss(method, temperature, "none", chunks),
        "fused mean": _fused_loss(method, temperature, "mean", chunks),
        "fused mean fwd": _fused_loss(method, temperature, "mean", chunks, "forward"),
    }
    return {k: jax.jit(jax.value_and_grad(f, argnums=(0, 1))) for k, f in fns.items()}


def _inputs(args, concrete: bool):
    """(hidden, weight, teacher): ShapeDtypeStructs for compiling, or arrays for timing."""
    dtype = jnp.dtype(args.dtype)
    n, h, v, h_t = args.tokens, args.hidden, args.vocab, args.teacher_hidden or args.hidden
    shapes = {"hidden": (n, h), "weight": (h, v), "t_hidden": (n, h_t), "t_weight": (h_t, v)}
    shapes["logits"] = (n, v)
    if concrete:
        rng = np.random.default_rng(0)
        scale = {"weight": h**-0.5, "t_weight": 2 * h_t**-0.5, "logits": 2.0}
        arrays = {
            k: jnp.asarray(scale.get(k, 1.0) * rng.standard_normal(s, np.float32), dtype)
            for k, s in shapes.items()
        }
    else:
        arrays = {k: jax.ShapeDtypeStruct(s, dtype) for k, s in shapes.items()}
    if args.teacher == "linear":
        teacher = (arrays["t_hidden"], arrays["t_weight"])
    else:
        teacher = arrays["logits"]
    return arrays["hidden"], arrays["weight"], teacher


def bench(method: str, args) -> dict:
    rows, cols = (x if x == "auto" else int(x) for x in (args.chunk_rows, args.chunk_cols))
    steps = _steps(method, args.temperature, (rows, cols))
    abstract = _inputs(args, concrete=False)
    row = {
        "method": method,
        "teacher": args.teacher,
        "shape": f"N={args.tokens} H={args.hidden} V={args.vocab} {args.dtype}",
        "chunk rows": fused.chunk_rows_for(args.tokens, args.vocab) if rows == "auto" else rows,
        "chunk cols": fused.chunk_cols_for(args.tokens, args.vocab) if cols == "auto" else cols,
    }
    for name, step in steps.items():
        mem = step.lower(*abstract).compile().memory_analysis()
        row[f"{name} temp MiB"] = mem.temp_size_in_bytes / MIB
    base = row["unfused temp MiB"]
    for name in VARIANTS[1:]:
        ratio = row[f"{name} temp MiB"] / base
        row[f"{name} / unfused temp"] = ratio
        row[f"{name} memory goal"] = "met" if ratio <= MEMORY_GOAL else "not met"
    if args.time:
        hidden, weight, teacher = _inputs(args, concrete=True)
        timed = {
            name: (lambda step=step: jax.block_until_ready(step(hidden, weight, teacher)))
            for name, step in steps.items()
        }
        times = time_interleaved(timed, repeats=args.repeats)
        for name, seconds in times.items():
            row[f"{name} ms"] = 1e3 * seconds
        for name in VARIANTS[1:]:
            ratio = times[name] / times["unfused"]
            row[f"{name} / unfused time"] = ratio
            row[f"{name} time goal"] = "met" if ratio <= TIME_GOAL else "not met"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--teacher", choices=("logits", "linear"), default="logits")
    parser.add_argument("--teacher-hidden", type=int, default=None, help="H' (default: H)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--methods", nargs="+", default=["hta_kl", "fkl"])
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--chunk-rows", default="auto", help="'auto' or an int")
    parser.add_argument("--chunk-cols", default="auto", help="'auto' or an int")
    parser.add_argument("--time", action="store_true", help="also time both (runs them)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None, help="write results as JSON here")
    args = parser.parse_args()
    rows = []
    for method in args.methods:
        rows.append(bench(method, args))
        print(rows[-1], flush=True)
    print(f"device={jax.devices()[0].device_kind}; temp = XLA compiled memory analysis")
    columns = ["method", "teacher", "shape", "chunk rows", "chunk cols"]
    columns += [f"{name} temp MiB" for name in VARIANTS]
    for name in VARIANTS[1:]:
        columns += [f"{name} / unfused temp", f"{name} memory goal"]
    print_table(rows, columns)
    if args.time:
        print()
        columns = ["method", "teacher", *(f"{name} ms" for name in VARIANTS)]
        for name in VARIANTS[1:]:
            columns += [f"{name} / unfused time", f"{name} time goal"]
        print_table(rows, columns)
    write_json(args.out, {"benchmark": "fused_memory", "rows": rows, "args": vars(args)})


if __name__ == "__main__":
    main()
