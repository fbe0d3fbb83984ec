"""Backbone upgrade by re-embedding the ledger's thumbnails (issue 25).

Measured on the real-photo set of tests/_real_photos.py (photographs of the foolbox 3.3.4 wheel:
taught from crops of one photo per class, tested on the OTHER photos of the class): a state taught on
the tiny backbone (thumbnails of the 224-px frames kept at 128 px, the default) is upgraded to the ImageNet backbone
(models/efficientnet_lite0_224) and compared with a state taught the same 224-px frames afresh on it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "models" / "tiny"
IMAGENET = ROOT / "models" / "efficientnet_lite0_224"


def upgrade_accuracy(photo_set, strategy: str = "slda", thumbnail_size: int = 128) -> dict[str, float]:
    """Accuracy over every rotation of: the tiny state, the upgraded state and a fresh teach on the
    ImageNet backbone, plus classes kept."""
    from _real_photos import split
    from edge.agent import Agent, AgentConfig
    from edge.knowledge.upgrade import upgrade_agent
    from edge.model_store import default_precision
    from edge.preprocess import fit_frame
    from edge.runtimes import open_backbone

    hits = {"tiny": 0, "upgraded": 0, "fresh": 0}
    total = kept = classes = 0
    with open_backbone(TINY) as tiny, open_backbone(IMAGENET, precision=default_precision(IMAGENET, "auto")) as big:
        def fitted(frames: np.ndarray, backbone) -> np.ndarray:
            return np.stack([fit_frame(f, backbone.manifest) for f in frames])

        for rotation in range(photo_set.rotations):
            s = split(photo_set, rotation)
            config = AgentConfig(strategy=strategy, max_classes=len(s.classes))
            old = Agent(tiny, config)
            old.enable_ledger(thumbnail_size)
            fresh = Agent(big, config)
            for c, frames in enumerate(s.teach):
                y = np.full(len(frames), c)
                old.teach(fitted(frames, tiny), y, source="test", thumbnail_frames=list(frames))
                fresh.teach(fitted(frames, big), y, source="test")
            new, report = upgrade_agent(old, big)
            kept += len(report["classes"])
            classes += len(s.classes)
            test_big = fitted(s.test_frames, big)
            hits["tiny"] += int((old.predict_many(fitted(s.test_frames, tiny)) == s.test_labels).sum())
            hits["upgraded"] += int((new.predict_many(test_big) == s.test_labels).sum())
            hits["fresh"] += int((fresh.predict_many(test_big) == s.test_labels).sum())
            total += len(s.test_labels)
    out = {k: v / total for k, v in hits.items()}
    out["classes_kept"] = kept / classes
    out["test_frames"] = total
    return out


@pytest.mark.slow
@pytest.mark.parametrize("set_name", ["imagenet", "cifar10"])
def test_upgrade_tiny_to_imagenet_keeps_every_class_and_90_percent_of_a_fresh_teach(set_name: str) -> None:
    from _real_photos import photo_sets_or_skip

    if not (IMAGENET / "manifest.json").is_file():
        pytest.skip("models/efficientnet_lite0_224 is missing")
    result = upgrade_accuracy(photo_sets_or_skip()[set_name])
    print(f"{set_name}: {result}")
    assert result["classes_kept"] == 1.0
    assert result["upgraded"] >= 0.9 * result["fresh"]


def test_upgrade_cli_writes_a_new_state_beside_the_old(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Through edge-agent: tiny -> tiny (same backbone, so the answers must be those of the thumbnails'
    embeddings); the old state is kept, the ledger and names carried."""
    from PIL import Image

    from edge.cli import main

    rng = np.random.default_rng(0)
    files = {}
    for name, colour in (("cup", (200, 30, 30)), ("ball", (30, 200, 30))):
        files[name] = []
        for i in range(3):
            p = tmp_path / f"{name}{i}.png"
            Image.fromarray((np.array(colour) + rng.normal(0, 25, (120, 90, 3))).clip(0, 255).astype(np.uint8)).save(p)
            files[name].append(str(p))
    state = tmp_path / "st"
    common = ["--model", str(TINY), "--state", str(state), "--strategy", "ncm"]
    for name in files:
        assert main(["learn", *common, "--label", name, *files[name]]) == 0
    before = sorted(p.name for p in state.iterdir())
    out = tmp_path / "new"
    assert main(["upgrade", *common, "--from-model", str(TINY), "--out", str(out)]) == 0
    assert "upgraded 6 samples of 2 classes (0 without a thumbnail" in capsys.readouterr().out
    assert sorted(p.name for p in state.iterdir()) == before
    new_common = ["--model", str(TINY), "--state", str(out), "--strategy", "ncm"]
    assert main(["predict", *new_common, files["cup"][0], files["ball"][0]]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[1] for line in lines] == ["cup", "ball"]
    assert main(["samples", *new_common, "--label", "cup"]) == 0
    assert "3 samples in the ledger" in capsys.readouterr().out
    assert main(["upgrade", *common, "--from-model", str(TINY), "--out", str(out)]) == 2   # never overwrites


if __name__ == "__main__":  # python tests/test_upgrade.py [imagenet|cifar10 ...]
    sys.path.insert(0, str(Path(__file__).parent))
    from _real_photos import load_sets

    wheel = Path.home() / ".cache" / "edge-continual" / "foolbox-3.3.4-py3-none-any.whl"
    sets = load_sets(wheel)
    import os

    sizes = [int(v) for v in os.environ.get("THUMBNAIL_SIZES", "96,128,160").split(",")]
    for name in sys.argv[1:] or ["imagenet", "cifar10"]:
        for size in sizes:
            print(name, f"thumbnail {size}px", upgrade_accuracy(sets[name], thumbnail_size=size), flush=True)
