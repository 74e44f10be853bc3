"""Evaluation and analysis as in the paper: firing rates, synaptic operations and energy (Table
III), result tables (Table I), t-SNE of features (Figure 4), the head/tail ablation (Figure 2).

Per trained workdir: ``python -m htakl_jax.analysis --workdir DIR`` (see :mod:`.report`); for a
grid of methods x timesteps x seeds: ``python -m htakl_jax.experiments`` (see there).
"""

from htakl_jax.analysis.firing import SpikeStats, rates_table, spike_stats
from htakl_jax.analysis.tables import markdown_table, table1, table3, write_csv, write_json

__all__ = [
    "SpikeStats",
    "markdown_table",
    "rates_table",
    "spike_stats",
    "table1",
    "table3",
    "write_csv",
    "write_json",
]
