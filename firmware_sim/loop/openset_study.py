"""Open-set study on any data source, with classes held out of training (run by ``edge-sim openset``).

    edge-sim openset --data synthetic --scenario nicv2_391 --held-out 10 --seed 0
    edge-sim openset --data folder:PATH --scenario nc --held-out 3,7 --model models/efficientnet_lite0_224 \\
        --precision int8 --json openset.json

Every training batch of the stream is one teach burst (one learn call) minus the frames of the held-out
classes (``--held-out``: a count drawn with ``--seed`` or a comma list). Frames are embedded in chunks of
`firmware_sim.cache.EMBED_CHUNK` and each burst is learned as soon as it is embedded (memory is bounded
by one batch of embeddings). The test set keeps every class: frames of held-out classes are the objects
never taught. Reported, for the agent's novelty score (`edge.openset`, MDS++) and for the score it
replaced (distance to the nearest standardised class mean over the class's spread, `previous_novelty`):
AUROC (known vs never-taught test frames), FPR at 95 % TPR (never-taught frames accepted when 95 % of
known ones are), and at the agent's own threshold for ``--unknown-rate``: the realised false-reject rate
on known test frames, the false-accept rate on never-taught ones, and the false-reject rate on each teach
burst of an already-known class before it was learned (known objects in conditions not yet taught).
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

import numpy as np

from edge.agent import Agent, AgentConfig
from edge.openset import auroc, check_rate
from edge.stats import ClassStatistics

log = logging.getLogger(__name__)


def previous_novelty(stats: ClassStatistics, z: np.ndarray) -> np.ndarray:
    """The score before issue 23 (for comparison): ``min_c ||z - mu_c||^2 / s_c`` over standardised rows,
    ``s_c`` the unbiased mean squared distance of class ``c``'s rows to its mean."""
    seen = stats.classes_
    n = stats.count_[seen].astype(np.float64)
    mu = stats.sum_[seen] / n[:, None]
    ss = np.maximum(stats.sq_[seen] - n * (mu * mu).sum(1), 0.0)
    multi = n > 1
    pooled = ss[multi].sum() / max(float((n[multi] - 1).sum()), 1.0) if multi.any() else 1.0
    spread = np.where(multi, ss / np.maximum(n - 1, 1), pooled)
    spread = np.maximum(spread, 1e-6 * max(pooled, 1e-12))
    z = np.asarray(z, np.float64)
    d2 = np.maximum((z * z).sum(1)[:, None] - 2.0 * z @ mu.T + (mu * mu).sum(1)[None, :], 0.0)
    out: np.ndarray = (d2 / spread[None, :]).min(axis=1)
    return out


def fpr_at_95_tpr(known: np.ndarray, unknown: np.ndarray) -> float:
    """Share of unknown rows accepted at the threshold that accepts 95 % of the known rows."""
    return float((np.asarray(unknown) <= np.quantile(known, 0.95)).mean())


def _embed(backbone: Any, frames_of: Any, n: int) -> np.ndarray:
    from firmware_sim.cache import EMBED_CHUNK

    chunks = [backbone.embed(frames_of(np.arange(s, min(s + EMBED_CHUNK, n)))) for s in range(0, n, EMBED_CHUNK)]
    return np.concatenate(chunks) if chunks else np.zeros((0, backbone.embedding_size), np.float32)


