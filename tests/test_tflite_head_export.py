"""`edge-host export-head`: builtin-ops-only trainable heads, 200-step parity with the NumPy heads.

Parity tolerance: rtol 1e-4, atol 1e-5 on every weight, optimizer slot and probability after 200
steps, for softmax and MLP heads with SGD-momentum and Adam (32-d embeddings, 10 classes, hidden 16,
batch 8 with partial batches, lr 0.01, weight decay 1e-3).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.tf
pytest.importorskip("tensorflow")

from _tflite_head_common import ATOL, RTOL, max_abs_diff, parity_run

from edge.manifest import load_manifest
from host.tflite_ops import non_builtin_ops, tflite_op_names
from host.export import ExportError
from host.export_head import HeadSpec, convert_head, export_head

REPO = Path(__file__).resolve().parents[1]
D, K, B, H = 32, 10, 8, 16
HP = {"lr": 0.01, "weight_decay": 1e-3}


@pytest.mark.parametrize("kind,optimizer", [("softmax", "sgd"), ("softmax", "adam"), ("mlp", "sgd"), ("mlp", "adam")])
def test_exported_head_matches_numpy_after_200_steps(kind: str, optimizer: str, tmp_path: Path) -> None:
    spec = HeadSpec(kind=kind, max_classes=K, optimizer=optimizer, batch_size=B,
                    hidden=H if kind == "mlp" else None, hyperparameters=HP)
    content = convert_head(spec, D)
    assert non_builtin_ops(tflite_op_names(content)) == []
    path = tmp_path / "head.tflite"
    path.write_bytes(content)
    r = parity_run(str(path), kind, optimizer, D, K, B, steps=200, hidden=H, **HP)
    for key, want in r["numpy_state"].items():
        np.testing.assert_allclose(r["tflite_state"][key], want, rtol=RTOL, atol=ATOL, err_msg=key)
    assert max_abs_diff(r["tflite_state"], r["numpy_state"]) < 1e-5
    assert r["tflite_state"]["t"] == 200 and r["tflite_state"]["seen"].sum() == K - 1
    np.testing.assert_allclose(r["losses"][:, 1], r["losses"][:, 0], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(r["tfl"].predict_proba(r["test"]), r["ref"].predict_proba(r["test"]),
                               rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(r["tfl"].predict(r["test"]), r["ref"].predict(r["test"]))


def test_export_head_writes_the_file_and_the_manifest(tmp_path: Path) -> None:
    from host.cli import main as host_main

    model = tmp_path / "tiny"
    shutil.copytree(REPO / "models" / "tiny", model)
    before = load_manifest(model)
    code = host_main(["export-head", "--model", str(model), "--head", "softmax", "--max-classes", "12",
                      "--optimizer", "adam", "--batch-size", "16", "--lr", "0.002"])
    assert code == 0
    after = load_manifest(model)
    assert after.fingerprint == before.fingerprint and after.files == before.files
    entry = after.heads[-1]
    assert entry.path == "head_softmax_adam_b16_c12.tflite" and (model / entry.path).is_file()
    assert (entry.kind, entry.optimizer, entry.batch_size, entry.max_classes, entry.embedding_size) == (
        "softmax", "adam", 16, 12, 256)
    assert entry.hyperparameters == {"lr": 0.002, "weight_decay": 1e-4, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
    assert non_builtin_ops(tflite_op_names(model / entry.path)) == []
    # exporting the same head again replaces its entry instead of adding one
    export_head(model, HeadSpec(kind="softmax", max_classes=12, optimizer="adam", batch_size=16,
                                hyperparameters={"lr": 0.002}))
    assert [h.path for h in load_manifest(model).heads].count(entry.path) == 1
    data = json.loads((model / "manifest.json").read_text())
    assert len(data["files"]) == 3


def test_export_fails_on_flex_ops_and_bad_specs(monkeypatch: pytest.MonkeyPatch) -> None:
    import host.export as export_module

    monkeypatch.setattr(export_module, "tflite_op_names", lambda content: ["ADD", "FlexReluGrad"])
    with pytest.raises(ExportError, match=r"non-builtin ops \['FlexReluGrad'\]"):
        convert_head(HeadSpec(max_classes=3, batch_size=2), 4)
    monkeypatch.undo()
    with pytest.raises(ExportError, match="hidden"):
        convert_head(HeadSpec(kind="mlp", hidden=None), 4)
    with pytest.raises(ExportError, match="subset"):
        convert_head(HeadSpec(hyperparameters={"beta1": 0.5}), 4)
