"""The docstring examples of the edge modules run, so the docs cannot rot."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["edge", "edge.preprocess", "edge.heads", "edge.buffer", "edge.strategies", "edge.strategies.cwr", "edge.agent",
           "edge.checkpoint", "edge.runtimes", "edge.manifest"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
