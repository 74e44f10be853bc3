"""Benchmark HTA-KL forward+backward per head-set path against softmax CE and a PyTorch port.

Cases: logits ``[128, 100]`` (temperature 4, random and peaked teachers) and ``[rows, 32000]``
(``--big-rows``, default 4096: 0.5 GB per array) with random-normal teacher logits at
temperature 4 and 1 and a peaked teacher at temperature 1. Per case it times, round-robin in one
process, the gradient w.r.t. the student logits of:

- HTA-KL with each head-set path (``losses.hta_kl(..., path=...)``): ``threshold`` (the default
  above ``head_set.sort_max_classes()`` classes: threshold search, no sort), ``top_k`` (the
  previous default: lax.top_k candidates, and the whole batch falls back to the sort when a row's
  head is longer than them) and ``sort`` (full stable sort, the default up to that limit);
- forward KL (plain KD) and softmax cross-entropy (ours, ``losses.cross_entropy``);
- a PyTorch port of the same HTA-KL formula (softmax, stable sort, gather, cumsum) and torch CE,
  on the GPU when JAX runs on one.

Teachers: ``random`` (standard-normal logits; over 32000 classes the head is thousands of classes
long) and ``peaked`` (LLM-like: p ~ rank^-1.5 over a random class order, a head of a few classes).
The sort-based candidates at 32000 classes take tens of CE times, so they run in a second
round-robin with ``--slow-repeats`` repeats, next to their own CE timing: every ratio is against
a CE timed beside it. ``top-k settled`` is the fraction of rows the top-k candidates settle
(1.0: no sort fallback).

  python benchmarks/loss.py --out loss.json

``--goal`` instead times issue 19's goal matrix (HTA-KL gradient <= 3x softmax CE): logits
``[--big-rows, 32000]``, student logits N(0, 4), teacher logits N(0, 9) (``random``) or the
``peaked`` / ``flat`` teachers, at temperatures 1 and 4; HTA-KL with its defaults, forward KL and
CE only, each ratio against optax's softmax cross-entropy gradient timed beside it (the issue's
yardstick; ours, ``losses.cross_entropy``, is reported beside it). ``write`` times ``s + 1``
(a read and a fresh [rows, 32000] output, as every gradient here writes one): the part of each
time that is memory traffic rather than arithmetic, and the reason the ratios differ between
machines. ``--row-blocks 8 16`` adds HTA-KL at those rows per CPU block (``row_block=``).

  python benchmarks/loss.py --goal --repeats 7 --out loss_goal.json

``--crossover`` times where "auto" should stop sorting (``head_set.sort_max_classes``): the
HTA-KL gradient by the sort and by the threshold search (both with ``row_block="auto"``) beside
forward KL, at 256 and 4,096 rows and 10 to 1,000 classes, random teacher at temperature 4 and
peaked teacher at temperature 1, with the path "auto" picks on this backend.

  python benchmarks/loss.py --crossover --repeats 7 --out loss_crossover.json
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from htakl_jax import losses
from htakl_jax.losses import head_set

from common import print_table, time_interleaved, torch_device, torch_sync, write_json

MU = 0.5
PATHS = ("threshold", "top_k", "sort")
# Up to this many classes every path takes at most tens of milliseconds: one round-robin for all.
FAST_SORT_CLASSES = 1024
CROSSOVER_ROWS = (256, 4096)
CROSSOVER_CLASSES = (10, 16, 24, 32, 48, 64, 100, 200, 512, 1000)
CROSSOVER_TEACHERS = (("random", 4.0), ("peaked", 1.0))


def teacher_logits(kind: str, rows: int, classes: int, rng: np.random.Generator) -> np.ndarray:
    """Teacher logits [rows, classes]: "random", "peaked" (module docstring) or "flat" (all
    classes within 0.1 of each other: the longest possible head)."""
    if kind == "flat":
        return 0.1 * rng.standard_normal((rows, classes), dtype=np.float32)
    if kind == "random":
        return rng.standard_normal((rows, classes), dtype=np.float32)
    if kind == "peaked":
        log_p = -1.5 * np.log(np.arange(1, classes + 1, dtype=np.float32))
        perm = np.argsort(rng.random((rows, classes)), axis=-1)
        return log_p[perm] + 0.1 * rng.standard_normal((rows, classes), dtype=np.float32)
    raise ValueError(f"unknown teacher kind {kind!r}")


def _topk_settled(s: np.ndarray, t: np.ndarray, temperature: float) -> float:
    """Fraction of rows whose head ends inside the top-k candidates (no sort fallback needed)."""
    p = jax.nn.softmax(jnp.asarray(t) / temperature, axis=-1)
    q = jax.nn.softmax(jnp.asarray(s) / temperature, axis=-1)
    k = min(t.shape[-1], head_set.TOP_K)
    _, exact = jax.jit(head_set.head_gap_top_k, static_argnums=3)(p, q, MU, k)
    return float(jnp.mean(exact))


def _torch_fns(torch, s_np, t_np, labels_np, temperature: float) -> dict[str, Callable]:
    device = torch_device(torch)
    s0, t = torch.from_numpy(s_np).to(device), torch.from_numpy(t_np).to(device)
    labels = torch.from_numpy(labels_np.astype(np.int64)).to(device)
    f = torch.nn.functional

    def hta(s):
        log_q = f.log_softmax(s / temperature, -1)
        log_p = f.log_softmax(t / temperature, -1)
        p, q = log_p.exp(), log_q.exp()
        with torch.no_grad():
            p_sorted, order = torch.sort(p, dim=-1, descending=True, stable=True)
            gap_sorted = (p_sorted - q.gather(-1, order)).abs()
            cum = torch.cumsum(p_sorted, -1)
            cum = cum / cum[..., -1:]
            n_head = torch.clamp((cum <= MU).sum(-1), min=1)
            in_head = torch.arange(p.shape[-1], device=device) < n_head[..., None]
            g_head = torch.where(in_head, gap_sorted, 0.0).sum(-1)
            g_total = (p - q).abs().sum(-1)
            w_head = torch.where(
                g_total > 0,
                torch.clamp(g_head / torch.where(g_total > 0, g_total, 1.0), max=1.0),
                0.5,
            )
        fkl = (p * (log_p - log_q)).sum(-1)
        rkl = (q * (log_q - log_p)).sum(-1)
        return (temperature**2 * (w_head * fkl + (1 - w_head) * rkl)).mean()

    def runner(loss_fn):
        def run():
            s = s0.detach().requires_grad_(True)
            loss_fn(s).backward()
            torch_sync(torch, device)
            return s.grad

        return run

    return {"torch port": runner(hta), "torch ce": runner(lambda s: f.cross_entropy(s, labels))}


def _timed_grad(loss: Callable, s: jax.Array, *args: jax.Array) -> Callable[[], jax.Array]:
    """A zero-argument call of the jitted gradient of mean(loss(s, *args)) w.r.t. s; the arrays
    are jit arguments (closed-over arrays would become constants that XLA folds at compile time)."""
    return _timed_call(jax.grad(lambda s_, *a: jnp.mean(loss(s_, *a))), s, *args)


def _timed_call(fn: Callable, *args: jax.Array) -> Callable[[], jax.Array]:
    """A zero-argument call of jit(fn) on `args` (jit arguments, as in `_timed_grad`)."""
    jitted = jax.jit(fn)
    return lambda: jax.block_until_ready(jitted(*args))


def _jax_fns(s, t, labels, temperature: float) -> dict[str, Callable]:
    """Zero-argument timed calls; the logits are jit arguments (closed-over arrays would become
    constants that XLA folds at compile time)."""

    fns = {"ce": _timed_grad(lambda s_, y: losses.cross_entropy(s_, y), s, labels)}
    for path in PATHS:
        fns[path] = _timed_grad(
            lambda s_, t_, path=path: losses.hta_kl(
                s_, t_, temperature=temperature, mu=MU, path=path
            ),
            s,
            t,
        )
    fns["fkl"] = _timed_grad(
        lambda s_, t_: losses.forward_kl(s_, t_, temperature=temperature), s, t
    )
    return fns


def bench_case(rows, classes, temperature, kind, repeats, slow_repeats, torch) -> dict:
    rng = np.random.default_rng(0)
    t_np = teacher_logits(kind, rows, classes, rng)
    s_np = t_np + rng.standard_normal((rows, classes), dtype=np.float32)  # a nearby student
    labels_np = rng.integers(0, classes, rows).astype(np.int32)
    fns = _jax_fns(jnp.asarray(s_np), jnp.asarray(t_np), jnp.asarray(labels_np), temperature)
    if torch is not None:
        fns |= _torch_fns(torch, s_np, t_np, labels_np, temperature)
    settled = _topk_settled(s_np, t_np, temperature)
    slow = {"sort", "torch port"} | ({"top_k"} if settled < 1.0 else set())
    if classes <= FAST_SORT_CLASSES:
        slow = set()
    times = time_interleaved({k: v for k, v in fns.items() if k not in slow}, repeats=repeats)
    row = {"shape": f"[{rows}, {classes}]", "teacher": kind, "tau": temperature}
    row["top-k settled"] = settled
    row |= {f"{k} ms": 1e3 * v for k, v in times.items()}
    row |= {f"{k} / ce": v / times["ce"] for k, v in times.items() if k != "ce"}
    if slow:
        slow_fns = {"ce": fns["ce"]} | {k: fns[k] for k in fns if k in slow}
        slow_times = time_interleaved(slow_fns, repeats=slow_repeats)
        row["ce ms (slow round)"] = 1e3 * slow_times["ce"]
        row |= {f"{k} ms": 1e3 * v for k, v in slow_times.items() if k != "ce"}
        row |= {f"{k} / ce": v / slow_times["ce"] for k, v in slow_times.items() if k != "ce"}
    if "torch port / ce" in row:
        row["torch port / threshold"] = row["torch port / ce"] / row["threshold / ce"]
    return row


GOAL_TEACHERS = ("random", "peaked", "flat")
GOAL_TEMPERATURES = (1.0, 4.0)
GOAL_RATIO = 3.0


def goal_case(
    rows: int, temperature: float, kind: str, repeats: int, row_blocks: tuple[int, ...] = ()
) -> dict:
    """One cell of issue 19's goal matrix: CE, HTA-KL (defaults) and FKL gradients, timed; and
    HTA-KL at each of `row_blocks` rows per CPU block instead of the default."""
    rng = np.random.default_rng(0)
    t_np = teacher_logits(kind, rows, 32000, rng)
    if kind == "random":
        t_np = 3.0 * t_np  # N(0, 9), as the measurement
    s_np = 2.0 * rng.standard_normal(t_np.shape, dtype=np.float32)  # N(0, 4)
    labels_np = rng.integers(0, 32000, rows).astype(np.int32)
    s, t, labels = jnp.asarray(s_np), jnp.asarray(t_np), jnp.asarray(labels_np)

    fns = {
        "ce": _timed_grad(optax.softmax_cross_entropy_with_integer_labels, s, labels),
        "ce (ours)": _timed_grad(lambda s_, y: losses.cross_entropy(s_, y), s, labels),
        "fkl": _timed_grad(lambda s_, t_: losses.forward_kl(s_, t_, temperature=temperature), s, t),
        "write": _timed_call(lambda s_: s_ + 1.0, s),
    }
    for block in ("auto", *row_blocks):
        name = "hta_kl" if block == "auto" else f"hta_kl {block} rows"
        fns[name] = _timed_grad(
            lambda s_, t_, b=block: losses.hta_kl(s_, t_, temperature=temperature, row_block=b),
            s,
            t,
        )
    times = time_interleaved(fns, repeats=repeats)
    row = {"shape": f"[{rows}, 32000]", "teacher": kind, "tau": temperature}
    row |= {f"{k} ms": 1e3 * v for k, v in times.items()}
    row |= {f"{k} / ce": v / times["ce"] for k, v in times.items() if k != "ce"}
    row["met"] = "yes" if row["hta_kl / ce"] <= GOAL_RATIO else "no"
    return row


def run_goal(args: argparse.Namespace) -> None:
    rows = [
        goal_case(args.big_rows, tau, kind, args.repeats, tuple(args.row_blocks))
        for kind in GOAL_TEACHERS
        for tau in GOAL_TEMPERATURES
    ]
    device = jax.devices()[0].device_kind
    print(f"device={device} float32; grad w.r.t. student; goal <= 3x CE (optax)")
    columns = ["shape", "teacher", "tau", "ce ms", "hta_kl ms", "hta_kl / ce", "fkl / ce"]
    columns += ["ce (ours) / ce", "write ms", "met"]
    columns += [f"hta_kl {block} rows / ce" for block in args.row_blocks]
    print_table(rows, columns)
    write_json(args.out, {"benchmark": "loss_goal", "rows": rows, "args": vars(args)})


def crossover_case(rows: int, classes: int, kind: str, temperature: float, repeats: int) -> dict:
    """HTA-KL gradient by the sort and by the threshold search, and FKL, at one [rows, classes]."""
    rng = np.random.default_rng(0)
    t_np = teacher_logits(kind, rows, classes, rng)
    s_np = t_np + rng.standard_normal(t_np.shape, dtype=np.float32)  # a nearby student
    s, t = jnp.asarray(s_np), jnp.asarray(t_np)
    fns = {
        path: _timed_grad(
            lambda s_, t_, path=path: losses.hta_kl(s_, t_, temperature=temperature, path=path),
            s,
            t,
        )
        for path in ("sort", "threshold")
    }
    fns["fkl"] = _timed_grad(
        lambda s_, t_: losses.forward_kl(s_, t_, temperature=temperature), s, t
    )
    times = time_interleaved(fns, repeats=repeats)
    row = {"shape": f"[{rows}, {classes}]", "teacher": kind, "tau": temperature}
    row |= {f"{k} ms": 1e3 * v for k, v in times.items()}
    row["threshold / sort"] = times["threshold"] / times["sort"]
    row["auto"] = head_set.resolve_path("auto", classes)
    return row


def run_crossover(args: argparse.Namespace) -> None:
    rows = [
        crossover_case(num_rows, classes, kind, tau, args.repeats)
        for num_rows in CROSSOVER_ROWS
        for classes in CROSSOVER_CLASSES
        for kind, tau in CROSSOVER_TEACHERS
    ]
    limit = head_set.sort_max_classes()
    print(f"device={jax.devices()[0].device_kind} mu={MU} float32; grad w.r.t. student; ", end="")
    print(f'"auto" sorts up to {limit} classes here')
    columns = ["shape", "teacher", "tau", "sort ms", "threshold ms", "fkl ms"]
    print_table(rows, columns + ["threshold / sort", "auto"])
    payload = {"benchmark": "loss_crossover", "sort_max_classes": limit, "rows": rows}
    write_json(args.out, payload | {"args": vars(args)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big-rows", type=int, default=4096, help="rows at 32000 classes")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--slow-repeats", type=int, default=2, help="repeats, sort-based")
    parser.add_argument("--no-peer", action="store_true", help="skip the PyTorch port")
    parser.add_argument("--out", default=None, help="write results as JSON here")
    parser.add_argument("--goal", action="store_true", help="issue 19's goal matrix only")
    parser.add_argument("--crossover", action="store_true", help="sort vs threshold, 10-1000 C")
    parser.add_argument(
        "--row-blocks", type=int, nargs="*", default=[], help="--goal: HTA-KL also at these rows"
    )
    args = parser.parse_args()
    if args.goal:
        run_goal(args)
        return
    if args.crossover:
        run_crossover(args)
        return
    torch = None
    if not args.no_peer:
        try:
            import torch
        except ImportError:
            print("[skip] torch not installed; skipping the PyTorch port")
    cases = [
        (128, 100, 4.0, "random"),
        (128, 100, 4.0, "peaked"),
        (args.big_rows, 32000, 4.0, "random"),
        (args.big_rows, 32000, 1.0, "random"),
        (args.big_rows, 32000, 1.0, "peaked"),
    ]
    rows = [bench_case(*case, args.repeats, args.slow_repeats, torch) for case in cases]
    print(f"device={jax.devices()[0].device_kind} mu={MU} float32; times: grad w.r.t. student")
    print_table(
        rows,
        [
            "shape",
            "teacher",
            "tau",
            "top-k settled",
            "ce ms",
            "threshold ms",
            "threshold / ce",
            "top_k / ce",
            "sort / ce",
            "fkl / ce",
            "torch port / ce",
            "torch port / threshold",
        ],
    )
    write_json(args.out, {"benchmark": "loss", "mu": MU, "rows": rows, "args": vars(args)})


if __name__ == "__main__":
    main()
