"""``edge-sim sweep``: grids of simulator runs on local processes (default) or a Ray cluster.

- :mod:`~firmware_sim.sweep.grid`: the TOML grid, its cells and their configuration-hash keys;
- :mod:`~firmware_sim.sweep.embeddings`: embedded streams shared by cells (content-addressed cache);
- :mod:`~firmware_sim.sweep.tasks`: what a worker runs (embed one stream, replay one cell);
- :mod:`~firmware_sim.sweep.executors`: process pool and Ray (imported lazily, optional extra);
- :mod:`~firmware_sim.sweep.results`: merged table (mean +- std over runs);
- :mod:`~firmware_sim.sweep.summary` and :mod:`~firmware_sim.sweep.plots`: ``summary.md`` and the Pareto plots;
- :mod:`~firmware_sim.sweep.runner`: :func:`run_sweep`, resumable.
"""
