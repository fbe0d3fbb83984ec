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
The new-minus-previous AUROC comes with a 95 % bootstrap interval (`bootstrap_auroc_difference`) that
resamples the test set's independent units: the (session, object) folders of a CORe50-layout test set,
else single frames (`independent_units`).
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
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


BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class PairedScores:
    """Both scores of one evaluation (one rotation of a stream) and the independent unit of every row.

    Rows with the same unit id (a photo, a (session, object) recording) are resampled together.

    Example:
        >>> s = PairedScores(np.array([0.1, 0.2]), np.array([0.9]), np.array([0.3, 0.1]), np.array([0.2]),
        ...                  np.array([0, 0]), np.array([1]))
        >>> round(bootstrap_auroc_difference([s], resamples=10)["difference"], 3)
        0.5
    """

    new_known: np.ndarray
    new_unknown: np.ndarray
    previous_known: np.ndarray
    previous_unknown: np.ndarray
    known_units: np.ndarray
    unknown_units: np.ndarray


def independent_units(paths: Sequence[str], n: int) -> tuple[np.ndarray, str]:
    """``(unit id per test frame, what a unit is)``: the ``session/object`` folder of CORe50-layout paths
    (frames of one recording are near-duplicates), else every frame on its own."""
    if len(paths) == n and n and all("/" in p for p in paths):
        _, ids = np.unique([p.rsplit("/", 1)[0] for p in paths], return_inverse=True)
        return ids.astype(np.int64), "session-object recordings"
    return np.arange(n, dtype=np.int64), "frames"


def weighted_auroc(known: np.ndarray, unknown: np.ndarray, w_known: np.ndarray, w_unknown: np.ndarray) -> np.ndarray:
    """`edge.openset.auroc` under row weights, for B weightings at once: ``w_known`` (B, n_known) and
    ``w_unknown`` (B, n_unknown) give (B,) AUROCs (ties count 1/2). One sort; weights summed per tie group."""
    known, unknown = np.asarray(known, np.float64), np.asarray(unknown, np.float64)
    scores = np.concatenate([known, unknown])
    order = scores.argsort(kind="mergesort")
    ordered = scores[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    from_known = order < known.size
    b = w_known.shape[0]
    wk = np.zeros((b, scores.size))
    wu = np.zeros((b, scores.size))
    wk[:, from_known] = w_known[:, order[from_known]]
    wu[:, ~from_known] = w_unknown[:, order[~from_known] - known.size]
    gk = np.add.reduceat(wk, starts, axis=1)
    gu = np.add.reduceat(wu, starts, axis=1)
    below = np.cumsum(gk, axis=1) - gk
    out: np.ndarray = (gu * (below + 0.5 * gk)).sum(1) / (gk.sum(1) * gu.sum(1))
    return out


def _units(units: np.ndarray) -> tuple[int, np.ndarray]:
    """``(number of distinct units, each row's unit position)``."""
    distinct, inverse = np.unique(units, return_inverse=True)
    return int(distinct.size), inverse.reshape(-1)


def bootstrap_auroc_difference(rotations: Sequence[PairedScores], resamples: int = BOOTSTRAP_RESAMPLES,
                               seed: int = BOOTSTRAP_SEED, level: float = 0.95, chunk: int = 200) -> dict[str, float]:
    """New minus previous AUROC (mean over ``rotations``) with a paired percentile bootstrap interval.

    Each resample draws, per rotation, known units and never-taught units with replacement (as many as
    there are; a unit's rows go together) and scores both AUROCs on the same draw. Returns
    ``{"difference", "low", "high", "resamples", "known_units", "unknown_units"}`` (units per rotation, mean).
    """
    if not rotations:
        raise ValueError("bootstrap_auroc_difference: expected at least one rotation, got none")
    from edge.openset import auroc

    rng = np.random.default_rng(seed)
    point = float(np.mean([auroc(r.new_known, r.new_unknown) - auroc(r.previous_known, r.previous_unknown)
                           for r in rotations]))
    units = [(_units(r.known_units), _units(r.unknown_units)) for r in rotations]   # once, not per chunk
    deltas = []
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        total = np.zeros(b)
        for r, ((nk, known_of), (nu, unknown_of)) in zip(rotations, units):
            wk = rng.multinomial(nk, np.full(nk, 1.0 / nk), size=b)[:, known_of].astype(np.float64)
            wu = rng.multinomial(nu, np.full(nu, 1.0 / nu), size=b)[:, unknown_of].astype(np.float64)
            total += (weighted_auroc(r.new_known, r.new_unknown, wk, wu)
                      - weighted_auroc(r.previous_known, r.previous_unknown, wk, wu))
        deltas.append(total / len(rotations))
    d = np.concatenate(deltas)
    tail = (1.0 - level) / 2.0
    return {"difference": point, "low": float(np.quantile(d, tail)), "high": float(np.quantile(d, 1.0 - tail)),
            "resamples": float(resamples),
            "known_units": float(np.mean([k[0] for k, _ in units])),
            "unknown_units": float(np.mean([u[0] for _, u in units]))}


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
    units, unit_kind = independent_units(stream.test.paths, test_y.size)
    interval = bootstrap_auroc_difference([PairedScores(new[~unknown], new[unknown], old[~unknown], old[unknown],
                                                        units[~unknown], units[unknown])])
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
        "auroc_difference": interval | {"unit": unit_kind, "seed": BOOTSTRAP_SEED},
        "closed_set_known_accuracy": float((closed[~unknown] == test_y[~unknown]).mean()),
        "seconds": round(time.perf_counter() - started, 1),
    }
    return report


def _images_at(batch: Any, positions: np.ndarray) -> np.ndarray:
    at = getattr(batch, "images_at", None)
    return at(positions) if at is not None else batch.images()[positions]


def format_interval(d: dict[str, float]) -> str:
    """``+0.045 [+0.020, +0.071]`` from a `bootstrap_auroc_difference` result."""
    return f"{d['difference']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"


def format_report(r: dict[str, Any]) -> str:
    pct = (lambda v: "-" if v is None else f"{100 * v:.1f} %")
    return "\n".join([
        f"open set on {r['data']} {r['scenario']} run {r['run']} ({r['model']}, {r['strategy']}): held out "
        f"{r['held_out']}; {r['known_test']} known and {r['unknown_test']} never-taught test frames",
        f"  AUROC {r['auroc']:.3f} (previous score {r['previous_auroc']:.3f}); FPR at 95 % TPR "
        f"{pct(r['fpr_at_95_tpr'])} (previous {pct(r['previous_fpr_at_95_tpr'])})",
        f"  new - previous AUROC {format_interval(r['auroc_difference'])} (95 % bootstrap interval, "
        f"{r['auroc_difference']['resamples']:.0f} resamples of {r['auroc_difference']['unit']})",
        f"  threshold for a {100 * r['unknown_rate']:g} % target, calibrated on {r['calibrated_on']} "
        f"({r['calibration_scores']} scores): false reject {pct(r['false_reject_test'])} on known test frames, "
        f"{pct(r['false_reject_new_bursts'])} on {r['new_burst_rows']} rows of new teach bursts before they were "
        f"learned; false accept {pct(r['false_accept_test'])} of never-taught frames",
        f"  closed-set accuracy on known test frames {pct(r['closed_set_known_accuracy'])}; {r['seconds']} s",
    ])
