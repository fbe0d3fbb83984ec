"""``edge-sim``: the simulator's command line.

Each subcommand lives in its own module with two functions, ``register(subparsers)`` (adds its
parser and sets ``func``) and the handler it points to. To add a command (``run``, ``compare``),
write ``firmware_sim/commands/<name>.py`` and append its module name to :data:`COMMAND_MODULES`.

Expected errors (bad input, missing or unreadable files) print one line to stderr and exit 2; Ctrl-C
prints one line and exits 130 (no traceback); 0 means success.

Example:
    >>> main(["generate", "--frames", "0", "--out", "/tmp/never-written"])
    2
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import NoReturn, Sequence

from edge.config import AgentConfig

__all__ = ["COMMAND_MODULES", "build_parser", "main"]

#: Modules (under ``firmware_sim.commands``) that each provide ``register(subparsers)``.
COMMAND_MODULES: list[str] = ["generate", "run", "sweep", "device", "openset"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2, like argparse but without the usage dump
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="edge-sim",
        description="CORe50 stream simulator for the edge continual learner. With no command, runs the "
                    "main job: the default backbone on the generated NICv2-391 stream, naive and replay vs the "
                    f"device's default strategy ({AgentConfig().strategy}).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(f"firmware_sim.commands.{name}").register(sub)
    return parser


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help exits 0, usage errors 2
        return int(exc.code or 0)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command is None:  # no command: the main job
        from firmware_sim.commands.run import main_job

        args.command = "main job"
        args.func = lambda _args: main_job()
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as exc:  # OSError: missing, unreadable or unwritable files
        sys.stderr.write(f"edge-sim {args.command}: error: {_one_line(exc)}\n")
        return 2


def _one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (a crafted file name or value may hold newlines)."""
    text = str(exc) or type(exc).__name__
    return text.replace("\r", "\\r").replace("\n", "\\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``edge-sim``; 0 success, 2 an expected error (one line on stderr), 130 interrupted (Ctrl-C)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        sys.stderr.write("edge-sim: interrupted\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
