"""Data for the simulator: CORe50 loaders and generator, generic image sources, protocols, ``--data`` specs.

``core50.py`` (with ``core50_layout.py`` for the benchmark's fixed layout and ``safe_pickle.py`` for
the official pickles) and ``generator.py`` (the synthetic CORe50), ``sources.py`` (IDX, npz, a folder
per class), ``protocols.py`` (streams over any source) and ``streams.py`` (``--data SPEC --scenario
NAME`` to a stream).

``stream.py`` holds the one vocabulary every source returns (``Batch``, ``Stream``). Modules here
import only each other, ``firmware_sim.cache_dir`` (for the cache directory) and leaves of ``edge``; they
never import the loop (``firmware_sim.loop``), the measures, the commands, the agent or TensorFlow.
"""
