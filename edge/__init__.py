"""Edge side: runs a frozen backbone and trains a small head on the device.

What lives here, by role:

- the model: `manifest` (the host-device contract), `models` (the shipped default model),
  `model_store` (``--model NAME``, bundle install), `runtimes` (backbones behind one interface),
  `preprocess` and `images` (frames and image files to model input);
- learning: `config` (`AgentConfig` and its one settings table), `agent` (the `Agent`), `base`
  (the `Head` protocol, the `Standardizer`), `heads` (NumPy) and `tflite_head` (inside a ``.tflite``
  file), `buffer` (replay), `strategies`, `stats` (class statistics), `openset` (the "unknown" rule);
- state on disk: `checkpoint`, `atomic`, `lock`;
- `errors`, `version`, the ``edge-agent`` command (`cli`) and `device` (what ``edge-agent run``
  adds: frame sources, the device loop, events, labels, the HTTP API and the teach page).

What must never be imported from here: ``tensorflow`` / ``keras`` (a device has neither; a test
checks that a full learn/predict cycle never loads them), ``host`` (the workstation tool) and
``firmware_sim`` (the simulator drives this package, never the reverse). At module level only the
standard library and NumPy are imported; the inference runtimes (`ai_edge_litert`,
`tflite_runtime`, `onnxruntime`) are imported lazily when a backbone or a ``.tflite`` head is opened.

Example:
    >>> import edge
    >>> agent = edge.Agent(None, edge.AgentConfig(max_classes=3), embedding_size=4)
    >>> agent.memory_bytes()["buffer"] > 0
    True
"""

from edge.agent import Agent, AgentConfig
from edge.base import Head, Standardizer
from edge.buffer import ReplayBuffer
from edge.checkpoint import Checkpoint, CheckpointStore
from edge.errors import (
    ChecksumError,
    CheckpointError,
    ConfigError,
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
from edge.models import default_model_dir
from edge.runtimes import Backbone, LiteRTBackbone, OnnxBackbone, open_backbone
from edge.strategies import STRATEGIES, Strategy, make_strategy
from edge.version import __version__

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
    "ConfigError",
    "EdgeError",
    "Head",
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
    "Standardizer",
    "Strategy",
    "default_model_dir",
    "load_manifest",
    "make_head",
    "make_strategy",
    "open_backbone",
    "__version__",
]
