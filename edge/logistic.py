"""A multinomial logistic regression fitted to convergence (L-BFGS, NumPy only).

The converged joint fit is the bound every streaming strategy is measured against
(`firmware_sim.studies.embedding_bound`), and what the ``refit`` and ``cumulative`` strategies put
into the softmax head after a teach. Minimises the mean cross-entropy of ``softmax(x W + b)`` plus
``l2 / 2 * |W|^2`` (bias not penalised): strictly convex for ``l2 > 0``, so the optimum does not
depend on the starting point and a warm start only saves iterations.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(300, 5)); y = (x[:, 0] + x[:, 1] > 0).astype(int)
    >>> fit = fit_logistic(x, y, 2)
    >>> fit.converged, float(((x @ fit.weights + fit.bias).argmax(1) == y).mean()) > 0.95
    (True, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.errors import ConfigError, InputError

#: The L2 penalty of the joint bound and of the strategies that fit it (on standardised rows): the
#: mean cross-entropy plus 1e-2 / 2 |W|^2 (about scikit-learn's default C = 1 for 100 rows). 1e-4 took
#: thousands of L-BFGS iterations on the real-photo sets and was never better (docs/strategies.md).
DEFAULT_L2 = 1e-2


@dataclass(frozen=True)
class LogisticFit:
    """A fitted ``softmax(x @ weights + bias)``: weights ``(d, K)``, bias ``(K,)`` (float64), the
    iterations run, the final objective, ``gap`` (the bound on the relative distance to the
    optimum, see `fit_logistic`) and whether it reached the tolerance."""

    weights: np.ndarray
    bias: np.ndarray
    iterations: int
    loss: float
    gap: float
    converged: bool


def _loss_grad(theta: np.ndarray, x: np.ndarray, onehot: np.ndarray, l2: float) -> tuple[float, np.ndarray]:
    n, d = x.shape
    k = onehot.shape[1]
    w, b = theta[:d * k].reshape(d, k), theta[d * k:]
    z = x @ w + b
    z -= z.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    loss = -float((onehot * logp).sum()) / n + 0.5 * l2 * float((w * w).sum())
    g = (np.exp(logp) - onehot) / n
    return loss, np.concatenate([(x.T @ g + l2 * w).ravel(), g.sum(0)])


def fit_logistic(x: np.ndarray, y: np.ndarray, n_classes: int, *, l2: float = DEFAULT_L2,
                 max_iter: int = 1000, tol: float = 1e-4, memory: int = 10,
                 init: tuple[np.ndarray, np.ndarray] | None = None) -> LogisticFit:
    """Fit ``softmax(x W + b)`` over labels ``0..n_classes-1`` by L-BFGS with a backtracking
    (Armijo) line search, until the parameters are within ``tol`` (relative) of the optimum, or
    ``max_iter`` iterations. ``init``: ``(W, b)`` to start from (a warm start).

    The stopping rule bounds the distance to the optimum, not the gradient's size against the
    start's: the objective is ``l2``-strongly convex, so ``|theta - theta*| <= |grad| / l2``, and
    the fit stops when that is at most ``tol * |theta|`` (the bias is not penalised; the bound is
    for the weights). A gradient rule relative to the start stops far too early on separable rows
    with a small ``l2``: the objective is then nearly flat and the weights still move a lot
    (measured on the real-photo set: an "converged" fit at 1e-7 of the start's gradient scored 100 %
    on a test where the optimum scores 49 %)."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.int64)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise InputError(f"logistic fit: expected rows (N, d) and N labels, got {x.shape} and {y.shape}")
    if not (l2 > 0 and max_iter >= 1 and tol >= 0 and memory >= 1):
        raise ConfigError(f"logistic fit: expected l2 > 0, max_iter >= 1, tol >= 0, memory >= 1, got "
                          f"{l2}, {max_iter}, {tol}, {memory}")
    n, d = x.shape
    if n == 0 or y.min() < 0 or y.max() >= n_classes:
        raise InputError(f"logistic fit: expected at least one row with labels in [0, {n_classes}), got "
                         f"{n} rows" + (f", labels {y.min()}..{y.max()}" if n else ""))
    onehot = np.eye(n_classes)[y]
    theta = np.zeros(d * n_classes + n_classes)
    if init is not None:
        w0, b0 = (np.asarray(a, np.float64) for a in init)
        if w0.shape != (d, n_classes) or b0.shape != (n_classes,):
            raise InputError(f"logistic fit init: expected ({d}, {n_classes}) and ({n_classes},), got "
                             f"{w0.shape} and {b0.shape}")
        theta = np.concatenate([w0.ravel(), b0])
    f, g = _loss_grad(theta, x, onehot, l2)
    s_hist: list[np.ndarray] = []
    y_hist: list[np.ndarray] = []
    it = 0

    def distance(theta: np.ndarray, g: np.ndarray) -> float:
        """Upper bound of |theta - theta*| / |theta| from strong convexity."""
        return float(np.linalg.norm(g)) / l2 / max(float(np.linalg.norm(theta)), 1e-12)

    while distance(theta, g) > tol and it < max_iter:
        it += 1
        q = g.copy()                       # two-loop recursion: q = H g
        alphas = []
        for s_k, y_k in reversed(list(zip(s_hist, y_hist))):
            a = float(s_k @ q) / float(y_k @ s_k)
            alphas.append(a)
            q -= a * y_k
        if s_hist:
            q *= float(s_hist[-1] @ y_hist[-1]) / float(y_hist[-1] @ y_hist[-1])
        for (s_k, y_k), a in zip(zip(s_hist, y_hist), reversed(alphas)):
            q += (a - float(y_k @ q) / float(y_k @ s_k)) * s_k
        direction = -q
        slope = float(g @ direction)
        if slope >= 0:                     # not a descent direction: restart from the gradient
            s_hist.clear()
            y_hist.clear()
            direction, slope = -g, -float(g @ g)
        step = 1.0
        while True:
            f_new, g_new = _loss_grad(theta + step * direction, x, onehot, l2)
            if f_new <= f + 1e-4 * step * slope or step < 1e-12:
                break
            step *= 0.5
        s_new, y_new = step * direction, g_new - g
        theta, f, g = theta + s_new, f_new, g_new
        if float(s_new @ y_new) > 1e-12:
            s_hist.append(s_new)
            y_hist.append(y_new)
            if len(s_hist) > memory:
                s_hist.pop(0)
                y_hist.pop(0)
    gap = distance(theta, g)
    return LogisticFit(theta[:d * n_classes].reshape(d, n_classes).copy(), theta[d * n_classes:].copy(),
                       it, f, gap, gap <= tol)
