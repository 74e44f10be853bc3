"""The experiment grid under faults: SIGKILL the grid CLI at random moments, rerun it, compare
every table with an uninterrupted grid byte for byte.

  python benchmarks/kill_grid.py --trials 10 --workdir /tmp/kill_grid

A tiny digits grid (`GRID`: FKL and HTA-KL at T=1, seeds 0 and 1, width 1/16, two teacher and two
student epochs of 5 steps, analysis on 48 eval images, no t-SNE) runs uninterrupted twice. The
first fills a JAX compilation cache that every later run shares; the second (warm, as the trials
are) is the reference: its duration spreads the kill times, a watcher records when it writes
what (its timeline), and it must equal the first (else the grid is not deterministic and a
mismatch below would mean nothing). Then each trial starts the grid in a fresh workdir and
SIGKILLs it once:
- even trials at a random moment, stratified over the reference duration (the k-th of n such
  trials in the k-th n-th of it), located by the writes before it (d seconds after the reference's
  e-th write becomes d seconds, scaled by the run's speed, after the trial's e-th write), so that
  a run slower or faster than the reference is killed at the same stage;
- odd trials the moment the watcher sees the n-th write of a kind begin (kinds `WRITES`, in
  turn; n at random among the reference's writes of that kind): an Orbax checkpoint (its temporary
  folder), a cell's results.json (its .tmp, else the file itself), a cell's analysis/ folder (the
  cell writing its report) or the grid's report (table1.md or plots/);
then reruns the grid to completion in that workdir and compares the files `COMPARED` names
(the grid's tables, CSV, JSON and plots; each cell's results.json, cell.json, config.json,
metrics.jsonl and analysis files) with the reference's: the same set of files, the same bytes.
Before comparing, exactly this is stripped: the workdir path (cell files name it) becomes
"WORKDIR", and JSON keys / CSV columns / Markdown table columns named like a wall time or a rate
(`TIME_FIELD`: ..._time_s, eta_s, steps_per_s, images_per_s, time, timestamp, wall, elapsed)
are dropped. The grid's tables hold none; the cells' metrics.jsonl do. PNGs are compared byte
for byte too (matplotlib writes no date into them). A leftover ``*.tmp`` file is reported.
Prints a table of the trials and a JSON summary (also WORKDIR/summary.json; run logs in
WORKDIR/logs/); exits 1 on any mismatch or failed rerun. A trial whose grid finished before its
kill moment still counts (its rerun is compared) but is listed as 'finished first'.
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from kill_resume import ROOT, TMP_MARK, env_with_cache

from common import print_table

GRID = (
    f"--config={ROOT / 'configs' / 'compare.py'}:quickstart",
    "--config.base.model.width_mult=0.0625",
    "--config.base.teacher.epochs=2",
    "--config.base.teacher.batch_size=256",
    "--config.base.student.epochs=2",
    "--config.base.student.batch_size=256",
    "--config.base.eval.timesteps=(1,)",
    "--config.base.eval.batch_size=128",
    "--config.grid.methods=('fkl','hta_kl')",
    "--config.grid.timesteps=(1,)",
    "--config.grid.seeds=(0,1)",
    "--config.ablation.head_ratios=()",
    "--config.analysis.num_examples=48",
    "--config.analysis.batch_size=48",
    "--config.analysis.tsne_examples=0",
)
WRITES = ("analysis", "results", "checkpoint", "report")
COMPARED = (
    "*.md",
    "results.csv",
    "results.json",
    "plots/*.png",
    "teacher/metrics.jsonl",
    "cells/*/results.json",
    "cells/*/cell.json",
    "cells/*/config.json",
    "cells/*/student/metrics.jsonl",
    "cells/*/analysis/*",
)
TIME_FIELD = re.compile(r"(^|_)(time|timestamp|wall|elapsed|eta)(_s)?$|_per_s$")
POLL_S = 0.001


# ----------------------------------------------------------------------------- runs


def command(workdir: Path) -> list[str]:
    return [sys.executable, "-m", "htakl_jax.experiments", f"--workdir={workdir}", *GRID]


def run_to_end(workdir: Path, env: dict, log: Path, timeout: float) -> tuple[int, float]:
    """Runs the grid to completion (resuming whatever `workdir` holds); (exit code, seconds)."""
    start = time.monotonic()
    with open(log, "a") as out:
        r = subprocess.run(
            command(workdir), cwd=ROOT, env=env, stdout=out, stderr=out, timeout=timeout
        )
    return r.returncode, time.monotonic() - start


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def scan(workdir: Path) -> dict[tuple[str, str], str]:
    """What is being (or has been) written now: {(kind, object): what was seen}. A kind's object
    is the checkpoint's temporary folder, the cell, or the grid."""
    seen = {}
    cells = workdir / "cells"
    phase_dirs = [workdir / "teacher"] + [cells / c / "student" for c in _listdir(cells)]
    for phase in phase_dirs:
        for sub in ("checkpoints", "best"):
            for name in _listdir(phase / sub):
                if TMP_MARK in name:
                    rel = str((phase / sub / name).relative_to(workdir))
                    seen["checkpoint", rel] = rel
    for cell in _listdir(cells):
        files = _listdir(cells / cell)
        for name in ("results.json.tmp", "results.json"):
            if name in files:
                seen["results", cell] = f"{cell}/{name}"
                break
        if "analysis" in files:
            written = sorted(_listdir(cells / cell / "analysis"))
            seen["analysis", cell] = f"{cell}/analysis/ holding {written}"
    top = _listdir(workdir)
    for name in ("table1.md.tmp", "table1.md", "plots"):
        if name in top:
            seen["report", "grid"] = name
            break
    return seen


