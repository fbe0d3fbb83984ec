"""The models shipped in the package, as package data.

Each ``edge/models/<name>`` is a symbolic link to the artifact store's ``models/<name>`` (one copy of
the binary files in git); the wheel build follows it, so an installed ``edge`` carries each model's
``manifest.json`` and files inside the package (``[tool.setuptools.package-data]`` in pyproject.toml).

- ``IMAGENET_MODEL_NAME``: EfficientNet-Lite0 with ImageNet weights (int8 TFLite for CPUs, fp32 ONNX
  for GPUs), the backbone that knows real objects (`imagenet_model_dir`).
- ``TINY_MODEL_NAME``: the 32x32 ``tiny_cnn`` pretrained on the generator's synthetic objects, for
  fast simulator runs and tests (`tiny_model_dir`).
- ``DEFAULT_MODEL_NAME``: the one `default_model_dir` returns (``edge-agent`` without ``--model``):
  the ImageNet backbone. The simulator (``edge-sim``) and most tests name the tiny one explicitly.

Example:
    >>> from edge.models import default_model_dir, imagenet_model_dir, tiny_model_dir
    >>> default_model_dir() == imagenet_model_dir()
    True
    >>> (tiny_model_dir() / "manifest.json").is_file(), (imagenet_model_dir() / "manifest.json").is_file()
    (True, True)
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEFAULT_MODEL_NAME", "IMAGENET_MODEL_NAME", "TINY_MODEL_NAME", "default_model_dir",
           "imagenet_model_dir", "packaged_model_dir", "packaged_model_names", "tiny_model_dir"]

#: The 32x32 synthetic-trained backbone (folder ``models/tiny``): the simulator's and the tests'.
TINY_MODEL_NAME = "tiny"
#: EfficientNet-Lite0, ImageNet weights, 224x224 input (folder ``models/efficientnet_lite0_224``).
IMAGENET_MODEL_NAME = "efficientnet_lite0_224"
#: The model ``edge-agent`` uses when none is named: the ImageNet backbone (a device must know real objects).
DEFAULT_MODEL_NAME = IMAGENET_MODEL_NAME
PACKAGED_MODELS = (IMAGENET_MODEL_NAME, TINY_MODEL_NAME)

_HERE = Path(__file__).resolve().parent
# A source checkout where the links are not links (e.g. git with core.symlinks=false): models/<name>.
_CHECKOUT = Path(__file__).resolve().parents[2] / "models"


def packaged_model_names() -> tuple[str, ...]:
    """The names of the models shipped in the package."""
    return PACKAGED_MODELS


def packaged_model_dir(name: str) -> Path:
    """The folder of the packaged model ``name`` (it holds ``manifest.json``).

    The copy inside the installed package comes first, then ``models/<name>`` of a source checkout.
    When neither holds a manifest (or ``name`` is not packaged), the packaged path is returned, so
    that loading it fails with an error naming that path.
    """
    packaged = _HERE / name
    if name in PACKAGED_MODELS:
        for candidate in (packaged, _CHECKOUT / name):
            if (candidate / "manifest.json").is_file():
                return candidate
    return packaged


def default_model_dir() -> Path:
    """The model ``edge-agent`` uses without ``--model`` (``DEFAULT_MODEL_NAME``)."""
    return packaged_model_dir(DEFAULT_MODEL_NAME)


def tiny_model_dir() -> Path:
    """The 32x32 ``tiny_cnn`` backbone: fast, for the simulator and tests; knows no real objects."""
    return packaged_model_dir(TINY_MODEL_NAME)


def imagenet_model_dir() -> Path:
    """EfficientNet-Lite0 with ImageNet weights: the backbone for real cameras."""
    return packaged_model_dir(IMAGENET_MODEL_NAME)
