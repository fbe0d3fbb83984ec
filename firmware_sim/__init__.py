"""The device simulation (``edge-sim``): replay labelled streams through the real edge agent and measure it.

Layout, by role (imports point downwards only):

- ``data/``: where frames come from and the stream vocabulary (``Batch``, ``Stream``).
- ``cache_dir.py``: where the on-disk cache lives; ``cache.py``: the test-set embedding cache.
- ``loop/``: the simulated device loop (embed once, learn batch by batch, evaluate, measure) and the
  experiment runner (``loop/experiment.py``, what ``edge-sim run`` / ``compare`` and the studies call).
- ``measure/``: metrics and report writers (JSON, CSV, Markdown, plots).
- ``device/``: ``edge-sim device``, the real device loop in a child process at a frame clock, with a
  teacher, budgets and power cuts.
- ``sweep/``: ``edge-sim sweep``, grids of runs on local processes or Ray.
- ``commands/``: the ``edge-sim`` command line (one module per command); nothing else imports it.
- ``studies/``: scripts that generate docs (``python -m firmware_sim.studies.strategy_report``);
  nothing in the library imports them.

Never imported anywhere in this package: TensorFlow/Keras and ``host/``. The agent is driven only
through its public methods (``learn_embeddings``, ``predict_embeddings``, ``state_dict``, ...), never
through its private state.
"""
