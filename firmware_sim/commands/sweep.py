"""``edge-sim sweep``: run a grid of configurations (TOML) locally or on Ray; ``--report`` re-renders.

The work lives in :mod:`firmware_sim.sweep`; this module only maps flags onto
:func:`firmware_sim.sweep.runner.run_sweep` and prints a short summary.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register", "sweep_command"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sweep", help="a grid of configurations (TOML) on local processes or a Ray cluster, resumable",
        description="Run every cell of a grid (cross product of models, data, scenarios, runs, strategies "
                    "and their parameters, buffer sizes and storages, head backends, less an exclude list). "
                    "Each stream is embedded once and shared by its cells; finished cells are kept by "
                    "configuration hash, so a rerun recomputes none. Writes results.csv, results.json "
                    "(mean +- std over runs), summary.md (rounded table) and Pareto plots per scenario. "
                    "See docs/sweep-example.toml.")
    p.add_argument("--grid", help="grid TOML file (see docs/sweep-example.toml)")
    p.add_argument("--out", help="output directory (cells/, cache/, results.*, plots)")
    p.add_argument("--report", metavar="DIR", help="re-render results and plots of a sweep folder; runs nothing")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local process pool (default) or Ray (pip install '.[sweep-ray]' in the project folder)")
    p.add_argument("--ray-address", default=None,
                   help="Ray cluster address (HOST:PORT or auto); default: start a local Ray instance")
    p.add_argument("--workers", type=int, default=None,
                   help="local processes (default: the CPUs available); with Ray and no address, its CPUs")
    p.add_argument("--max-retries", type=int, default=3, help="retries of a job whose worker died (default 3)")
    p.add_argument("--cache", default=None, help="embedded-stream cache directory (default OUT/cache)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-progress", action="store_true",
                   help="hide progress (a bar on a terminal; in a log, one line per finished cell)")
    p.set_defaults(func=sweep_command)


def sweep_command(args: argparse.Namespace) -> int:
    from firmware_sim.sweep.results import render
    from firmware_sim.sweep.runner import SweepFailed, run_sweep

    if args.report:
        if args.grid:
            raise ValueError("--report: expected no --grid (it re-renders a finished sweep), got both")
        merged = render(Path(args.report), plots=not args.no_plots)
        print(f"{len(merged)} configurations -> {Path(args.report) / 'results.csv'}")
        return 0
    if not args.grid or not args.out:
        raise ValueError("sweep: expected --grid GRID.toml and --out DIR (or --report DIR), got "
                         f"grid={args.grid!r} out={args.out!r}")
    try:
        facts = run_sweep(args.grid, args.out, executor=args.executor, workers=args.workers,
                          ray_address=args.ray_address, max_retries=args.max_retries, cache_dir=args.cache,
                          progress=not args.no_progress, plots=not args.no_plots)  # plain lines when no tty
    except SweepFailed as exc:
        _print(exc.facts, args.out)
        raise
    _print(facts, args.out)
    return 0


def _print(facts: dict, out: str) -> None:
    print(f"sweep ({facts['executor']}): {facts['cells_total']} cells, {facts['cells_skipped']} already done, "
          f"{facts['cells_computed']} computed, {len(facts['cells_failed'])} failed; {facts['streams']} streams, "
          f"{facts['embedding_passes']} embedding passes; {facts['worker_deaths_retried']} worker deaths retried; "
          f"wall {facts['wall_seconds']:.1f} s -> {out}")
