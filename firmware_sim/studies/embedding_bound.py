"""Final accuracy of the streaming strategies against a converged joint logistic regression, on cached embeddings.

Each stream is embedded once (by the project's own backbone and preprocessing) and cached as
``.npz``; every strategy then learns the same rows through `edge.agent.Agent` (embedding-only,
standardised with the backbone's statistics, one teach per call in stream order) and is scored on
the same test rows. The bound is a multinomial logistic regression (with bias, L2 ``1e-2`` on the
weights, as the agent's head) trained jointly on ALL the training rows at once to convergence by
L-BFGS (`edge.logistic.fit_logistic`: numpy only; scipy and scikit-learn are not dependencies).

Streams:

* ``real`` (`cache_real_photos`): the labelled photographs of the ``foolbox`` wheel
  (``tests/_real_photos.py``: CIFAR-10, 8 classes, and ImageNet, 4 coarse groups); each rotation
  teaches every class from 30 crops of ONE photograph (one class per teach) and tests on 8 crops
  and the full frame of every OTHER photograph of the class.
* ``generated`` (`cache_generated`): the generated CORe50-format set, a scenario's batches in order,
  tested on its test sessions.

Run::

    python -m firmware_sim.studies.embedding_bound cache-real --model models/efficientnet_lite0_224 --out /tmp/emb
    python -m firmware_sim.studies.embedding_bound cache-generated --model /tmp/models/efficientnet_lite0_128 \
        --data <cache>/synthetic-128px-30f-10r-seed0 --scenario nicv2_391 --scenario nc --out /tmp/emb
    python -m firmware_sim.studies.embedding_bound table /tmp/emb/*.npz
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edge.agent import Agent, AgentConfig
from edge.logistic import DEFAULT_L2, fit_logistic

#: Strategies in the table (name, parameters).
STRATEGY_ROWS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("slda", {}), ("slda", {"shrinkage": 1e-4}), ("ridge", {}), ("ncm", {}), ("ncm", {"standardize": "running"}),
    ("ncm", {"standardize": "fixed"}), ("replay", {}), ("refit", {}), ("refit_slda", {}))
L2 = DEFAULT_L2
#: Strategies whose final state does not depend on how the stream is cut into batches (exact sums
#: of rows: tests/test_strategies_definitions.py, tests/test_ridge.py), learned here in one call:
#: `slda` and `ridge` recompute a d x d inverse / a D x D eigendecomposition after every teach,
#: which the final accuracy does not need (391 of them on NICv2-391).
ORDER_FREE = ("ridge", "slda", "ncm")


# ---------------------------------------------------------------- the bound
def joint_logistic(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float = L2, max_iter: int = 5000,
                   tol: float = 1e-5) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The converged joint bound: `edge.logistic.fit_logistic` on all the rows at once, from zero.
    Returns ``(W, b, info)``; ``info`` has ``iterations``, ``loss``, ``gap`` (relative distance to the
    optimum, bounded) and ``converged``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(300, 5)); y = (x[:, 0] + x[:, 1] > 0).astype(int)
        >>> w, b, info = joint_logistic(x, y, 2)
        >>> info["converged"], float(((x @ w + b).argmax(1) == y).mean()) > 0.95
        (True, True)
    """
    fit = fit_logistic(x, y, n_classes, l2=l2, max_iter=max_iter, tol=tol)
    return fit.weights, fit.bias, {"iterations": fit.iterations, "loss": fit.loss, "gap": fit.gap,
                                   "converged": fit.converged}


# ---------------------------------------------------------------- streams
def _rotations(data: Any) -> Iterator[tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray, np.ndarray]]:
    """``(teaches, test_x, test_y)`` per rotation of a cached stream file (raw embeddings)."""
    for r in range(int(data["rotations"])):
        if f"r{r}_teach" in data:     # real photos: (K, T, d), one class per teach
            teach = data[f"r{r}_teach"]
            batches = [(teach[c], np.full(teach.shape[1], c, np.int64)) for c in range(teach.shape[0])]
        else:
            batches = [(data[f"r{r}_b{i}_x"], data[f"r{r}_b{i}_y"]) for i in range(int(data[f"r{r}_batches"]))]
        yield batches, data[f"r{r}_test"], data[f"r{r}_test_y"]


