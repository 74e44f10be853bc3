"""Training metrics: step metrics averaged per log window and per epoch, and the metrics file.

Step metrics stay on the device until a log window closes (every `log_every_steps` steps and at
the end of every epoch); then the whole window is fetched at once, so the training loop never
waits for the device between log points. The NaN/Inf check happens there.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import jax
import numpy as np

METRICS_FILE = "metrics.jsonl"


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


class MetricsWriter:
    """Appends one JSON object per epoch to <phase_dir>/metrics.jsonl, on process 0 only."""

    def __init__(self, phase_dir: str, *, resumed_epoch: int):
        """Drops records of epochs after `resumed_epoch` (and a torn last line): they were written
        by a run killed before its checkpoint of that epoch was complete, and are redone now."""
        self.path = os.path.join(phase_dir, METRICS_FILE)
        if jax.process_index() == 0 and os.path.exists(self.path):
            kept = []
            with open(self.path) as f:
                for line in f:
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    if isinstance(record, dict) and record.get("epoch", 0) <= resumed_epoch:
                        kept.append(line if line.endswith("\n") else line + "\n")
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                f.writelines(kept)
            os.replace(tmp, self.path)

    def write(self, record: dict[str, Any]) -> None:
        if jax.process_index() == 0:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file, in order."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
