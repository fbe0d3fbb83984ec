"""The experiment runner's old address, kept for `firmware_sim.commands.run` (which still imports from it).

The runner lives in `firmware_sim.loop.experiment` (so the studies need not import a command) and
its outputs in `firmware_sim.measure.experiment_report`; import them from there.
"""

from __future__ import annotations

from firmware_sim.loop.experiment import ExperimentSpec, run_experiment, summarise
from firmware_sim.measure.experiment_report import TABLE_COLUMNS, summary_rows, write_outputs

__all__ = ["TABLE_COLUMNS", "ExperimentSpec", "run_experiment", "summarise", "summary_rows", "write_outputs"]
