"""Benchmark one training step of the spiking student against T x the ANN step and SpikingJelly.

A step is forward, mean-over-T softmax cross-entropy, backward and an SGD-momentum update, at batch
``--batch`` of 32x32 images (10 classes), for resnet20 and resnet19 (``--models``) at
``--width-mult``. Per model, one round-robin timing in one process covers: the ANN (teacher) step,
our SNN step at each T in ``--timesteps``, and the same network built from SpikingJelly layers
(``layer.Conv2d``/``BatchNorm2d``/``AvgPool2d``/``Linear`` with ``step_mode='m'`` + ``LIFNode``,
sigmoid surrogate alpha 4, tau 2, hard reset) on torch at the same batch, T and width (on the GPU
when JAX runs on one: SpikingJelly then picks its own CUDA LIF kernels). The
SpikingJelly network repeats the image T times before its first conv (its usual direct encoding);
ours computes the first conv + BN once (identical result). Ratios:

- ``snn / (T x ann)``: goal <= 1.10 (and <= 1.0 at T = 1),
- ``sj / snn``: goal >= 1.0 (ours at least as fast as SpikingJelly).

Each row also gives the step's model FLOPs per image (:func:`model_flops_per_image`: 2 per MAC of
``energy.count_macs``, x3 for forward + backward, x T for the layers that run every time step), the
achieved TFLOP/s, and with ``--matmul N`` its fraction of the dense bf16 matrix-multiply rate (an
N x N x N product, timed in the same process; 8192 on a GPU).

With ``--methods``, instead: the training program's own distillation step
(``steps.phase_program``: augmentation, frozen teacher, student, the method's loss and parts,
SGD update) for each method at each T, timed round-robin, relative to HTA-KL's; ``fkl + taps``
is FKL that also sows both networks' stage features, the taps' cost alone.

  python benchmarks/step.py --out step.json
  python benchmarks/step.py --models resnet20 --timesteps 2 --methods hta_kl fkl kdsnn lasnn \
      bkdsnn "fkl + taps"
"""

from __future__ import annotations

import argparse
import functools
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from htakl_jax import defaults, energy, losses, methods, parallel, runs, steps, surrogate
from htakl_jax.layers import IM2COL_MAX_PIXELS, scale_width
from htakl_jax.models import get_model
from htakl_jax.parallel import cpu_compiler_options

from common import (
    print_table,
    time_interleaved,
    torch_device,
    torch_sync,
    try_import_torch,
    write_json,
)

ROOT = Path(__file__).resolve().parent.parent
IMAGE = 32
CLASSES = 10

# (stem widths, stage widths, blocks per stage, stage strides, pool after stem, hidden FC width)
ARCHS = {
    "resnet20": ((64, 64, 64), (64, 128, 256, 512), (2, 2, 2, 2), (1, 2, 2, 2), True, None),
    "resnet19": ((128,), (128, 256, 512), (3, 3, 2), (1, 2, 2), False, 256),
}


# ----------------------------------------------------------------------------- ours


