"""Measures and reports: accuracy matrices, forgetting, latency, RSS, aggregates over runs, and writers.

Pure functions and small recorders over arrays (``metrics.py``) and atomic writers for
``report.json``, ``curve.csv``, Markdown tables and PNG plots (``report.py``; the run / compare
plots: runs with a mean ± std band, latency histogram, RSS, accuracy trade-offs in ``plots.py``),
one experiment's outputs (``experiment_report.py``: summary table, report, curves, plots) and the
machine a report was made on (``machine.py``). Nothing here imports
the agent, the data sources, the loop, the commands or TensorFlow; matplotlib is imported lazily.
"""
