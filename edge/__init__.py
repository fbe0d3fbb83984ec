"""Edge side: runs a frozen backbone and trains a small head on the device.

Imports only the standard library and NumPy at module level; the inference runtimes
(`ai_edge_litert`, `tflite_runtime`, `onnxruntime`) are imported lazily when a backbone is opened.
TensorFlow is never imported here.
"""

from edge.errors import (
    ChecksumError,
    CheckpointError,
    EdgeError,
    InputError,
    ManifestError,
    RuntimeUnavailableError,
)
from edge.manifest import SCHEMA_VERSION, Manifest, load_manifest

__version__ = "0.1.0"

__all__ = [
    "SCHEMA_VERSION",
    "ChecksumError",
    "CheckpointError",
    "EdgeError",
    "InputError",
    "Manifest",
    "ManifestError",
    "RuntimeUnavailableError",
    "load_manifest",
    "__version__",
]
