"""Peak RSS of one command, measured from a small launcher process (stdlib only).

    python -m bench._peak_rss -- edge-agent predict --state S img.png

Runs the command as this process's only child and prints one JSON line on stderr's last line:
``{"peak_rss_bytes", "exit_status", "seconds"}``. The peak is the child's ``ru_maxrss`` from
``os.wait4``. Linux folds the pre-exec image's high-water mark into it, so the figure is
max(this launcher's RSS, ~10 MiB, the command's real peak); a launcher started straight from pytest
would carry pytest's (or TensorFlow's) RSS into every child, which is why this one stays small.
The command's stdout passes through unchanged.
"""

from __future__ import annotations

import json
import os
import sys
import time


def run(cmd: list[str]) -> dict[str, int | float]:
    """Run ``cmd`` (stdout/stderr inherited); return its peak RSS in bytes, exit status and seconds."""
    if not cmd:
        raise ValueError("expected a command after --, got none")
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # child: exec at once (no Python work that could raise the high-water mark)
        try:
            os.execvp(cmd[0], cmd)
        except OSError as exc:
            os.write(2, f"cannot run {cmd[0]!r}: {exc}\n".encode())
        os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    return {"peak_rss_bytes": int(usage.ru_maxrss) * 1024,  # KiB on Linux
            "exit_status": os.waitstatus_to_exitcode(status),
            "seconds": round(time.perf_counter() - started, 3),
            "launcher_rss_bytes": _self_rss()}


def _self_rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--"]:
        args = args[1:]
    result = run(args)
    sys.stdout.flush()
    sys.stderr.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
