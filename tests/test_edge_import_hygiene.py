"""`import edge` and a full learn/predict/checkpoint cycle never load TensorFlow; runtimes load lazily."""

from __future__ import annotations

import json
import subprocess
import sys

from _edge_common import ROOT, need_model

SCRIPT = r"""
import json, sys, tempfile
import numpy as np
import edge
heavy = ("tensorflow", "ai_edge_litert", "tflite_runtime", "onnxruntime", "PIL", "keras")
loaded = lambda: sorted({m.split(".")[0] for m in sys.modules} & set(heavy))
report = {"after_import": loaded()}
from edge.runtimes import open_backbone
bb = open_backbone(MODEL, runtime="litert")
report["after_litert"] = loaded()
agent = edge.Agent(bb, edge.AgentConfig(max_classes=4, buffer_capacity=16))
rng = np.random.default_rng(0)
frames = rng.integers(0, 256, size=(8, 32, 32, 3), dtype=np.uint8)
labels = np.array([0, 1, 2, 3] * 2)
agent.learn_many(frames, labels)
pred = agent.predict_many(frames)
store = edge.CheckpointStore(tempfile.mkdtemp(), bb.manifest.fingerprint)
store.save(agent.state_dict(), agent.config.to_dict(), agent.step_)
again = edge.Agent(bb, edge.AgentConfig.from_dict(store.latest().config))
again.load_state_dict(store.latest().state)
report["same_predictions"] = bool((again.predict_many(frames) == pred).all())
report["after_cycle"] = loaded()
bb2 = open_backbone(MODEL, runtime="onnx")
report["after_onnx"] = loaded()
print(json.dumps(report))
"""


def test_edge_cycle_never_imports_tensorflow():
    code = f"MODEL = {str(need_model())!r}\n" + SCRIPT
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["after_import"] == []
    assert report["after_litert"] == ["ai_edge_litert"]
    assert report["same_predictions"] is True
    assert report["after_cycle"] == ["ai_edge_litert"]  # no onnxruntime, no TF, no Pillow
    assert "onnxruntime" in report["after_onnx"]
    assert not {"tensorflow", "keras"} & set(report["after_onnx"])
