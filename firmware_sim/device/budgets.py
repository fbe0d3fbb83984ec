"""Device presets and the budgets ``edge-sim device`` enforces on its child device.

RAM: ``cgroup v2 memory.max`` when this process may create a child cgroup (a delegated cgroup, e.g.
``systemd-run --user --scope``), else ``RLIMIT_AS`` on the child. RLIMIT_AS caps address space, not
resident memory: mapped libraries and thread stacks count, so it is stricter than the same figure of
RAM. Flash: the state folder's bytes, checked after every checkpoint.

Presets set only spec-sheet facts of each board: CPU cores (runtime threads) and RAM. No speed figure
is assumed for any board; the simulated clock measures this machine's.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

__all__ = ["PRESETS", "DevicePreset", "RamLimit", "ram_limit"]


@dataclass(frozen=True)
class DevicePreset:
    """A board: runtime threads (its CPU cores), RAM in MB (None: no budget), and where the facts come from."""

    name: str
    threads: int | None
    ram_mb: float | None
    source: str


PRESETS: dict[str, DevicePreset] = {
    "pi4": DevicePreset("pi4", 4, 1024,
                        "Raspberry Pi 4 Model B product brief (raspberrypi.com): quad-core Cortex-A72, "
                        "1, 2, 4 or 8 GB LPDDR4; the preset is the 1 GB board"),
    "pi5": DevicePreset("pi5", 4, 2048,
                        "Raspberry Pi 5 product brief (raspberrypi.com): quad-core Cortex-A76, 2, 4, 8 or "
                        "16 GB LPDDR4X; the preset is the 2 GB board"),
    "jetson-orin-nano": DevicePreset("jetson-orin-nano", 6, 8192,
                                     "NVIDIA Jetson Orin Nano Developer Kit specifications (developer.nvidia.com): "
                                     "6-core Arm Cortex-A78AE, 8 GB 128-bit LPDDR5 shared with the GPU"),
    "host": DevicePreset("host", None, None, "this machine, no budget"),
}


@dataclass
class RamLimit:
    """How the RAM budget is enforced: ``mechanism`` (``cgroup``, ``rlimit_as`` or ``none``) and the
    function the child runs before exec (``preexec``)."""

    mechanism: str
    bytes: int | None
    preexec: Callable[[], None] | None
    cgroup: Path | None = None

    def close(self) -> None:
        """Remove the cgroup made for the child (it must have exited)."""
        if self.cgroup is not None:
            try:
                self.cgroup.rmdir()
            except OSError:
                pass


def _own_cgroup_v2() -> Path | None:
    root = Path("/sys/fs/cgroup")
    if not (root / "cgroup.controllers").is_file():
        return None
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::"):
            return root / line[3:].lstrip("/")
    return None


def ram_limit(budget_mb: float | None, name: str) -> RamLimit:
    """The RAM budget for one child start (``name`` names its cgroup)."""
    if budget_mb is None:
        return RamLimit("none", None, None)
    limit = int(budget_mb * 1024 * 1024)
    own = _own_cgroup_v2()
    if own is not None and os.access(own, os.W_OK):
        group = own / name
        try:
            group.mkdir(exist_ok=True)
            (group / "memory.max").write_text(f"{limit}\n")
            (group / "memory.swap.max").write_text("0\n") if (group / "memory.swap.max").exists() else None
            procs = str(group / "cgroup.procs")

            def join() -> None:
                with open(procs, "w") as handle:
                    handle.write(str(os.getpid()))

            return RamLimit("cgroup", limit, join, group)
        except OSError:
            try:
                group.rmdir()
            except OSError:
                pass

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return RamLimit("rlimit_as", limit, cap)
