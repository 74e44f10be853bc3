"""HTA-KL against FKL on digits at T = 2, with the teacher as a random factor
(results/digits_teachers/README.md has the protocol; `run.sh` there runs it).

  python -m htakl_jax.experiments --config configs/digits_teachers.py:teacher0 --workdir W/teacher0

Fixed before any of its students trained. The quickstart's recipe (configs/quickstart.py:
resnet20 at width 1/4, 15 teacher epochs, 40 student epochs, alpha 0.9, KD temperature 4) on
scikit-learn's digits, whose 3-seed grid (results/digits_methods/) is the one place where HTA-KL
led FKL (+2.07 points at T = 2, SD 6.79). Four teachers (root seeds 0-3), each with FKL and
HTA-KL students at seeds 0-7; CE students (no distillation) at seeds 0-7 under teacher 0 only,
as CE uses no teacher. Students are evaluated once, at T = 2, after their last epoch, on all 355
test digits; no per-cell analysis (firing rates, energy, t-SNE), to fit the budget.

At T = 1 (`teacherK_t1`), fixed after the T = 2 grids were launched and before any T = 2 result
was read: the same design with students trained and evaluated at T = 1 (they are also evaluated
at T = 2, as every cell is at the base config's T), in the same workdirs, so each T = 1 grid
reuses its teacher. The 3-seed grid's largest lead of HTA-KL was there (+5.07 points, SD 3.79).
"""

from __future__ import annotations

import runpy
from pathlib import Path

import ml_collections

TEACHERS = (0, 1, 2, 3)  # root seeds
SEEDS = tuple(range(8))  # student seeds per teacher


def get_config(arg: str = "teacher0") -> ml_collections.ConfigDict:
    """`teacherK` (K in TEACHERS): the grid of teacher K, trained with root seed K, at T = 2;
    `teacherK_t1`: the same at T = 1."""
    names = tuple(f"teacher{k}{t}" for t in ("", "_t1") for k in TEACHERS)
    if arg not in names:
        raise ValueError(
            f"configs/digits_teachers.py: argument must be one of {names}, got {arg!r}"
        )
    k = int(arg.removeprefix("teacher").removesuffix("_t1"))
    timesteps = 1 if arg.endswith("_t1") else 2
    c = runpy.run_path(str(Path(__file__).with_name("compare.py")))["get_config"]("quickstart")
    c.base.seed = k  # the teacher's; the grid sets each student's
    c.base.eval.timesteps = (2,)
    c.base.eval.every_epochs = 1000  # once, after the last epoch
    c.grid.methods = ("ce", "fkl", "hta_kl") if k == 0 else ("fkl", "hta_kl")
    c.grid.timesteps = (timesteps,)
    c.grid.seeds = SEEDS
    c.ablation.head_ratios = ()
    c.ablation.timesteps = timesteps
    c.analysis.num_examples = 0
    c.analysis.tsne_examples = 0
    c.analysis.energy_timesteps = timesteps
    return c
