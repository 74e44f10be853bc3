"""Where the HTA-KL gradient's time goes: a profile reading against softmax CE and forward KL.

For logits ``[rows, classes]`` (default [4096, 32000], a ``benchmarks/loss.py`` teacher) it
compiles the gradient w.r.t. the student logits of CE (``losses.cross_entropy``), forward KL and
HTA-KL (``losses.hta_kl``, its defaults: threshold head-set path, row blocks on the CPU), runs
each ``--repeats`` times under ``jax.profiler`` and reads the trace back
(``jax.profiler.ProfileData``): every XLA operation's self time (its events minus the events nested
in them, e.g. a while loop minus its body), summed over the runtime's threads, is CPU time; each
operation is traced to the Python function that emitted it through the ``source_file`` /
``source_line`` metadata of the compiled HLO. It prints, per loss, the CPU ms per call and, for
HTA-KL, the share of each function: the head-set search (``losses/head_set.py``), the KL pair and
its backward (``losses/kd.py``), in units of the whole CE gradient ("CE units"), the yardstick of
issue 19's goal (HTA-KL <= 3 CE units), and its "full-size arrays": how many ``[rows, classes]``
arrays (or row blocks of them, under ``lax.map``) its operations read or write, each operation
counted once however often it runs (a search pass in a while loop counts once).

  python benchmarks/loss_profile.py --out loss_profile.json
  python benchmarks/loss_profile.py --teacher peaked --temperature 1

CPU times are sums over threads (the per-call wall time is lower where operations overlap); read
the shares, and take timings from ``benchmarks/loss.py``. The traced operations do not hold all
of the process's CPU time, and not the same fraction for every program: on a 2-core Xeon
(JAX 0.10.2) they held 76% of the HTA-KL gradient's ``time.process_time`` but 52% of CE's, so
the "CE units" overstate HTA-KL's ratio (7.6 against 5.2-5.3 by process CPU time there).
"""

from __future__ import annotations

import argparse
import collections
import glob
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from loss import teacher_logits

from htakl_jax import losses

from common import print_table, write_json

ROOT = Path(__file__).resolve().parent.parent

# An HLO instruction line: `%name = f32[64,32000]{1,0} op(...), ..., metadata={...}`.
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+?\[[\d,]*\])\S* ")
_FRAME = re.compile(r"stack_frame_id=(\d+)")
# The module's source tables: `1 "path"`, `1 {file_name_id=.. function_name_id=.. line=..}`,
# `1 {file_location_id=.. parent_frame_id=..}` under FileNames, FunctionNames, FileLocations and
# StackFrames.
_ENTRY = re.compile(r'^(\d+) (?:"(.*)"|\{(.*)\})$')
_DIMS = re.compile(r"\[([\d,]*)\]")
_OPERANDS = re.compile(r" [\w\-]+\((.*?)\)(?:,|$)")


def _source_tables(hlo_text: str) -> dict[str, dict[int, str | dict[str, int]]]:
    """The module's FileNames, FunctionNames, FileLocations and StackFrames tables by id."""
    tables: dict[str, dict] = {}
    current = None
    for line in hlo_text.splitlines():
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            current = tables.setdefault(line, {})
            continue
        m = _ENTRY.match(line) if current is not None else None
        if m is None:
            current = None
            continue
        if m.group(2) is not None:
            current[int(m.group(1))] = m.group(2)
        else:
            fields = (kv.split("=") for kv in m.group(3).split())
            current[int(m.group(1))] = {k: int(v) for k, v in fields}
    return tables


def instruction_table(hlo_text: str) -> dict[str, tuple[int, list[str], str]]:
    """Per HLO instruction name: (elements of its result, its operands' names, "file:function" of
    the Python code that emitted it, from its stack frame, or "")."""
    tables = _source_tables(hlo_text)
    frames, locations = tables.get("StackFrames", {}), tables.get("FileLocations", {})
    files, functions = tables.get("FileNames", {}), tables.get("FunctionNames", {})
    table = {}
    for line in hlo_text.splitlines():
        m = _INSTRUCTION.match(line)
        if m is None:
            continue
        dims = _DIMS.search(m.group(2)).group(1)
        elements = math.prod(int(d) for d in dims.split(",")) if dims else 1
        frame = _FRAME.search(line)
        source = ""
        if frame is not None and int(frame.group(1)) in frames:
            loc = locations[frames[int(frame.group(1))]["file_location_id"]]
            source = f"{_shown(files[loc['file_name_id']])}:{functions[loc['function_name_id']]}"
        operands = _OPERANDS.search(line[m.end() - 1 :])
        names = re.findall(r"%([\w.\-]+)", operands.group(1)) if operands else []
        table[m.group(1)] = (elements, names, source)
    return table


def _shown(path: str) -> str:
    """`path` relative to the repository, or its last two parts when outside it."""
    shown = os.path.relpath(path, ROOT)
    return "/".join(Path(path).parts[-2:]) if shown.startswith("..") else shown


