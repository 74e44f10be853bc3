"""One run per workdir: the lock file, its holder, stale locks and the CLI's refusal."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from htakl_jax import locking

ROOT = Path(__file__).resolve().parent.parent


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_second_holder_is_refused_naming_the_first(tmp_path):
    workdir = tmp_path / "work"
    with locking.workdir_lock(str(workdir)):
        holder = json.loads((workdir / locking.LOCK_FILE).read_text())
        assert holder["host"] == socket.gethostname()
        match = rf"workdir .*work is in use by process {holder['pid']} on {socket.gethostname()}"
        with pytest.raises(locking.WorkdirInUse, match=match):
            with locking.workdir_lock(str(workdir)):
                pass
        assert (workdir / locking.LOCK_FILE).is_file()  # the refusal leaves the holder's lock
    # Released on exit; the workdir it created is removed again because it is empty.
    assert not workdir.exists()


def test_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path):
    (tmp_path / "out.txt").write_text("kept")
    stale = {"pid": _dead_pid(), "host": socket.gethostname(), "start": "1"}
    (tmp_path / locking.LOCK_FILE).write_text(json.dumps(stale))
    assert not locking.holder_alive(stale)
    with pytest.warns(UserWarning, match=rf"process {stale['pid']} .* is gone"):
        with locking.workdir_lock(str(tmp_path)):
            mine = json.loads((tmp_path / locking.LOCK_FILE).read_text())
            assert mine["pid"] != stale["pid"]
    assert not (tmp_path / locking.LOCK_FILE).exists()
    assert (tmp_path / "out.txt").read_text() == "kept"  # an existing workdir stays


def test_damaged_lock_is_taken_over_and_other_hosts_are_not(tmp_path):
    (tmp_path / locking.LOCK_FILE).write_text("{half")
    with pytest.warns(UserWarning, match="is gone"):
        with locking.workdir_lock(str(tmp_path)):
            pass
    other = {"pid": 1, "host": "another-host.invalid", "start": None}
    (tmp_path / locking.LOCK_FILE).write_text(json.dumps(other))
    assert locking.holder_alive(other)  # cannot be checked from here
    with pytest.raises(locking.WorkdirInUse, match="another-host.invalid.*delete the lock file"):
        with locking.workdir_lock(str(tmp_path)):
            pass


def test_disabled_lock_holds_nothing(tmp_path):
    with locking.workdir_lock(str(tmp_path / "w"), enabled=False):
        assert not (tmp_path / "w").exists()


def test_cli_refuses_a_locked_workdir_before_compiling(tmp_path):
    workdir = tmp_path / "work"
    cmd = [
        sys.executable,
        "-m",
        "htakl_jax.main",
        f"--config={ROOT / 'configs' / 'quickstart.py'}",
        f"--workdir={workdir}",
    ]
    with locking.workdir_lock(str(workdir)):
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    assert "error: workdir" in r.stderr and "is in use by process" in r.stderr
    assert "Traceback" not in r.stderr and "compil" not in r.stderr.lower()
    assert not workdir.exists()  # nothing written; the lock (ours) is gone too
