"""The Keras baseline (frozen backbone + Dense head, ``model.fit``) against the edge agent on the
SAME backbone weights: ``backbone.keras`` from ``runs/default`` (or a small one pretrained into the
cache) and its edge export. Update time per 300-frame batch (1 and E epochs) and accuracy on one
generated CORe50-style stream (NICv2-79, 32x32)."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("tensorflow", reason="the Keras baseline needs TensorFlow (the host extra)")

from bench import _common as C  # noqa: E402
from bench._keras import build_keras_classifier, keras_preprocessing  # noqa: E402
from bench._timing import interleaved  # noqa: E402

N_CLASSES = 50


@pytest.fixture(scope="session")
def same_backbone(quick):
    """(run_dir with backbone.keras, edge model dir exported from it)."""
    run_dir = C.keras_run_dir(quick)
    return run_dir, C.keras_backbone_model_dir(run_dir)


def _edge_agent(model_dir, strategy: str = "replay"):
    from edge.agent import Agent, AgentConfig
    from edge.runtimes import open_backbone

    bb = open_backbone(model_dir, runtime="litert", precision="fp32", num_threads=C.THREADS)
    return Agent(bb, AgentConfig(strategy=strategy, max_classes=N_CLASSES))


@pytest.mark.keras_fit
@pytest.mark.parametrize("epochs", [1, C.KERAS_EPOCHS], ids=lambda e: f"e{e}")
def test_keras_fit(benchmark, same_backbone, epochs, figures, quick):
    """model.fit on one 300-frame batch, next to the edge agent's learn_many on the same frames."""
    run_dir, edge_dir = same_backbone
    model, base = build_keras_classifier(run_dir, N_CLASSES)
    prep = keras_preprocessing(run_dir)
    shape = tuple(int(v) for v in base.input_shape[1:])
    frames = C.rng_frames(C.BATCH_FRAMES, shape, seed=1)
    labels = np.arange(C.BATCH_FRAMES) % 5

    def fit() -> float:
        hist = model.fit(prep(frames), labels, epochs=epochs, batch_size=32, verbose=0)
        return float(hist.history["loss"][-1])

    fit()  # builds the train function once, as any notebook loop would before its 2nd batch
    loss = benchmark.pedantic(fit, rounds=1 if quick else 5, iterations=1)
    agent = _edge_agent(edge_dir)
    try:
        t = interleaved(fit, lambda: agent.learn_many(frames, labels), 1 if quick else 5, warmup=1)
    finally:
        agent.close()
    speedup = t["a_median_s"] / t["b_median_s"]
    figures.setdefault("keras_vs_edge_update", {})[f"e{epochs}"] = {
        **t, "keras_epochs": epochs, "edge_epochs": 2, "edge_strategy": "replay",
        "edge_update_speedup": speedup, "edge_update_speedup_min": t["a_min_s"] / t["b_min_s"]}
    benchmark.extra_info.update(kind="keras_fit", epochs=epochs, batch=C.BATCH_FRAMES)
    assert np.isfinite(loss) and loss >= 0
    assert np.isfinite(speedup) and speedup > 0


def test_stream_accuracy(same_backbone, figures, quick):
    """Final accuracy on the same stream: the edge agent (every registered strategy) vs Keras fit."""
    from edge.strategies import STRATEGIES
    from firmware_sim.data.streams import open_stream

    run_dir, edge_dir = same_backbone
    prep = keras_preprocessing(run_dir)
    from edge.manifest import load_manifest

    size = load_manifest(edge_dir, verify=False).input_shape[0]
    stream = open_stream("synthetic", "nicv2_79", 0, image_size=size, progress=False)
    batches = list(stream.train_batches)[: 6 if quick else None]
    test_x, test_y = stream.test.images(), np.asarray(stream.test.labels)
    if quick:
        test_x, test_y = test_x[::10], test_y[::10]
    data = [(b.images(), np.asarray(b.labels)) for b in batches]
    result: dict[str, dict[str, float]] = {}
    for strategy in sorted(STRATEGIES):
        agent = _edge_agent(edge_dir, strategy)
        times = []
        try:
            for frames, labels in data:
                start = time.perf_counter()
                agent.learn_many(frames, labels)
                times.append(time.perf_counter() - start)
            acc = agent.evaluate(test_x, test_y)
        finally:
            agent.close()
        result[f"edge-{strategy}"] = {"accuracy": acc, "update_s_median": float(np.median(times)),
                                      "update_s_total": float(np.sum(times))}
    for epochs in (1, C.KERAS_EPOCHS):
        model, _ = build_keras_classifier(run_dir, N_CLASSES)
        times = []
        for frames, labels in data:
            start = time.perf_counter()
            model.fit(prep(frames), labels, epochs=epochs, batch_size=32, verbose=0)
            times.append(time.perf_counter() - start)
        pred = model.predict(prep(test_x), batch_size=256, verbose=0).argmax(axis=1)
        result[f"keras-fit-e{epochs}"] = {"accuracy": float((pred == test_y).mean()),
                                          "update_s_median": float(np.median(times[1:] or times)),
                                          "update_s_total": float(np.sum(times))}
    figures["stream_accuracy"] = {
        "stream": f"synthetic {stream.name}", "batches": len(data),
        "train_frames": int(sum(len(lbl) for _, lbl in data)), "test_frames": int(len(test_y)),
        "backbone": str(run_dir / "backbone.keras"), "edge_model": str(edge_dir), "results": result}
    for name, row in result.items():
        assert 0.0 <= row["accuracy"] <= 1.0, (name, row)
    assert result["edge-replay"]["accuracy"] > 1.0 / N_CLASSES, result  # better than chance
