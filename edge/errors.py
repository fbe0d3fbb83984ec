"""Error types of the edge side.

Every error inherits from a builtin too, so callers can catch either the precise class or the
builtin (`except ValueError`). Messages name what was expected and what was got.
"""

from __future__ import annotations


class EdgeError(Exception):
    """Base class of every error raised by this package."""


class ManifestError(EdgeError, ValueError):
    """A manifest is missing, malformed, of an unknown schema version or inconsistent."""


class ChecksumError(EdgeError, ValueError):
    """A file's sha256 does not match the one recorded for it."""


class ConfigError(EdgeError, ValueError):
    """A configuration value or constructor parameter is unknown or out of range."""


class InputError(EdgeError, ValueError):
    """Frames, embeddings or labels of the wrong shape, dtype or range."""


class RuntimeUnavailableError(EdgeError, ImportError):
    """The requested inference runtime (LiteRT, tflite-runtime, onnxruntime) is not installed."""


class CheckpointError(EdgeError, ValueError):
    """A checkpoint is truncated, tampered with, of another backbone or of an unknown schema."""


class ModelLoadError(EdgeError, ValueError):
    """A model file exists but the runtime cannot load or run it (corrupt, wrong shape, ...)."""


class ProviderFallbackError(EdgeError, RuntimeError):
    """An accelerator execution provider was asked for but the session fell back to another one."""


class NotFittedError(EdgeError, ValueError, AttributeError):
    """A prediction was asked of a head that has not seen any class yet."""


class IncompatibleCheckpointError(CheckpointError):
    """A valid checkpoint of another backbone or of an unknown schema version: never skipped."""
