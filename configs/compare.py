"""Side-by-side comparison: methods x timesteps x seeds (one shared teacher) + head-ratio sweep.

Usage: `python -m htakl_jax.experiments --config configs/compare.py:BASE --workdir runs/compare`
where BASE names a training config in this folder with its own argument after a colon:
`quickstart` (default; digits, CPU-sized grid), `cifar:cifar100,resnet20,4`, `tiny_imagenet:...`,
`reduced:cifar10` / `reduced:tiny_imagenet` (the real-data reproduction of results/, T = 1, 2).
Any key can be overridden, e.g. `--config.grid.seeds=0,1 --config.base.student.epochs=100`.
"""

from __future__ import annotations

import runpy
from pathlib import Path

import ml_collections


def get_config(arg: str = "quickstart") -> ml_collections.ConfigDict:
    """Returns the comparison config for `BASE[:BASE_ARG]` (see the module docstring)."""
    name, _, base_arg = arg.partition(":")
    path = Path(__file__).with_name(f"{name}.py")
    if not path.is_file() or name == "compare":
        raise ValueError(f"configs/compare.py: no training config configs/{name}.py")
    get_base = runpy.run_path(str(path))["get_config"]
    quick = name == "quickstart"
    reduced = name == "reduced"

    c = ml_collections.ConfigDict()
    # The training config of every cell; a cell overrides seed, student.method, student.head_ratio,
    # student.timesteps, student.teacher_checkpoint (the shared teacher) and eval.timesteps.
    c.base = get_base(base_arg) if base_arg else get_base()

    c.grid = ml_collections.ConfigDict()
    # Distillation methods (htakl_jax.methods): "ce" = no KD, the KL family, and the paper's
    # comparison methods KDSNN, LaSNN and BKDSNN (the reduced grids keep the KL family they ran).
    c.grid.methods = ("ce", "fkl", "rkl", "kdsnn", "lasnn", "bkdsnn", "hta_kl")
    if reduced:
        c.grid.methods = ("ce", "fkl", "rkl", "symmetric", "hta_kl")
    elif not quick:
        c.grid.methods = ("ce", "fkl", "rkl", "symmetric", "kdsnn", "lasnn", "bkdsnn", "hta_kl")
    # Training timesteps of the students (each evaluated at its own T: Table I columns).
    c.grid.timesteps = (1, 2) if quick or reduced else (1, 2, 4, 6)
    # Seeds of the students (parameter init, data order, augmentation); tables show mean ± std.
    c.grid.seeds = (0, 1) if quick else (0, 1, 2)

    c.ablation = ml_collections.ConfigDict()
    # Fixed head ratios r (loss r * FKL + (1 - r) * RKL) of the Figure 2 sweep; () disables it.
    c.ablation.head_ratios = (
        (0.0, 0.25, 0.5, 0.75, 1.0) if quick else tuple(round(0.1 * i, 1) for i in range(11))
    )
    # Training T of the sweep (HTA-KL at this T from the grid is the adaptive reference).
    # (reduced: the interior ratios only; r = 1 is FKL and r = 0 is RKL, already in the grid.)
    if reduced:
        c.ablation.head_ratios = (0.25, 0.5, 0.75)
    # HTA-KL with its weights from the distributions at these temperatures (student.
    # weight_temperature; the grid's HTA-KL uses the KD temperature), at the ablation T and seeds.
    c.ablation.weight_temperatures = ()
    c.ablation.timesteps = 1 if reduced else 2 if quick else 4
    c.ablation.seeds = (0,)

    c.analysis = ml_collections.ConfigDict()
    # Eval examples (fixed random subset) for firing rates and energy; 0 skips the analysis.
    c.analysis.num_examples = 355 if quick else 1000 if reduced else 2000
    c.analysis.batch_size = 256
    # Examples in the t-SNE figure (0 = none) and its perplexity.
    c.analysis.tsne_examples = 355 if quick else 500 if reduced else 1000
    c.analysis.tsne_perplexity = 30.0
    # T of the energy table (Table III) and firing-rate/t-SNE figures; 0 = the largest grid T.
    c.analysis.energy_timesteps = 0
    # Energy per operation in pJ (45 nm: AC 0.9, MAC 4.6).
    c.analysis.e_ac_pj = 0.9
    c.analysis.e_mac_pj = 4.6
    return c