def watch(
    workdir: Path, env: dict, log: Path, *, timeout: float, kill: dict | None = None
) -> dict[str, Any]:
    """Starts the grid and watches its writes; SIGKILLs it at the moment `kill` names
    (`kill_now`; None lets it finish). Returns the timeline [(seconds, kind, what)] and when the
    run was killed, while writing what."""
    out = open(log, "a")  # noqa: SIM115 (closed below, after the process)
    proc = subprocess.Popen(
        command(workdir), cwd=ROOT, env=env, stdout=out, stderr=out, start_new_session=True
    )
    start, timeline, known = time.monotonic(), [], set()
    result: dict[str, Any] = {"killed_at": None, "writing": None}
    try:
        while proc.poll() is None:
            t = time.monotonic() - start
            if t > timeout:
                raise TimeoutError(f"grid in {workdir} ran past {timeout:.0f} s")
            seen = scan(workdir)
            new = [(key, what) for key, what in seen.items() if key not in known]
            known |= set(seen)
            timeline += [(round(t, 3), key[0], what) for key, what in new]
            hit = kill_now(kill, t, new, timeline)
            if hit is not None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                result |= {"killed_at": round(t, 3), "writing": hit}
                break
            time.sleep(POLL_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        out.close()
    return result | {
        "returncode": proc.returncode,
        "seconds": time.monotonic() - start,
        "timeline": timeline,
    }


def kill_now(kill: dict | None, t: float, new: list, timeline: list) -> str | None:
    """What is being written if the run is to be killed now (at `t` s, `new` writes just seen,
    `timeline` so far), else None. `kill` (see `plan`): {'kind': K, 'nth': n} at the n-th write
    of kind K; {'after_events': e, 'delay': d, 'ref_time': r}: d seconds (scaled by this run's
    speed relative to the reference's) after the e-th write, which the reference saw at r s."""
    if kill is None:
        return None
    if "nth" in kill:
        hits = [what for key, what in new if key[0] == kill["kind"]]
        count = sum(kind == kill["kind"] for _, kind, _ in timeline)
        return f"{kill['kind']}: {hits[-1]}" if hits and count >= kill["nth"] else None
    e = kill["after_events"]
    if len(timeline) < e:
        return None
    t_e = timeline[e - 1][0] if e else 0.0
    scale = t_e / kill["ref_time"] if e and kill["ref_time"] > 0 else 1.0
    if t < t_e + kill["delay"] * scale:
        return None
    if new:
        return "; ".join(f"{key[0]}: {what}" for key, what in new)
    last = f"{timeline[e - 1][1]}: {timeline[e - 1][2]}" if e else "start"
    return f"{t - t_e:.2f} s after {last}"


# ----------------------------------------------------------------------------- comparison


def _strip_json(obj: Any, stripped: set[str]) -> Any:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if TIME_FIELD.search(k):
                stripped.add(k)
            else:
                out[k] = _strip_json(v, stripped)
        return out
    if isinstance(obj, list):
        return [_strip_json(v, stripped) for v in obj]
    return obj


def _strip_csv(text: str, stripped: set[str]) -> str:
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return text
    keep = [i for i, h in enumerate(rows[0]) if not TIME_FIELD.search(h)]
    if len(keep) == len(rows[0]):
        return text
    stripped |= {h for h in rows[0] if TIME_FIELD.search(h)}
    out = io.StringIO()
    csv.writer(out).writerows([[r[i] for i in keep if i < len(r)] for r in rows])
    return out.getvalue()


def _strip_markdown(text: str, stripped: set[str]) -> str:
    """Drops the Markdown table columns whose header is a time field (other lines unchanged)."""
    out, keep = [], None
    for line in text.splitlines(keepends=True):
        if not line.startswith("|"):
            out.append(line)
            keep = None
            continue
        cells = line.rstrip("\n").strip("|").split("|")
        if keep is None:  # the header row
            heads = [c.strip().lower() for c in cells]
            keep = [i for i, h in enumerate(heads) if not TIME_FIELD.search(h)]
            stripped |= {h for h in heads if TIME_FIELD.search(h)}
        out.append("|" + "|".join(c for i, c in enumerate(cells) if i in keep) + "|\n")
    return "".join(out)


def normalised(path: Path, workdir: Path, stripped: set[str]) -> bytes:
    """The file's bytes, with the workdir path and the time fields stripped (module docstring).
    A JSON file is written out again (keys in their order) only when it had a time field."""
    if path.suffix in (".png", ".npz"):
        return path.read_bytes()
    text = path.read_text().replace(str(workdir), "WORKDIR")
    found: set[str] = set()
    if path.suffix == ".json":
        obj = _strip_json(json.loads(text), found)
        text = json.dumps(obj) if found else text
    elif path.suffix == ".jsonl":
        lines = [_strip_json(json.loads(x), found) for x in text.splitlines()]
        text = "\n".join(json.dumps(x) for x in lines) if found else text
    elif path.suffix == ".csv":
        text = _strip_csv(text, found)
    elif path.suffix == ".md":
        text = _strip_markdown(text, found)
    stripped |= found
    return text.encode()


def compared_files(workdir: Path) -> list[str]:
    found = set()
    for pattern in COMPARED:
        found |= {
            str(Path(p).relative_to(workdir))
            for p in glob.glob(str(workdir / pattern))
            if os.path.isfile(p) and not p.endswith(".tmp")
        }
    return sorted(found)


def compare(reference: Path, other: Path, stripped: set[str]) -> list[str]:
    """The files that differ between two grid workdirs, or that only one of them has."""
    ref, got = compared_files(reference), compared_files(other)
    diffs = [f"only in the reference: {f}" for f in sorted(set(ref) - set(got))]
    diffs += [f"only in the rerun: {f}" for f in sorted(set(got) - set(ref))]
    for f in sorted(set(ref) & set(got)):
        a = normalised(reference / f, reference, stripped)
        if a != normalised(other / f, other, stripped):
            diffs.append(f"differs: {f}")
    return diffs


def leftover_tmp(workdir: Path) -> list[str]:
    return sorted(
        str(p.relative_to(workdir)) for p in workdir.rglob("*.tmp") if TMP_MARK not in str(p)
    )


# ----------------------------------------------------------------------------- trials


def plan(
    trials: int,
    rng: random.Random,
    duration: float,
    timeline: list,
    writes: tuple[str, ...] = WRITES,
) -> list[dict]:
    """Each trial's kill (`kill_now`). Even trials at a random moment of the reference's
    `duration`, stratified (the k-th of n such trials in its k-th n-th), located by the writes
    before it so that a faster or slower run is killed at the same stage; odd trials at a write,
    cycling through `writes`, at a random one of the reference's writes of that kind."""
    n_time = (trials + 1) // 2
    out = []
    for i in range(trials):
        kind = writes[(i // 2) % len(writes)]
        n = sum(k == kind for _, k, _ in timeline)
        if i % 2 == 1 and n:
            out.append({"kind": kind, "nth": rng.randrange(n) + 1})
            continue
        t_ref = duration * (i // 2 + rng.random()) / n_time
        e = sum(t <= t_ref for t, _, _ in timeline)
        ref_time = timeline[e - 1][0] if e else 0.0
        out.append(
            {
                "at_ref_s": round(t_ref, 2),
                "after_events": e,
                "ref_time": ref_time,
                "delay": t_ref - ref_time,
            }
        )
    return out


def trial(root: Path, i: int, kill: dict, env: dict, reference: Path, timeout: float) -> dict:
    workdir, log = root / f"trial{i}", root / "logs" / f"trial{i}.log"
    killed = watch(workdir, env, log, timeout=timeout, kill=kill)
    row = {
        "trial": i,
        "kill": f"time ({kill['at_ref_s']} s)"
        if "delay" in kill
        else f"{kill['kind']} #{kill['nth']}",
        "killed_at_s": killed["killed_at"],
        "writing": killed["writing"] or f"finished first (exit {killed['returncode']})",
    }
    code, seconds = run_to_end(workdir, env, log, timeout)
    stripped: set[str] = set()
    diffs = [f"rerun exit {code}"] if code else compare(reference, workdir, stripped)
    row |= {
        "rerun_s": round(seconds, 1),
        "identical": "yes" if not diffs else "NO",
        "differences": diffs,
        "leftover_tmp": leftover_tmp(workdir),
        "stripped": sorted(stripped),
    }
    if not diffs:
        shutil.rmtree(workdir)
    return row


def references(root: Path, env: dict, timeout: float) -> dict[str, Any]:
    """The cold run (fills the cache), then the watched warm reference; checks they agree."""
    start = time.monotonic()
    code, cold_s = run_to_end(root / "cold", env, root / "logs" / "cold.log", timeout)
    if code:
        sys.exit(f"uninterrupted grid failed (exit {code}); see {root / 'logs' / 'cold.log'}")
    ref = watch(root / "reference", env, root / "logs" / "reference.log", timeout=timeout)
    if ref["returncode"]:
        sys.exit(f"reference grid failed; see {root / 'logs' / 'reference.log'}")
    stripped: set[str] = set()
    diffs = compare(root / "cold", root / "reference", stripped)
    warm_s = ref["seconds"]
    print(f"uninterrupted grid: {cold_s:.1f} s first (filling the cache), then {warm_s:.1f} s")
    print(f"reference timeline (s, kind, what): {json.dumps(ref['timeline'])}")
    if diffs:
        print(f"two uninterrupted grids differ: {diffs}")
    return {
        "cold_s": round(cold_s, 1),
        "warm_s": round(ref["seconds"], 1),
        "timeline": ref["timeline"],
        "uninterrupted_runs_agree": not diffs,
        "uninterrupted_differences": diffs,
        "stripped": sorted(stripped),
        "setup_s": round(time.monotonic() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument(
        "--workdir", default="/tmp/htakl_kill_grid", help="emptied first, then holds every run"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--writes",
        default=",".join(WRITES),
        help=f"the write kinds the odd trials cycle through (default {','.join(WRITES)})",
    )
    parser.add_argument(
        "--reuse-cache",
        action="store_true",
        help="keep WORKDIR/jax_cache of an earlier run (the first grid is then not cold)",
    )
    args = parser.parse_args()
    writes = tuple(args.writes.split(","))
    if not writes or set(writes) - set(WRITES):
        parser.error(f"--writes: choose from {','.join(WRITES)}")
    root = Path(args.workdir).resolve()
    for path in root.glob("*"):
        if args.reuse_cache and path.name == "jax_cache":
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    (root / "logs").mkdir(parents=True)
    env = env_with_cache(root / "jax_cache")
    env["HTAKL_JAX_COMPILATION_CACHE"] = str(root / "jax_cache")  # wins over a user setting
    rng = random.Random(args.seed)

    ref = references(root, env, timeout=3600)
    timeout = 3 * ref["cold_s"] + 600
    rows = []
    for i, kill in enumerate(plan(args.trials, rng, ref["warm_s"], ref["timeline"], writes)):
        rows.append(trial(root, i, kill, env, root / "reference", timeout))
        r = rows[-1]
        print(f"trial {i}: killed at {r['killed_at_s']} s ({r['writing']}); {r['identical']}")
    columns = ["trial", "kill", "killed_at_s", "writing", "rerun_s", "identical"]
    print_table(rows, columns)
    summary = {
        "trials": args.trials,
        "seed": args.seed,
        "writes": writes,
        "killed": sum(r["killed_at_s"] is not None for r in rows),
        "identical": sum(r["identical"] == "yes" for r in rows),
        "reference": ref,
        "rows": rows,
    }
    (root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(
        json.dumps(
            {k: v for k, v in summary.items() if k != "reference"}
            | {"reference": {k: v for k, v in ref.items() if k != "timeline"}},
            indent=2,
        )
    )
    ok = summary["identical"] == args.trials and ref["uninterrupted_runs_agree"]
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
