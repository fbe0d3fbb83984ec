"""``edge-sim openset``: open-set rejection on any data source, with classes held out of training.

    edge-sim openset --data synthetic --scenario nicv2_391 --held-out 10 --seed 0
    edge-sim openset --data folder:PATH --scenario nc --held-out 3,7 --model models/efficientnet_lite0_224 \\
        --precision int8 --json openset.json

The study itself (what is taught, what is reported) is `firmware_sim.loop.openset_study`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edge.openset import FALSE_REJECT
from firmware_sim.loop.openset_study import format_report, run_openset


def main_openset(args: argparse.Namespace) -> int:
    report = run_openset(args)
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from edge.models import tiny_model_dir
    from edge.strategies import STRATEGIES

    p = subparsers.add_parser("openset", help="open-set rejection with held-out classes on any data source",
                              description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--data", default="synthetic", help="data spec, as for edge-sim run (default synthetic)")
    p.add_argument("--scenario", default="nicv2_391", help="scenario or protocol (default nicv2_391)")
    p.add_argument("--run", type=int, default=0, help="run (batch order), default 0")
    p.add_argument("--image-size", type=int, default=None, help="generated data only: image side (default: the model's)")
    p.add_argument("--model", default=str(tiny_model_dir()), help="model directory (default models/tiny)")
    p.add_argument("--precision", choices=("fp32", "int8"), default="fp32")
    p.add_argument("--held-out", default="10", help="classes never taught: a count (drawn with --seed) or a "
                                                   "comma list, e.g. 3,7 (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out draw")
    p.add_argument("--strategy", choices=sorted(STRATEGIES), default="ncm",
                   help="strategy (the novelty score is the same for all; default ncm)")
    p.add_argument("--unknown-rate", type=float, default=FALSE_REJECT, help="target false-reject rate (default 0.05)")
    p.add_argument("--cache", default=None, help="test-set embedding cache directory")
    p.add_argument("--no-cache", action="store_true", help="do not cache test-set embeddings")
    p.add_argument("--json", default=None, help="also write the report as JSON here")
    p.set_defaults(func=main_openset)