def agent_accuracy(name: str, params: dict[str, Any], batches: list[tuple[np.ndarray, np.ndarray]],
                   test_x: np.ndarray, test_y: np.ndarray, mean: np.ndarray, std: np.ndarray,
                   max_classes: int) -> tuple[float, Agent]:
    """Accuracy of ``name`` learning ``batches`` in order through `edge.agent.Agent`."""
    agent = Agent(None, AgentConfig(strategy=name, strategy_params=params, max_classes=max(max_classes, 2)),
                  embedding_size=mean.shape[0], embedding_mean=mean, embedding_std=std)
    if name in ORDER_FREE:   # exact and order-independent (tests/test_ridge.py): one learn, one solve
        batches = [(np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches]))]
    for x, y in batches:
        agent.learn_embeddings(x, y)
    return agent.evaluate_embeddings(test_x, test_y), agent


def bound_accuracy(batches: list[tuple[np.ndarray, np.ndarray]], test_x: np.ndarray, test_y: np.ndarray,
                   mean: np.ndarray, std: np.ndarray, max_classes: int) -> tuple[float, dict[str, Any]]:
    """Accuracy of the converged joint logistic regression on all the (standardised) training rows."""
    x = (np.concatenate([b[0] for b in batches]) - mean) / std
    y = np.concatenate([b[1] for b in batches])
    w, b, info = joint_logistic(x, y, max_classes)
    scores = ((test_x - mean) / std) @ w + b
    seen = np.zeros(max_classes, bool)
    seen[np.unique(y)] = True
    scores[:, ~seen] = -np.inf
    return float((scores.argmax(1) == test_y).mean()), info


def label(name: str, params: dict[str, Any]) -> str:
    return name if not params else name + "(" + ",".join(f"{k}={v}" for k, v in params.items()) + ")"


def evaluate_file(path: str | Path, rows: tuple[tuple[str, dict[str, Any]], ...] = STRATEGY_ROWS,
                  bound: bool = True) -> dict[str, Any]:
    """Accuracy (test rows pooled over rotations) of each row and of the bound on one cached stream."""
    data = np.load(path)
    mean, std = data["mean"], data["std"]
    k = int(data["max_classes"])
    hits: dict[str, int] = {}
    extra: dict[str, list[float]] = {}
    total = 0
    for batches, tx, ty in _rotations(data):
        for name, params in rows:
            acc, agent = agent_accuracy(name, params, batches, tx, ty, mean, std, k)
            key = label(name, params)
            hits[key] = hits.get(key, 0) + int(round(acc * len(ty)))
            used = getattr(agent.strategy, "shrinkage_used_", None)
            if used is not None:
                extra.setdefault(key + " shrinkage", []).append(float(used))
            if name == "ridge":
                extra.setdefault(key + " lambda", []).append(float(agent.strategy.lam_used_))  # type: ignore[attr-defined]
        if bound:
            acc, info = bound_accuracy(batches, tx, ty, mean, std, k)
            hits["joint logistic (bound)"] = hits.get("joint logistic (bound)", 0) + int(round(acc * len(ty)))
            extra.setdefault("bound iterations", []).append(info["iterations"])
            extra.setdefault("bound converged", []).append(float(info["converged"]))
        total += len(ty)
    return {"stream": str(data["title"]), "accuracy": {key: v / total for key, v in hits.items()},
            "test_rows": total, "extra": extra}


# ---------------------------------------------------------------- caching
def cache_real_photos(model_dir: str, out: Path, teach: int = 30, test_crops: int = 8,
                      precision: str | None = None) -> list[Path]:
    """Embed the foolbox photo sets once with the model (as the device does); one ``.npz`` per set."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
    import _real_photos as rp  # noqa: E402  (the tests' own photo protocol)

    from edge.preprocess import fit_frame
    from edge.model_store import default_precision
    from edge.runtimes import open_backbone

    sets = rp.load_sets(_wheel())
    paths = []
    with open_backbone(model_dir, precision=precision or default_precision(model_dir, "litert")) as bb:
        m = bb.manifest

        def emb(frames: np.ndarray) -> np.ndarray:
            return np.asarray(bb.embed_batch(np.stack([fit_frame(f, m) for f in frames])), np.float32)

        for set_name, photo_set in sets.items():
            arrays: dict[str, Any] = {"mean": np.asarray(m.embedding_mean, np.float32),
                                      "std": np.asarray(m.embedding_std, np.float32),
                                      "rotations": np.array(photo_set.rotations),
                                      "max_classes": np.array(len(photo_set.photos)),
                                      "title": np.array(f"real photos {set_name} ({Path(model_dir).name})")}
            for r in range(photo_set.rotations):
                s = rp.split(photo_set, r, teach, test_crops, seed=0)
                arrays[f"r{r}_teach"] = np.stack([emb(f) for f in s.teach])
                arrays[f"r{r}_test"] = emb(s.test_frames)
                arrays[f"r{r}_test_y"] = s.test_labels
            path = out / f"real_{Path(model_dir).name}_{set_name}.npz"
            np.savez(path, **arrays)
            paths.append(path)
    return paths


def _wheel() -> Path:
    import os

    override = os.environ.get("EDGE_IMAGENET_SAMPLE")
    if override:
        return Path(override)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edge-continual" / \
        "foolbox-3.3.4-py3-none-any.whl"


def generated_file(all_emb: np.ndarray, mean: np.ndarray, std: np.ndarray, scenario: Any, title: str,
                   out: Path) -> Path:
    """A cached generated stream from every frame's embedding and a `firmware_sim` scenario."""
    arrays: dict[str, Any] = {"mean": mean, "std": std, "rotations": np.array(1), "title": np.array(title),
                              "max_classes": np.array(int(max(int(b.labels.max()) for b in scenario.train_batches)) + 1),
                              "r0_batches": np.array(len(scenario.train_batches)),
                              "r0_test": all_emb[scenario.test.indices], "r0_test_y": scenario.test.labels}
    for i, b in enumerate(scenario.train_batches):
        arrays[f"r0_b{i}_x"] = all_emb[b.indices]
        arrays[f"r0_b{i}_y"] = b.labels
    np.savez(out, **arrays)
    return out


