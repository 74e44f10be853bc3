"""CPU rehearsal of the GPU session's two calls: the one-command reproduction
(results/gpu/run.sh, reproduce.py) and the benchmark goal run (benchmarks/gpu.sh --part goal),
with the offline wheels they install from (results/gpu/wheels.sh).

The smoke setting runs the same script, on a few hundred generated images packed like the real
data, with the same phases and output files; this is what proves the GPU run will not die on an
import, a path or a missing output.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from htakl_jax.data import pack

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("reproduce", ROOT / "results/gpu/reproduce.py")
reproduce = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reproduce)

OUTPUTS = ("results.md", "results.json", "metrics.jsonl", "log.txt")


@pytest.fixture(scope="module")
def packed_file(tmp_path_factory) -> Path:
    """10 classes x (32 train + 8 test) 32x32 PNGs whose brightness tells the class, packed."""
    root = tmp_path_factory.mktemp("images")
    for split, n in (("train", 32), ("test", 8)):
        for c in range(10):
            (root / split / f"class{c}").mkdir(parents=True)
            for i in range(n):
                rng = np.random.default_rng([c, i, len(split)])
                pixels = (rng.integers(0, 60, (32, 32, 3)) + 19 * c).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / f"class{c}" / f"{i:03d}.png")
    out = root / "small.npz"
    pack.pack_image_folder(root, out)
    return out


def _run(packed_file: Path, out: Path, work: Path, *flags: str) -> subprocess.CompletedProcess:
    command = ["bash", "results/gpu/run.sh", str(packed_file), str(out), "--smoke"]
    command += ["--work", str(work), *flags]
    # run.sh calls python3: this interpreter's, also when its venv is not activated.
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)


@pytest.mark.slow
def test_smoke_run_writes_every_output(packed_file, tmp_path):
    # A budget no loaded machine reaches: this checks the outputs, not the speed (the budget's
    # skipping has its own test below; the GPU run keeps its 540 s default).
    r = _run(packed_file, tmp_path / "out", tmp_path / "work", "--budget-s", "36000")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)
    record = json.loads((out / "results.json").read_text())
    phases = {p["name"]: p for p in record["phases"]}
    assert list(phases) == ["teacher", *reproduce.METHODS]
    assert all(p["status"] == "done" for p in phases.values())
    assert 0.0 <= phases["teacher"]["accuracy"]["ann"] <= 1.0
    for method in reproduce.METHODS:
        assert set(phases[method]["accuracy"]) == {"1", "2", "4"}
        assert phases[method]["teacher_accuracy"] == phases["teacher"]["accuracy"]["ann"]
        assert phases[method]["pure_step_ms"] > 0 and phases[method]["train_images_per_s"] > 0
        spikes = phases[method]["spikes"]  # firing rates and energy, as the budget allowed
        assert spikes["status"] == "done" and spikes["images"] == 80 and spikes["timesteps"] == 2
        assert 0.0 < spikes["firing_rate"] < 1.0 and 0.0 < spikes["pre_classifier_rate"] < 1.0
        # Same topology: the student's dense-equivalent operations are T x the teacher's MACs.
        assert spikes["ops"] == pytest.approx(2 * spikes["teacher_ops"], rel=1e-6)
        assert 0.0 < spikes["acs"] < spikes["ops"] and 0.0 < spikes["macs"] < spikes["ops"]
        pj = 0.9 * spikes["acs"] + 4.6 * spikes["macs"]  # the 45 nm model (SPEC §5)
        assert spikes["energy_mj"] == pytest.approx(pj * 1e-9, rel=1e-6)
    assert record["data"] == record["data"] | {"train_images": 320, "test_images": 80}
    assert record["environment"]["versions"]["jax"] and record["environment"]["devices"]
    assert record["config"]["model"]["dtype"] == "bfloat16"
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m.get("method", m["phase"]) for m in metrics] == ["teacher", *reproduce.METHODS]
    table = (out / "results.md").read_text()
    assert "| Teacher ANN | 1 |" in table and "| HTA-KL | 1 | - |" in table
    assert "teacher epoch 1/1" in (out / "log.txt").read_text()
    assert "| Method | Architecture | Firing Rate | OPs | ACs | MACs | Energy |" in table
    assert table.count("| CE (no KD) |") == 2  # a row in each table


def test_a_phase_that_cannot_finish_in_the_budget_is_skipped(packed_file, tmp_path):
    r = _run(packed_file, tmp_path / "out", tmp_path / "work", "--budget-s", "5")
    assert r.returncode == 0, r.stderr[-3000:]
    record = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [p["name"] for p in record["phases"]] == ["teacher"]  # no teacher: no students
    assert record["phases"][0]["status"].startswith("skipped: ~")
    assert "skipped" in (tmp_path / "out" / "results.md").read_text()
    assert not (tmp_path / "work" / "teacher").exists()


def test_a_student_with_a_non_finite_loss_is_recorded_as_failed_and_the_next_one_runs(
    packed_file, tmp_path, monkeypatch
):
    """The control flow around the phases (the phases themselves are stubs here: the smoke run
    above trains them; FloatingPointError itself is raised by metrics.StepMetrics)."""
    work, out = tmp_path / "work", tmp_path / "out"
    monkeypatch.setattr(reproduce.jax.config, "update", lambda *args: None)  # no cache dir
    teacher_phase = {"name": "teacher", "status": "done", "accuracy": {"ann": 0.5}}

    def fake_teacher(*args, **kwargs):
        return teacher_phase | _timing(), [{"epoch": 1, "phase": "teacher"}], {"params": {}}

    def fake_student(method, config, work, budget, **kwargs):
        if method == "hta_kl":  # one epoch finished, then the loss became NaN
            phase_dir = Path(reproduce.runs.phase_dir(str(work / method), "student"))
            phase_dir.mkdir(parents=True)
            (phase_dir / "metrics.jsonl").write_text(json.dumps({"epoch": 1}) + "\n")
            raise FloatingPointError("non-finite loss nan at training step 12 (epoch 2)")
        accuracy = {"1": 0.3, "2": 0.4, "4": 0.4}
        phase = {"name": method, "status": "done", "accuracy": accuracy} | _timing()
        return phase, [{"epoch": 1, "phase": "student", "method": method}]

    measured = []

    def fake_spike_energy(config, student_dir, eval_ds, info):
        measured.append(student_dir.parent.name)
        return _spikes()

    monkeypatch.setattr(reproduce, "run_teacher", fake_teacher)
    monkeypatch.setattr(reproduce, "run_student", fake_student)
    monkeypatch.setattr(reproduce, "spike_energy", fake_spike_energy)
    argv = ["--data", str(packed_file), "--out", str(out), "--work", str(work), "--smoke"]
    assert reproduce.main([*argv, "--methods", "hta_kl,fkl,ce"]) == 1
    record = json.loads((out / "results.json").read_text())
    statuses = {p["name"]: p["status"] for p in record["phases"]}
    assert statuses["hta_kl"] == "failed: non-finite loss nan at training step 12 (epoch 2)"
    assert statuses == statuses | {"teacher": "done", "fkl": "done", "ce": "done"}
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m.get("method", m["phase"]) for m in metrics] == ["teacher", "hta_kl", "fkl", "ce"]
    assert metrics[1] == {"epoch": 1, "phase": "student", "method": "hta_kl"}
    assert "| HTA-KL | - | failed: non-finite loss nan" in (out / "results.md").read_text()
    assert measured == ["fkl", "ce"]  # the finished students only
    assert (
        "| FKL | resnet20 T=2 | 10.00% | 4.00M | 3.00M | 1.00M | 0.0073mJ |"
        in (out / "results.md").read_text()
    )
    # Without failures the status is 0.
    assert reproduce.main([*argv, "--methods", "fkl"]) == 0


def test_student_seed_reaches_the_students_and_not_the_teacher(packed_file, tmp_path, monkeypatch):
    """--student-seed repeats the students from the same teacher: the teacher keeps config.seed."""
    monkeypatch.setattr(reproduce.jax.config, "update", lambda *args: None)
    seeds = {}

    def fake_teacher(program, config, *args, **kwargs):
        seeds["teacher"] = config.seed
        phase = {"name": "teacher", "status": "done", "accuracy": {"ann": 0.5}} | _timing()
        return phase, [], {"params": {}}

    def fake_student(method, config, *args, **kwargs):
        seeds[method] = config.seed
        accuracy = {"1": 0.3, "2": 0.4, "4": 0.4}
        return {"name": method, "status": "done", "accuracy": accuracy} | _timing(), []

    monkeypatch.setattr(reproduce, "run_teacher", fake_teacher)
    monkeypatch.setattr(reproduce, "run_student", fake_student)
    monkeypatch.setattr(reproduce, "add_spike_energy", lambda *args, **kwargs: None)
    out = tmp_path / "out"
    argv = ["--data", str(packed_file), "--out", str(out), "--work", str(tmp_path), "--smoke"]
    assert reproduce.main([*argv, "--methods", "hta_kl,fkl", "--student-seed", "3"]) == 0
    assert seeds == {"teacher": 0, "hta_kl": 3, "fkl": 3}
    record = json.loads((out / "results.json").read_text())
    assert (record["student_seed"], record["config"]["seed"]) == (3, 0)
    assert "seeds: teacher 0, students 3;" in (out / "results.md").read_text()
    # (A finished student of seed 3 is not resumed under another seed: train's resume refuses
    # it, tests/test_train.py::test_a_resume_with_another_seed_is_refused.)
    assert reproduce.main([*argv, "--methods", "ce"]) == 0  # default: the teacher's seed
    assert seeds["ce"] == 0


def test_spike_measurements_stop_when_the_budget_cannot_fit_one(tmp_path, monkeypatch):
    class Clock(reproduce.Budget):
        now = 100.0  # seconds since the start, of a 135 s budget

        def elapsed(self) -> float:
            return self.now

    budget = Clock(0.0, 135.0)

    def fake_spike_energy(*args):
        budget.now += 20.0  # each measurement takes 20 s
        return _spikes()

    monkeypatch.setattr(reproduce, "spike_energy", fake_spike_energy)
    monkeypatch.setattr(reproduce, "write_outputs", lambda *args: None)
    phases = [{"name": "teacher", "status": "done"}, {"name": "ce", "status": "skipped: ~9 s"}]
    phases += [{"name": m, "status": "done"} for m in ("hta_kl", "fkl")]
    spike_args = dict(setting="gpu", eval_ds=None, info=None)
    reproduce.add_spike_energy(
        tmp_path, {"phases": phases}, [], None, tmp_path, budget, **spike_args
    )
    # 35 s left: the 30 s prior fits; then the measured 20 s does not fit into the 15 s left.
    assert phases[2]["spikes"] == {"status": "done", **_spikes(), "seconds": 20.0}
    assert phases[3]["spikes"]["status"] == (
        "skipped: ~20 s would end at 140 s, after the 135 s budget"
    )
    assert "spikes" not in phases[0] and "spikes" not in phases[1]


def _spikes() -> dict[str, float]:
    """A `spike_energy` record."""
    rates = dict(firing_rate=0.2, pre_classifier_rate=0.1, images=80, timesteps=2)
    ops = dict(ops=4e6, acs=3e6, macs=1e6, energy_mj=0.0073)
    teacher = dict(teacher_ops=2e6, teacher_acs=0.0, teacher_macs=2e6, teacher_energy_mj=0.0092)
    return rates | ops | teacher


def _timing() -> dict[str, float]:
    return {
        "epochs_run": 1,
        "wall_s": 1.0,
        "train_images_per_s": 10.0,
        "step_in_epoch_over_pure": 1.0,
    }


def test_budget_arithmetic():
    config = reproduce.load_config(
        type("Args", (), {"setting": "gpu", "data": "x.npz", "work": "/tmp/w"})()
    )
    # 30 epochs x 195 steps x 256 images at 14,000 images/s, plus 40 s of compiles.
    assert reproduce.prior_estimate("teacher", config, 50_000) == pytest.approx(
        40 + 30 * 195 * 256 / 14_000
    )
    budget = reproduce.Budget(time.time() - 100, 540)
    assert budget.fits(400) and not budget.fits(450)


def test_settings_on_a_cpu_backend(packed_file, capsys):
    base = ["--data", str(packed_file), "--out", "/tmp/unused"]
    if reproduce.jax.default_backend() == "cpu":
        with pytest.raises(SystemExit):
            reproduce.parse_args(base)  # the GPU setting refuses JAX on the CPU
        assert "no GPU" in capsys.readouterr().err
    assert reproduce.parse_args([*base, "--smoke"]).setting == "smoke"
    args = reproduce.parse_args([*base, "--setting", "cpu"])
    config = reproduce.load_config(args)
    assert (config.model.width_mult, config.model.dtype) == (0.25, "float32")
    gpu = reproduce.load_config(type("Args", (), {"setting": "gpu", "data": "x", "work": "/w"})())
    # the CPU setting differs from the GPU run only in width, precision and epochs
    for key in ("teacher", "student"):
        assert config[key].batch_size == gpu[key].batch_size and config[key].lr == gpu[key].lr
    assert reproduce.prior_estimate("teacher", config, 50_000, "cpu") == pytest.approx(
        30 + 20 * 195 * 256 / 550
    )


def test_phase_timing_excludes_the_compiling_first_epoch():
    records = [{"epoch_time_s": t} for t in (30.0, 2.0, 2.2, 1.9)]
    timing = reproduce.phase_timing(records, steps_per_epoch=100, batch_size=256)
    assert timing["median_epoch_s"] == 2.0 and timing["step_compile_s_estimate"] == 28.0
    assert timing["train_images_per_s"] == pytest.approx(100 * 256 / 2.0)
    assert timing["step_ms_in_epoch"] == pytest.approx(20.0)


def test_a_resumed_phase_is_timed_on_the_epochs_this_run_trained(tmp_path, monkeypatch):
    """A phase found in WORK: earlier epochs (another process's) do not enter its timing, and a
    finished one is reported as restored, with no speed (`train.train_phase` stubbed)."""
    metrics = Path(reproduce.runs.phase_dir(str(tmp_path), "teacher")) / "metrics.jsonl"
    metrics.parent.mkdir(parents=True)
    metrics.write_text("".join(json.dumps({"epoch_time_s": t}) + "\n" for t in (30.0, 9.0)))
    new_epochs: list[float] = []

    def train_phase(*args, **kwargs):
        with open(metrics, "a") as f:
            f.writelines(json.dumps({"epoch_time_s": t}) + "\n" for t in new_epochs)

    monkeypatch.setattr(reproduce.train, "train_phase", train_phase)
    monkeypatch.setattr(reproduce, "pure_step_ms", lambda *args: 1.0)
    program = type("Program", (), {"phase": "teacher", "steps_per_epoch": 10, "spiking": False})
    config = reproduce.ml_collections.ConfigDict({"teacher": {"batch_size": 4}})
    kw = dict(mesh=None, train_ds=None, eval_ds=None, teacher_variables=None, pure_steps=1)
    timing, records = reproduce.train_and_time(program, config, tmp_path, **kw)
    assert timing == timing | {"epochs_run": 0, "epochs_restored": 2} and len(records) == 2
    assert "train_images_per_s" not in timing
    phase = {"name": "teacher", "status": "done", "accuracy": {"ann": 0.5}, "wall_s": 3.0}
    record = {"phases": [phase | timing], "environment": {"devices": ["cpu"], "commit": None}}
    record |= {"elapsed_s": 3.0, "budget_s": 9.0, "config": {"seed": 0}}
    record["environment"]["versions"] = {"jax": "x"}
    table = reproduce.results_table(record)
    assert "| Teacher ANN | 0 (+2 restored) | 50.00 | - | - | - | 3 | - | - |" in table
    # Resumed part-way: 3 more epochs, the first of them compiling.
    new_epochs[:] = [20.0, 2.0, 4.0]
    timing, records = reproduce.train_and_time(program, config, tmp_path, **kw)
    assert (timing["epochs_run"], timing["epochs_restored"], len(records)) == (3, 2, 5)
    assert timing["median_epoch_s"] == 3.0 and timing["epoch_s_total"] == 26.0
    assert timing["train_images_per_s"] == pytest.approx(10 * 4 / 3.0)


def _bash(script: str, **env: str) -> subprocess.CompletedProcess:
    """`script` in bash at the repository root, with this interpreter first on PATH as python3."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return subprocess.run(
        ["bash", "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ | {"PATH": path} | env,
    )


def _fake_wheel(folder: Path) -> None:
    """A pure-Python wheel of distribution htakl-fake-wheel 1.2 (module htakl_fake_wheel)."""
    folder.mkdir()
    with zipfile.ZipFile(folder / "htakl_fake_wheel-1.2-py3-none-any.whl", "w") as whl:
        whl.writestr("htakl_fake_wheel/__init__.py", "VALUE = 7\n")
        info = "htakl_fake_wheel-1.2.dist-info"
        whl.writestr(
            f"{info}/METADATA", "Metadata-Version: 2.1\nName: htakl-fake-wheel\nVersion: 1.2\n"
        )
        whl.writestr(f"{info}/RECORD", "")


def test_use_wheels_installs_a_missing_module_from_its_wheel(tmp_path):
    _fake_wheel(tmp_path / "wheels")
    site = tmp_path / "site"
    check = (
        "import htakl_fake_wheel, importlib.metadata as m; "
        "print(htakl_fake_wheel.VALUE, m.version('htakl-fake-wheel'))"
    )
    r = _bash(
        f"source results/gpu/wheels.sh && use_wheels {tmp_path / 'wheels'} "
        f'htakl_fake_wheel=htakl-fake-wheel json=json && python3 -c "{check}"',
        HTAKL_SITE=str(site),
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "7 1.2"  # importable, with its version metadata
    assert "installed htakl_fake_wheel-1.2-py3-none-any.whl" in r.stdout
    assert sorted(p.name for p in site.iterdir()) == [
        "htakl_fake_wheel",
        "htakl_fake_wheel-1.2.dist-info",
    ]  # json imports already: nothing of it is extracted


def test_use_wheels_names_the_module_when_no_wheel_is_there(tmp_path):
    (tmp_path / "wheels").mkdir()
    r = _bash(
        f"source results/gpu/wheels.sh && use_wheels {tmp_path / 'wheels'} "
        "htakl_no_such_module=htakl-no-such && echo reached",
        HTAKL_SITE=str(tmp_path / "site"),
    )
    assert r.returncode != 0 and "reached" not in r.stdout
    assert "htakl_no_such_module is not importable" in r.stderr
    assert str(tmp_path / "wheels") in r.stderr


@pytest.mark.slow
def test_benchmark_goal_run_writes_its_files(tmp_path):
    """benchmarks/gpu.sh --part goal --dry-run: the GPU session's second call, at tiny sizes on the
    CPU (the peer columns fill in where torch and SpikingJelly are installed)."""
    out = tmp_path / "bench"
    r = _bash(f"bash benchmarks/gpu.sh {out} --part goal --dry-run")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["env.txt", "lif.json", "log.txt", "step_bfloat16_b4_goal.json"]
    (row,) = json.loads((out / "step_bfloat16_b4_goal.json").read_text())["rows"]
    assert (row["model"], row["T"]) == ("resnet19", 4)
    assert row["snn ms"] > 0 and 0 < row["of matmul"]


def test_benchmark_script_rejects_an_unknown_part_before_running_anything(tmp_path):
    r = _bash(f"bash benchmarks/gpu.sh {tmp_path / 'bench'} --part gaol --dry-run")
    assert r.returncode == 2
    assert "--part must be all, steps, rest or goal, got 'gaol'" in r.stderr
    assert not (tmp_path / "bench").exists()
