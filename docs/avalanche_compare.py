"""The project's strategies against Avalanche 0.6 on the SAME exported embeddings.

Not part of CI: it needs its own virtual environment with avalanche-lib and torch (CPU build)::

    python -m venv /tmp/avl-venv && /tmp/avl-venv/bin/pip install avalanche-lib==0.6.0 torch
    .venv/bin/python -m firmware_sim.studies.export_embeddings --out runs/exported   # project venv
    /tmp/avl-venv/bin/python docs/avalanche_compare.py --data runs/exported --out docs/avalanche_results.json

Both sides see the same standardised embeddings in the same order (one experience per stream
batch), start from the same softmax head (``W0``, ``b0`` from the export: `edge.heads.SoftmaxHead`'s
initial weights), and train with the same optimiser settings (SGD lr 0.01, momentum 0.9, weight
decay 1e-4, 2 epochs, mini-batch 32). The project side runs `edge.agent.Agent` from this checkout
(edge/ needs only NumPy, which the Avalanche environment has). Accuracy is the final accuracy on
the exported test set (argmax over all 50 units on the Avalanche side; every class is seen by the
end of the streams compared, so the project's seen-class mask changes nothing there).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LR, MOMENTUM, WD, EPOCHS, BATCH = 0.01, 0.9, 1e-4, 2, 32
#: (project strategy, its params, Avalanche strategy name); one row of the table each.
PAIRS: list[tuple[str, str, dict[str, Any], str]] = [
    ("naive", "naive", {}, "Naive"),
    ("cwr_star", "cwr_star", {}, "CWRStar"),
    ("cwr_star (train_units=seen)", "cwr_star", {"train_units": "seen"}, "CWRStar"),
    ("lwf (alpha=1)", "lwf", {"alpha": 1.0}, "LwF"),
    ("lwf (alpha=1, train_units=seen)", "lwf", {"alpha": 1.0, "train_units": "seen"}, "LwF"),
    ("cwr_star (Avalanche choices)", "cwr_star", {"consolidate_bias": False, "reset_momentum": False}, "CWRStar"),
    ("slda", "slda", {}, "StreamingLDA"),
    ("cumulative (2 epochs)", "cumulative", {"epochs": 2}, "Cumulative"),
]


def batches(d: dict[str, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    b = d["batch"]
    return [(d["x"][b == i], d["y"][b == i]) for i in range(int(b.max()) + 1)]


def run_project(d: dict[str, np.ndarray], strategy: str, params: dict[str, Any]) -> float:
    from edge.agent import Agent, AgentConfig

    k = int(d["W0"].shape[1])
    cfg = AgentConfig(strategy=strategy, strategy_params=params, standardize=False, max_classes=k, lr=LR,
                      momentum=MOMENTUM, weight_decay=WD, epochs=EPOCHS, batch_size=BATCH)
    agent = Agent(None, cfg, embedding_size=d["x"].shape[1])
    if agent.head is not None:
        np.testing.assert_array_equal(agent.head.get_weights()["W"], d["W0"])  # same initial head
    for x, y in batches(d):
        agent.learn_embeddings(x, y)
    return float(agent.evaluate_embeddings(d["x_test"], d["y_test"]))


def run_avalanche(d: dict[str, np.ndarray], name: str) -> float:
    import torch
    from avalanche.benchmarks.scenarios.deprecated.generic_benchmark_creation import (
        create_generic_benchmark_from_tensor_lists,
    )
    from avalanche.training import Cumulative, CWRStar, LwF, Naive, StreamingLDA
    from avalanche.training.plugins import EvaluationPlugin

    torch.manual_seed(0)
    dim, k = d["W0"].shape

    class Head(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(dim, k)
            with torch.no_grad():
                self.fc.weight.copy_(torch.from_numpy(d["W0"].T.copy()))
                self.fc.bias.copy_(torch.from_numpy(d["b0"]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    train = [[torch.from_numpy(x), torch.from_numpy(y)] for x, y in batches(d)]
    test = [[torch.from_numpy(d["x_test"]), torch.from_numpy(d["y_test"])]]
    bench = create_generic_benchmark_from_tensor_lists(train, test, task_labels=[0] * len(train),
                                                       complete_test_set_only=True)
    model = Head()
    common: dict[str, Any] = dict(train_mb_size=BATCH, train_epochs=EPOCHS, eval_mb_size=4096, device="cpu",
                                  evaluator=EvaluationPlugin(loggers=[]), eval_every=-1)
    crit = torch.nn.CrossEntropyLoss()
    if name == "StreamingLDA":
        strat: Any = StreamingLDA(slda_model=torch.nn.Identity(), criterion=crit, input_size=dim, num_classes=k,
                                  shrinkage_param=1e-4, streaming_update_sigma=True, train_mb_size=BATCH,
                                  train_epochs=1, eval_mb_size=4096, device="cpu",
                                  evaluator=EvaluationPlugin(loggers=[]), eval_every=-1)
        model = strat.model
    else:
        opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
        makers: dict[str, Callable[..., Any]] = {
            "Naive": lambda: Naive(model=model, optimizer=opt, criterion=crit, **common),
            "CWRStar": lambda: CWRStar(model=model, optimizer=opt, criterion=crit, cwr_layer_name="fc", **common),
            "LwF": lambda: LwF(model=model, optimizer=opt, criterion=crit, alpha=1.0, temperature=2.0, **common),
            "Cumulative": lambda: Cumulative(model=model, optimizer=opt, criterion=crit, **common),
        }
        strat = makers[name]()
    for exp in bench.train_stream:
        strat.train(exp)
    if name == "StreamingLDA":
        with torch.no_grad():
            pred = strat.predict(torch.from_numpy(d["x_test"])).argmax(1).numpy()
    else:
        model.eval()
        with torch.no_grad():
            pred = model(torch.from_numpy(d["x_test"])).argmax(1).numpy()
    return float((pred == d["y_test"]).mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="runs/exported", help="folder of export_embeddings .npz files")
    p.add_argument("--scenarios", default="nc,nicv2_391")
    p.add_argument("--out", default="docs/avalanche_results.json")
    p.add_argument("--only", default="", help="row labels to run, separated by ';' (default all)")
    args = p.parse_args(argv)
    import avalanche
    import torch

    rows = []
    only = set(filter(None, (s.strip() for s in args.only.split(";"))))
    for scenario in args.scenarios.split(","):
        d = dict(np.load(Path(args.data) / f"{scenario}-run0.npz"))
        for label, strategy, params, avl in PAIRS:
            if only and label not in only:
                continue
            t = time.perf_counter()
            ours = run_project(d, strategy, params)
            t_ours = time.perf_counter() - t
            t = time.perf_counter()
            theirs = run_avalanche(d, avl)
            t_avl = time.perf_counter() - t
            rows.append({"scenario": scenario, "project": label, "avalanche": avl, "project_acc": ours,
                         "avalanche_acc": theirs, "project_s": t_ours, "avalanche_s": t_avl})
            print(f"{scenario:10s} {label:28s} {100 * ours:5.1f}  {avl:12s} {100 * theirs:5.1f}  "
                  f"({t_ours:.1f} s / {t_avl:.1f} s)", flush=True)
    out = {"avalanche": avalanche.__version__, "torch": torch.__version__, "lr": LR, "momentum": MOMENTUM,
           "weight_decay": WD, "epochs": EPOCHS, "batch_size": BATCH, "rows": rows}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
