"""Training metrics: step metrics averaged per log window and per epoch, and the metrics files.

Step metrics stay on the device until a log window closes (every `log_every_steps` steps and at
the end of every epoch); then the whole window is fetched at once, so the training loop never
waits for the device between log points. The NaN/Inf check happens there.

Per epoch, process 0 appends one record to <phase_dir>/metrics.jsonl (the resumable record) and
its numeric entries, as TensorBoard scalars at the record's global step, to an event file
<phase_dir>/events.out.tfevents.* (`tensorboard --logdir WORKDIR` shows the runs `teacher` and
`student`). Event files are written with tensorboardX's protocol buffers, without TensorFlow;
without tensorboardX only metrics.jsonl is written (one warning per phase).
"""

from __future__ import annotations

import json
import math
import os
import socket
import struct
import time
from collections.abc import Iterable
from typing import Any

import jax
import numpy as np
from absl import logging

METRICS_FILE = "metrics.jsonl"
EVENTS_PREFIX = "events.out.tfevents."
# Throughput entries of a record: TensorBoard tags perf/<key>.
PERF_KEYS = ("epoch_time_s", "steps_per_s", "images_per_s", "eta_s")


class StepMetrics:
    """Step metrics of the current window and the window means of the current epoch."""

    def __init__(self, step: int):
        self.start_epoch(step)

    def start_epoch(self, step: int) -> None:
        """Forgets the epoch so far; the next epoch (or its resumed rest) starts after `step`."""
        self._window: list[dict[str, jax.Array]] = []
        self._window_means: list[tuple[int, dict[str, float]]] = []
        self._window_start = self._epoch_start = step
        self._window_t0 = self._epoch_t0 = time.perf_counter()

    def add(self, metrics: dict[str, jax.Array]) -> None:
        """Appends one step's metrics (device scalars; not fetched here)."""
        self._window.append(metrics)

    def close_window(self, epoch: int) -> dict[str, float]:
        """Fetches the window and returns its means and `steps_per_s`.

        Raises FloatingPointError naming the first step (1-based) with a non-finite loss.
        """
        host = jax.device_get(self._window)
        for i, m in enumerate(host):
            if not math.isfinite(float(m["loss"])):
                raise FloatingPointError(
                    f"non-finite loss {float(m['loss'])} at training step "
                    f"{self._window_start + i + 1} (epoch {epoch + 1}); stopping without saving "
                    "this state"
                )
        means = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
        self._window_means.append((len(host), means))
        steps_per_s = len(host) / (time.perf_counter() - self._window_t0)
        self._window_start += len(host)
        self._window, self._window_t0 = [], time.perf_counter()
        return means | {"steps_per_s": steps_per_s}

    def epoch_summary(self, step: int, batch_size: int) -> tuple[dict[str, float], dict]:
        """(throughput, training means) of the epoch ending at `step`; call it after the epoch's
        last window closed. Means are `train_<name>`, weighted by window length."""
        epoch_time = time.perf_counter() - self._epoch_t0
        n_steps = step - self._epoch_start
        timing = {
            "epoch_time_s": epoch_time,
            "steps_per_s": n_steps / epoch_time,
            "images_per_s": n_steps * batch_size / epoch_time,
        }
        weights = np.array([n for n, _ in self._window_means], float)
        means = {
            "train_" + k: float(np.average([m[k] for _, m in self._window_means], weights=weights))
            for k in self._window_means[0][1]
        }
        return timing, means


def tensorboard_tag(key: str) -> str:
    """The TensorBoard tag of a metrics-record key: train_<m> -> train/<m>, eval_accuracy ->
    eval/accuracy, best_accuracy -> eval/best_accuracy, throughput -> perf/<key>, others as they
    are (lr, epoch)."""
    if key == "best_accuracy":
        return "eval/best_accuracy"
    for prefix in ("train", "eval"):
        if key.startswith(prefix + "_"):
            return f"{prefix}/{key[len(prefix) + 1 :]}"
    return f"perf/{key}" if key in PERF_KEYS else key


def tensorboard_scalars(record: dict[str, Any]) -> dict[str, float]:
    """Tag -> value of the numeric entries of a metrics record but `step` (the x axis). Left out:
    None (an epoch without evaluation), booleans, and best_accuracy before any evaluation (-1)."""
    return {
        tensorboard_tag(k): float(v)
        for k, v in record.items()
        if k != "step"
        and isinstance(v, int | float)
        and not isinstance(v, bool)
        and not (k == "best_accuracy" and v < 0)
    }


