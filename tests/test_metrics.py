"""The metrics files: metrics.jsonl and the TensorBoard event files next to it.

The event files are read back here without TensorFlow or TensorBoard: TFRecord framing checked by
hand, events parsed with tensorboardX's protocol buffers.
"""

from __future__ import annotations

import json
import logging
import struct
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from htakl_jax import metrics as metrics_lib


def read_events(directory: str | Path) -> list:
    """The `Event`s of every TensorBoard event file in `directory` (file order, then record
    order); each record's length and data CRCs are checked."""
    from tensorboardX.proto import event_pb2
    from tensorboardX.record_writer import masked_crc32c

    events = []
    for path in sorted(Path(directory).glob("*tfevents*")):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            header = data[offset : offset + 8]
            (length,) = struct.unpack("<Q", header)
            (header_crc,) = struct.unpack("<I", data[offset + 8 : offset + 12])
            assert header_crc == masked_crc32c(header), f"{path}: bad length CRC at {offset}"
            body = data[offset + 12 : offset + 12 + length]
            (body_crc,) = struct.unpack("<I", data[offset + 12 + length : offset + 16 + length])
            assert len(body) == length and body_crc == masked_crc32c(body), f"{path}: bad record"
            events.append(event_pb2.Event.FromString(body))
            offset += 16 + length
    return events


def event_scalars(directory: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Tag -> [(step, value)] of the scalars in `directory`'s event files, in file order."""
    out: dict[str, list[tuple[int, float]]] = {}
    for event in read_events(directory):
        for value in event.summary.value:
            out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def assert_events_match_metrics(phase_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """`phase_dir` holds one event file whose scalars are those of its metrics.jsonl, each step
    once (as float32); returns them."""
    phase_dir = Path(phase_dir)
    files = list(phase_dir.glob("*tfevents*"))
    assert len(files) == 1, files
    assert read_events(phase_dir)[0].file_version == "brain.Event:2"
    records = metrics_lib.read_metrics(phase_dir / metrics_lib.METRICS_FILE)
    expected: dict[str, list[tuple[int, float]]] = {}
    for r in records:
        for tag, value in metrics_lib.tensorboard_scalars(r).items():
            expected.setdefault(tag, []).append((r["step"], float(np.float32(value))))
    got = event_scalars(phase_dir)
    assert got == expected
    return got


def _record(epoch: int, loss: float, eval_accuracy: float | None = None) -> dict:
    return {
        "epoch": epoch,
        "step": 4 * epoch,
        "lr": 0.1 / epoch,
        "eval_accuracy": eval_accuracy,
        "best_accuracy": -1.0 if eval_accuracy is None else eval_accuracy,
        "images_per_s": 100.0,
        "train_loss": loss,
        "train_accuracy": 0.5,
        "train_w_head": 0.75,
    }


def test_tensorboard_tags_of_a_student_record():
    record = _record(2, 1.5) | {"finished": True, "eta_s": 3.0, "train_kd": 0.25}
    assert metrics_lib.tensorboard_scalars(record) == {
        "epoch": 2.0,
        "lr": 0.05,
        "perf/images_per_s": 100.0,
        "perf/eta_s": 3.0,
        "train/loss": 1.5,
        "train/accuracy": 0.5,
        "train/w_head": 0.75,
        "train/kd": 0.25,
    }  # no step (the x axis), no None eval, no -1 best accuracy, no boolean
    assert metrics_lib.tensorboard_scalars(_record(1, 1.0, 0.5))["eval/best_accuracy"] == 0.5


def test_events_mirror_metrics_and_a_resume_writes_each_epoch_once(tmp_path):
    writer = metrics_lib.MetricsWriter(str(tmp_path), resumed_epoch=0)
    for epoch, loss in ((1, 2.0), (2, 1.0), (3, 0.5)):
        writer.write(_record(epoch, loss, eval_accuracy=0.25 * epoch if epoch != 2 else None))
    got = assert_events_match_metrics(tmp_path)
    assert got["train/loss"] == [(4, 2.0), (8, 1.0), (12, 0.5)]
    assert got["eval/accuracy"] == [(4, 0.25), (12, 0.75)]

    # Killed after writing epoch 3 but before its checkpoint: the rerun resumes after epoch 2.
    writer = metrics_lib.MetricsWriter(str(tmp_path), resumed_epoch=2)
    assert_events_match_metrics(tmp_path)  # epochs 1 and 2, rebuilt in a new file
    writer.write(_record(3, 0.625))
    writer.write(_record(4, 0.375))
    got = assert_events_match_metrics(tmp_path)
    assert got["train/loss"] == [(4, 2.0), (8, 1.0), (12, 0.625), (16, 0.375)]
    assert got["eval/accuracy"] == [(4, 0.25)]
    assert [e.step for e in read_events(tmp_path)] == [0, 4, 8, 12, 16]


def test_a_torn_event_file_is_replaced_on_resume(tmp_path):
    writer = metrics_lib.MetricsWriter(str(tmp_path), resumed_epoch=0)
    writer.write(_record(1, 2.0))
    (event_file,) = tmp_path.glob("*tfevents*")
    with open(event_file, "ab") as f:
        f.write(b"\x10\x00\x00")  # a run killed in the middle of a record
    metrics_lib.MetricsWriter(str(tmp_path), resumed_epoch=1)
    assert assert_events_match_metrics(tmp_path)["train/loss"] == [(4, 2.0)]


def test_without_tensorboardx_only_metrics_jsonl_is_written(tmp_path, monkeypatch, caplog):
    for name in [n for n in sys.modules if n.split(".")[0] == "tensorboardX"] + ["tensorboardX"]:
        monkeypatch.setitem(sys.modules, name, None)  # its import now fails
    with caplog.at_level(logging.WARNING):
        writer = metrics_lib.MetricsWriter(str(tmp_path), resumed_epoch=0)
    assert "no TensorBoard event files" in caplog.text
    writer.write(_record(1, 2.0))
    assert [p.name for p in tmp_path.iterdir()] == [metrics_lib.METRICS_FILE]
    assert json.loads((tmp_path / metrics_lib.METRICS_FILE).read_text())["train_loss"] == 2.0


def test_only_process_0_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    metrics_lib.MetricsWriter(str(tmp_path), resumed_epoch=0).write(_record(1, 2.0))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "key,tag",
    [
        ("train_loss", "train/loss"),
        ("train_w_tail", "train/w_tail"),
        ("eval_accuracy", "eval/accuracy"),
        ("best_accuracy", "eval/best_accuracy"),
        ("steps_per_s", "perf/steps_per_s"),
        ("epoch_time_s", "perf/epoch_time_s"),
        ("lr", "lr"),
    ],
)
def test_tensorboard_tag(key, tag):
    assert metrics_lib.tensorboard_tag(key) == tag