def cache_generated(model_dir: str, data_dir: str, scenarios: list[str], out: Path,
                    precision: str | None = None, chunk: int = 256) -> list[Path]:
    """Embed every frame of a generated CORe50-format set once (in chunks), one ``.npz`` per scenario."""
    from edge.model_store import default_precision
    from edge.runtimes import open_backbone
    from firmware_sim.data.core50 import open_core50

    data = open_core50(data_dir)
    x = data.x  # type: ignore[union-attr]
    with open_backbone(model_dir, precision=precision or default_precision(model_dir, "litert")) as bb:
        emb = np.concatenate([np.asarray(bb.embed_batch(np.asarray(x[s:s + chunk], np.uint8)), np.float32)
                              for s in range(0, x.shape[0], chunk)])
        mean = np.asarray(bb.manifest.embedding_mean, np.float32)
        std = np.asarray(bb.manifest.embedding_std, np.float32)
    name = Path(model_dir).name
    return [generated_file(emb, mean, std, data.scenario(sc, 0), f"generated {sc} ({name})",
                           out / f"gen_{name}_{sc}.npz") for sc in scenarios]


# ---------------------------------------------------------------- CLI
def render(results: list[dict[str, Any]]) -> str:
    keys: list[str] = []
    for r in results:
        keys += [k for k in r["accuracy"] if k not in keys]
    lines = ["| strategy | " + " | ".join(r["stream"] for r in results) + " |",
             "|---|" + "---:|" * len(results)]
    for key in keys:
        lines.append(f"| {key} | " + " | ".join(f"{100 * r['accuracy'].get(key, float('nan')):.1f}"
                                              for r in results) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m firmware_sim.studies.embedding_bound", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    real = sub.add_parser("cache-real", help="embed the foolbox photo sets with a model")
    real.add_argument("--model", required=True)
    real.add_argument("--precision", default=None)
    real.add_argument("--out", type=Path, required=True)
    gen = sub.add_parser("cache-generated", help="embed a generated CORe50-format set with a model")
    gen.add_argument("--model", required=True)
    gen.add_argument("--precision", default=None)
    gen.add_argument("--data", required=True, help="a generated CORe50-format folder (edge-sim's cache)")
    gen.add_argument("--scenario", action="append", required=True)
    gen.add_argument("--out", type=Path, required=True)
    table = sub.add_parser("table", help="the accuracy table of cached streams")
    table.add_argument("files", nargs="+")
    args = parser.parse_args(argv)
    if args.cmd == "cache-real":
        args.out.mkdir(parents=True, exist_ok=True)
        for path in cache_real_photos(args.model, args.out, precision=args.precision):
            print(path)
        return 0
    if args.cmd == "cache-generated":
        args.out.mkdir(parents=True, exist_ok=True)
        for path in cache_generated(args.model, args.data, args.scenario, args.out, args.precision):
            print(path)
        return 0
    start = time.perf_counter()
    results = [evaluate_file(f) for f in args.files]
    print(render(results))
    for r in results:
        print(r["stream"], {k: np.round(v, 3).tolist() for k, v in r["extra"].items()})
    print(f"({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
