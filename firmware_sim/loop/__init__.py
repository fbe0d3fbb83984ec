"""The simulated device loop: embed a stream once with the frozen backbone, replay it through an agent.

``replay.py`` runs it, ``result.py`` types what one run measured (``RunResult``),
``experiment.py`` runs one backbone over a stream's runs and several configurations (what
``edge-sim run`` / ``compare`` and the studies call) and ``progress.py`` shows how far it got (a bar
on a terminal, plain lines in a log). The loop
uses ``edge`` only through the agent's and backbone's public API (no private attributes), reads
streams from ``firmware_sim.data`` and measures with ``firmware_sim.measure``; it never imports the
commands, the studies or TensorFlow.
"""
