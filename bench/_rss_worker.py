"""Memory worker: one configuration in a fresh process (import, load, learn 10 batches, predict).

Prints one JSON line with the peak RSS (``ru_maxrss``) and the RSS after each phase. Run by
``bench/test_memory.py`` via `bench._common.run_worker`; usable by hand:

    python -m bench._rss_worker edge --model models/tiny --case litert-fp32
    python -m bench._rss_worker keras --run-dir runs/default --epochs 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

import numpy as np

N_BATCHES = 10
BATCH = 300
N_CLASSES = 50


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak() -> int:
    """High-water RSS of this process image. Not ru_maxrss: Linux carries it over fork + exec, so
    a worker started from a pytest process that imported TensorFlow would report the parent's."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _batch(k: int, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(k)
    frames = rng.integers(0, 256, size=(BATCH, *shape), dtype=np.uint8)
    return frames, (np.arange(BATCH) % 5 + 5 * k) % N_CLASSES


def run_edge(args: argparse.Namespace) -> dict:
    phases = {"start": _rss()}
    from bench._common import RUNTIME_CASES
    from edge.agent import Agent, AgentConfig
    from edge.checkpoint import CheckpointStore
    from edge.runtimes import open_backbone

    runtime, precision, providers = RUNTIME_CASES[args.case]
    phases["imported"] = _rss()
    bb = open_backbone(args.model, runtime=runtime, precision=precision, providers=providers,
                       num_threads=args.threads)
    agent = Agent(bb, AgentConfig(strategy=args.strategy, max_classes=N_CLASSES))
    phases["loaded"] = _rss()
    shape = tuple(bb.manifest.input_shape)
    started = time.perf_counter()
    for k in range(N_BATCHES):
        agent.learn_many(*_batch(k, shape))
    learn_s = time.perf_counter() - started
    phases["learned"] = _rss()
    pred = agent.predict_many(_batch(99, shape)[0][:32])
    with tempfile.TemporaryDirectory() as tmp:
        store = CheckpointStore(tmp, fingerprint=bb.manifest.fingerprint)
        path = store.save(agent.state_dict(), agent.config.to_dict(), agent.step_)
        ckpt_bytes = path.stat().st_size
    phases["predicted"] = _rss()
    return {"kind": "edge", "model": str(args.model), "case": args.case, "strategy": args.strategy,
            "peak_rss_bytes": _peak(), "rss_bytes": phases, "learn_s_per_batch": learn_s / N_BATCHES,
            "memory_bytes": agent.memory_bytes(), "checkpoint_bytes": ckpt_bytes,
            "predictions": int(pred.shape[0]), "tensorflow_loaded": "tensorflow" in sys.modules}


def run_keras(args: argparse.Namespace) -> dict:
    phases = {"start": _rss()}
    import keras
    import tensorflow as tf  # noqa: F401 - its import cost is part of the Keras way

    from bench._keras import build_keras_classifier, keras_preprocessing

    phases["imported"] = _rss()
    model, base = build_keras_classifier(args.run_dir, N_CLASSES)
    prep = keras_preprocessing(args.run_dir)
    phases["loaded"] = _rss()
    shape = tuple(int(v) for v in base.input_shape[1:])
    started = time.perf_counter()
    for k in range(N_BATCHES):
        frames, labels = _batch(k, shape)
        model.fit(prep(frames), labels, epochs=args.epochs, batch_size=32, verbose=0)
    learn_s = time.perf_counter() - started
    phases["learned"] = _rss()
    pred = model.predict(prep(_batch(99, shape)[0][:32]), verbose=0).argmax(axis=1)
    phases["predicted"] = _rss()
    return {"kind": "keras", "run_dir": str(args.run_dir), "epochs": args.epochs,
            "keras_version": keras.__version__, "peak_rss_bytes": _peak(), "rss_bytes": phases,
            "learn_s_per_batch": learn_s / N_BATCHES, "predictions": int(pred.shape[0])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    edge = sub.add_parser("edge")
    edge.add_argument("--model", required=True)
    edge.add_argument("--case", default="litert-fp32")
    edge.add_argument("--strategy", default="replay")
    edge.add_argument("--threads", type=int, default=2)
    keras_p = sub.add_parser("keras")
    keras_p.add_argument("--run-dir", required=True)
    keras_p.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args(argv)
    result = run_edge(args) if args.kind == "edge" else run_keras(args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
