"""Upgrade the backbone without re-teaching: re-embed every stored thumbnail with the new model.

`upgrade_agent` builds a fresh agent on the new backbone (same config), replays the ledger's
events in order (same labels, sources and times) from the thumbnails, so the head or the class
statistics are rebuilt from the new embeddings and the ledger (with its thumbnails) carries over.
Samples without a thumbnail (dropped by the budget, or taught before the ledger) cannot be
re-embedded: they are counted in the report (``lost_samples``); a class left with none is
reported in ``lost_classes``.

The thumbnail is smaller than the frame it came from (128 px by default): the new backbone sees
an upscaled thumbnail; tests/test_upgrade.py measures what that costs against a fresh teach.

Example (CLI): ``edge-agent upgrade --state S --model tiny --to-model efficientnet_lite0_224``
writes the new state to ``S-efficientnet_lite0_224`` (``--out`` to choose) and keeps ``S``.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from edge.errors import InputError

logger = logging.getLogger(__name__)


def embed_thumbnails(agent: Any, thumbnails: Sequence[bytes], batch: int = 32) -> np.ndarray:
    """Thumbnails (JPEG bytes) -> embeddings of ``agent``'s backbone, float32 ``(N, d)``.
    Thumbnails of one size are embedded in batches; `InputError` for an undecodable one."""
    from edge.knowledge.thumbnails import decode_thumbnail

    from edge.preprocess import fit_frame

    if agent.backbone is None:
        raise InputError("re-embedding thumbnails: expected an agent with a backbone, got embeddings only")
    manifest = agent.backbone.manifest
    frames = [fit_frame(decode_thumbnail(t), manifest) for t in thumbnails]   # the device's own fit
    out = np.zeros((len(frames), agent.embedding_size), np.float32)
    i = 0
    while i < len(frames):
        j = i + 1
        while j < len(frames) and j - i < batch and frames[j].shape == frames[i].shape:
            j += 1
        out[i:j] = agent.embed(np.stack(frames[i:j]))
        i = j
    return out


def upgrade_agent(old: Any, new_backbone: Any) -> tuple[Any, dict[str, Any]]:
    """A new agent on ``new_backbone`` taught the old ledger's thumbnails; returns
    ``(agent, report)``. The old agent is not changed."""
    from edge.agent import Agent
    from edge.knowledge.ledger import Ledger

    ledger: Ledger | None = old.knowledge
    if ledger is None or len(ledger) == 0:
        raise InputError("upgrade: expected a state with a teach ledger holding thumbnails, got none "
                         "(a state taught before the ledger has nothing to re-embed: teach it again)")
    agent = Agent(new_backbone, old.config)
    agent.enable_ledger(ledger.thumbnail_size, thumbnail_budget=ledger.thumbnail_budget,
                        row_budget=ledger.row_budget)
    assert agent.knowledge is not None
    lost = 0
    for event in ledger.events():
        pos = ledger.samples_of_event(event.id)
        thumbs = [ledger.thumbs[int(i)] for i in pos if ledger.thumbs[int(i)]]
        lost += int(pos.size) - len(thumbs)
        if not thumbs:
            continue
        rows = embed_thumbnails(agent, thumbs)
        y = np.full(len(thumbs), event.label, np.int64)
        agent.learn_embeddings(rows, y)
        agent.knowledge.record(rows, y, source=event.source, thumbnails=thumbs, when=event.time,
                               event_ids=[event.id])
    agent.knowledge.dropped_thumbnails = ledger.dropped_thumbnails
    old_classes = set(old.classes_seen().tolist())
    new_classes = set(agent.classes_seen().tolist())
    report = {"events": len(ledger.events()), "samples": len(agent.knowledge), "lost_samples": lost,
              "classes": sorted(new_classes), "lost_classes": sorted(old_classes - new_classes)}
    if lost:
        logger.warning("upgrade: %d samples had no thumbnail and could not be re-embedded", lost)
    return agent, report