class EventFile:
    """The scalars of metrics records in a TensorBoard event file (TFRecord framing of
    tensorboardX's `Event` protocol buffers); one event per record, at the record's step.

    Opening replaces the event files already in `directory` by one holding `records` (what
    metrics.jsonl kept), so that a resumed run shows each epoch once, as metrics.jsonl does; their
    wall times are those of the rebuild. `write` appends a record and closes the file, so a killed
    run keeps every record written.
    """

    def __init__(self, directory: str, records: Iterable[dict[str, Any]], tensorboardx: Any):
        self._event_pb2, self._summary_pb2, self._masked_crc32c = tensorboardx
        old = [n for n in os.listdir(directory) if n.startswith(EVENTS_PREFIX)]
        name = f"{EVENTS_PREFIX}{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self.path = os.path.join(directory, name)
        version = self._event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")
        data = self._framed(version) + b"".join(self._framed(self.event(r)) for r in records)
        tmp = os.path.join(directory, "events.tmp")  # no "tfevents": TensorBoard skips it
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, self.path)
        for n in old:
            if n != name:
                os.remove(os.path.join(directory, n))

    def event(self, record: dict[str, Any]) -> Any:
        """The `Event` of one metrics record (`tensorboard_scalars` at its step)."""
        values = [
            self._summary_pb2.Summary.Value(tag=tag, simple_value=value)
            for tag, value in tensorboard_scalars(record).items()
        ]
        return self._event_pb2.Event(
            wall_time=time.time(),
            step=int(record["step"]),
            summary=self._summary_pb2.Summary(value=values),
        )

    def _framed(self, event: Any) -> bytes:
        """A TFRecord: length (uint64), its masked CRC-32C, the data, the data's masked CRC-32C."""
        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        crc = self._masked_crc32c
        return header + struct.pack("<I", crc(header)) + data + struct.pack("<I", crc(data))

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "ab") as f:
            f.write(self._framed(self.event(record)))


def load_tensorboardx() -> tuple[Any, Any, Any] | None:
    """tensorboardX's (event_pb2, summary_pb2, masked_crc32c), or None (with a warning) without
    it. Imported here, not at module import: tensorboardX's package also imports torch if found."""
    try:
        from tensorboardX.proto import event_pb2, summary_pb2
        from tensorboardX.record_writer import masked_crc32c
    except ImportError as e:
        logging.warning(
            "no TensorBoard event files (%s); metrics.jsonl is still written. "
            "`pip install tensorboardX` to get them.",
            e,
        )
        return None
    return event_pb2, summary_pb2, masked_crc32c


class MetricsWriter:
    """Appends one JSON object per epoch to <phase_dir>/metrics.jsonl and its scalars to a
    TensorBoard event file in <phase_dir> (`EventFile`), on process 0 only."""

    def __init__(self, phase_dir: str, *, resumed_epoch: int):
        """Drops records of epochs after `resumed_epoch` (and a torn last line): they were written
        by a run killed before its checkpoint of that epoch was complete, and are redone now. The
        event files are rebuilt from the records kept."""
        self.path = os.path.join(phase_dir, METRICS_FILE)
        self.events: EventFile | None = None
        if jax.process_index() != 0:
            return
        kept = _kept_lines(self.path, resumed_epoch) if os.path.exists(self.path) else []
        if os.path.exists(self.path):
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                f.writelines(kept)
            os.replace(tmp, self.path)
        tensorboardx = load_tensorboardx()
        if tensorboardx is not None:
            records = [r for r in map(json.loads, kept) if isinstance(r.get("step"), int)]
            self.events = EventFile(phase_dir, records, tensorboardx)

    def write(self, record: dict[str, Any]) -> None:
        if jax.process_index() == 0:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
            if self.events is not None:
                self.events.write(record)


def _kept_lines(path: str, resumed_epoch: int) -> list[str]:
    """The lines of a metrics file holding whole records of epochs up to `resumed_epoch`."""
    kept = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("epoch", 0) <= resumed_epoch:
                kept.append(line if line.endswith("\n") else line + "\n")
    return kept


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file, in order."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
