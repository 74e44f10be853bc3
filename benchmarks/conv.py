"""Benchmark the training step with small-image convolutions as matmuls against XLA's convolutions.

On the CPU backend, ``Network.im2col_max_pixels`` (default ``layers.IM2COL_MAX_PIXELS``) runs every
convolution over at most that many pixels with at least ``layers.IM2COL_MIN_CHANNELS`` input
channels as one matmul over im2col patches (``layers.im2col_conv``). This times the same training
step as ``step.py`` (forward, mean-over-T CE, backward, SGD-momentum update; batch ``--batch`` of
32x32 images) with that setting and with 0 (XLA's convolution everywhere), round-robin in one
process, for each model and T (T = 1 is the ANN teacher). At full width resnet20's last two stages
(4x4 and 2x2) and vgg16's last two blocks are such convolutions; resnet19's smallest maps are 8x8,
so its two columns time the same program (a control for the noise).

  python benchmarks/conv.py --out conv.json
  python benchmarks/conv.py --models resnet20 --timesteps 1 2 --width-mult 0.25 --batch 8
"""

from __future__ import annotations

import argparse

import jax

from htakl_jax.layers import IM2COL_MAX_PIXELS

from common import print_table, time_interleaved, write_json
from step import jax_runner, jax_step

MODELS = ("resnet20", "vgg16", "resnet19")


def bench(args: argparse.Namespace) -> list[dict]:
    """One row per (model, T): step time with matmuls and with XLA's convolutions, and the ratio."""
    rows = []
    for name in args.models:
        for t in args.timesteps:
            runners = {}
            for label, pixels in (("matmul", IM2COL_MAX_PIXELS), ("xla", 0)):
                step, state = jax_step(
                    name,
                    spiking=t > 1,
                    timesteps=t,
                    width=args.width_mult,
                    batch=args.batch,
                    dtype=args.dtype,
                    im2col_max_pixels=pixels,
                )
                runners[label] = jax_runner(step, state)  # compiled by its first call
            times = time_interleaved(runners, repeats=args.repeats)
            rows.append(
                {
                    "model": name,
                    "T": t,
                    "kind": "snn" if t > 1 else "ann",
                    "matmul ms": 1e3 * times["matmul"],
                    "xla conv ms": 1e3 * times["xla"],
                    "xla / matmul": times["xla"] / times["matmul"],
                    "matmul img/s": args.batch / times["matmul"],
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--timesteps", type=int, nargs="+", default=[1, 2], help="1: the ANN")
    parser.add_argument("--width-mult", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--out", default=None, help="write results as JSON here")
    args = parser.parse_args()
    print(
        f"device={jax.devices()[0].device_kind} dtype={args.dtype} batch={args.batch} "
        f"width={args.width_mult}, matmuls up to {IM2COL_MAX_PIXELS} pixels"
    )
    rows = bench(args)
    cols = ["model", "T", "kind", "matmul ms", "xla conv ms", "xla / matmul", "matmul img/s"]
    print_table(rows, cols)
    write_json(args.out, {"benchmark": "conv", "rows": rows, "args": vars(args)})


if __name__ == "__main__":
    main()
