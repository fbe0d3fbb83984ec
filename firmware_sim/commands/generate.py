"""``edge-sim generate``: write the synthetic CORe50 in the official forms."""

from __future__ import annotations

import argparse
import sys

from firmware_sim.data.generator import FORMS, SUPPORTED_SIZES, GeneratorConfig, generate_core50

__all__ = ["register", "run_generate"]


def _forms(text: str) -> tuple[str, ...]:
    forms = tuple(f.strip() for f in text.split(",") if f.strip())
    bad = [f for f in forms if f not in FORMS]
    if bad or not forms:
        raise argparse.ArgumentTypeError(f"expected a comma list of {','.join(FORMS)}, got {text!r}")
    return forms


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("generate", help="write a synthetic CORe50 (PNG tree, arrays, filelists)",
                              description="Render 50 objects x 11 sessions and write the official CORe50 forms.")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--image-size", type=int, default=32, choices=SUPPORTED_SIZES, help="image side in pixels")
    p.add_argument("--frames", type=int, default=30, help="frames per object and session (real data: ~300)")
    p.add_argument("--runs", type=int, default=10, help="runs (batch orders) per scenario")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--forms", type=_forms, default=FORMS, help=f"comma list of {','.join(FORMS)}")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty directory")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run_generate)


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def run_generate(args: argparse.Namespace) -> int:
    config = GeneratorConfig(image_size=args.image_size, frames=args.frames, runs=args.runs, seed=args.seed,
                             forms=tuple(args.forms), overwrite=args.overwrite)
    summary = generate_core50(args.out, config, progress=not args.no_progress and sys.stderr.isatty())
    print(f"wrote {summary['n_images']} images ({summary['n_train_images']} train, {summary['n_test_images']} test) "
          f"at {config.image_size}x{config.image_size} to {args.out}")
    print(f"scenarios: {', '.join(f'{k}={v}' for k, v in summary['scenarios'].items())} batches x {config.runs} runs; "
          f"pretraining set: {summary['n_pretrain_images']} images")
    print("bytes: " + ", ".join(f"{k} {_human(v)}" for k, v in summary["bytes"].items()))
    print(f"time: {summary['seconds_total']:.1f} s (rendering {summary['seconds_render']:.1f} s)")
    return 0
