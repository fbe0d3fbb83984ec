"""``edge-sim device``: run the device loop in a child process at a frame clock, with a simulated
teacher, RAM/flash/latency budgets and power cuts (`firmware_sim.device`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from firmware_sim.commands.run import _add_common, _config, default_model_dir, options_from_args
from firmware_sim.device.budgets import PRESETS

__all__ = ["EXIT_BUDGET", "device_command", "register"]

#: Exit status when the device failed (a budget exceeded, a crash): the report says where.
EXIT_BUDGET = 3


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "device", help="the device loop at a frame clock, with a teacher, budgets and power cuts",
        description="Run `edge-agent run`'s loop in a child process: frames of the stream at --fps, a share "
                    "taught in bursts after a delay, RAM/flash/latency budgets, seeded power cuts (SIGKILL, some "
                    "during checkpoint writes). Reports the bytes written to flash by part (thumbnails, the rest of "
                    "the teach ledger, the agent state). Writes report.json, summary.md and plots.")
    _add_common(p)
    p.add_argument("--out", required=True, help="output directory")
    d = p.add_argument_group("device")
    d.add_argument("--device", choices=sorted(PRESETS), default="host",
                   help="board preset: runtime threads and RAM budget from its spec sheet (default host: none)")
    d.add_argument("--fps", type=float, default=20.0, help="camera frame rate (default 20, CORe50's)")
    d.add_argument("--realtime", action="store_true", help="wall-clock time instead of the simulated clock")
    d.add_argument("--frame-deadline", type=float, default=None, metavar="MS",
                   help="per-frame deadline in ms (default: the frame period)")
    d.add_argument("--ram-budget", type=float, default=None, metavar="MB", help="RAM budget of the device process")
    d.add_argument("--flash-budget", type=float, default=None, metavar="MB", help="budget of the state folder")
    d.add_argument("--label-share", type=float, default=1.0, help="share of frames taught (default 1.0)")
    d.add_argument("--label-delay", type=float, default=0.0, metavar="S", help="seconds before a label arrives")
    d.add_argument("--burst", type=int, default=10, help="frames per teach burst (default 10)")
    d.add_argument("--power-cuts", type=int, default=0, help="seeded power cuts (SIGKILL of the device)")
    d.add_argument("--outage", type=float, default=1.0, metavar="S",
                   help="seconds of stream time the device is off per cut (default 1)")
    d.add_argument("--no-baseline", action="store_true", help="with --power-cuts: skip the uninterrupted run")
    d.add_argument("--window", type=int, default=1, help="predictions smoothed (default 1: the raw answer)")
    d.add_argument("--unknown-threshold", type=float, default=0.0, help="answer 'unknown' below this score")
    d.add_argument("--max-frames", type=int, default=None, help="only the first N frames of the stream")
    d.add_argument("--no-thumbnails", action="store_true",
                   help="keep no thumbnails of taught frames (default: as on a device, a JPEG of every taught frame, "
                        "longer side at most 128 px, in the teach ledger of every checkpoint; the report says "
                        "the bytes they add to flash)")
    p.set_defaults(func=device_command)


def device_command(args: argparse.Namespace) -> int:
    from firmware_sim.device.experiment import DeviceSpec, run_device
    from firmware_sim.device.report import SUMMARY_COLUMNS, summary_rows
    from firmware_sim.device.sim import DeviceOptions
    from firmware_sim.measure.report import markdown_table

    agent = _config(options_from_args(args))
    options = DeviceOptions(fps=args.fps, realtime=args.realtime, frame_deadline_ms=args.frame_deadline,
                            label_share=args.label_share, label_delay_s=args.label_delay, burst=args.burst,
                            device=args.device, threads=args.threads, ram_budget_mb=args.ram_budget,
                            flash_budget_mb=args.flash_budget, power_cuts=args.power_cuts, outage_s=args.outage,
                            seed=agent.seed, window=args.window, unknown_threshold=args.unknown_threshold,
                            eval_every=args.eval_every, thumbnails=not args.no_thumbnails)
    spec = DeviceSpec(model=str(args.model or default_model_dir()), data=args.data, scenario=args.scenario,
                      agent=agent, options=options, run=args.run,
                      runtime=args.runtime, precision=args.precision, test=args.test, labels=args.labels,
                      cache_dir=args.cache, max_frames=args.max_frames, baseline=not args.no_baseline,
                      plots=not args.no_plots, progress=not args.no_progress)  # plain lines when no tty
    report: dict[str, Any] = run_device(spec, args.out)
    print(markdown_table(summary_rows(report), SUMMARY_COLUMNS))
    print(f"wall time {report['wall_seconds']:.1f} s -> {args.out}")
    failed = [(name, e["results"]["failure"]) for name, e in report["runs"].items() if e["results"]["failure"]]
    for name, failure in failed:
        peak = failure.get("peak_rss_bytes")
        sys.stderr.write(f"edge-sim device: {name} failed: {failure['kind']} in {failure['where']}"
                         + (f", peak RSS {peak / 2**20:.1f} MiB" if peak else "")
                         + (f" (budget {failure['ram_budget_mb']:g} MB)" if failure.get("ram_budget_mb") else "")
                         + (f": {failure.get('message')}" if failure.get("message") else "") + "\n")
    return EXIT_BUDGET if failed else 0