def run_openset(args: argparse.Namespace) -> dict[str, Any]:
    """Run the study; the report as a dict (also printed, and written to ``--json``)."""
    from edge.runtimes import open_backbone
    from firmware_sim.cache import EmbeddingCache, embed_test_set
    from firmware_sim.cache_dir import default_cache_dir
    from firmware_sim.data.protocols import open_set_classes
    from firmware_sim.data.streams import open_stream

    started = time.perf_counter()
    check_rate(args.unknown_rate, "--unknown-rate")
    held: int | list[int] = ([int(c) for c in args.held_out.split(",")] if "," in args.held_out
                             else int(args.held_out))
    with open_backbone(args.model, precision=args.precision) as bb:
        stream = open_stream(args.data, args.scenario, args.run, image_size=args.image_size or bb.manifest.input_shape[0],
                             progress=False)
        hidden = open_set_classes(stream.n_classes, held, seed=args.seed)
        agent = Agent(None, AgentConfig(strategy=args.strategy, max_classes=stream.n_classes),
                      embedding_size=bb.embedding_size, embedding_mean=bb.manifest.embedding_mean,
                      embedding_std=bb.manifest.embedding_std)
        burst_rejected = burst_rows = 0
        for batch in stream.train_batches:
            y = np.asarray(batch.labels)
            keep = np.flatnonzero(~np.isin(y, hidden))
            if keep.size == 0:
                continue
            x = _embed(bb, lambda pos: _images_at(batch, keep[pos]), keep.size)
            known = agent.stats.count_[y[keep]] > 0
            if known.any() and agent.openset.calibrated_on != "nothing":
                t = agent.openset.threshold_at(args.unknown_rate)
                burst_rejected += int((agent.novelty_embeddings(x[known]) > t).sum())
                burst_rows += int(known.sum())
            agent.learn_embeddings(x, y[keep])
        cache = EmbeddingCache(None if args.no_cache else (args.cache or default_cache_dir() / "embeddings"))
        test, _ = embed_test_set(stream, bb, cache)
    test_y = np.asarray(stream.test.labels)
    unknown = np.isin(test_y, hidden)
    new = agent.novelty_embeddings(test)
    standardised = test if agent.standardizer is None else agent.standardizer(test)
    old = previous_novelty(agent.stats, standardised)
    t = agent.openset.threshold_at(args.unknown_rate)
    closed = agent.predict_embeddings(test)
    report = {
        "data": args.data, "scenario": args.scenario, "run": args.run, "model": str(args.model),
        "strategy": args.strategy, "held_out": hidden, "known_test": int((~unknown).sum()),
        "unknown_test": int(unknown.sum()), "unknown_rate": args.unknown_rate,
        "calibrated_on": agent.openset.calibrated_on, "calibration_scores": agent.openset.n_calibration,
        "threshold": t,
        "auroc": auroc(new[~unknown], new[unknown]), "fpr_at_95_tpr": fpr_at_95_tpr(new[~unknown], new[unknown]),
        "previous_auroc": auroc(old[~unknown], old[unknown]),
        "previous_fpr_at_95_tpr": fpr_at_95_tpr(old[~unknown], old[unknown]),
        "false_reject_test": float((new[~unknown] > t).mean()),
        "false_accept_test": float((new[unknown] <= t).mean()),
        "false_reject_new_bursts": burst_rejected / burst_rows if burst_rows else None,
        "new_burst_rows": burst_rows,
        "closed_set_known_accuracy": float((closed[~unknown] == test_y[~unknown]).mean()),
        "seconds": round(time.perf_counter() - started, 1),
    }
    return report


def _images_at(batch: Any, positions: np.ndarray) -> np.ndarray:
    at = getattr(batch, "images_at", None)
    return at(positions) if at is not None else batch.images()[positions]


def format_report(r: dict[str, Any]) -> str:
    pct = (lambda v: "-" if v is None else f"{100 * v:.1f} %")
    return "\n".join([
        f"open set on {r['data']} {r['scenario']} run {r['run']} ({r['model']}, {r['strategy']}): held out "
        f"{r['held_out']}; {r['known_test']} known and {r['unknown_test']} never-taught test frames",
        f"  AUROC {r['auroc']:.3f} (previous score {r['previous_auroc']:.3f}); FPR at 95 % TPR "
        f"{pct(r['fpr_at_95_tpr'])} (previous {pct(r['previous_fpr_at_95_tpr'])})",
        f"  threshold for a {100 * r['unknown_rate']:g} % target, calibrated on {r['calibrated_on']} "
        f"({r['calibration_scores']} scores): false reject {pct(r['false_reject_test'])} on known test frames, "
        f"{pct(r['false_reject_new_bursts'])} on {r['new_burst_rows']} rows of new teach bursts before they were "
        f"learned; false accept {pct(r['false_accept_test'])} of never-taught frames",
        f"  closed-set accuracy on known test frames {pct(r['closed_set_known_accuracy'])}; {r['seconds']} s",
    ])
