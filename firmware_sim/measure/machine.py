"""What machine and software produced a report: CPU model, cores, memory, runtime versions.

Example:
    >>> info = machine_info()
    >>> info["cores"] >= 1 and "numpy" in info["versions"]
    True
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

__all__ = ["RUNTIME_PACKAGES", "machine_info", "machine_line"]

#: Distributions whose versions a report records (absent ones are left out).
RUNTIME_PACKAGES = ("numpy", "ai-edge-litert", "tflite-runtime", "onnxruntime", "onnxruntime-gpu", "edge-continual")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def machine_info() -> dict[str, Any]:
    """CPU model, logical cores (and those this process may use), memory, OS, Python and package versions."""
    versions: dict[str, str] = {}
    for name in RUNTIME_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": _cpu_model(), "cores": os.cpu_count() or 1, "usable_cores": usable,
            "memory_bytes": _memory_bytes(), "machine": platform.machine(), "platform": platform.platform(),
            "python": platform.python_version(), "versions": versions}


def machine_line(info: dict[str, Any]) -> str:
    """One line for a summary: ``CPU (N cores, M GiB), Python x, numpy y, ...``."""
    mem = info.get("memory_bytes")
    size = f", {mem / 2**30:.0f} GiB" if mem else ""
    versions = ", ".join(f"{k} {v}" for k, v in info.get("versions", {}).items())
    return (f"{info.get('cpu')} ({info.get('usable_cores')}/{info.get('cores')} cores{size}), "
            f"{info.get('platform')}, Python {info.get('python')}" + (f", {versions}" if versions else ""))
