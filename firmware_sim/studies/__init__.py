"""Doc-generating studies, kept apart from the library: ``python -m firmware_sim.studies.strategy_report``
writes ``docs/strategies.md`` and ``strategy_sweep`` the tuning sweep behind it; ``openset_report``
measures rejection of held-out objects and ``export_embeddings`` writes a stream's embeddings as
``.npz``. They use the public runner (``firmware_sim.loop.experiment``), never the commands; no
library module imports them.
"""
