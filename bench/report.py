"""Run every benchmark suite and write ``bench/results/<host>.json`` and ``<host>.md``.

Usage (what ``make bench`` runs):

    python -m bench.report                     # full grid, a fresh run
    python -m bench.report --quick             # the trimmed grid, still timed (a smoke run)
    python -m bench.report --from RAW.json     # rewrite the summary from an earlier raw result
    python -m bench.report --merge -- bench/test_memory.py -k cli   # re-run a subset, merge it into
                                               # the existing <host>.json (other rows kept)

The suites run in a pytest subprocess with ``--benchmark-json``; figures that are not timings
(peak RSS of fresh subprocesses, stream accuracies, bytes, skip reasons) come back through
``$EDGE_BENCH_FIGURES``. Every target ratio uses timings of the two sides measured alternately
in the same test (`bench._timing.interleaved`), medians; pytest-benchmark's medians are listed too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import _common as C

TARGETS = {
    "predict": "agent predict throughput >= 0.9x the bare runtime (same model, batch, threads)",
    "learn": "learning a 300-frame batch <= 1.3x the time to embed it (every strategy but cumulative)",
    "buffer": "buffer update of a 15,000-row batch <= 5 % of the time to embed it",
    "rss": "edge process peak RSS <= 1/5 of the Keras baseline's",
    "update": "update per 300-frame batch >= 10x faster than Keras fit, at comparable accuracy",
    "device_fps": "edge-agent run loop frames/s >= 0.9x bare Backbone.embed at batch 1 (same frames)",
    "device_latency": "prediction latency p99 while a teach batch learns < 33 ms (one frame at 30 fps)",
    "rss_device": "memory of a fresh device-like process (edge-agent alone) next to the simulator's (a figure, no target)",
}


def _host_name() -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", platform.node() or "unknown-host")


def merge_run(base: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    """``base`` with the figures and benchmarks of a subset run ``part`` put in place of its own.

    Figure groups are merged one level deep (a re-run cell replaces that cell only); a benchmark
    replaces the one of the same name. The subset run is recorded under ``merged_runs``.
    """
    out = dict(base)
    figures = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.get("figures", {}).items()}
    for key, value in part["figures"].items():
        if isinstance(value, dict) and isinstance(figures.get(key), dict) and key != "skipped":
            figures[key].update(value)
        elif key != "skipped":
            figures[key] = value
    out["figures"] = figures
    names = {b["name"] for b in part["benchmarks"]}
    out["benchmarks"] = [b for b in base.get("benchmarks", []) if b["name"] not in names] + part["benchmarks"]
    out["merged_runs"] = [*base.get("merged_runs", []), {
        "command": part["command"], "seconds": part["seconds"], "pytest_exit_status": part["pytest_exit_status"],
        "load_avg_1m_at_start": part["machine"]["load_avg_1m_at_start"], "figures": sorted(part["figures"])}]
    if part["pytest_exit_status"] != 0:
        out["pytest_exit_status"] = part["pytest_exit_status"]
    return out


def run_suites(quick: bool, pytest_args: list[str], subset: bool = False) -> dict[str, Any]:
    """Run pytest on bench/ (``subset``: only what ``pytest_args`` name) and return the raw
    material (benchmarks, figures, exit status)."""
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        bench_json = Path(tmp) / "benchmark.json"
        figures_json = Path(tmp) / "figures.json"
        env = dict(os.environ, EDGE_BENCH_FIGURES=str(figures_json), TF_CPP_MIN_LOG_LEVEL="3")
        if quick:
            env["EDGE_BENCH_QUICK"] = "1"
        where = [] if subset else [str(C.ROOT / "bench")]
        cmd = [sys.executable, "-m", "pytest", *where, "-q", "-p", "no:cacheprovider",
               f"--benchmark-json={bench_json}", "--benchmark-sort=name", "-rs", *pytest_args]
        print("running:", " ".join(cmd), flush=True)
        started = time.perf_counter()
        status = subprocess.call(cmd, cwd=C.ROOT, env=env)
        seconds = time.perf_counter() - started
        raw_bench = json.loads(bench_json.read_text()) if bench_json.is_file() else {"benchmarks": []}
        figures = json.loads(figures_json.read_text()) if figures_json.is_file() else {}
    benchmarks = []
    for b in raw_bench.get("benchmarks", []):
        s = b["stats"]
        benchmarks.append({"name": b["name"], "group": b.get("group"), "params": b.get("params"),
                           "extra_info": b.get("extra_info", {}),
                           "stats": {k: s[k] for k in ("min", "max", "mean", "median", "stddev",
                                                       "iqr", "rounds", "iterations", "ops") if k in s}})
    return {"command": shlex.join(["python", "-m", "bench.report"] + (["--quick"] if quick else [])
                                + (["--merge", "--"] if subset else []) + pytest_args),
            "quick": quick, "pytest_exit_status": status, "seconds": round(seconds, 1),
            "machine": C.machine_info(), "benchmarks": benchmarks, "figures": figures}


# --------------------------------------------------------------------------- summary
def _index(benchmarks: list[dict[str, Any]], kind: str) -> dict[tuple, dict[str, Any]]:
    out = {}
    for b in benchmarks:
        e = b["extra_info"]
        if e.get("kind") != kind:
            continue
        key = tuple(e.get(k) for k in ("model", "case", "threads", "batch", "strategy", "op",
                                       "storage", "epochs"))
        out[key] = b
    return out


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.3g}"


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def _mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:.0f}"


def evaluate_targets(raw: dict[str, Any]) -> dict[str, Any]:
    """Each target: met / not met / not measured, with the figure and what it compares."""
    fig = raw["figures"]
    targets: dict[str, Any] = {}

    pv = fig.get("predict_vs_raw", {})
    if pv:
        worst_key = min(pv, key=lambda k: pv[k]["agent_throughput_vs_raw"])
        rows = {k: round(v["agent_throughput_vs_raw"], 3) for k, v in sorted(pv.items())}
        worst = pv[worst_key]["agent_throughput_vs_raw"]
        targets["predict"] = {"target": TARGETS["predict"], "met": worst >= 0.9,
                              "figure": f"worst {worst:.2f}x ({worst_key}); all: {rows}",
                              "worst": worst, "per_config": rows}
    lv = fig.get("learn_vs_embed", {})
    if lv:
        # cumulative re-trains on every frame it stored, by design: not held to the target
        held = {k: v for k, v in lv.items() if not k.endswith("|cumulative")} or lv
        worst_key = max(held, key=lambda k: held[k]["learn_over_embed"])
        rows = {k: round(v["learn_over_embed"], 3) for k, v in sorted(lv.items())}
        worst = held[worst_key]["learn_over_embed"]
        targets["learn"] = {"target": TARGETS["learn"], "met": worst <= 1.3,
                            "figure": f"worst {worst:.2f}x ({worst_key})", "worst": worst,
                            "per_config": rows}
    bv = fig.get("buffer_vs_embed")
    if bv:
        share = bv["update_over_embed"]
        targets["buffer"] = {"target": TARGETS["buffer"], "met": share <= 0.05 and bv["rows"] >= 15000,
                             "figure": (f"{share * 100:.1f} % ({bv['rows']} rows: update "
                                        f"{_ms(bv['a_median_s'])} ms vs embed {_ms(bv['b_median_s'])} ms; "
                                        f"{bv['config']})"), "ratio": share}
    edge_rss = fig.get("rss_edge", {}).get("keras|litert-fp32")
    keras_rss = fig.get("rss_keras", {}).get("e1")
    if edge_rss and keras_rss:
        ratio = edge_rss["peak_rss_bytes"] / keras_rss["peak_rss_bytes"]
        targets["rss"] = {"target": TARGETS["rss"], "met": ratio <= 0.2,
                          "figure": (f"{_mib(edge_rss['peak_rss_bytes'])} MiB vs "
                                     f"{_mib(keras_rss['peak_rss_bytes'])} MiB = {ratio:.3f} "
                                     "(same backbone, LiteRT fp32, replay vs Keras fit 1 epoch)"),
                          "ratio": ratio}
    upd = fig.get("keras_vs_edge_update", {})
    acc = fig.get("stream_accuracy", {}).get("results", {})
    if upd:
        s1 = upd.get("e1", {}).get("edge_update_speedup")
        sE = upd.get(f"e{C.KERAS_EPOCHS}", {}).get("edge_update_speedup")
        edge_acc = acc.get("edge-replay", {}).get("accuracy")
        k1 = acc.get("keras-fit-e1", {}).get("accuracy")
        kE = acc.get(f"keras-fit-e{C.KERAS_EPOCHS}", {}).get("accuracy")
        comparable = None if edge_acc is None or k1 is None else edge_acc >= max(k1, kE or 0) - 0.02
        met = s1 is not None and s1 >= 10 and bool(comparable)
        targets["update"] = {
            "target": TARGETS["update"], "met": met,
            "figure": (f"edge learn_many (2 head epochs + replay) vs Keras fit: {_fmt(s1)}x faster "
                       f"than 1 epoch, {_fmt(sE)}x than {C.KERAS_EPOCHS} epochs; final accuracy "
                       f"edge replay {_fmt(edge_acc, '.3f')} vs Keras {_fmt(k1, '.3f')} (1 ep) / "
                       f"{_fmt(kE, '.3f')} ({C.KERAS_EPOCHS} ep)"),
            "speedup_vs_fit_1_epoch": s1, f"speedup_vs_fit_{C.KERAS_EPOCHS}_epochs": sE,
            "accuracy_comparable": comparable}
    dev = fig.get("device_loop", {})
    # The device targets are judged on the device default (edge-agent without --model) when it was
    # measured (keys "<figure>|lite0_224"), else on the tiny model (the historical keys).
    suffix, dev_model = (f"|{C.DEVICE_DEFAULT}", f"{C.DEVICE_DEFAULT} int8") \
        if f"fps_vs_bare_embed|{C.DEVICE_DEFAULT}" in dev else ("", "tiny")
    if "fps_vs_bare_embed" + suffix in dev:
        d = dev["fps_vs_bare_embed" + suffix]
        targets["device_fps"] = {"target": TARGETS["device_fps"], "met": d["loop_throughput_vs_bare"] >= 0.9,
                                 "figure": (f"{dev_model}: {d['loop_throughput_vs_bare']:.2f}x ({d['loop_fps']:.0f} vs "
                                            f"{d['bare_embed_fps']:.0f} frames/s, {d['frames']} frames)"),
                                 "ratio": d["loop_throughput_vs_bare"]}
    if "latency_while_learning" + suffix in dev:
        d = dev["latency_while_learning" + suffix]
        rss = dev.get("rss" + suffix, {})
        targets["device_latency"] = {
            "target": TARGETS["device_latency"], "met": d["p99_ms"] < 1000 / 30,
            "figure": (f"{dev_model}: p99 {d['p99_ms']:.2f} ms, p50 {d['p50_ms']:.2f} ms over {d['predictions']} predictions, "
                       f"{d['learned_batches']} batches learned (median {_fmt(d['learn_ms_median'])} ms)"
                       + (f"; RSS {_mib(rss['with_http_bytes'])} MiB with the HTTP API, "
                          f"{_mib(rss['without_http_bytes'])} MiB without" if rss else "")),
            "p99_ms": d["p99_ms"]}
    cli = fig.get("rss_cli", {})
    if cli:
        parts = [f"{name}: {_mib(r['peak_rss_bytes'])} MiB" for name, r in cli.items()]
        targets["rss_device"] = {"target": TARGETS["rss_device"], "met": None, "figure_only": True,
                                 "figure": "peak RSS, default model, LiteRT fp32: " + "; ".join(parts),
                                 "peak_rss_bytes": {k: r["peak_rss_bytes"] for k, r in cli.items()}}
    for name, text in TARGETS.items():
        targets.setdefault(name, {"target": text, "met": None, "figure": "not measured in this run"})
    return targets


def summary_markdown(raw: dict[str, Any]) -> str:
    m = raw["machine"]
    fig = raw["figures"]
    bm = raw["benchmarks"]
    v = m["versions"]
    lines = [
        f"# Benchmarks: {m['host']}",
        "",
        f"Machine: {m['cpu']} ({m['arch']}), {m['usable_cores']} usable cores "
        f"({m['logical_cores']} logical), {m['memory_gib']} GiB; GPU: {m['gpu'] or 'none'}; "
        f"load average at start {m['load_avg_1m_at_start']}.",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in sorted(v.items())) + ".",
        f"ONNX Runtime providers available: {', '.join(m['onnxruntime_providers'])}.",
        "",
        f"Command: `{raw['command']}` ({'quick grid' if raw['quick'] else 'full grid'}), "
        f"{raw['seconds']:.0f} s, pytest exit status {raw['pytest_exit_status']}. "
        "Timings on a shared machine are noisy; ratios compare two sides timed alternately in "
        "the same test (medians), never absolute times across runs.",
        *[f"Merged later: `{r['command']}` ({r['seconds']:.0f} s, load {r['load_avg_1m_at_start']}, exit "
          f"{r['pytest_exit_status']}): {', '.join(r['figures'])}." for r in raw.get("merged_runs", [])],
        "",
        "## Targets",
        "",
        "| target | met | figure |",
        "|---|---|---|",
    ]
    for t in raw["targets"].values():
        met = "figure" if t.get("figure_only") else {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
        lines.append(f"| {t['target']} | {met} | {t['figure'] if 'per_config' not in t else t['figure'].split('; all')[0]} |")

    pv = fig.get("predict_vs_raw", {})
    if pv:
        lines += ["", "## Agent predict vs the bare runtime (same run, interleaved)", "",
                  "| model | runtime | batch | agent ms | raw ms | agent throughput / raw | "
                  "closed-set agent ms | closed-set / raw |",
                  "|---|---|---|---|---|---|---|---|"]
        for key, r in sorted(pv.items()):
            model, case, batch = key.split("|")
            cs = r.get("closed_set_throughput_vs_raw")
            lines.append(f"| {model} | {case} | {batch[1:]} | {_ms(r['a_median_s'])} | "
                         f"{_ms(r['b_median_s'])} | {r['agent_throughput_vs_raw']:.2f} | "
                         f"{_ms(r.get('closed_set_median_s'))} | {_fmt(cs)} |")
        lines += ["", "`predict_many(..., unknown=True)` answers UNKNOWN (-1) for a novel frame, which adds the open-set novelty "
                  "score (`edge.openset`); the closed-set columns are `predict_many(..., unknown=False)`, "
                  "timed alternately with the same bare runtime."]
    lv = fig.get("learn_vs_embed", {})
    if lv:
        lines += ["", "## learn_many(300 frames) vs embedding the same 300 frames (interleaved)", "",
                  "| model | runtime | strategy | learn ms | embed ms | learn / embed |",
                  "|---|---|---|---|---|---|"]
        for key, r in sorted(lv.items()):
            model, case, strategy = key.split("|")
            note = " (by design: re-trains on all it stored)" if strategy == "cumulative" else ""
            lines.append(f"| {model} | {case} | {strategy}{note} | {_ms(r['a_median_s'])} | "
                         f"{_ms(r['b_median_s'])} | {r['learn_over_embed']:.2f} |")

    ls = fig.get("learn_vs_embed_small", {})
    if ls:
        lines += ["", "## learn_many on a teach batch of 1 / 32 frames vs embedding them (interleaved)", "",
                  "| model | runtime | batch | learn ms | embed ms | learn / embed |", "|---|---|---|---|---|---|"]
        for key, r in sorted(ls.items()):
            model, case, batch = key.split("|")
            lines.append(f"| {model} | {case} | {batch[1:]} | {_ms(r['a_median_s'])} | {_ms(r['b_median_s'])} | "
                         f"{r['learn_over_embed']:.2f} |")
    dev = fig.get("device_loop", {})
    if dev:
        lines += ["", "## The device loop (`edge-agent run`), per model", "",
                  "| model | loop frames/s | bare embed frames/s | loop / bare | p50 / p99 ms while learning | "
                  "learn ms (median, 64 frames) | RSS MiB with / without HTTP |", "|---|---|---|---|---|---|---|"]
        for suffix in sorted({k.partition("|")[2] for k in dev}):
            tail = f"|{suffix}" if suffix else ""
            f, lat, rss = dev.get("fps_vs_bare_embed" + tail), dev.get("latency_while_learning" + tail), \
                dev.get("rss" + tail)
            lines.append(
                f"| {suffix or 'default (tiny)'} | {_fmt(f and f['loop_fps'], '.1f')} | "
                f"{_fmt(f and f['bare_embed_fps'], '.1f')} | {_fmt(f and f['loop_throughput_vs_bare'])} | "
                f"{_fmt(lat and lat['p50_ms'])} / {_fmt(lat and lat['p99_ms'])} | "
                f"{_fmt(lat and lat['learn_ms_median'], '.0f')} | "
                f"{_mib(rss and rss['with_http_bytes'])} / {_mib(rss and rss['without_http_bytes'])} |")

    emb, raw_i = _index(bm, "embed"), _index(bm, "raw")
    if emb:
        lines += ["", "## Backbone embedding (pytest-benchmark medians)", "",
                  "| model | runtime | threads | batch | embed ms | img/s | bare runtime ms |",
                  "|---|---|---|---|---|---|---|"]
        for key in sorted(emb, key=lambda k: tuple(str(x) for x in k)):
            s = emb[key]["stats"]
            r = raw_i.get(key, {}).get("stats", {})
            lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {_ms(s['median'])} | "
                         f"{key[3] / s['median']:.0f} | {_ms(r.get('median'))} |")
    sizes = fig.get("model_bytes", {})
    if emb and sizes:
        lines += ["", "## int8 vs fp32 (LiteRT), per model", "",
                  "| model | fp32 bytes | int8 bytes | size int8/fp32 | batch | threads | fp32 ms | "
                  "int8 ms | speed int8 vs fp32 | ORT CPU fp32 ms |", "|---|---|---|---|---|---|---|---|---|---|"]
        for model, sz in sorted(sizes.items()):
            for (mm, case, threads, batch, *_), b in sorted(emb.items(), key=lambda kv: str(kv[0])):
                if mm != model or case != "litert-fp32":
                    continue
                i8 = emb.get((model, "litert-int8", threads, batch, None, None, None, None))
                ort = emb.get((model, "ort-cpu-fp32", threads, batch, None, None, None, None))
                f_ms, i_ms = b["stats"]["median"], i8["stats"]["median"] if i8 else None
                lines.append(
                    f"| {model} | {sz.get('tflite-fp32')} | {sz.get('tflite-int8')} | "
                    f"{sz['tflite-int8'] / sz['tflite-fp32']:.2f} | {batch} | {threads} | {_ms(f_ms)} | "
                    f"{_ms(i_ms)} | {_fmt(None if i_ms is None else f_ms / i_ms)}x | "
                    f"{_ms(ort['stats']['median'] if ort else None)} |")
        lines += ["", "Speed > 1x means int8 is faster. On x86 int8 is often slower or only slightly "
                  "faster than fp32 with XNNPACK; int8 pays on ARM (NEON dot-product kernels) and in "
                  "flash/RAM (about 4x smaller)."]

    upd = fig.get("keras_vs_edge_update", {})
    acc = fig.get("stream_accuracy", {})
    if upd or acc:
        lines += ["", "## Edge agent vs the Keras way (same backbone weights)", ""]
        if upd:
            lines += ["| Keras fit epochs | Keras ms / 300-frame batch | edge learn_many ms | edge speedup |",
                      "|---|---|---|---|"]
            for key, r in sorted(upd.items(), key=lambda kv: kv[1]["keras_epochs"]):
                lines.append(f"| {r['keras_epochs']} | {_ms(r['a_median_s'])} | {_ms(r['b_median_s'])} | "
                             f"{r['edge_update_speedup']:.1f}x |")
        if acc:
            lines += ["", f"Stream: {acc['stream']}, {acc['batches']} batches, {acc['train_frames']} "
                      f"training frames, {acc['test_frames']} test frames.", "",
                      "| learner | final accuracy | median update s/batch | total update s |",
                      "|---|---|---|---|"]
            for name, r in sorted(acc["results"].items()):
                lines.append(f"| {name} | {r['accuracy']:.3f} | {r['update_s_median']:.3f} | "
                             f"{r['update_s_total']:.1f} |")
    rss_e, rss_k = fig.get("rss_edge", {}), fig.get("rss_keras", {})
    if rss_e or rss_k:
        lines += ["", "## Peak RSS, fresh process (import, load, learn 10 x 300 frames, predict)", "",
                  "| configuration | peak RSS MiB | after import MiB | learn s/batch | head+buffer+strategy bytes | checkpoint bytes |",
                  "|---|---|---|---|---|---|"]
        for key, r in sorted(rss_e.items()):
            lines.append(f"| edge {key} | {_mib(r['peak_rss_bytes'])} | {_mib(r['rss_bytes']['imported'])} | "
                         f"{r['learn_s_per_batch']:.3f} | {r['memory_bytes']['total']} | {r['checkpoint_bytes']} |")
        for key, r in sorted(rss_k.items()):
            lines.append(f"| Keras fit {key} | {_mib(r['peak_rss_bytes'])} | {_mib(r['rss_bytes']['imported'])} | "
                         f"{r['learn_s_per_batch']:.3f} | - | - |")
    cli = fig.get("rss_cli", {})
    if cli:
        lines += ["", "## Peak RSS of fresh CLI processes: the device side alone vs the simulator", "",
                  "Each command is the only child of a small stdlib launcher (`bench._peak_rss`, "
                  "`os.wait4` ru_maxrss; the launcher's own ~11 MiB is a floor of the figure). "
                  "Default model, LiteRT fp32, replay.", "",
                  "| process | peak RSS MiB | wall s |", "|---|---|---|"]
        for name, r in cli.items():
            lines.append(f"| `{name}` | {_mib(r['peak_rss_bytes'])} | {r['seconds']:.2f} |")
    sb = fig.get("state_bytes")
    if sb:
        lines += ["", f"State bytes ({sb['config']}): head {sb['head_bytes']}, buffer {sb['buffer_bytes']}, "
                  f"strategy {sb['strategy_bytes']}, total {sb['total_bytes']}; checkpoint file "
                  f"{sb['checkpoint_file_bytes']}."]
    other = [b for b in bm if b["extra_info"].get("kind") in ("buffer", "checkpoint")]
    if other:
        lines += ["", "## Buffer and checkpoint (pytest-benchmark medians)", "", "| operation | ms |", "|---|---|"]
        for b in sorted(other, key=lambda b: b["name"]):
            lines.append(f"| {b['name'].removeprefix('test_')} | {_ms(b['stats']['median'])} |")
    skipped = fig.get("skipped", {})
    if skipped:
        reasons: dict[str, int] = {}
        for reason in skipped.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        lines += ["", "## Not run here", ""]
        lines += [f"- {n} test(s): {reason}" for reason, n in sorted(reasons.items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the trimmed grid (smoke run)")
    parser.add_argument("--out", type=Path, default=C.RESULTS, help="results folder (bench/results)")
    parser.add_argument("--name", default=None, help="file stem (default: the host name)")
    parser.add_argument("--from", dest="from_json", type=Path, default=None,
                        help="rewrite the summary from an existing results JSON instead of running")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    parser.add_argument("--merge", action="store_true",
                        help="run only the given pytest arguments (a subset) and merge its figures and "
                             "benchmarks into the existing <name>.json; the run is listed under merged_runs")
    args = parser.parse_args(argv)
    stem = args.name or (args.from_json.stem if args.from_json else _host_name())
    if args.from_json:
        raw = json.loads(args.from_json.read_text())
    elif args.merge:
        raw = merge_run(json.loads((args.out / f"{stem}.json").read_text()),
                        run_suites(args.quick, args.pytest_args, subset=True))
    else:
        raw = run_suites(args.quick, args.pytest_args)
    raw["targets"] = evaluate_targets(raw)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(raw, indent=1, sort_keys=True, default=float) + "\n")
    md = summary_markdown(raw)
    (args.out / f"{stem}.md").write_text(md)
    print(md)
    print(f"wrote {args.out / (stem + '.json')} and {args.out / (stem + '.md')}")
    return 0 if raw.get("pytest_exit_status", 0) == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
