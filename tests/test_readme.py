"""The README's Python example runs as written (so the docs cannot rot)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def test_readme_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python example"
    # no models/ here: the example finds the default model with edge.models.default_model_dir()
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    namespace = {
        "frames_uint8": rng.integers(0, 256, size=(12, 32, 32, 3), dtype=np.uint8),
        "labels": np.repeat([0, 1, 2], 4),
    }
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own docs
    assert sorted(p.name for p in (tmp_path / "state").iterdir())[-1].startswith("state-")
    assert namespace["agent"].classes_seen().tolist() == [0, 1, 2]
