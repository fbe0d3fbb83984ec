"""One way from an image to the model input (issue 21.2): `edge.preprocess.fit_frame` everywhere.

The same image file through ``edge-agent learn``, ``edge-agent predict``, ``edge-agent run
--source folder:`` (the device loop), the simulator's folder source and the agent given the decoded
frame must reach the model as the same tensor, bit for bit. The tensor is recorded where the
runtime receives it (the backbone's ``_run``, wrapped; the real runtime still computes).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from _edge_common import need_model


def _photo(height: int = 480, width: int = 640, seed: int = 0) -> np.ndarray:
    """A noisy colour gradient: smooth and sharp detail, so resizers that round differently disagree."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack([xx * 255 / (width - 1), yy * 255 / (height - 1), (xx + yy) % 256], -1)
    return np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture()
def model_inputs(monkeypatch: pytest.MonkeyPatch) -> list[np.ndarray]:
    """Every tensor the default model's runtime is given in this test, in order."""
    from edge.runtimes import open_backbone

    runtime_class = type(open_backbone(need_model()))
    original = runtime_class._run
    seen: list[np.ndarray] = []

    def recording(self: Any, x: np.ndarray) -> np.ndarray:
        seen.extend(np.array(row) for row in x)
        return original(self, x)

    monkeypatch.setattr(runtime_class, "_run", recording)
    return seen


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_one_image_gives_one_model_input_through_every_entry_point(tmp_path: Path, suffix: str,
                                                                    model_inputs: list[np.ndarray]) -> None:
    from edge.cli import main
    from edge.images import load_image
    from edge.runtimes import open_backbone
    from firmware_sim.data.sources import load_image_folder

    model = str(need_model())
    folder = tmp_path / "folder" / "cup"  # also a DIR/<label>/ tree for the simulator's folder source
    folder.mkdir(parents=True)
    image = folder / f"photo{suffix}"
    Image.fromarray(_photo()).save(image, quality=90)  # the JPEG quality (PNG ignores it)
    common = ["--model", model, "--state", str(tmp_path / "state")]

    assert main(["learn", *common, "--label", "cup", str(image)]) == 0
    learn = model_inputs[-1]
    assert main(["predict", *common, str(image)]) == 0
    predict = model_inputs[-1]
    events = tmp_path / "events.jsonl"
    assert main(["run", *common, "--source", f"folder:{tmp_path / 'folder'}", "--no-http", "--exit-at-end",
                 "--events", str(events)]) == 0
    run = model_inputs[-1]
    assert any(json.loads(line)["event"] == "learned" for line in events.read_text().splitlines())

    backbone = open_backbone(model)
    height, width = backbone.manifest.input_shape[:2]
    sim = load_image_folder(tmp_path / "folder", image_size=height).x  # the simulator's folder source
    backbone.embed(sim)
    simulator = model_inputs[-1]
    backbone.embed(load_image(image, target_size=(height, width)))  # a frame of any size given to the agent
    agent = model_inputs[-1]

    assert learn.shape == tuple(backbone.manifest.input_shape)
    for name, got in [("predict", predict), ("run", run), ("simulator", simulator), ("agent", agent)]:
        differing = int(np.count_nonzero(got != learn))
        assert differing == 0, f"{name}: {differing} of {learn.size} model input values differ from learn's"


def test_policies_shapes_and_edges() -> None:
    from edge.errors import InputError
    from edge.preprocess import fit_frame

    frame = np.full((40, 80, 3), 100, np.uint8)
    frame[:, :10] = 255  # a bright band on the left edge
    squash, crop, box = (fit_frame(frame, (32, 32), p) for p in ("squash", "crop", "letterbox"))
    assert squash.shape == crop.shape == box.shape == (32, 32, 3) and squash.dtype == np.uint8
    assert squash[:, 0].min() == 255 and crop[:, 0].max() == 100   # crop cut the band away
    assert box[:8].max() == 0 and box[-8:].max() == 0 and box[16, 0].min() == 255  # bars top/bottom
    tall = fit_frame(frame, (16, 48), "letterbox")  # wider target: bars left and right instead
    assert tall.shape == (16, 48, 3) and tall[:, :8].max() == 0 and tall[:, -8:].max() == 0
    gray = fit_frame(frame[..., :1], (20, 30), "crop")
    assert gray.shape == (20, 30, 1) and gray.dtype == np.uint8
    assert fit_frame(frame, (40, 80), "crop") is frame  # already the size: unchanged for every policy
    assert np.array_equal(fit_frame(frame, (32, 32)), squash)  # a bare size: squash
    assert np.array_equal(fit_frame(frame, (32, 32), "squash"), squash)  # deterministic
    with pytest.raises(InputError, match="resize policy: expected one of"):
        fit_frame(frame, (32, 32), "stretch")
    with pytest.raises(InputError, match="resize method: expected one of"):
        fit_frame(frame, (32, 32), method="lanczos9")
    with pytest.raises(InputError, match=r"frame: expected uint8 \(H, W, 3\) RGB or \(H, W, 1\) gray, got float32"):
        fit_frame(frame.astype(np.float32), (32, 32))


def test_the_manifest_carries_the_policy_and_old_manifests_squash(tmp_path: Path) -> None:
    from edge.errors import ManifestError
    from edge.manifest import Manifest, load_manifest
    from edge.preprocess import fit_frame

    old = load_manifest(need_model())
    raw = json.loads((need_model() / "manifest.json").read_text())
    assert "fit" not in raw["preprocessing"] or raw["preprocessing"]["fit"] == "squash"
    assert old.preprocessing.fit == "squash"
    frame = _photo(48, 64)
    assert np.array_equal(fit_frame(frame, old), fit_frame(frame, (32, 32), "squash"))

    for policy in ("crop", "letterbox"):
        data = old.to_dict()
        data["preprocessing"]["fit"] = policy
        del data["fingerprint"]
        manifest = Manifest.from_dict(data)
        assert manifest.preprocessing.fit == policy and manifest.fingerprint != old.fingerprint
        assert Manifest.from_dict(manifest.to_dict()) == manifest  # written, read back
        assert np.array_equal(fit_frame(frame, manifest), fit_frame(frame, (32, 32), policy))
        assert np.array_equal(fit_frame(frame, manifest, "squash"), fit_frame(frame, old))  # an override

    data = old.to_dict()
    assert data["preprocessing"]["fit"] == "squash" and Manifest.from_dict(data).fingerprint == old.fingerprint
    data["preprocessing"]["fit"] = "stretch"
    with pytest.raises(ManifestError, match="preprocessing.fit"):
        Manifest.from_dict(data)


def test_the_agent_fits_frames_of_another_size_by_the_manifest_policy() -> None:
    """A crop model given a wide frame sees its centre: the backbone's input mapper follows the manifest."""
    from edge.manifest import Preprocessing
    from edge.preprocess import InputMapper, fit_frame

    frame = _photo(48, 96)
    for policy in ("squash", "crop", "letterbox"):
        mapper = InputMapper((32, 32, 3), Preprocessing(fit=policy), "uint8")
        assert np.array_equal(mapper(frame[None])[0], fit_frame(frame, (32, 32), policy))
