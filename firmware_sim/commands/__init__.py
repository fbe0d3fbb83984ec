"""The ``edge-sim`` command line: ``cli.py`` (parser, exit codes), one module per command
(``generate.py``, ``run.py`` for run / compare / the main job, ``device.py``, ``sweep.py``) and
``experiment.py`` (the runner they share, which writes the outputs). Commands may import every other part of ``firmware_sim`` but the
studies; nothing in the library imports the commands, and no TensorFlow.
"""
