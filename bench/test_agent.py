"""The agent end to end: predict per frame, learn_many on a 300-frame batch for every registered
strategy, replay buffer add/sample, checkpoint save/load; each next to its same-run baseline."""

from __future__ import annotations

import numpy as np
import pytest

from bench import _common as C
from bench._raw import raw_runner
from bench._timing import interleaved
from bench.conftest import frames_for_model, model_dir_for, need_case, open_case

N_CLASSES = 50


def _agent(model: str, case: str, strategy: str = "replay", threads: int = C.THREADS):
    from edge.agent import Agent, AgentConfig

    bb = open_case(model, case, threads)
    return Agent(bb, AgentConfig(strategy=strategy, max_classes=N_CLASSES))


def _class_batches(mdir, n_batches: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """300-frame batches, 5 new classes each (class-incremental, so the buffer evicts)."""
    out = []
    for k in range(n_batches):
        frames = frames_for_model(mdir, C.BATCH_FRAMES, seed=seed + k)
        labels = (np.arange(C.BATCH_FRAMES) % 5 + 5 * k) % N_CLASSES
        out.append((frames, labels))
    return out


def test_predict(benchmark, model, case, batch, figures, quick):
    """Agent.predict_many (preprocess + embed + head) vs the bare runtime on the same input."""
    runtime, precision, providers = need_case(case)
    mdir = model_dir_for(model)
    agent = _agent(model, case)
    try:
        for frames, labels in _class_batches(mdir, 1):
            agent.learn_many(frames, labels)
        frames = frames_for_model(mdir, batch, seed=99)
        pred = benchmark(agent.predict_many, frames, unknown=True)
        raw = raw_runner(mdir, runtime, precision, providers, C.THREADS, frames)
        heavy = model in C.HEAVY_MODELS   # tens of ms a frame: fewer repetitions, same protocol
        reps = 3 if quick else ((40 if heavy else 400) if batch == 1 else (6 if heavy else 60))
        t = interleaved(lambda: agent.predict_many(frames, unknown=True), raw, reps, warmup=1 if quick else 5)
        # the same without the open-set novelty score (edge.openset), which is not part of this path's cost
        closed = interleaved(lambda: agent.predict_many(frames, unknown=False), raw, reps,
                             warmup=1 if quick else 5)
    finally:
        agent.close()
    benchmark.extra_info.update(kind="predict", model=model, case=case, threads=C.THREADS, batch=batch)
    ratio = t["b_median_s"] / t["a_median_s"]   # throughput of the agent relative to the raw runtime
    figures.setdefault("predict_vs_raw", {})[f"{model}|{case}|b{batch}"] = {
        **t, "agent_throughput_vs_raw": ratio,
        "agent_throughput_vs_raw_min": t["b_min_s"] / t["a_min_s"],
        "closed_set_median_s": closed["a_median_s"],
        "closed_set_throughput_vs_raw": closed["b_median_s"] / closed["a_median_s"]}
    assert pred.shape == (batch,) and pred.dtype == np.int64
    # -1 is edge.openset.UNKNOWN: with unknown=True, "unknown" for a frame unlike anything learned
    assert ((pred >= -1) & (pred < N_CLASSES)).all()
    assert np.isfinite(ratio) and ratio > 0


def test_learn_many(benchmark, learn_config, figures, quick):
    """learn_many on 300 frames (embed once + head epochs + replay) vs embedding the same frames."""
    model, case, strategy = learn_config
    need_case(case)
    mdir = model_dir_for(model)
    agent = _agent(model, case, strategy)
    try:
        batches = _class_batches(mdir, 2 if quick or model in C.HEAVY_MODELS else 5)
        for frames, labels in batches[:-1]:  # warm: the buffer is full and evicting
            agent.learn_many(frames, labels)
        frames, labels = batches[-1]
        before = agent.step_
        benchmark(agent.learn_many, frames, labels)
        reps = 1 if quick else (15 if model == "default" else (3 if model in C.HEAVY_MODELS else 8))
        t = interleaved(lambda: agent.learn_many(frames, labels), lambda: agent.embed(frames), reps,
                        warmup=0 if quick else 1)
        acc = agent.evaluate(frames, labels)
        mem = agent.memory_bytes()
    finally:
        agent.close()
    benchmark.extra_info.update(kind="learn", model=model, case=case, strategy=strategy,
                                threads=C.THREADS, batch=C.BATCH_FRAMES)
    ratio = t["a_median_s"] / t["b_median_s"]
    figures.setdefault("learn_vs_embed", {})[f"{model}|{case}|{strategy}"] = {
        **t, "learn_over_embed": ratio, "learn_over_embed_min": t["a_min_s"] / t["b_min_s"],
        "memory_bytes": mem}
    assert agent.step_ > before
    assert 0.0 <= acc <= 1.0
    assert np.isfinite(ratio) and ratio > 0


def test_learn_small_batch(benchmark, model, batch, figures, quick):
    """learn_many on a teach batch of 1 or 32 frames (replay, LiteRT int8: the device default's
    precision) vs embedding the same frames: what one teach request costs beyond the backbone."""
    case = "litert-int8"
    need_case(case)
    mdir = model_dir_for(model)
    agent = _agent(model, case)
    try:
        warm = frames_for_model(mdir, 64, seed=41)
        agent.learn_many(warm, np.arange(64) % 5)     # 5 classes known, the buffer holds rows
        frames = frames_for_model(mdir, batch, seed=42)
        labels = np.full(batch, 5, np.int64)           # a new class taught
        benchmark(agent.learn_many, frames, labels)
        heavy = model in C.HEAVY_MODELS
        reps = 1 if quick else ((30 if heavy else 200) if batch == 1 else (6 if heavy else 40))
        t = interleaved(lambda: agent.learn_many(frames, labels), lambda: agent.embed(frames), reps,
                        warmup=0 if quick else 1)
    finally:
        agent.close()
    benchmark.extra_info.update(kind="learn_small", model=model, case=case, threads=C.THREADS, batch=batch)
    ratio = t["a_median_s"] / t["b_median_s"]
    figures.setdefault("learn_vs_embed_small", {})[f"{model}|{case}|b{batch}"] = {
        **t, "learn_over_embed": ratio, "learn_over_embed_min": t["a_min_s"] / t["b_min_s"]}
    assert np.isfinite(ratio) and ratio > 0


def test_embed_300(benchmark, model, case):
    """The denominator of the learning target: embedding one 300-frame batch."""
    bb = open_case(model, case, C.THREADS)
    frames = frames_for_model(model_dir_for(model), C.BATCH_FRAMES)
    try:
        out = benchmark(bb.embed, frames)
    finally:
        bb.close()
    benchmark.extra_info.update(kind="embed300", model=model, case=case, threads=C.THREADS,
                                batch=C.BATCH_FRAMES)
    assert out.shape == (C.BATCH_FRAMES, bb.embedding_size) and np.isfinite(out).all()


@pytest.mark.parametrize("storage", ["float32", "int8"])
@pytest.mark.parametrize("op", ["add", "sample"])
def test_buffer(benchmark, op, storage):
    """Replay buffer add (300 rows into a full 1,000-row class-balanced buffer) and sample (150)."""
    from edge.buffer import ReplayBuffer

    rng = np.random.default_rng(0)
    embedding_size = 256
    buf = ReplayBuffer(1000, embedding_size, "class_balanced", storage, N_CLASSES, seed=0)
    for k in range(5):
        buf.add(rng.normal(size=(300, embedding_size)).astype(np.float32), np.arange(300) % 10 + 10 * k)
    emb = rng.normal(size=(300, embedding_size)).astype(np.float32)
    labels = np.arange(300) % 5 + 45
    if op == "add":
        benchmark(buf.add, emb, labels)
        assert len(buf) == 1000 and buf.class_counts()[45:].sum() > 0
    else:
        x, y = benchmark(buf.sample, 150)
        assert x.shape == (150, embedding_size) and y.shape == (150,) and np.isfinite(x).all()
    benchmark.extra_info.update(kind="buffer", op=op, storage=storage, rows=300 if op == "add" else 150)


@pytest.mark.parametrize("op", ["save", "load"])
def test_checkpoint(benchmark, op, tmp_path, figures):
    """Atomic checkpoint save (temp + fsync + rename) and verified load of a full agent state."""
    from edge.checkpoint import CheckpointStore

    mdir = model_dir_for("default")
    agent = _agent("default", "litert-fp32")
    try:
        for frames, labels in _class_batches(mdir, 4):
            agent.learn_many(frames, labels)
        store = CheckpointStore(tmp_path / "ckpt", fingerprint=agent.backbone.manifest.fingerprint)
        state, cfg = agent.state_dict(), agent.config.to_dict()
        path = store.save(state, cfg, agent.step_)
        file_bytes = path.stat().st_size  # read now: later saves prune the oldest file
        if op == "save":
            steps = iter(range(agent.step_ + 1, 10**9))
            benchmark(lambda: store.save(state, cfg, next(steps)))
            assert store.latest() is not None
        else:
            ckpt = benchmark(store.load, path)
            assert set(ckpt.state) == set(state)
            agent.load_state_dict(ckpt.state)
        mem = agent.memory_bytes()
    finally:
        agent.close()
    benchmark.extra_info.update(kind="checkpoint", op=op)
    figures["state_bytes"] = {**{f"{k}_bytes": v for k, v in mem.items()},
                              "checkpoint_file_bytes": file_bytes,
                              "config": "default model, replay, buffer 1000 x 256 int8, 50 classes"}
    assert file_bytes > 0 and mem["total"] > 0


def test_buffer_update_vs_embed(figures, quick):
    """A CORe50 NI-sized batch (15,000 frames; 1,500 in quick mode) offered to a full 1,500-row
    class-balanced int8 buffer vs embedding the same frames (default model, LiteRT int8: the
    fastest embedding, so the hardest ratio), timed alternately."""
    from edge.buffer import ReplayBuffer

    need_case("litert-int8")
    n = 1500 if quick else 15000
    bb = open_case("default", "litert-int8", C.THREADS)
    try:
        frames = frames_for_model(model_dir_for("default"), n, seed=7)
        emb = bb.embed(frames)
        labels = np.arange(n) % N_CLASSES
        rng = np.random.default_rng(0)
        warm = rng.normal(size=(1500, bb.embedding_size)).astype(np.float32)

        def update() -> None:
            buf = ReplayBuffer(1500, bb.embedding_size, "class_balanced", "int8", N_CLASSES, seed=0)
            buf.add(warm, np.arange(1500) % 10)  # full, 10 old classes: the batch evicts
            buf.add(emb, labels)

        t = interleaved(update, lambda: bb.embed(frames), 1 if quick else 3, warmup=0 if quick else 1)
    finally:
        bb.close()
    share = t["a_median_s"] / t["b_median_s"]
    figures["buffer_vs_embed"] = {**t, "rows": n, "update_over_embed": share,
                                  "config": "default|litert-int8, class_balanced int8, capacity 1500"}
    assert np.isfinite(share) and share > 0
