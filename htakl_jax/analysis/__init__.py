"""Evaluation and analysis as in the paper: firing rates, synaptic operations and energy (Table
III), result tables (Table I), t-SNE of features (Figure 4), the head/tail ablation (Figure 2).

Reads trained workdirs (`htakl_jax.runs`), never the training loop. Per trained workdir:
``python -m htakl_jax.analysis --workdir DIR`` (:mod:`.report`); the tables and figures of a grid
of methods x timesteps x seeds: :mod:`.grid` (run by ``python -m htakl_jax.experiments``).
"""

from htakl_jax.analysis.firing import SpikeStats, rates_table, spike_stats
from htakl_jax.analysis.tables import markdown_table, table1, table3, write_csv

__all__ = [
    "SpikeStats",
    "markdown_table",
    "rates_table",
    "spike_stats",
    "table1",
    "table3",
    "write_csv",
]
