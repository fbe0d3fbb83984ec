"""Shared by the simulator tests: the small generated CORe50 set and the sweep grid over it."""

from __future__ import annotations

from pathlib import Path

from firmware_sim.data.generator import GeneratorConfig, generate_core50

REPO = Path(__file__).resolve().parents[1]
MODEL = str(REPO / "models" / "tiny")

#: 8 frames per object-session, 2 runs, array form only: seconds to generate, every scenario there.
SMALL_SET = GeneratorConfig(frames=8, runs=2, seed=4, forms=("arrays",))


def generate_small(root: Path) -> Path:
    """Write `SMALL_SET` under ``root`` and return it."""
    generate_core50(root, SMALL_SET, progress=False)
    return root


def sweep_grid_text(data: Path, extra: str = "") -> str:
    """The sweep grid the local and the Ray executor tests both run (so their results can be compared)."""
    return f"""
[sweep]
model = "{MODEL}"
data = "synthetic:{data}"
scenario = "ni"
test = "reduced"
runs = 2
eval_every = 4
latency_frames = 5

[grid]
buffer_capacity = [50, 200]

[strategies]
naive = {{}}
replay = {{ replay_ratio = [0.5] }}
{extra}"""
