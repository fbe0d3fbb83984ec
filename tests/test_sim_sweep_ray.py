"""`edge-sim sweep --executor ray` against a real local Ray cluster, inside a loopback-only network namespace.

Ray binds the machine's network interface even when told 127.0.0.1, and test traffic must stay on
loopback, so the whole body (``ray start --head``, the sweeps, ``ray stop``) runs as a subprocess
under ``unshare -n -p -f --mount-proc`` with only ``lo`` up: a private network and a private PID
namespace (everything Ray started dies with the namespace, and ``ray stop`` sees only its own
processes). Ray itself is never started outside it. Skipped, with the reason, where Ray is not
installed or namespaces are not permitted (not root).

The body writes what it observed to a JSON file; the assertions are here, in pytest.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = ["unshare", "-n", "-p", "-f", "--mount-proc"]
DETERMINISTIC = ("final_accuracy", "average_accuracy", "forgetting_mean", "forgetting_per_class", "curve",
                 "per_class_accuracy", "confusion_matrix", "classes_seen", "n_batches", "n_train_frames")


def _namespace_problem() -> str | None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs unshare and ip (util-linux, iproute2) for a loopback-only network namespace"
    probe = subprocess.run([*NAMESPACE, "sh", "-c", "ip link set lo up"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"network/PID namespaces not permitted here (unshare: {probe.stderr.strip() or probe.returncode})"
    return None


@pytest.mark.slow
def test_ray_sweep_matches_local_retries_a_dead_worker_and_resumes(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="Ray not installed (pip install '.[sweep-ray]' in the project folder)")
    problem = _namespace_problem()
    if problem:
        pytest.skip(problem)
    observed = tmp_path / "observed.json"
    started = time.perf_counter()
    body = f"ip link set lo up && exec {sys.executable} {Path(__file__)} {tmp_path} {observed}"
    proc = subprocess.run([*NAMESPACE, "sh", "-c", body], capture_output=True, text=True, timeout=420,
                          cwd=str(REPO), env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0",
                                                   # loopback-only cluster: no token (none written to ~/.ray)
                                                   "RAY_AUTH_MODE": "disabled"})
    assert proc.returncode == 0, f"namespace body failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    got = json.loads(observed.read_text())
    wall = time.perf_counter() - started

    ray_facts, local_facts = got["ray"]["facts"], got["local"]["facts"]
    assert ray_facts["executor"] == "ray" and local_facts["executor"] == "local"
    assert ray_facts["cells_computed"] == local_facts["cells_computed"] == 8 and not ray_facts["cells_failed"]
    # one embedding pass per stream (2 runs), counted by every pass in the cache's log
    assert ray_facts["streams"] == ray_facts["embedding_passes"] == 2
    assert sorted(got["ray"]["passes"].values()) == [1, 1]
    assert set(got["ray"]["passes"]) == set(got["local"]["passes"])  # same content keys
    assert got["embeddings_identical"] is True
    # the worker of one cell died (os._exit) on its first attempt and Ray retried it
    assert got["crash_marker_exists"] is True and got["victim"] in got["ray"]["cells"]
    # identical results to the local executor for the same seeds
    assert set(got["ray"]["cells"]) == set(got["local"]["cells"])
    for key, local in got["local"]["cells"].items():
        for name in DETERMINISTIC:
            assert got["ray"]["cells"][key][name] == local[name], (key, name)
    assert got["ray"]["csv_rows"] == got["local"]["csv_rows"] == 4
    # a rerun on the cluster recomputes nothing and embeds nothing
    rerun = got["rerun"]["facts"]
    assert rerun["cells_computed"] == 0 and rerun["cells_skipped"] == 8 and rerun["embedding_passes"] == 0
    assert got["ray_stopped"] is True
    print(f"ray sweep test wall {wall:.1f} s; local sweep {local_facts['wall_seconds']:.1f} s, "
          f"ray sweep {ray_facts['wall_seconds']:.1f} s, cluster start {got['cluster_start_seconds']:.1f} s")


# --------------------------------------------------------------------------- the body (inside the namespace)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cells(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text())["result"] for p in sorted((out / "cells").glob("*.json"))}


def _body(work: Path, observed: Path) -> None:  # pragma: no cover - runs in the namespace subprocess
    import numpy as np

    from firmware_sim.commands.cli import main as sim_main
    from _sim_common import generate_small, sweep_grid_text
    from firmware_sim.sweep.embeddings import StreamCache, count_passes
    from firmware_sim.sweep.tasks import CRASH_ENV

    data = generate_small(work / "core50")
    grid = work / "grid.toml"
    grid.write_text(sweep_grid_text(data))
    ray_bin = str(Path(sys.executable).with_name("ray"))
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths are length-limited
    port = _free_port()
    result: dict = {}
    started = time.perf_counter()
    subprocess.run([ray_bin, "start", "--head", "--num-cpus", "2", "--port", str(port), "--node-ip-address",
                    "127.0.0.1", "--include-dashboard=false", "--disable-usage-stats", "--temp-dir", str(temp)],
                   check=True, capture_output=True, text=True, timeout=120)
    result["cluster_start_seconds"] = time.perf_counter() - started
    try:
        local_out, ray_out = work / "local", work / "ray"
        assert sim_main(["sweep", "--grid", str(grid), "--out", str(local_out), "--workers", "2",
                         "--no-progress", "--no-plots"]) == 0
        local_cells = _cells(local_out)
        victim = sorted(local_cells)[1]
        marker = work / "victim-died"
        os.environ[CRASH_ENV] = f"{victim}:{marker}"
        assert sim_main(["sweep", "--grid", str(grid), "--out", str(ray_out), "--executor", "ray",
                         "--ray-address", f"127.0.0.1:{port}", "--no-progress"]) == 0
        del os.environ[CRASH_ENV]
        ray_first = json.loads((ray_out / "results.json").read_text())["sweep"]
        assert sim_main(["sweep", "--grid", str(grid), "--out", str(ray_out), "--executor", "ray",
                         "--ray-address", f"127.0.0.1:{port}", "--no-progress"]) == 0
        rerun_facts = json.loads((ray_out / "results.json").read_text())["sweep"]
        same = True
        for key in count_passes(local_out / "cache"):
            a, b = StreamCache(local_out / "cache").get(key), StreamCache(ray_out / "cache").get(key)
            same = same and a is not None and b is not None and np.array_equal(a[1], b[1]) and all(
                np.array_equal(x, y) for x, y in zip(a[0], b[0]))
        result.update({
            "victim": victim, "crash_marker_exists": marker.is_file(),
            "embeddings_identical": bool(same),
            "local": {"facts": json.loads((local_out / "results.json").read_text())["sweep"],
                      "cells": local_cells, "passes": count_passes(local_out / "cache"),
                      "csv_rows": len((local_out / "results.csv").read_text().splitlines()) - 1},
            "ray": {"facts": ray_first, "cells": _cells(ray_out), "passes": count_passes(ray_out / "cache"),
                    "csv_rows": len((ray_out / "results.csv").read_text().splitlines()) - 1},
            "rerun": {"facts": rerun_facts},
        })
    finally:
        stop = subprocess.run([ray_bin, "stop", "--force"], capture_output=True, text=True, timeout=120)
        result["ray_stopped"] = stop.returncode == 0
        shutil.rmtree(temp, ignore_errors=True)
    observed.write_text(json.dumps(result))


if __name__ == "__main__":  # pragma: no cover - the namespace subprocess
    _body(Path(sys.argv[1]), Path(sys.argv[2]))
