"""Crash-anywhere resume: SIGKILL a training run at random moments, rerun it, compare the result.

  python benchmarks/kill_resume.py --trials 20 --workdir /tmp/kill_resume

Each trial starts the CLI (a tiny digits teacher run), SIGKILLs it once, either the moment Orbax
starts writing a checkpoint (a `*.orbax-checkpoint-tmp-*` folder appears) or at a random time
after the first checkpoint exists, then reruns the same command to completion. The final
parameters, BN statistics, optimizer state, step and per-epoch eval accuracies are compared with
an uninterrupted run; on CPU they must be bitwise identical. Prints how many trials were identical.
tests/test_faults.py uses the same functions with a few kills.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = str(ROOT / "configs" / "quickstart.py")
PHASE = "teacher"
TMP_MARK = ".orbax-checkpoint-tmp"
# Tiny teacher run: 90 steps per epoch, one checkpoint and one eval per epoch.
FLAGS = (
    "--config.model.width_mult=0.0625",
    "--config.teacher.epochs=5",
    "--config.teacher.batch_size=16",
    "--config.eval.batch_size=128",
    "--config.log_every_steps=20",
    "--mode=teacher",
)


def env_with_cache(cache_dir: str | os.PathLike) -> dict[str, str]:
    """The current environment plus a persistent JAX compilation cache shared by all runs."""
    env = dict(os.environ)
    env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    return env


def command(workdir: str | os.PathLike, flags: tuple[str, ...] = FLAGS) -> list[str]:
    return [
        sys.executable,
        "-m",
        "htakl_jax.main",
        f"--config={QUICKSTART}",
        f"--workdir={workdir}",
        *flags,
    ]


def run_to_end(workdir, env, flags=FLAGS, timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs the CLI to completion (resuming whatever `workdir` holds)."""
    return subprocess.run(
        command(workdir, flags), cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def _tmp_dirs(phase_dir: Path) -> set[str]:
    found = set()
    for sub in ("checkpoints", "best"):
        d = phase_dir / sub
        if d.is_dir():
            found |= {f"{sub}/{n}" for n in os.listdir(d) if TMP_MARK in n}
    return found


def _has_checkpoint(phase_dir: Path) -> bool:
    d = phase_dir / "checkpoints"
    return d.is_dir() and any(n.isdigit() for n in os.listdir(d))


def run_and_kill(
    workdir, env, *, moment: str, rng: random.Random, flags=FLAGS, timeout: float = 600
) -> str:
    """Starts the CLI and SIGKILLs it at `moment` ('write': as a checkpoint write begins;
    'random': 0-1.5 s after the first checkpoint exists). Returns what happened, for the report."""
    if moment not in ("write", "random"):
        raise ValueError(f"moment must be 'write' or 'random', got {moment!r}")
    phase_dir = Path(workdir) / PHASE
    before = _tmp_dirs(phase_dir)  # leftovers of earlier kills are not a new write
    proc = subprocess.Popen(
        command(workdir, flags),
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    kill_at = None
    try:
        while proc.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"run in {workdir} did not reach the kill moment")
            if moment == "write":
                new = _tmp_dirs(phase_dir) - before
                if new:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    return f"killed during write of {sorted(new)}"
            else:
                if kill_at is None and _has_checkpoint(phase_dir):
                    delay = rng.uniform(0.0, 1.5)
                    kill_at = time.monotonic() + delay
                if kill_at is not None and time.monotonic() >= kill_at:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    return f"killed {delay:.2f} s after the first checkpoint"
            time.sleep(0.0005)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return f"finished before the kill (exit {proc.returncode})"


def final_state(workdir) -> dict[str, Any]:
    """Arrays of the newest latest/ checkpoint, its step, and the per-epoch eval accuracies."""
    import jax  # imported here: the runner itself needs no JAX
    import orbax.checkpoint as ocp

    phase_dir = Path(workdir) / PHASE
    ck_dir = phase_dir / "checkpoints"
    step = max(int(n) for n in os.listdir(ck_dir) if n.isdigit())
    arrays = {}
    for item in ("variables", "train"):
        path = ck_dir / str(step) / item
        # As host NumPy arrays: this process may have other devices than the one that saved.
        with ocp.PyTreeCheckpointer() as checkpointer:
            structure = checkpointer.metadata(path).item_metadata.tree
            restore_args = jax.tree.map(
                lambda _: ocp.RestoreArgs(restore_type=np.ndarray), structure
            )
            tree = checkpointer.restore(
                path, args=ocp.args.PyTreeRestore(restore_args=restore_args)
            )
        flat = _flatten(tree, item)
        arrays |= {k: np.asarray(v) for k, v in flat.items()}
    records = [json.loads(line) for line in (phase_dir / "metrics.jsonl").read_text().splitlines()]
    return {
        "step": step,
        "arrays": arrays,
        "epochs": [r["epoch"] for r in records],
        "eval_accuracy": [r["eval_accuracy"] for r in records],
    }


def _flatten(tree: Any, prefix: str) -> dict[str, Any]:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out |= _flatten(v, f"{prefix}/{k}")
        return out
    if isinstance(tree, list | tuple):
        out = {}
        for i, v in enumerate(tree):
            out |= _flatten(v, f"{prefix}/{i}")
        return out
    return {prefix: tree}


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Human-readable differences between two `final_state`s (empty = bitwise identical)."""
    diffs = [f"{k}: {a[k]} != {b[k]}" for k in ("step", "epochs", "eval_accuracy") if a[k] != b[k]]
    if set(a["arrays"]) != set(b["arrays"]):
        return diffs + [f"array keys differ: {sorted(set(a['arrays']) ^ set(b['arrays']))}"]
    for k, x in a["arrays"].items():
        y = b["arrays"][k]
        if x.shape != y.shape or x.dtype != y.dtype or x.tobytes() != y.tobytes():
            diffs.append(f"{k}: max |diff| {np.max(np.abs(x.astype(float) - y)):.3g}")
    return diffs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--workdir", default="/tmp/htakl_kill_resume")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    root = Path(args.workdir)
    shutil.rmtree(root, ignore_errors=True)
    env = env_with_cache(root / "jax_cache")
    rng = random.Random(args.seed)

    r = run_to_end(root / "reference", env)
    if r.returncode:
        sys.exit(f"uninterrupted run failed:\n{r.stderr[-3000:]}")
    reference = final_state(root / "reference")
    identical = 0
    for trial in range(args.trials):
        workdir = root / f"trial{trial}"
        moment = ("write", "random")[trial % 2]
        what = run_and_kill(workdir, env, moment=moment, rng=rng)
        r = run_to_end(workdir, env)
        if r.returncode:
            print(f"trial {trial}: {what}; resume FAILED (exit {r.returncode})", flush=True)
            continue
        diffs = differences(reference, final_state(workdir))
        identical += not diffs
        verdict = "identical" if not diffs else "DIFFERENT: " + "; ".join(diffs[:3])
        print(f"trial {trial}: {what}; {verdict}", flush=True)
        shutil.rmtree(workdir)
    print(f"{identical}/{args.trials} trials identical to the uninterrupted run")
    sys.exit(0 if identical == args.trials else 1)


if __name__ == "__main__":
    main()