def jax_step(
    name: str,
    *,
    spiking: bool,
    timesteps: int,
    width: float,
    batch: int,
    remat: str = "none",
    dtype: str = "float32",
    im2col_max_pixels: int = IM2COL_MAX_PIXELS,
):
    """A jitted ``state -> state`` training step on a fixed batch, and its initial state.

    ``dtype`` is the compute dtype of the model (parameters and the optimizer stay float32);
    ``im2col_max_pixels`` its ``Network.im2col_max_pixels`` (0: XLA's convolutions everywhere).
    """
    kwargs = dict(surrogate=surrogate.sigmoid(4.0), remat=remat) if spiking else {}
    model = get_model(
        name,
        num_classes=CLASSES,
        spiking=spiking,
        timesteps=timesteps,
        width_mult=width,
        dtype=jnp.dtype(dtype),
        **kwargs,
    ).clone(im2col_max_pixels=im2col_max_pixels)
    kx, ky, kp = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (batch, IMAGE, IMAGE, 3))
    y = jax.random.randint(ky, (batch,), 0, CLASSES)
    variables = model.init(kp, x, train=False)
    tx = optax.sgd(0.01, momentum=0.9)
    state = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))

    def loss_fn(params, batch_stats):
        logits, new = model.apply(
            {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
        )
        if logits.ndim == 3:
            logits = jnp.mean(logits, 0)
        logits = logits.astype(jnp.float32)
        return jnp.mean(losses.cross_entropy(logits, y)), new["batch_stats"]

    # The training steps' XLA options (Eigen convolutions on CPU); memory.py may override them.
    @functools.partial(jax.jit, donate_argnums=0, compiler_options=cpu_compiler_options())
    def step(state):
        params, batch_stats, opt_state = state
        grads, batch_stats = jax.grad(loss_fn, has_aux=True)(params, batch_stats)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state

    return step, state


def model_flops_per_image(name: str, *, spiking: bool, timesteps: int, width: float) -> float:
    """Model FLOPs of one training step per image: 2 FLOPs per multiply-accumulate
    (`energy.count_macs`), x3 for forward + backward, and x T for every layer of a spiking
    model that runs each time step (all but the direct-encoding first conv, which runs once)."""
    model = get_model(
        name, num_classes=CLASSES, spiking=spiking, timesteps=timesteps, width_mult=width
    )
    layers = energy.count_macs(model, (IMAGE, IMAGE, 3))
    t = timesteps if spiking else 1
    return 2 * 3 * sum(layer.macs * (t if layer.spike_input else 1) for layer in layers)


def matmul_flops_per_s(n: int, *, repeats: int) -> float:
    """FLOP/s of an n x n x n bfloat16 matrix product (float32 accumulation left to XLA), median
    of `repeats` timed calls: the dense rate the training steps are measured against."""
    ka, kb = jax.random.split(jax.random.key(1))
    a = jax.random.normal(ka, (n, n), jnp.bfloat16)
    b = jax.random.normal(kb, (n, n), jnp.bfloat16)
    matmul = jax.jit(jnp.matmul)
    seconds = time_interleaved(
        {"matmul": lambda: matmul(a, b).block_until_ready()}, repeats=repeats
    )
    return 2 * n**3 / seconds["matmul"]


def jax_runner(step, state):
    """Zero-argument callable that advances ``state`` one step and blocks."""
    box = [state]

    def run():
        box[0] = jax.block_until_ready(step(box[0]))

    return run


# ----------------------------------------------------------------------------- SpikingJelly peer


def sj_network(torch, sj, name: str, *, timesteps: int, width: float):
    """The same topology from SpikingJelly multi-step layers; input [T, B, 3, H, W]."""
    nn = torch.nn
    layer, neuron = sj.layer, sj.neuron
    stem, widths, blocks, strides, pool, hidden = ARCHS[name]
    w = functools.partial(scale_width, width_mult=width)

    def lif():
        return neuron.LIFNode(
            tau=2.0, surrogate_function=sj.surrogate.Sigmoid(alpha=4.0), step_mode="m"
        )

    def conv_bn(cin, cout, k, s):
        conv = layer.Conv2d(cin, cout, k, s, k // 2, bias=False, step_mode="m")
        return [conv, layer.BatchNorm2d(cout, step_mode="m")]

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.body = nn.Sequential(
                *conv_bn(cin, cout, 3, stride), lif(), *conv_bn(cout, cout, 3, 1)
            )
            self.shortcut = (
                nn.Sequential(*conv_bn(cin, cout, 1, stride))
                if stride != 1 or cin != cout
                else nn.Identity()
            )
            self.act = lif()

        def forward(self, x):
            return self.act(self.body(x) + self.shortcut(x))

    mods, cin = [], 3
    for c in stem:
        mods += [*conv_bn(cin, w(c), 3, 1), lif()]
        cin = w(c)
    if pool:
        mods.append(layer.AvgPool2d(2, 2, step_mode="m"))
    for c, n, s in zip(widths, blocks, strides, strict=True):
        for b in range(n):
            mods.append(Block(cin, w(c), s if b == 0 else 1))
            cin = w(c)
    mods += [layer.AdaptiveAvgPool2d(1, step_mode="m"), layer.Flatten(step_mode="m")]
    if hidden is not None:
        mods += [layer.Linear(cin, w(hidden), step_mode="m"), lif()]
        cin = w(hidden)
    mods.append(layer.Linear(cin, CLASSES, step_mode="m"))
    return nn.Sequential(*mods)


def sj_runner(peer, name: str, *, timesteps: int, width: float, batch: int, dtype: str = "float32"):
    """SpikingJelly step on the GPU when JAX runs on one (CPU otherwise); bfloat16 by autocast."""
    torch, sj = peer
    device = torch_device(torch)
    net = sj_network(torch, sj, name, timesteps=timesteps, width=width).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, IMAGE, IMAGE, generator=gen).to(device)
    y = torch.randint(0, CLASSES, (batch,), generator=gen).to(device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

    def run():
        sj.functional.reset_net(net)
        x_seq = x.unsqueeze(0).repeat(timesteps, 1, 1, 1, 1)  # direct encoding
        with autocast:
            out = net(x_seq).mean(0)
        loss = torch.nn.functional.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        torch_sync(torch, device)

    return run


# ----------------------------------------------------------------------------- per method


def _taps_only(config) -> methods.Method:
    """FKL that also taps both networks' stage features (multiplied by 0): the taps' cost alone."""
    fkl = methods.get(config)

    def loss(variables, inputs, step):
        total, parts, stats = fkl.loss(variables, inputs, step)
        taps = sum(jnp.sum(f) for f in (*inputs.student_features, *inputs.teacher_features))
        return total + 0.0 * taps, parts, stats

    return methods.Method("fkl + taps", loss, tap_kind="rate")


def distill_runner(name: str, method: str, *, timesteps: int, width: float, batch: int, dtype):
    """The training program's own distillation step (steps.phase_program) for `method`, on one
    device and one fixed batch, with a randomly initialised teacher."""
    config = defaults.get_config()
    config.model.name, config.model.width_mult, config.model.dtype = name, width, dtype
    config.student.timesteps, config.student.batch_size = timesteps, batch
    config.student.method = "fkl" if method == "fkl + taps" else method
    info = types.SimpleNamespace(
        num_classes=CLASSES, image_size=(IMAGE, IMAGE), mean=(0.5,) * 3, std=(0.25,) * 3
    )
    mesh = parallel.make_mesh(jax.devices()[:1])
    program = steps.phase_program("student", config, mesh=mesh, info=info, num_train=batch)
    if method == "fkl + taps":
        teacher = runs.build_model(config, num_classes=CLASSES, spiking=False)
        step_fn = steps.compile_distill_step(
            program.model, teacher, program.tx, mesh, config, info, _taps_only(config)
        )
    else:
        step_fn = program.step_fn
    teacher = runs.build_model(config, num_classes=CLASSES, spiking=False)
    x = jnp.zeros((1, IMAGE, IMAGE, 3))
    t_vars = jax.device_put(
        teacher.init(jax.random.key(1), x, train=False), parallel.replicated(mesh)
    )
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch, IMAGE, IMAGE, 3), dtype=np.uint8)
    labels = rng.integers(0, CLASSES, batch).astype(np.int32)
    batch_arrays = parallel.global_batch((images, labels), mesh)
    box = [program.init_fn(jax.random.key(0))]

    def run():
        box[0], _ = step_fn(box[0], t_vars, *batch_arrays)
        jax.block_until_ready(box[0])

    return run


