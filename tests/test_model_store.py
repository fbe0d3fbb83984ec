"""Models on a device: ``--model NAME`` resolution, ``edge-host bundle`` -> ``edge-agent models install``.

Real files throughout: the packaged models are bundled with the real command, installed with the
real command, and opened with the edge runtime. Broken bundles (tampered, truncated, incomplete,
path traversal, links, oversized) are refused with expected-vs-got and leave the models folder
exactly as it was (same listing, same bytes, no staging folder left behind).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

from edge.cli import main as agent_main
from edge.errors import ChecksumError, ConfigError
from edge.manifest import load_manifest
from edge.model_store import (
    BundleError,
    default_models_dir,
    default_precision,
    install_bundle,
    list_models,
    resolve_model,
)
from edge.models import (
    DEFAULT_MODEL_NAME,
    IMAGENET_MODEL_NAME,
    TINY_MODEL_NAME,
    default_model_dir,
    imagenet_model_dir,
    packaged_model_dir,
    tiny_model_dir,
)
from edge.runtimes import open_backbone
from host.bundle import bundle_model
from host.cli import main as host_main


def _snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` (hidden ones included) -> sha256 of its bytes ('dir' for folders)."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): ("dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "tiny.tar"
    return bundle_model(tiny_model_dir(), out, name="tiny-copy")


def _members(bundle: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(bundle) as tar:
        return [(m, tar.extractfile(m).read() if m.isfile() else b"") for m in tar.getmembers()]  # type: ignore[union-attr]


def _write(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            info = tarfile.TarInfo(info.name) if isinstance(info, str) else info
            if info.isfile():
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


def _info(name: str, **fields: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    for key, value in fields.items():
        setattr(info, key, value)
    return info


# ------------------------------------------------------------------ the packaged models and names


def test_packaged_models_resolve_and_default_is_one_constant() -> None:
    assert tiny_model_dir() == packaged_model_dir(TINY_MODEL_NAME)
    assert imagenet_model_dir() == packaged_model_dir(IMAGENET_MODEL_NAME)
    assert default_model_dir() == packaged_model_dir(DEFAULT_MODEL_NAME)
    tiny = load_manifest(tiny_model_dir(), verify=True)
    imagenet = load_manifest(imagenet_model_dir(), verify=True)
    assert tiny.input_shape == (32, 32, 3)
    assert imagenet.architecture.startswith("efficientnet_lite0") and imagenet.embedding_size == 1280
    # the shipped ImageNet model: int8 TFLite for CPUs and fp32 ONNX for GPUs, nothing else
    assert sorted((f.format, f.precision) for f in imagenet.files) == [("onnx", "fp32"), ("tflite", "int8")]


def test_default_precision_opens_every_packaged_model() -> None:
    """Without --precision, each packaged model opens on LiteRT (int8 where it has no fp32 TFLite file)."""
    for model in (tiny_model_dir(), imagenet_model_dir()):
        precision = default_precision(model, "litert")
        with open_backbone(model, runtime="litert", precision=precision) as bb:
            h, w, _ = bb.manifest.input_shape
            assert bb.embed(np.zeros((1, h, w, 3), np.uint8)).shape == (1, bb.manifest.embedding_size)
    assert default_precision(imagenet_model_dir(), "litert") == "int8"
    assert default_precision(imagenet_model_dir(), "onnx") == "fp32"


def test_resolve_model_paths_names_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_MODELS", str(tmp_path / "models"))
    assert default_models_dir() == tmp_path / "models"
    assert resolve_model(TINY_MODEL_NAME) == tiny_model_dir()
    assert resolve_model(IMAGENET_MODEL_NAME) == imagenet_model_dir()
    assert resolve_model(str(tiny_model_dir())) == tiny_model_dir()   # a folder stays a folder
    assert resolve_model("./nowhere") == Path("./nowhere")            # a path is never a name
    with pytest.raises(ConfigError, match=r"expected a model folder or the name.*got neither; available: .*tiny"):
        resolve_model("no-such-model")


def test_service_models_folder_from_systemd_state_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGE_MODELS", raising=False)
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/edge-agent")
    assert default_models_dir() == Path("/var/lib/edge-agent/models")


# ------------------------------------------------------------------ round trip


def test_bundle_install_round_trip_via_the_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The README walk-through: edge-host bundle on the host, models install + --model NAME on the device."""
    bundle = tmp_path / "lite0.tar"
    assert host_main(["bundle", "--model", str(imagenet_model_dir()), "-o", str(bundle), "--name", "lite0"]) == 0
    models = tmp_path / "device-models"
    assert agent_main(["models", "install", str(bundle), "--models-dir", str(models)]) == 0
    assert "installed lite0" in capsys.readouterr().out
    installed = models / "lite0"
    for f in ["manifest.json"] + [e.path for e in load_manifest(imagenet_model_dir()).files]:
        assert (installed / f).read_bytes() == (imagenet_model_dir() / f).read_bytes()
    assert sorted(p.name for p in models.iterdir()) == ["lite0"]   # no staging folder left
    assert agent_main(["models", "list", "--models-dir", str(models), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {(r["name"], r["source"]) for r in rows} >= {("lite0", "installed"), (TINY_MODEL_NAME, "package")}
    assert resolve_model("lite0", models) == installed
    with open_backbone(resolve_model("lite0", models), precision="int8") as bb:
        emb = bb.embed(np.zeros((1, 224, 224, 3), np.uint8))
    assert emb.shape == (1, 1280) and np.isfinite(emb).all()
    # the same model folder always gives the same bundle bytes
    again = bundle_model(imagenet_model_dir(), tmp_path / "again.tar", name="lite0")
    assert again.read_bytes() == bundle.read_bytes()


def test_install_refuses_existing_and_packaged_names(tiny_bundle: Path, tmp_path: Path) -> None:
    models = tmp_path / "m"
    install_bundle(tiny_bundle, models)
    before = _snapshot(models)
    with pytest.raises(BundleError, match="already installed"):
        install_bundle(tiny_bundle, models)
    with pytest.raises(BundleError, match="expected a name other than the packaged models'"):
        install_bundle(tiny_bundle, models, name=TINY_MODEL_NAME)
    assert _snapshot(models) == before
    install_bundle(tiny_bundle, models, overwrite=True)
    assert _snapshot(models) == before


# ------------------------------------------------------------------ broken bundles change nothing


def _tampered(members: list[tuple[tarfile.TarInfo, bytes]], which: str) -> list[tuple[tarfile.TarInfo, bytes]]:
    out = []
    for info, data in members:
        if info.name.endswith(which):
            data = bytes([data[0] ^ 1]) + data[1:]
        out.append((info, data))
    return out


def _reindexed(members: list[tuple[tarfile.TarInfo, bytes]], edit) -> list[tuple[tarfile.TarInfo, bytes]]:
    index = json.loads(members[0][1])
    edit(index)
    return [(members[0][0], json.dumps(index).encode())] + members[1:]


CASES = {
    "tampered file": (lambda m: _tampered(m, "backbone_int8.tflite"),
                      ChecksumError, r"backbone_int8.tflite: expected sha256 [0-9a-f]{64}, got [0-9a-f]{64}"),
    "tampered manifest": (lambda m: _tampered(m, "/manifest.json"), ChecksumError, r"manifest.json: expected sha256"),
    "missing file": (lambda m: [x for x in m if not x[0].name.endswith("backbone.onnx")],
                     BundleError, r"expected 6 files, got 5 \(missing: backbone.onnx\)"),
    "extra file": (lambda m: m + [(_info("tiny-copy/evil.sh", mode=0o755), b"#!/bin/sh\n")],
                   BundleError, r"expected members tiny-copy/<a file of bundle.json>, got 'tiny-copy/evil.sh'"),
    "path traversal": (lambda m: m[:1] + [(_info("tiny-copy/../../escaped"), b"x")] + m[1:],
                       BundleError, r"got 'tiny-copy/../../escaped'"),
    "absolute path": (lambda m: m[:1] + [(_info("/tmp/escaped"), b"x")] + m[1:], BundleError, r"got '/tmp/escaped'"),
    "symlink": (lambda m: m[:1] + [(_info("tiny-copy/backbone.onnx", type=tarfile.SYMTYPE,
                                          linkname="/etc/passwd"), b"")] + m[2:],
                BundleError, r"expected a regular file, got a link"),
    "index not first": (lambda m: m[1:] + m[:1], BundleError, r"expected NAME/bundle.json as the first member"),
    "index name mismatch": (lambda m: _reindexed(m, lambda i: i.update(name="other")),
                            BundleError, r"expected the index name to be the folder name 'tiny-copy'"),
    "declared size lies": (lambda m: _reindexed(m, lambda i: i["files"]["backbone.onnx"].update(bytes=10)),
                           BundleError, r"backbone.onnx: expected 10 bytes, got 1098926"),
    "oversized": (lambda m: _reindexed(m, lambda i: i["files"]["backbone.onnx"].update(bytes=3 << 30)),
                  BundleError, r"expected at most \d+ bytes of files, got \d+"),
    "traversal in index": (lambda m: _reindexed(m, lambda i: i["files"].update({"../x": i["files"]["backbone.onnx"]})),
                           BundleError, r"expected plain file names in bundle.json, got '../x'"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_broken_bundles_are_refused_and_change_nothing(case: str, tiny_bundle: Path, tmp_path: Path) -> None:
    make, error, message = CASES[case]
    broken = _write(tmp_path / "broken.tar", make(_members(tiny_bundle)))
    models = tmp_path / "models"
    install_bundle(tiny_bundle, models, name="already-here")
    before = _snapshot(models)
    with pytest.raises(error, match=message):
        install_bundle(broken, models)
    assert _snapshot(models) == before
    assert not (tmp_path / "escaped").exists()


@pytest.mark.parametrize("cut", [100, 5000, -50_000])
def test_truncated_bundle_is_refused(cut: int, tiny_bundle: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    data = tiny_bundle.read_bytes()
    broken = tmp_path / "cut.tar"
    broken.write_bytes(data[:cut])
    models = tmp_path / "models"
    assert agent_main(["models", "install", str(broken), "--models-dir", str(models)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edge-agent: error: bundle ") and "expected" in err and len(err.splitlines()) == 1
    assert not models.exists()   # not even the models folder was created


def test_not_a_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "model.tar"
    junk.write_bytes(os.urandom(4096))
    assert agent_main(["models", "install", str(junk), "--models-dir", str(tmp_path / "m")]) == 2
    assert "expected a tar archive made by edge-host bundle" in capsys.readouterr().err
    assert agent_main(["models", "install", str(tmp_path / "absent.tar"), "--models-dir", str(tmp_path / "m")]) == 2
    assert "expected a bundle file" in capsys.readouterr().err


def test_list_names_the_packaged_models(tmp_path: Path) -> None:
    rows = {(m.name, m.source): m for m in list_models(tmp_path)}
    assert rows[(TINY_MODEL_NAME, "package")].input_size == 32
    assert rows[(IMAGENET_MODEL_NAME, "package")].embedding_size == 1280


@pytest.mark.slow
def test_wheel_carries_the_imagenet_model_int8_and_onnx_only(tmp_path: Path) -> None:
    """The built wheel holds the committed efficientnet_lite0_224 files byte for byte, and no fp32 TFLite."""
    import subprocess
    import sys
    import zipfile

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(root), "--no-deps", "-q", "-w", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("edge_continual-*.whl")
    prefix = f"edge/models/{IMAGENET_MODEL_NAME}/"
    with zipfile.ZipFile(wheel) as zf:
        members = sorted(n[len(prefix):] for n in zf.namelist() if n.startswith(prefix))
        assert members == ["backbone.onnx", "backbone_int8.tflite", "manifest.json"]
        for name in members:
            assert zf.read(prefix + name) == (imagenet_model_dir() / name).read_bytes(), name


def test_bundle_refuses_a_model_folder_that_fails_its_checksums(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    model = tmp_path / "mine"
    shutil.copytree(tiny_model_dir(), model)
    data = bytearray((model / "backbone_int8.tflite").read_bytes())
    data[-1] ^= 1
    (model / "backbone_int8.tflite").write_bytes(bytes(data))
    out = tmp_path / "mine.tar"
    assert host_main(["bundle", "--model", str(model), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edge-host bundle: error: ") and "sha256 expected" in err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["mine"]


def test_edge_agent_without_model_uses_the_imagenet_backbone(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """No --model, no --precision: the packaged efficientnet_lite0_224, int8 on LiteRT; a learn/predict
    round trip works on it; ``--model tiny`` (a name) opens the tiny backbone instead. SLDA, as the
    real-photo checks: the default ``replay`` softmax head on this backbone answered "blue" for the red
    image too (issue 22 report), which is the strategy's business, not the backbone's."""
    from PIL import Image

    rng = np.random.default_rng(0)
    paths: dict[str, list[str]] = {}
    for label, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
        for i in range(3):
            path = tmp_path / f"{label}{i}.png"
            Image.fromarray(np.clip(np.asarray(colour) + rng.normal(0, 20, (48, 64, 3)), 0, 255)
                            .astype(np.uint8)).save(path)
            paths.setdefault(label, []).append(str(path))
    state = ["--state", str(tmp_path / "state")]
    for label, files in paths.items():
        assert agent_main(["learn", *state, "--strategy", "slda", "--label", label, *files[:2]]) == 0
    capsys.readouterr()
    assert agent_main(["predict", *state, "--json", paths["red"][2], paths["blue"][2]]) == 0
    answers = [json.loads(line)["label"] for line in capsys.readouterr().out.splitlines()]
    assert answers == ["red", "blue"]
    assert agent_main(["status", *state, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["model"], status["precision"], status["step"]) == (IMAGENET_MODEL_NAME, "int8", 2), status
    assert agent_main(["status", "--model", TINY_MODEL_NAME, "--state", str(tmp_path / "tiny-state"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == TINY_MODEL_NAME
