"""Export a generated stream's embeddings to plain ``.npz`` files, for comparisons outside the project.

    python -m firmware_sim.studies.export_embeddings --out runs/exported --scenarios nc,nicv2_391

One file per scenario (``<scenario>-run<R>.npz``) with the training batches in stream order
(``x``: every training embedding, float32, standardised exactly as the agent standardises them;
``y``: labels; ``batch``: the batch index of each row), the test set (``x_test``, ``y_test``) and
the softmax head's initial weights (``W0``, ``b0``: `edge.heads.SoftmaxHead` with the agent's
seed), so another library can start from the same head. `docs/avalanche_compare.py` reads these.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from edge.base import Standardizer
from edge.heads import SoftmaxHead
from edge.runtimes import open_backbone
from firmware_sim.cache import EmbeddingCache
from firmware_sim.cache_dir import default_cache_dir
from firmware_sim.data.streams import open_stream
from firmware_sim.loop.replay import embed_stream


def export(model: str, data: str, scenario: str, run: int, out: Path, cache: Path,
           max_classes: int = 50, seed: int = 0) -> Path:
    """Embed one stream (cached) and write ``<out>/<scenario>-run<run>.npz``; returns its path."""
    with open_backbone(model) as backbone:
        stream = open_stream(data, scenario, run, image_size=backbone.manifest.input_shape[0], progress=False)
        embedded = embed_stream(stream, backbone, EmbeddingCache(cache), progress=False)
        m = backbone.manifest
        std = Standardizer(np.asarray(m.embedding_mean, np.float32), np.asarray(m.embedding_std, np.float32)) \
            if m.embedding_mean is not None else None
    z = (lambda a: a if std is None else std(a))
    x = np.concatenate([z(e) for e in embedded.train]).astype(np.float32)
    y = np.concatenate([np.asarray(b.labels, np.int64) for b in stream.train_batches])
    batch = np.concatenate([np.full(len(b.labels), i, np.int64) for i, b in enumerate(stream.train_batches)])
    head = SoftmaxHead(x.shape[1], max_classes, seed=seed)
    w = head.get_weights()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{scenario}-run{run}.npz"
    np.savez(path, x=x, y=y, batch=batch, x_test=z(embedded.test).astype(np.float32),
             y_test=np.asarray(stream.test.labels, np.int64), W0=w["W"], b0=w["b"],
             meta=np.array(json.dumps({"data": data, "scenario": scenario, "run": run, "model": model,
                                       "n_batches": len(stream.train_batches), "max_classes": max_classes,
                                       "standardised": std is not None})))
    return path


def main(argv: list[str] | None = None) -> int:
    from edge.models import tiny_model_dir

    p = argparse.ArgumentParser(prog="python -m firmware_sim.studies.export_embeddings",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/exported")
    p.add_argument("--data", default="synthetic")
    p.add_argument("--scenarios", default="nc,nicv2_391")
    p.add_argument("--run", type=int, default=0)
    p.add_argument("--model", default=None)
    args = p.parse_args(argv)
    cache = default_cache_dir() / "embeddings"
    for scenario in args.scenarios.split(","):
        path = export(str(args.model or tiny_model_dir()), args.data, scenario, args.run, Path(args.out), cache)
        print(path)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