def bench_methods(args) -> list[dict]:
    """Student step time of each distillation method, relative to HTA-KL's, per model."""
    rows = []
    for name in args.models:
        for t in args.timesteps:
            common = dict(timesteps=t, width=args.width_mult, batch=args.batch, dtype=args.dtype)
            fns = {m: distill_runner(name, m, **common) for m in args.methods}
            times = time_interleaved(fns, repeats=args.repeats)
            ref = times.get("hta_kl")
            for m, sec in times.items():
                rows.append(
                    {
                        "model": name,
                        "T": t,
                        "method": m,
                        "step ms": 1e3 * sec,
                        "img/s": args.batch / sec,
                        "/ hta_kl": None if ref is None else sec / ref,
                    }
                )
    return rows


# ----------------------------------------------------------------------------- main


def bench_model(name: str, args, peer, matmul_rate: float | None) -> list[dict]:
    """One round-robin timing of the ANN step, our SNN step at each T and SpikingJelly's; a row
    per T with times, ratios, model TFLOP/s and (given `matmul_rate`, FLOP/s) its fraction."""
    common = dict(width=args.width_mult, batch=args.batch, dtype=args.dtype)
    fns = {"ann": jax_runner(*jax_step(name, spiking=False, timesteps=1, **common))}
    for t in args.timesteps:
        fns[f"snn T={t}"] = jax_runner(*jax_step(name, spiking=True, timesteps=t, **common))
        if peer is not None:
            fns[f"sj T={t}"] = sj_runner(
                peer, name, timesteps=t, width=args.width_mult, batch=args.batch, dtype=args.dtype
            )
    times = time_interleaved(fns, repeats=args.repeats)
    rows = []
    for t in args.timesteps:
        snn = times[f"snn T={t}"]
        sj = times.get(f"sj T={t}")
        flops = model_flops_per_image(name, spiking=True, timesteps=t, width=args.width_mult)
        achieved = flops * args.batch / snn
        rows.append(
            {
                "model": name,
                "T": t,
                "batch": args.batch,
                "dtype": args.dtype,
                "ann ms": 1e3 * times["ann"],
                "snn ms": 1e3 * snn,
                "snn img/s": args.batch / snn,
                "snn / (T x ann)": snn / (t * times["ann"]),
                "sj ms": None if sj is None else 1e3 * sj,
                "sj img/s": None if sj is None else args.batch / sj,
                "sj / snn": None if sj is None else sj / snn,
                "GFLOP/img": flops / 1e9,
                "snn TFLOP/s": achieved / 1e12,
                "of matmul": None if matmul_rate is None else achieved / matmul_rate,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet20", "resnet19"], choices=ARCHS)
    parser.add_argument("--timesteps", type=int, nargs="+", default=[1, 2, 4, 6])
    parser.add_argument("--width-mult", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--no-peer", action="store_true", help="skip SpikingJelly")
    parser.add_argument("--out", default=None, help="write results as JSON here")
    parser.add_argument(
        "--matmul",
        type=int,
        default=0,
        metavar="N",
        help="time an N^3 bf16 matmul and report each step's fraction of its rate (0: skip)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=None,
        choices=[*methods.NAMES, "fkl + taps"],
        help="instead: the training program's distillation step per method, vs hta_kl",
    )
    args = parser.parse_args()
    if args.methods is not None:
        rows = bench_methods(args)
        print_table(rows, ["model", "T", "method", "step ms", "img/s", "/ hta_kl"])
        write_json(args.out, {"benchmark": "step-methods", "rows": rows, "args": vars(args)})
        return
    peer = None if args.no_peer else try_import_torch()
    matmul_rate = matmul_flops_per_s(args.matmul, repeats=args.repeats) if args.matmul else None
    print(
        f"device={jax.devices()[0].device_kind} dtype={args.dtype} batch={args.batch} "
        f"width={args.width_mult} {IMAGE}x{IMAGE}x3, {CLASSES} classes"
        + (
            ""
            if matmul_rate is None
            else f", bf16 {args.matmul}^3 matmul {matmul_rate / 1e12:.1f} TFLOP/s"
        )
    )
    rows = []
    for name in args.models:
        rows += bench_model(name, args, peer, matmul_rate)
    cols = [
        "model",
        "T",
        "ann ms",
        "snn ms",
        "snn img/s",
        "snn / (T x ann)",
        "sj ms",
        "sj img/s",
        "sj / snn",
        "GFLOP/img",
        "snn TFLOP/s",
        "of matmul",
    ]
    print_table(rows, cols)
    payload = {"benchmark": "step", "rows": rows, "args": vars(args)}
    write_json(args.out, payload | {"matmul_flops_per_s": matmul_rate})


if __name__ == "__main__":
    main()
