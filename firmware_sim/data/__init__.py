"""Data for the simulator: CORe50 loaders and generator, generic image sources, protocols, ``--data`` specs.

``stream.py`` holds the one vocabulary every source returns (``Batch``, ``Stream``). Modules here
import only each other, ``firmware_sim.cache`` (for the cache directory) and ``edge.atomic``; they
never import the loop (``firmware_sim.loop``), the measures, the commands, the agent or TensorFlow.
"""
