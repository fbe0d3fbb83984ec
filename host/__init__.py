"""Host tool: pretrain a backbone, freeze it and export it for the device (TensorFlow/Keras).

This is the only package that imports TensorFlow. See `host.cli` for the `edge-host` command.
"""

__version__ = "0.1.0"
