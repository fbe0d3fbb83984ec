"""Shared parity driver for the TFLite head tests: the same batches through both backends."""

from __future__ import annotations

from typing import Any

import numpy as np

from edge.base import Standardizer
from edge.heads import make_head
from edge.tflite_head import TFLiteHead

#: Tolerance of the parity tests on weights, optimizer slots and probabilities (float32 in both
#: backends; only the order of the sums differs).
RTOL, ATOL = 1e-4, 1e-5


def parity_run(path: str, kind: str, optimizer: str, embedding_size: int, max_classes: int, batch: int,
               steps: int = 200, seed: int = 0, **hp: Any) -> dict[str, Any]:
    """Train both heads on one sequence of batches; return both final states, losses, probabilities.

    The label range widens over time (unseen classes stay masked in the early steps), batch sizes
    vary in [1, batch] (partial batches are padded inside the TFLite head), and every 25 steps both
    heads predict on a different number of rows (the infer signature is resized in between).
    Inputs are standardised first, as the agent does (`edge.base.Standardizer`); ``test`` is
    standardised too.
    """
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=embedding_size).astype(np.float32)
    std = rng.uniform(0.5, 2.0, size=embedding_size).astype(np.float32)
    standardize = Standardizer(mean, std)
    kw = dict(optimizer=optimizer, seed=seed + 1, **hp)
    ref = make_head(kind, embedding_size, max_classes, **kw)
    tfl = TFLiteHead(path, embedding_size, max_classes, kind=kind, **kw)
    centers = rng.normal(size=(max_classes, embedding_size)).astype(np.float32) * 2
    losses = []
    for i in range(steps):
        n = batch if i % 3 else int(rng.integers(1, batch + 1))
        top = min(max_classes, 2 + (i * max_classes) // steps)
        y = rng.integers(0, max(top - 1, 1), size=n)
        x = standardize((centers[y] + rng.normal(size=(n, embedding_size)) + mean).astype(np.float32))
        losses.append((ref.step(x, y), tfl.step(x, y)))
        if i % 25 == 0:
            probe = standardize(rng.normal(size=(int(rng.integers(1, 70)), embedding_size)) + mean)
            np.testing.assert_allclose(tfl.predict_proba(probe), ref.predict_proba(probe), rtol=RTOL, atol=ATOL)
    test = (centers[rng.integers(0, max_classes, 300)] + rng.normal(size=(300, embedding_size)) + mean)
    test = standardize(test.astype(np.float32))
    return {"ref": ref, "tfl": tfl, "numpy_state": ref.state_dict(), "tflite_state": tfl.state_dict(),
            "losses": np.asarray(losses), "test": test}


def max_abs_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return max(float(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)).max()) for k in a)
