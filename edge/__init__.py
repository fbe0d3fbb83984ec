"""Edge side: runs a frozen backbone and trains a small head on the device.

Imports only the standard library and NumPy at module level; the inference runtimes
(`ai_edge_litert`, `tflite_runtime`, `onnxruntime`) are imported lazily when a backbone is opened.
TensorFlow is never imported here.

Example:
    >>> import edge
    >>> agent = edge.Agent(None, edge.AgentConfig(max_classes=3), embedding_size=4)
    >>> agent.memory_bytes()["buffer"] > 0
    True
"""

from edge.agent import Agent, AgentConfig
from edge.buffer import ReplayBuffer
from edge.checkpoint import Checkpoint, CheckpointStore
from edge.errors import (
    ChecksumError,
    CheckpointError,
    EdgeError,
    IncompatibleCheckpointError,
    InputError,
    ManifestError,
    ModelLoadError,
    NotFittedError,
    ProviderFallbackError,
    RuntimeUnavailableError,
)
from edge.heads import MLPHead, SoftmaxHead, make_head
from edge.manifest import SCHEMA_VERSION, Manifest, load_manifest
from edge.runtimes import Backbone, LiteRTBackbone, OnnxBackbone, open_backbone
from edge.strategies import STRATEGIES, Strategy, make_strategy

__version__ = "0.1.0"

__all__ = [
    "SCHEMA_VERSION",
    "STRATEGIES",
    "Agent",
    "AgentConfig",
    "Backbone",
    "Checkpoint",
    "CheckpointError",
    "CheckpointStore",
    "ChecksumError",
    "EdgeError",
    "IncompatibleCheckpointError",
    "InputError",
    "LiteRTBackbone",
    "MLPHead",
    "Manifest",
    "ManifestError",
    "ModelLoadError",
    "NotFittedError",
    "OnnxBackbone",
    "ProviderFallbackError",
    "ReplayBuffer",
    "RuntimeUnavailableError",
    "SoftmaxHead",
    "Strategy",
    "load_manifest",
    "make_head",
    "make_strategy",
    "open_backbone",
    "__version__",
]
