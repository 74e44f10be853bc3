"""Result tables: aggregation over seeds, CSV / JSON writers, Markdown in the paper's layouts.

Table I (accuracy): one row per (method, architecture), one column per timestep T, each cell the
student accuracy of the run trained at that T and evaluated at that T, as ``mean ± std`` in percent
over seeds (sample std, ddof=1; a single seed shows only the mean); the ANN teacher comes first.
Table III (energy): Method, Architecture, Firing Rate, OPs, ACs, MACs, Energy (per image).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from htakl_jax import runs

__all__ = [
    "main_accuracies",
    "read_csv",
    "format_count",
    "format_energy",
    "format_mean_std",
    "markdown_table",
    "mean_std",
    "arm_label",
    "method_label",
    "table1",
    "table3",
    "write_csv",
]

_METHOD_NAMES = {
    "ce": "CE (no KD)",
    "fkl": "FKL",
    "rkl": "RKL",
    "symmetric": "Symmetric KL",
    "fixed_ratio": "Fixed ratio",
    "hta_kl": "HTA-KL",
    "kdsnn": "KDSNN",
    "lasnn": "LaSNN",
    "bkdsnn": "BKDSNN",
    "teacher": "Teacher ANN",
}


def method_label(
    method: str, head_ratio: float | None = None, weight_temperature: float | None = None
) -> str:
    """Display name of a method, e.g. ``"HTA-KL"``, ``"Fixed ratio r=0.3"``,
    ``"HTA-KL (weights at tau=1)"``."""
    name = _METHOD_NAMES.get(method, method)
    if method == "fixed_ratio" and head_ratio is not None:
        name = f"{name} r={head_ratio:g}"
    if weight_temperature is not None:
        name = f"{name} (weights at tau={weight_temperature:g})"
    return name


def arm_label(row: Mapping[str, Any]) -> str:
    """Display name of a run's arm: its method with head ratio and weight temperature."""
    return method_label(row["method"], row.get("head_ratio"), row.get("weight_temperature"))


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for one value) of non-empty ``values``."""
    x = np.asarray(values, np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"mean_std needs a non-empty 1-D sequence, got shape {x.shape}")
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else 0.0


def format_mean_std(values: Sequence[float], *, scale: float = 100.0, digits: int = 2) -> str:
    """``"93.38 ± 0.12"`` (values times ``scale``); only the mean for a single value."""
    m, s = mean_std(values)
    if len(values) == 1:
        return f"{m * scale:.{digits}f}"
    return f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}"


def format_count(n: float) -> str:
    """Operation count with the paper's suffixes: ``9.15G``, ``865.98M``, ``12.5K``."""
    if not (isinstance(n, int | float) and math.isfinite(n) and n >= 0):
        raise ValueError(f"format_count needs a finite non-negative number, got {n!r}")
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:g}"


def format_energy(mj: float) -> str:
    """Energy given in millijoules, 6 significant digits as the paper (``2.02173mJ``); below 1 uJ
    (tiny test models) in uJ or nJ so that no exponent appears."""
    if not (isinstance(mj, int | float) and math.isfinite(mj) and mj >= 0):
        raise ValueError(f"format_energy needs a finite non-negative number, got {mj!r}")
    if mj >= 1e-3 or mj == 0:
        return f"{mj:.6g}mJ"
    for unit, per_mj in (("uJ", 1e3), ("nJ", 1e6)):
        if mj * per_mj >= 1:
            return f"{mj * per_mj:.6g}{unit}"
    return f"{mj * 1e9:.6g}pJ"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """GitHub Markdown table; cells are ``str()``-ed and ``|`` escaped."""

    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |"]
    lines.append("|" + "|".join("---" for _ in headers) + "|")
    for row in rows:
        row = list(row)
        if len(row) != len(headers):
            raise ValueError(f"row {row} has {len(row)} cells, expected {len(headers)}")
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> None:
    """Writes dict rows as CSV; columns are the union of keys in first-seen order."""
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    with runs.atomic_write(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a CSV such as `write_csv` writes, as dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def main_accuracies(
    rows: Iterable[Mapping[str, str]], timesteps: int
) -> dict[tuple[str, int], float]:
    """Test accuracy (a fraction) at `timesteps` per (method, seed) of a grid's main arms, from
    its results.csv rows (`read_csv`): the students trained at `timesteps`, without the
    ablations' head ratio or weight temperature, which share a method name and seed with them."""
    return {
        (r["method"], int(r["seed"])): float(r[f"accuracy_T{timesteps}"])
        for r in rows
        if int(r["timesteps"]) == timesteps
        and not r.get("head_ratio")
        and not r.get("weight_temperature")
    }


def table1(
    runs: Sequence[Mapping[str, Any]], *, teacher: Mapping[str, Sequence[float]] | None = None
) -> tuple[list[str], list[list[str]]]:
    """Accuracy table in the paper's Table I layout.

    Args:
      runs: one mapping per trained student with keys ``method``, ``architecture``, ``timesteps``
        (training T), ``accuracy`` (fraction, at that T) and optionally ``head_ratio``.
      teacher: architecture -> teacher accuracies (fractions; one per run, deduplicated by the
        caller or not: repeated values do not change the mean).

    Returns ``(headers, rows)``: ``Method, Architecture, T=..`` with ``-`` where no run exists.
    """
    ts = sorted({int(r["timesteps"]) for r in runs})
    headers = ["Method", "Architecture"] + [f"T={t}" for t in ts]
    rows: list[list[str]] = []
    for arch, accs in (teacher or {}).items():
        rows.append([method_label("teacher"), arch, format_mean_std(accs)] + ["-"] * (len(ts) - 1))
    groups: dict[tuple[str, str], dict[int, list[float]]] = {}
    for r in runs:
        key = (arm_label(r), r["architecture"])
        groups.setdefault(key, {}).setdefault(int(r["timesteps"]), []).append(float(r["accuracy"]))
    for (label, arch), by_t in groups.items():
        rows.append([label, arch] + [format_mean_std(by_t[t]) if t in by_t else "-" for t in ts])
    return headers, rows


def table3(runs: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Energy table in the paper's Table III layout, averaged over seeds.

    Args:
      runs: one mapping per run with ``method``, ``architecture``, ``firing_rate`` (fraction),
        ``ops``, ``acs``, ``macs`` (per image) and ``energy_mj``; optionally ``head_ratio``.
        A teacher row has ``method="teacher"`` and ``firing_rate=None``.
    """
    headers = ["Method", "Architecture", "Firing Rate", "OPs", "ACs", "MACs", "Energy"]
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in runs:
        groups.setdefault((arm_label(r), r["architecture"]), []).append(r)
    rows = []
    for (label, arch), rs in groups.items():
        rates = [r["firing_rate"] for r in rs if r.get("firing_rate") is not None]
        rows.append(
            [
                label,
                arch,
                f"{mean_std(rates)[0] * 100:.2f}%" if rates else "-",
                format_count(mean_std([r["ops"] for r in rs])[0]),
                format_count(mean_std([r["acs"] for r in rs])[0]),
                format_count(mean_std([r["macs"] for r in rs])[0]),
                format_energy(mean_std([r["energy_mj"] for r in rs])[0]),
            ]
        )
    return headers, rows
