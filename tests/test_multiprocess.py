"""Two processes x 2 CPU devices (jax.distributed, loopback coordinator, gloo collectives) train
like one process x 4 devices; only process 0 writes metrics and logs; both resume a checkpoint."""

import importlib.util
import os
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location(
    "kill_resume", ROOT / "benchmarks" / "kill_resume.py"
)
kill_resume = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kill_resume)

FLAGS = (
    "--config.model.width_mult=0.0625",
    "--config.teacher.epochs=1",
    "--config.teacher.batch_size=256",  # 5 steps per epoch over the 1437 digits
    # A small LR (as in test_parallel) keeps float32 reordering noise from being amplified.
    "--config.teacher.lr=0.005",
    "--config.eval.batch_size=128",
    "--config.log_every_steps=1",
    "--mode=teacher",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(cache_dir, devices: int) -> dict[str, str]:
    env = kill_resume.env_with_cache(cache_dir)
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _two_processes(workdir, flags, env, timeout: float = 400) -> list[subprocess.CompletedProcess]:
    """Runs the CLI as processes 0 and 1 of a 2-process job; kills both if either hangs."""
    port = _free_port()
    procs = [
        subprocess.Popen(
            kill_resume.command(workdir, flags)
            + [
                f"--config.distributed.coordinator_address=localhost:{port}",
                "--config.distributed.num_processes=2",
                f"--config.distributed.process_id={i}",
            ],
            cwd=kill_resume.ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in (0, 1)
    ]
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return results


def _skip_if_no_collectives(results) -> None:
    for r in results:
        if r.returncode and any(w in r.stderr.lower() for w in ("gloo", "collectives")):
            pytest.skip(f"CPU multi-process collectives unavailable: {r.stderr[-500:]}")


@pytest.mark.slow
def test_two_processes_match_one_process_and_resume(tmp_path):
    cache = tmp_path / "jax_cache"
    r = kill_resume.run_to_end(tmp_path / "single", _env(cache, 4), flags=FLAGS)
    assert r.returncode == 0, r.stderr[-3000:]
    single = kill_resume.final_state(tmp_path / "single")

    multi_dir = tmp_path / "multi"
    results = _two_processes(multi_dir, FLAGS, _env(cache, 2))
    _skip_if_no_collectives(results)
    for i, r in enumerate(results):
        assert r.returncode == 0, f"process {i}:\n{r.stderr[-3000:]}"
    assert "process 0/2" in results[0].stderr and "teacher epoch 1/1" in results[0].stderr
    assert "teacher epoch" not in results[1].stderr  # process 1 does not log progress
    multi = kill_resume.final_state(multi_dir)  # also: one metrics line, written once
    assert multi["epochs"] == single["epochs"] == [1]
    assert multi["step"] == single["step"] == 5

    # Not bitwise: gloo sums the two processes' partial gradients and BN moments in a different
    # order than XLA's in-process all-reduce, so float32 rounding differs (~1e-7 after 5 steps).
    assert set(multi["arrays"]) == set(single["arrays"])
    for key, x in single["arrays"].items():
        if x.dtype == object:  # optax's EmptyState placeholders
            continue
        y = multi["arrays"][key]
        scale = max(float(np.abs(x).max()), 1.0)
        tol = 1e-4 * scale if "opt_state" in key else 1e-5 * scale  # momentum = raw gradients
        np.testing.assert_allclose(y, x, rtol=0, atol=tol, err_msg=key)

    # Both processes restore the shared checkpoint and continue from step 5.
    more = tuple(f.replace("epochs=1", "epochs=2") for f in FLAGS)
    results = _two_processes(multi_dir, more, _env(cache, 2))
    for i, r in enumerate(results):
        assert r.returncode == 0, f"process {i}:\n{r.stderr[-3000:]}"
    assert "teacher: resumed from step 5" in results[0].stderr
    resumed = kill_resume.final_state(multi_dir)
    assert resumed["step"] == 10 and resumed["epochs"] == [1, 2]
    assert sorted(os.listdir(multi_dir / "teacher" / "checkpoints")) == ["10", "5"]
