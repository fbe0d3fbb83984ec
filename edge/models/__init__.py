"""The shipped default model, as package data.

``edge/models/default`` is a symbolic link to the artifact store's ``models/default`` (one copy of the
binary files in git); the wheel build follows it, so an installed ``edge`` carries ``manifest.json``
and the model files inside the package (``[tool.setuptools.package-data]`` in pyproject.toml). A
device installed with ``pip install ".[edge]"`` therefore needs no ``--model``.

Example:
    >>> from edge.models import default_model_dir
    >>> (default_model_dir() / "manifest.json").is_file()
    True
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEFAULT_MODEL_NAME", "default_model_dir"]

DEFAULT_MODEL_NAME = "default"

_PACKAGED = Path(__file__).resolve().parent / DEFAULT_MODEL_NAME
# A source checkout where the link is not a link (e.g. git with core.symlinks=false): models/default.
_CHECKOUT = Path(__file__).resolve().parents[2] / "models" / DEFAULT_MODEL_NAME


def default_model_dir() -> Path:
    """The directory of the shipped default model (it holds ``manifest.json``).

    The copy inside the installed package comes first, then ``models/default`` of a source checkout.
    When neither holds a manifest, the packaged path is returned, so that loading it fails with an
    error naming that path.
    """
    for candidate in (_PACKAGED, _CHECKOUT):
        if (candidate / "manifest.json").is_file():
            return candidate
    return _PACKAGED
