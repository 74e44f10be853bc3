"""Benchmark HTA-KL forward+backward against softmax cross-entropy and a PyTorch port.

For logits ``[rows, C]`` (default ``[128, 100]`` at temperature 4 and ``[1024, 32000]`` at
temperature 1; the issue's 4096 rows need 0.5 GB per array, pass ``--big-rows 4096`` for them) it
times, round-robin in one process, the gradient w.r.t. the student logits of:

- ``hta_kl`` (ours; the head set by a full sort for C <= 1024, else by ``lax.top_k`` candidates
  with an exact sort fallback when a row's head is longer than the candidates),
- ``forward_kl`` (plain KD, ours) and softmax cross-entropy (ours, ``losses.cross_entropy``),
- a PyTorch port of the same HTA-KL formula (softmax, stable sort, gather, cumsum) and torch CE.

Two teachers: ``random`` (standard-normal logits; over 32000 classes the head is thousands of
classes long, so the top-k path falls back to the sort) and ``peaked`` (LLM-like: Zipf-shaped
probabilities p ~ rank^-1.5 over a random class order, head of a few classes: top-k path exact).
The table states, per case, the fraction of rows the top-k candidates settle.

  python benchmarks/loss.py --out loss.json
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import print_table, time_interleaved, write_json  # noqa: E402

from htakl_jax import losses  # noqa: E402

MU = 0.5


def _teacher(kind: str, rows: int, classes: int, rng: np.random.Generator) -> np.ndarray:
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
    k = min(t.shape[-1], losses._TOP_K)
    _, exact = losses._head_gap_top_k(p, q, MU, k)
    return float(jnp.mean(exact))


def _torch_fns(torch, s_np, t_np, labels_np, temperature: float):
    s0, t = torch.from_numpy(s_np), torch.from_numpy(t_np)
    labels = torch.from_numpy(labels_np.astype(np.int64))
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
            in_head = torch.arange(p.shape[-1]) < n_head[..., None]
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
            return s.grad

        return run

    return {
        "torch hta_kl (sort port)": runner(hta),
        "torch ce": runner(lambda s: f.cross_entropy(s, labels)),
    }


def bench_case(rows: int, classes: int, temperature: float, kind: str, repeats: int, torch):
    rng = np.random.default_rng(0)
    t_np = _teacher(kind, rows, classes, rng)
    s_np = t_np + rng.standard_normal((rows, classes), dtype=np.float32)  # a nearby student
    labels_np = rng.integers(0, classes, rows).astype(np.int32)
    s, t, labels = jnp.asarray(s_np), jnp.asarray(t_np), jnp.asarray(labels_np)

    def grad_of(loss):
        g = jax.jit(jax.grad(lambda s_: jnp.mean(loss(s_))))
        return lambda: jax.block_until_ready(g(s))

    fns = {
        "ours hta_kl": grad_of(lambda s_: losses.hta_kl(s_, t, temperature=temperature, mu=MU)),
        "ours forward_kl": grad_of(lambda s_: losses.forward_kl(s_, t, temperature=temperature)),
        "ours ce": grad_of(lambda s_: losses.cross_entropy(s_, labels)),
    }
    if torch is not None:
        fns |= _torch_fns(torch, s_np, t_np, labels_np, temperature)
    times = time_interleaved(fns, repeats=repeats)
    settled = _topk_settled(s_np, t_np, temperature) if classes > losses._SORT_MAX_CLASSES else None
    path = (
        "sort"
        if classes <= losses._SORT_MAX_CLASSES
        else ("top_k" if settled == 1.0 else "top_k -> sort fallback")
    )
    row = {
        "shape": f"[{rows}, {classes}]",
        "teacher": kind,
        "path": path,
        "top-k settled": settled,
        **{f"{k} ms": 1e3 * v for k, v in times.items()},
        "hta / ce": times["ours hta_kl"] / times["ours ce"],
        "hta / fkl": times["ours hta_kl"] / times["ours forward_kl"],
    }
    if torch is not None:
        row["torch port / hta"] = times["torch hta_kl (sort port)"] / times["ours hta_kl"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big-rows", type=int, default=1024, help="rows of the [rows, 32000] case")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-peer", action="store_true", help="skip the PyTorch port")
    parser.add_argument("--out", default=None, help="write results as JSON here")
    args = parser.parse_args()
    torch = None
    if not args.no_peer:
        try:
            import torch
        except ImportError:
            print("[skip] torch not installed; skipping the PyTorch port")
    cases = [
        (128, 100, 4.0, "random"),
        (128, 100, 4.0, "peaked"),
        (args.big_rows, 32000, 1.0, "random"),
        (args.big_rows, 32000, 1.0, "peaked"),
    ]
    rows = [bench_case(*case, args.repeats, torch) for case in cases]
    print(f"device={jax.devices()[0].device_kind} mu={MU} float32; times: grad w.r.t. student")
    print_table(
        rows,
        [
            "shape",
            "teacher",
            "path",
            "top-k settled",
            "ours hta_kl ms",
            "ours forward_kl ms",
            "ours ce ms",
            "torch hta_kl (sort port) ms",
            "torch ce ms",
            "hta / ce",
            "hta / fkl",
            "torch port / hta",
        ],
    )
    write_json(args.out, {"benchmark": "loss", "rows": rows, "args": vars(args)})


if __name__ == "__main__":
    main()