def self_times(events: Iterable[tuple[str, int, int]]) -> dict[str, float]:
    """Self time (ns) per event name, from (name, start_ns, duration_ns) events of one thread:
    an event's duration minus that of the events nested directly inside it."""
    totals: dict[str, float] = collections.defaultdict(float)
    stack: list[list] = []  # [name, end, child time, duration]
    for name, start, duration in sorted(events, key=lambda e: (e[1], -e[2])):
        while stack and stack[-1][1] <= start:
            done = stack.pop()
            totals[done[0]] += done[3] - done[2]
        if stack:
            stack[-1][2] += duration
        stack.append([name, start + duration, 0.0, duration])
    for done in stack:
        totals[done[0]] += done[3] - done[2]
    return totals


def profile_ops(fn: Callable, args: tuple, repeats: int) -> tuple[dict[str, float], str]:
    """(CPU ns per call of each XLA operation of jitted `fn(*args)`, its compiled HLO text)."""
    compiled = jax.jit(fn).lower(*args).compile()
    jax.block_until_ready(compiled(*args))
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        for _ in range(repeats):
            jax.block_until_ready(compiled(*args))
        jax.profiler.stop_trace()
        (path,) = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
        data = jax.profiler.ProfileData.from_file(path)
    hlo = compiled.as_text()
    names = instruction_table(hlo)
    totals: dict[str, float] = collections.defaultdict(float)
    for plane in data.planes:
        for line in plane.lines:
            events = [(e.name, e.start_ns, e.duration_ns) for e in line.events if e.name in names]
            for name, ns in self_times(events).items():
                totals[name] += ns / repeats
    return dict(totals), hlo


def by_function(ops: dict[str, float], names: dict[str, tuple], big: int) -> list[dict]:
    """Rows per source function: CPU ms per call, operations run, and "full-size arrays": the
    arrays of >= `big` elements (the logits, or a row block of them) its operations read or
    write, i.e. its passes over the logits."""
    rows: dict[str, dict] = {}
    for op, ns in ops.items():
        elements, operands, source = names[op]
        row = rows.setdefault(source or "(no source)", {"ms": 0.0, "ops": 0, "full-size arrays": 0})
        row["ms"] += ns / 1e6
        row["ops"] += 1
        sizes = [elements] + [names[o][0] for o in operands if o in names]
        row["full-size arrays"] += sum(n >= big for n in sizes)
    return [{"function": k, **v} for k, v in sorted(rows.items(), key=lambda kv: -kv[1]["ms"])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--classes", type=int, default=32000)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--teacher", default="random", choices=["random", "peaked", "flat"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--top", type=int, default=12, help="functions shown for HTA-KL")
    parser.add_argument("--out", default=None, help="write results as JSON here")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    shape = (args.rows, args.classes)
    s = jnp.asarray(2.0 * rng.standard_normal(shape, dtype=np.float32))
    t = jnp.asarray(teacher_logits(args.teacher, *shape, rng))
    labels = jnp.asarray(rng.integers(0, args.classes, args.rows))
    tau = args.temperature
    # The teacher is an argument: a closed-over one would be constant-folded at compile time.
    grads = {
        "ce": (jax.grad(lambda s, y: jnp.mean(losses.cross_entropy(s, y))), (s, labels)),
        "fkl": (jax.grad(lambda s, t: jnp.mean(losses.forward_kl(s, t, temperature=tau))), (s, t)),
        "hta_kl": (jax.grad(lambda s, t: jnp.mean(losses.hta_kl(s, t, temperature=tau))), (s, t)),
    }
    block = losses.row_block_size(*shape) if jax.default_backend() == "cpu" else None
    big = (block or args.rows) * args.classes
    summary, breakdown = [], []
    for name, (grad, grad_args) in grads.items():
        ops, hlo = profile_ops(grad, grad_args, args.repeats)
        rows = by_function(ops, instruction_table(hlo), big)
        summary.append(
            {
                "loss": name,
                "cpu ms": sum(r["ms"] for r in rows),
                "full-size arrays": sum(r["full-size arrays"] for r in rows),
            }
        )
        if name == "hta_kl":
            breakdown = rows
    ce_ms = summary[0]["cpu ms"]
    for row in summary + breakdown:
        row["CE units"] = row.get("cpu ms", row.get("ms")) / ce_ms
    print(
        f"device={jax.devices()[0].device_kind} logits {shape}, {args.teacher} teacher, "
        f"temperature {tau}, row block {block}; CPU time per call, summed over threads"
    )
    print_table(summary, ["loss", "cpu ms", "CE units", "full-size arrays"])
    print(f"\nHTA-KL by source function (top {args.top}):")
    print_table(breakdown[: args.top], ["function", "ms", "CE units", "ops", "full-size arrays"])
    payload = {"benchmark": "loss-profile", "summary": summary, "hta_kl_by_function": breakdown}
    write_json(args.out, payload | {"args": vars(args)})


if __name__ == "__main__":
    main()
