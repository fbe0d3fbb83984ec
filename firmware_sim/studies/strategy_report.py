"""Generate ``docs/strategies.md``: every strategy on every generated stream, 3 runs, plus the sweep.

    python -m firmware_sim.studies.strategy_report --out docs/strategies.md

Runs offline on a fresh machine: the CORe50-format set is generated on first use (seed 0, into
the cache directory), the class-incremental npz stream is rendered from the generator's
pretraining-style objects with a seed (1) whose objects the shipped backbone never saw, and the
hyperparameter sweep (`firmware_sim.studies.strategy_sweep`) runs first on its own generated tuning set
(seed 1) unless ``--skip-sweep`` reuses ``docs/strategy_sweep.json``. Each stream is one
`firmware_sim.loop.experiment.run_experiment` call, exactly what ``edge-sim compare`` does.

A second table (``--second-model DIR``, e.g. ``models/efficientnet_lite0_128``) runs the same strategies
on the generated CORe50-format streams rendered by the generator at that model's input size (one of
``firmware_sim.data.generator.SUPPORTED_SIZES``), results under ``--second-results``. ``--only-second``
renders the first table from its stored results and runs only the second::

    python -m firmware_sim.studies.strategy_report --only-second --second-model models/efficientnet_lite0_128
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge.agent import AgentConfig
from edge.strategies import STRATEGIES
from firmware_sim.cache_dir import default_cache_dir
from firmware_sim.loop.replay import SimOptions
from firmware_sim.studies.strategy_sweep import head_for

ORDER = ["naive", "lwf", "ewc", "cwr_star", "ncm", "replay", "refit", "refit_slda", "ar1_head", "slda", "ridge", "cumulative"]
NPZ_CLASSES = 20


def ci_npz(cache: Path) -> Path:
    """A class-incremental npz set: 20 generated objects unseen by the backbone, held-out test views."""
    from firmware_sim.data.generator import make_pretraining_set

    path = cache / f"ci{NPZ_CLASSES}-seed1.npz"
    if not path.is_file():
        x, y = make_pretraining_set(n_objects=NPZ_CLASSES, frames=8, sessions=4, seed=1)
        xt, yt = make_pretraining_set(n_objects=NPZ_CLASSES, frames=4, sessions=2, seed=1, variant=1)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, x_train=x, y_train=y, x_test=xt, y_test=yt)
        tmp.replace(path)
    return path


def streams(cache: Path) -> list[dict[str, Any]]:
    npz = ci_npz(cache)
    return [
        {"key": "ni", "title": "NI (generated CORe50-format, 8 batches of new sessions, all 50 classes)",
         "data": "synthetic", "scenario": "ni", "params": {}},
        {"key": "nc", "title": "NC (generated CORe50-format, 9 batches of new classes)",
         "data": "synthetic", "scenario": "nc", "params": {}},
        {"key": "nicv2_391", "title": "NICv2-391 (generated CORe50-format, 391 small batches)",
         "data": "synthetic", "scenario": "nicv2_391", "params": {}},
        {"key": "npz_ci", "title": f"Class-incremental npz ({NPZ_CLASSES} generated objects unseen by the backbone, "
                                   "2 classes per experience)",
         "data": f"npz:{npz}", "scenario": "class_incremental", "params": {"classes_per_experience": 2}},
    ]


SECOND_KEYS = ("ni", "nc", "nicv2_391")


def model_input_size(model: str) -> int:
    """The square input size a model directory's manifest declares.

    >>> from edge.models import tiny_model_dir
    >>> model_input_size(str(tiny_model_dir()))
    32
    """
    manifest = json.loads((Path(model) / "manifest.json").read_text(encoding="utf-8"))
    shape = manifest["input"]["shape"]
    if len(shape) != 3 or shape[0] != shape[1]:
        raise ValueError(f"{model}: expected a square HxWx3 input in manifest.json, got {shape}")
    return int(shape[0])


def second_streams(cache: Path, image_size: int, keys: list[str]) -> list[dict[str, Any]]:
    """The generated CORe50-format streams ``keys`` rendered at ``image_size`` (generated on first use).

    >>> second_streams(Path("/nonexistent"), 96, ["ni"])
    Traceback (most recent call last):
    ...
    ValueError: second image size: expected one of (32, 64, 128), got 96
    >>> second_streams(Path("/nonexistent"), 128, ["npz_ci"])
    Traceback (most recent call last):
    ...
    ValueError: --second-scenarios: expected a non-empty subset of ni,nc,nicv2_391, got ['npz_ci']
    """
    from firmware_sim.data.generator import SUPPORTED_SIZES
    from firmware_sim.data.streams import SyntheticDefaults, ensure_synthetic

    if image_size not in SUPPORTED_SIZES:
        raise ValueError(f"second image size: expected one of {SUPPORTED_SIZES}, got {image_size}")
    unknown = [k for k in keys if k not in SECOND_KEYS]
    if unknown or not keys:
        raise ValueError(f"--second-scenarios: expected a non-empty subset of {','.join(SECOND_KEYS)}, got {keys}")
    defaults = SyntheticDefaults(image_size=image_size)
    root = ensure_synthetic(cache / defaults.directory().name, defaults, progress=False)
    titles = {s["key"]: s["title"] for s in streams(cache)}
    return [{"key": k, "title": titles[k].replace("generated CORe50-format", f"generated CORe50-format at {image_size} px"),
             "data": f"synthetic:{root}", "scenario": k, "params": {}} for k in keys]


WHAT = {
    "naive": ("fine-tune the head on each incoming batch (lower bound)", "none"),
    "replay": ("latent replay: each mini-batch mixes new rows with buffer rows", "buffer"),
    "cwr_star": ("CWR*: per-class consolidated output weights, weighted by patterns seen", "K counts"),
    "ar1_head": ("CWR* on the output layer + latent replay; the MLP's hidden layer keeps learning",
                 "buffer + K counts"),
    "slda": ("Deep Streaming LDA: class means + shared covariance, one pass, no gradient",
             "d x d scatter + d x d precision (cached) + K x d means"),
    "ncm": ("nearest class mean on standardised embeddings", "K x d sums"),
    "ewc": ("online EWC: running diagonal Fisher after every batch, penalty towards the last weights",
            "Fisher + anchor (2 x head params)"),
    "lwf": ("LwF: distil the head's own pre-batch outputs on the batch", "none between batches"),
    "refit": ("fit the softmax head to convergence (L-BFGS) on the buffer + the batch after each teach",
              "buffer"),
    "refit_slda": ("`refit` while the buffer holds every taught row, `slda` from the teach that overflows "
                   "it (`edge-agent`'s default)", "buffer + head; + d x d scatter once full"),
    "ridge": ("ridge regression on a random ReLU projection, penalty by GCV; exact add/subtract",
              "D x D Gram + D x K sums"),
    "cumulative": ("train on everything seen, to convergence (upper bound)", "**UNBOUNDED**: every embedding, float32"),
}


AGENTS = "agent's"


def _defaults(name: str) -> str:
    """The constructor's parameters and defaults (None: the agent's setting)."""
    import inspect

    params = [p for p in list(inspect.signature(STRATEGIES[name].__init__).parameters.values())[1:]
              if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if not params:
        return "-"
    return ", ".join(f"`{p.name}` ({AGENTS if p.default is None else p.default})" for p in params)


def configs() -> dict[str, AgentConfig]:
    return {name: AgentConfig(strategy=name, head=head_for(name)) for name in ORDER}


def cli_commands(stream: dict[str, Any], runs: int, model: str | None = None) -> list[str]:
    """The ``edge-sim`` commands that compute the same numbers."""
    data = stream["data"]
    if ":" in data:
        prefix, path = data.split(":", 1)
        data = f"{prefix}:<cache>/{Path(path).name}"
    extra = "".join(f" --protocol-param {k}={v}" for k, v in stream["params"].items())
    extra += f" --model {model}" if model else ""
    base = f"edge-sim {{}} --data {data} --scenario {stream['scenario']} --runs {runs}{extra} --no-plots"
    softmax = ",".join(n for n in ORDER if head_for(n) == "softmax")
    mlp = [n for n in ORDER if head_for(n) == "mlp"]
    tag = f"{stream['key']}-{Path(model).name}" if model else stream["key"]
    cmds = [base.format("compare") + f" --strategies {softmax} --out runs/{tag}"]
    cmds += [base.format("run") + f" --strategy {n} --head mlp --out runs/{tag}-{n}" for n in mlp]
    return cmds


def run_stream(stream: dict[str, Any], model: str, runs: int, cache: Path, out: Path | None) -> dict[str, Any]:
    from firmware_sim.loop.experiment import ExperimentSpec, run_experiment

    spec = ExperimentSpec(model=model, data=stream["data"], scenario=stream["scenario"], configs=configs(),
                          runs=list(range(runs)), protocol_params=stream["params"],
                          cache_dir=str(cache / "embeddings"), plots=False,
                          options=SimOptions(eval_every=1, latency_frames=0, progress=False))
    return run_experiment(spec, out_dir=out)


def _pm(stat: dict[str, float], scale: float = 100.0, digits: int = 1) -> str:
    if stat["n"] == 0 or stat["mean"] != stat["mean"]:
        return "-"
    return f"{stat['mean'] * scale:.{digits}f} ± {stat['std'] * scale:.{digits}f}"


def table(report: dict[str, Any]) -> str:
    head = ("| strategy | head | final acc % | avg acc % | forgetting % | train ms/batch | head KiB | buffer KiB "
            "| strategy KiB | total KiB |")
    lines = [head, "|" + "---|" * 10]
    for name, entry in report["configs"].items():
        s, mem = entry["summary"], entry["runs"][0]["memory"]
        kib = [mem[k] / 1024 for k in ("head_bytes", "replay_bytes", "strategy_bytes", "learned_state_bytes")]
        unbounded = " (unbounded)" if name == "cumulative" else ""
        lines.append(f"| {name} | {entry['config']['head']} | {_pm(s['final_accuracy'])} | {_pm(s['average_accuracy'])} "
                     f"| {_pm(s['forgetting_mean'])} | {s['train_ms_per_batch']['mean']:.2f} | "
                     + " | ".join(f"{v:,.0f}" for v in kib[:3]) + f"{unbounded} | {kib[3]:,.0f}{unbounded} |")
    return "\n".join(lines)


def acc(reports: dict[str, Any], stream: str, name: str) -> float:
    return 100 * reports[stream]["configs"][name]["summary"]["final_accuracy"]["mean"]


SHORT = {"ni": "NI", "nc": "NC", "nicv2_391": "NICv2-391"}


def stream_section(stream: dict[str, Any], report: dict[str, Any], runs: int, model: str | None = None,
                   title: str | None = None) -> list[str]:
    """Markdown lines of one stream's results: heading, sizes, the equivalent CLI call, the table."""
    info = report["streams"][0]
    return [f"### {title or stream['title']}", "",
            f"{info['n_batches']} batches, {info['n_train_frames']:,} training frames, "
            f"{info['n_test_frames']:,} test frames, {info['n_classes']} classes. Same numbers from the CLI:", "",
            "```", *cli_commands(stream, runs, model), "```", "", table(report), ""]


def render_second(first: dict[str, Any], second: dict[str, Any]) -> list[str]:
    """The second backbone's section: how it was made, its tables, and the comparison with the first."""
    r2, streams2, meta = second["reports"], second["streams"], second["meta"]
    size, runs2 = second["image_size"], second["runs"]
    b1, b2 = next(iter(first.values()))["backbone"], next(iter(r2.values()))["backbone"]
    keys = [s["key"] for s in streams2]
    emb_ms = {k: r2[k]["streams"][0]["embedding"]["mean_ms"] for k in keys}
    out = [
        f"## Second backbone: `{b2['name']}` on the generated streams at {size} px",
        "",
        f"The same strategies, agent defaults and protocols with the backbone `{second['model']}` "
        f"({b2['runtime']} {b2['precision']}, frozen; EfficientNet-Lite0 with ImageNet weights, "
        "`models/README.md`, built by `make pretrained-model`) on the same generated CORe50-format set "
        f"rendered by the generator at {size} px (`synthetic-{size}px-30f-10r-seed0` in the cache: the same "
        "objects, sessions and trajectories as the 32-px set above, drawn at 128x128, not upscaled). "
        f"{runs2} run{'s' if runs2 != 1 else ''} per stream ({', '.join(SHORT[k] for k in keys)}), so the "
        + ("± is 0.0: no spread is measured" if runs2 == 1 else "± is the std over runs")
        + f". Generated by `{meta['command']}` in {meta['wall_seconds']:.0f} s of wall time (first run "
        "includes rendering the set and embedding it; embedding "
        + ", ".join(f"{SHORT[k]} {emb_ms[k]:.1f} ms/frame" for k in keys)
        + " on this shared 2-core machine, cached by the embedding cache afterwards). A full regeneration "
        f"keeps this section only with `--second-model {second['model']}` (`--render-only --second-model "
        f"{second['model']}` re-renders both tables from the stored results in `runs/`).",
        "",
    ]
    for stream in streams2:
        out += stream_section(stream, r2[stream["key"]], runs2, second["model"],
                              title=f"{stream['title']}, `{b2['name']}`")
    cols = [k for k in keys if k in first]
    out += [f"### Final accuracy side by side: `{b1['name']}` (32 px, table above) vs `{b2['name']}` ({size} px)",
            "",
            "| strategy | " + " | ".join(f"{SHORT[k]} `{b1['name']}` | {SHORT[k]} `{b2['name']}`" for k in cols)
            + " |",
            "|---|" + "---|---|" * len(cols)]
    wins = losses = 0
    for name in ORDER:
        cells = []
        for k in cols:
            a, b = acc(first, k, name), acc(r2, k, name)
            wins, losses = wins + (b > a), losses + (b < a)
            cells += [f"{a:.1f}", f"**{b:.1f}**" if b > a else f"{b:.1f}"]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    lost = [f"`{n}` on {SHORT[k]} ({acc(r2, k, n):.1f} vs {acc(first, k, n):.1f})"
            for k in cols for n in ORDER if acc(r2, k, n) < acc(first, k, n)]
    out += ["", f"Bold: higher with `{b2['name']}`. It is higher in {wins} of {wins + losses} "
            f"(strategy, stream) pairs; lower in: {', '.join(lost) if lost else 'none'}.", ""]
    out += second_notes(first, r2, cols, b1["name"], b2["name"])
    return out


def mean_ms(reports: dict[str, Any], keys: list[str]) -> float:
    """Mean embedding time per frame over the first run of ``keys``."""
    return float(np.mean([reports[k]["streams"][0]["embedding"]["mean_ms"] for k in keys]))


def second_notes(first: dict[str, Any], r2: dict[str, Any], cols: list[str], n1: str, n2: str) -> list[str]:
    """The reading of the side-by-side table: where each backbone wins, and why (measured where stated)."""
    def a1(k: str, n: str) -> float:
        return acc(first, k, n)

    def a2(k: str, n: str) -> float:
        return acc(r2, k, n)

    k0 = "nc" if "nc" in cols else cols[0]
    out = [
        f"**Reading it.** The ImageNet features win where a strategy fits the embedding's class structure "
        f"(`slda` {a2(k0, 'slda'):.1f} vs {a1(k0, 'slda'):.1f}, `replay` {a2(k0, 'replay'):.1f} vs "
        f"{a1(k0, 'replay'):.1f}, `cumulative` {a2(k0, 'cumulative'):.1f} vs {a1(k0, 'cumulative'):.1f} on "
        f"{SHORT[k0]}). The tiny default wins with `ncm` ({a1(k0, 'ncm'):.1f} vs {a2(k0, 'ncm'):.1f}) and "
        "with the rehearsal-free gradient heads on the class-incremental streams. That is not a contradiction with ImageNet features being "
        f"better: `{n1}` was pretrained on the generator's own kind of images (100 other objects of the same "
        "shape families, rendered at 32 px under the same kind of sessions), so its 256-d space is already "
        "shaped for these objects and Euclidean distance in it mostly measures object identity. In "
        f"`{n2}`'s 1280-d ImageNet space many directions respond to the generated backgrounds, lighting and "
        "pose, which move between the training and the test sessions: nearest-mean on standardised "
        "embeddings weighs them like every other direction, while SLDA's shared within-class covariance "
        "discounts them. With this backbone the order the literature reports is back "
        f"(`slda` {a2(k0, 'slda'):.1f} ≈ `cumulative` {a2(k0, 'cumulative'):.1f} > `ncm` {a2(k0, 'ncm'):.1f}), "
        "so the `ncm`-first ranking of the tiny table (discussed below) belongs to a backbone pretrained on "
        "the same distribution, not to the strategies.",
        "",
    ]
    if "nc" in cols:
        out += [
            f"On NC `naive` collapses further with `{n2}` ({a2('nc', 'naive'):.1f} vs {a1('nc', 'naive'):.1f}; "
            f"`lwf` {a2('nc', 'lwf'):.1f}, `ewc` {a2('nc', 'ewc'):.1f}): it ends predicting the last batch's "
            "classes only. It is not the step size: the input norm grows with the dimension (1280 vs 256 "
            "standardised features), but a 5x lower learning rate leaves `naive` at the same 8.8% on NC "
            "(measured: `edge-sim compare --model models/efficientnet_lite0_128 --data synthetic:<cache>/"
            "synthetic-128px-30f-10r-seed0 --scenario nc --runs 1 --strategies naive,cwr_star --lr 0.002 "
            "--no-plots`; `cwr_star` goes from 52.3 to 56.9 there). A plausible reason, not verified: in "
            "1280-d each batch's new classes are linearly separable from everything after a few steps, so "
            "the head drives the absent classes' logits down without any pressure to keep them, and the "
            "lower bound is lower. The strategies that keep old classes explicitly (replay, CWR* vectors, "
            "class statistics) gain the most from the better features.",
            "",
        ]
    if "nicv2_391" in cols:
        k = "nicv2_391"
        cw = r2[k]["configs"]["cwr_star"]["summary"]
        out += [
            f"**Contradiction: `cwr_star` on NICv2-391 drops to {a2(k, 'cwr_star'):.1f}% with `{n2}`** "
            f"({a1(k, 'cwr_star'):.1f} with `{n1}`), below `naive` ({a2(k, 'naive'):.1f}). Its forgetting "
            f"({100 * cw['forgetting_mean']['mean']:.1f}%) is well below `naive`'s "
            f"({100 * r2[k]['configs']['naive']['summary']['forgetting_mean']['mean']:.1f}%) and its average "
            f"accuracy is low too "
            f"({100 * cw['average_accuracy']['mean']:.1f}%): it fails to learn each class, rather than forgetting "
            "it. Probes (one run, same cached embeddings, `edge-sim compare --model "
            "models/efficientnet_lite0_128 --data synthetic:<cache>/synthetic-128px-30f-10r-seed0 --scenario "
            "nicv2_391 --runs 1 --strategies cwr_star,naive ...`): `--lr 0.002` gives 24.9% (forgetting 1.6%; "
            "`naive` 40.6%), `--strategy-param cwr_star.train_units=seen` 16.2%. So neither the softmax over all "
            "units nor the step size explains most of the gap (a smaller step helps `naive` more than it "
            "helps `cwr_star`). Not resolved; a hypothesis, not tested: CWR* restarts each batch's output vectors "
            "from zero and consolidates what ~2 SGD steps on ~30 frames of one or two classes learned; with "
            "these 1280-d features that short fit, averaged over a class's batches, stays a weak vector, while "
            f"on `{n1}`'s features (pretrained on these objects) it is enough. With full-network training, as "
            "in the papers, the features would adapt too; here only the head learns. `ar1_head` (CWR* plus "
            f"replay and a learning hidden layer) does not have the problem ({a2(k, 'ar1_head'):.1f}%).",
            "",
        ]
    out += [
        f"**Cost.** `{n2}` embedded at {mean_ms(r2, cols):.1f} ms/frame in this run vs "
        f"{mean_ms(first, cols):.1f} ms for `{n1}` (the same shared machine, other loads), and "
        "its 1280-d embeddings make every head 5x larger: SLDA's two 1280x1280 float64 matrices are "
        f"{r2[cols[0]]['configs']['slda']['runs'][0]['memory']['strategy_bytes'] / 2**20:.0f} MiB (1 MiB at "
        "d = 256) and the replay buffer's int8 rows 5x larger. Embedding speeds, int8 vs fp32 and RSS: "
        "`bench/`; the model, its export and ImageNet check: `models/README.md`.",
        "",
    ]
    return out


def render(reports: dict[str, Any], stream_list: list[dict[str, Any]], sweep: dict[str, Any], runs: int,
           wall: float, command: str, second: dict[str, Any] | None = None) -> str:
    r = reports
    nic = "nicv2_391"
    first = next(iter(r.values()))
    out = [
        "# Continual-learning strategies: what each one costs and buys",
        "",
        f"Generated by `{command}` in {wall:.0f} s of wall time "
        f"({first['machine']['processor']}, Python {first['machine']['python']}; shared 2-core machine). "
        "Do not edit by hand: change the generator (`firmware_sim/studies/strategy_report.py`) and re-run it.",
        "",
        f"Backbone: `{first['backbone']['name']}` ({first['backbone']['runtime']} {first['backbone']['precision']}, "
        f"256-d embeddings, frozen). Every strategy trains only the NumPy head on the embeddings "
        "(standardised with the backbone's pretraining statistics), so every runtime (LiteRT fp32/int8, "
        "ONNX Runtime) gives it the same input; `tests/test_edge_contract.py` runs every strategy on every "
        f"runtime. Agent defaults: SGD lr 0.01, momentum 0.9, 2 epochs per batch, mini-batch 32, "
        "buffer 1,000 embeddings stored int8, class-balanced reservoir, replay ratio 0.75. "
        "`ar1_head` runs on the MLP head (128 hidden units), all others on the softmax head.",
        "",
        "## The strategies",
        "",
        "| name | what it does | parameters (default) | memory beyond the head |",
        "|---|---|---|---|",
        *[f"| `{n}` | {WHAT[n][0]} | {_defaults(n)} | {WHAT[n][1]} |" for n in ORDER],
        "",
        "Pick one with `edge-sim run --strategy NAME`, `edge-sim compare --strategies A,B,...` or on the "
        "device `edge-agent learn ... --strategy NAME`; set a parameter with "
        "`--strategy-param KEY=VALUE` (`--strategy-param ewc.ewc_lambda=10` in `compare`). Each strategy "
        "checkpoints its state as plain arrays under `strategy.*` through the same atomic `CheckpointStore` "
        "(never pickle) and reports its bytes in `Agent.memory_bytes()`.",
        "",
        f"## Results ({runs} runs each: mean ± std over runs)",
        "",
        "Final accuracy on the fixed test set after the last batch; average accuracy over the curve (after "
        "every batch); forgetting = mean over classes of (best earlier accuracy - final); train ms/batch = "
        "time inside `learn_embeddings` (head + buffer + strategy; the backbone's embedding time is the same "
        "for all and is excluded); memory = learned state (head parameters and optimizer slots, buffer rows, "
        "strategy statistics) after the stream.",
        "",
    ]
    for stream in stream_list:
        out += stream_section(stream, r[stream["key"]], runs)
    if second is not None:
        out += render_second(r, second)
    sorted_nic = sorted(ORDER, key=lambda n: acc(r, nic, n))
    out += [
        "## Published references (CORe50, ImageNet-pretrained MobileNetV1, 128x128, whole network trained)",
        "",
        "| strategy | NICv2-79 | NICv2-196 | NICv2-391 | source |",
        "|---|---|---|---|---|",
        "| naive fine-tuning | 26.8 | 18.9 | 8.0 | Lomonaco & Maltoni 2017 (CORe50, CoRL); Maltoni & Lomonaco 2019 |",
        "| LwF | 27.0 | 20.4 | 7.8 | Li & Hoiem 2017 (TPAMI), as run by Maltoni & Lomonaco 2019 |",
        "| EWC | 37.0 | 30.6 | 5.4 | Kirkpatrick et al. 2017 (PNAS), as run by Maltoni & Lomonaco 2019 |",
        "| CWR* | 57.1 | 56.9 | 57.0 | Maltoni & Lomonaco 2019, *Continuous learning in single-incremental-task scenarios* (Neural Networks) |",
        "| AR1* (no replay) | 63.5 | 60.6 | 56.3 | Maltoni & Lomonaco 2019 |",
        "| AR1* + latent replay, 1,500 patterns | - | - | ~77 | Pellegrini et al. 2020, *Latent replay for real-time continual learning* (IROS) |",
        "",
        "Deep Streaming LDA on frozen ResNet-18 features, CORe50 class-incremental: 0.79 "
        "(Hayes & Kanan 2020, *Lifelong machine learning with Deep Streaming Linear Discriminant Analysis*, "
        "CVPR-W). Published numbers are the mean of the 10 official runs (DESIGN.md, \"Published anchors\").",
        "",
        "## Reading the results",
        "",
        "Ranking on generated NICv2-391 (final accuracy, low to high): "
        + ", ".join(f"`{n}` {acc(r, nic, n):.1f}" for n in sorted_nic) + ".",
        "",
        "**The expected shape holds for the strategies that train a head.** On NC and NICv2-391 `naive` "
        f"({acc(r, 'nc', 'naive'):.1f} / {acc(r, nic, 'naive'):.1f}) is the lowest, with the two rehearsal-free "
        f"regularisers next to it on NC (`lwf` {acc(r, 'nc', 'lwf'):.1f}, `ewc` {acc(r, 'nc', 'ewc'):.1f}); "
        f"`cumulative` ({acc(r, 'nc', 'cumulative'):.1f} / {acc(r, nic, 'cumulative'):.1f}) is the best "
        "gradient-trained head on NC, NICv2-391 and the npz stream and the best strategy on the npz "
        f"stream (on NI, with little to forget, `cwr_star` {acc(r, 'ni', 'cwr_star'):.1f} and `replay` "
        f"{acc(r, 'ni', 'replay'):.1f} are within about a point of its {acc(r, 'ni', 'cumulative'):.1f}: "
        "trained to convergence on sessions the test does not contain, it fits them slightly too well); `replay` "
        f"({acc(r, nic, 'replay'):.1f}), `ar1_head` ({acc(r, nic, 'ar1_head'):.1f}), `slda` "
        f"({acc(r, nic, 'slda'):.1f}) and `cwr_star` ({acc(r, nic, 'cwr_star'):.1f}) are far above `naive` on "
        "NICv2-391. On NI (all classes in every batch) there is little to forget and the strategies are "
        "close. `slda` and `ncm` end with the same model whatever the order of the data (their "
        "statistics are sums), hence the same final accuracy on NI, NC and NICv2 and a zero spread.",
        "",
        "**Where the results contradict the expectation: `ncm` beats `cumulative` and `slda` on the "
        f"CORe50-format streams** ({acc(r, nic, 'ncm'):.1f} vs {acc(r, nic, 'cumulative'):.1f} and "
        f"{acc(r, nic, 'slda'):.1f}), while the literature and DESIGN.md's measured facts put SLDA at the "
        "joint-training bound and NCM well below. Investigation: the CORe50-format test set is three "
        "sessions (backgrounds, lighting, trajectories) never seen in training, so the test embeddings "
        "are shifted from the training ones. A model fitted to the training sessions' within-class "
        "covariance (LDA) or trained discriminatively on them (the softmax head) puts weight on "
        "directions that are quiet within the training sessions but move between sessions, while "
        "Euclidean nearest-mean on standardised embeddings does not. Evidence (NC, run 0, same "
        "embeddings): more training does not help the upper bound (`cumulative` now trains to "
        "convergence by default and scores 72.0% on NC run 0 where 2 epochs gave 73.0%), and shrinking SLDA's covariance towards the identity moves it towards NCM "
        "(shrinkage 0.5: 74.4%; NCM is the limit of isotropic covariance), i.e. the gap is generalisation "
        "across sessions, not under-fitting:",
        "",
        "```",
        "edge-sim compare --data synthetic --scenario nc --strategies cumulative,slda,ncm \\",
        "    --strategy-param cumulative.epochs=2 --strategy-param slda.shrinkage=0.5 --no-plots --out /tmp/probe",
        "```",
        "",
        "On the npz stream, whose test images come from the same kind of sessions as its training "
        f"images, the expected order is back: `cumulative` {acc(r, 'npz_ci', 'cumulative'):.1f} > `slda` "
        f"{acc(r, 'npz_ci', 'slda'):.1f} > `ncm` {acc(r, 'npz_ci', 'ncm'):.1f}. The sweep (seed-1 tuning set) also "
        "prefers larger SLDA shrinkage slightly, but by less than a point, so the paper's 1e-4 stays.",
        "",
        f"**Why `naive` keeps {acc(r, nic, 'naive'):.0f}% on NICv2-391 instead of the published 8%.** The "
        "published 8% is *full-network* fine-tuning of MobileNetV1 at a learning rate tuned for learning "
        "each batch well: every one of the 391 small batches (one or two classes each) rewrites the "
        "features and the output layer, so the network ends up predicting the last batches' classes. "
        "Here the backbone is frozen and only a linear head trains, with SGD at lr 0.01 for 2 epochs "
        "over ~30-frame batches, i.e. about two small steps per batch: each batch moves the head a "
        "little, earlier classes are eroded slowly, and the frozen embedding keeps them separable. A "
        "mild learning rate is itself a crude stability knob, and NICv2 brings every class back in "
        "several batches (one per training session), refreshing it before it is forgotten. The NC "
        "stream (9 large batches of new classes, never revisited) shows the textbook collapse: `naive` "
        f"ends at {acc(r, 'nc', 'naive'):.1f}% with {r['nc']['configs']['naive']['summary']['forgetting_mean']['mean'] * 100:.0f}% "
        "forgetting. We keep the defaults: raising the learning rate to reproduce the published collapse "
        "would make the lower bound look worse, not any strategy better.",
        "",
        "**EWC and LwF.** On NC both barely help, and on the npz stream EWC ends below `naive` "
        f"({acc(r, 'npz_ci', 'ewc'):.1f} vs {acc(r, 'npz_ci', 'naive'):.1f}), as the published NICv2-391 "
        "numbers (EWC 5.4%, LwF 7.8% vs naive 8.0%): with a single head that grows new classes, "
        "forgetting is the competition between old and new output vectors, which a pull towards old "
        "weights cannot prevent, and LwF distils the old classes only on the current batch, whose "
        "inputs belong to one or two new classes. Unlike the published result, `ewc` helps on "
        f"NICv2-391 here ({acc(r, nic, 'ewc'):.1f} vs {acc(r, nic, 'naive'):.1f}). A plausible reason (not "
        "verified weight by weight): with the swept lambda (1000) and a Fisher summed over many batches, "
        "the penalty of the weights of often-revisited classes approaches its 1/lr cap, so those "
        "vectors barely move once learned - close to what CWR* does explicitly - and only the head, not "
        "the features or batch-norm statistics, has to be protected.",
        "",
        "**CWR* and AR1*.** `cwr_star` keeps per-class output vectors that later batches cannot "
        f"overwrite: the lowest forgetting of the gradient strategies on NICv2-391 "
        f"({r[nic]['configs']['cwr_star']['summary']['forgetting_mean']['mean'] * 100:.1f}%) with no buffer, "
        "and each vector is trained in a softmax over every output unit, as in the papers' single head "
        f"and Avalanche's `CWRStarPlugin` (NC {acc(r, 'nc', 'cwr_star'):.1f}%). Trained among the seen "
        "classes only (`train_units=seen`, this project's earlier behaviour) a batch of ONE class has "
        "nothing to compete with and learns nothing, which is the collapse with one class per "
        "experience (`tests/test_strategies_quality.py`); on NICv2-391 that mask happens to score higher "
        "(62.7 vs 54.1 on run 0), a contradiction with the papers investigated in `docs/avalanche.md`: "
        "Avalanche's own CWR* scores 57.0 there, and the remaining 2.9 points come from two Avalanche "
        "choices the papers do not make (it keeps the optimizer's momentum across the weight reset and "
        "leaves a biased layer's bias out of CWR: 56.4 with both). `ar1_head` adds replay, which "
        f"calibrates them, and a hidden layer that keeps learning: equal to `replay` within the spread on "
        f"the CORe50-format streams and {acc(r, 'npz_ci', 'ar1_head') - acc(r, 'npz_ci', 'replay'):.1f} points "
        "above it on the npz stream, at about twice its training time per batch (MLP head).",
        "",
        "**Cost.** Per NICv2-391 batch (~30 frames) every bounded strategy trains in a few milliseconds "
        f"or less (`ncm` {r[nic]['configs']['ncm']['summary']['train_ms_per_batch']['mean']:.2f} ms, "
        f"`slda` {r[nic]['configs']['slda']['summary']['train_ms_per_batch']['mean']:.2f} ms plus an O(d^3) "
        "inversion at the first prediction after an update, `ar1_head` "
        f"{r[nic]['configs']['ar1_head']['summary']['train_ms_per_batch']['mean']:.2f} ms); on NI/NC's "
        "1,500-frame batches the replay strategies cost 0.1-1.4 s per batch (4x more steps at replay "
        "ratio 0.75, and the class-balanced buffer inserts full-buffer rows one at a time). SLDA's "
        "memory is its two d x d float64 matrices (1 MiB at d = 256). `cumulative` is the upper bound "
        "and not a device strategy: its memory grows with every frame and each batch retrains on "
        f"everything ({r[nic]['configs']['cumulative']['summary']['train_ms_per_batch']['mean']:.0f} ms per "
        "NICv2-391 batch on average, growing linearly along the stream).",
        "",
        "## Hyperparameter sweep (generated tuning streams only)",
        "",
        f"`python -m firmware_sim.studies.strategy_sweep --out docs/strategy_sweep.json` (run by this generator; "
        f"{sweep['wall_seconds']:.0f} s). Tuning data: {sweep['tuning_data']} - a different generated set "
        "from the one reported above, so no reported test set influenced a default. Score: "
        f"{sweep['score']}. Rule: {sweep['rule']}.",
        "",
        "| candidate | NC | NICv2-391 | chosen |",
        "|---|---|---|---|",
    ]
    from firmware_sim.studies.strategy_sweep import label

    chosen = {label(s, p) for s, p in sweep["best"].items()}
    for cand, sc in sweep["scores"].items():
        out.append(f"| `{cand}` | {100 * sc['nc']:.1f} | {100 * sc['nicv2_391']:.1f} | "
                   f"{'**yes**' if cand in chosen else ''} |")
    out += [
        "",
        "Decisions (the defaults in `edge.strategies` and `AgentConfig`): "
        + "; ".join(f"`{s}`: " + ", ".join(f"{k} = {v}" for k, v in p.items()) for s, p in sweep["best"].items())
        + ". The agent's `replay_ratio` default became 0.75 (it was 0.5; both `replay` and `ar1_head` "
        "prefer more replay on class-incremental streams). `cwr_star` is swept over the choices the "
        "papers leave open on a head with a bias (softmax over all units or the seen ones, bias inside "
        "or outside CWR, momentum reset or kept); the papers' choice is kept. `ncm`'s `standardize` "
        "(the backbone's fixed pretraining statistics vs the stream's running std) is swept: on this "
        "generated data the backbone was pretrained on the same kind of images and `fixed` wins by "
        "0.4 points, so it is the default; on real data whose statistics differ from the pretraining "
        "set (the issue's digits: 51.9 % fixed vs 63.5 % running) choose `running`. Not swept: "
        "`cumulative` (a reference, trained to convergence).",
        "",
        "## Implementation notes and deviations",
        "",
        "- CWR* trains the output layer with a softmax over every unit (`train_units=all`, the papers' "
        "single incremental head and Avalanche's; `seen` restricts it to the classes seen so far). "
        "CWR* consolidation follows the paper's pseudo-code and the authors' released code: "
        "`wpast_j = sqrt(past_j / cur_j)`, `cw[j] = (cw[j] * wpast_j + (tw[j] - mean(tw))) / (wpast_j + 1)`, "
        "`past_j += cur_j`, with the mean a single scalar over the batch classes' weights. The class "
        "vector includes the output bias. In `ar1_head` the batch's classes and counts include the "
        "buffer's, as in the AR1* + latent replay code. SI (AR1*'s regulariser of the lower layers) is "
        "not implemented: replay alone protects the hidden layer.",
        "- SLDA updates its statistics with an exact batched (Chan et al.) merge, equal to feeding rows "
        "one at a time through Welford's update; the reference code's covariance update weights by the "
        "total count, an approximation. `tests/test_strategies_definitions.py` checks equality with batch "
        "LDA.",
        "- EWC treats every batch as an experience (the device sees no task boundaries) and keeps an "
        "online Fisher (Schwarz et al. 2018) from the empirical Fisher of each batch; `ewc_lambda * F` is "
        "capped at 1/lr per weight so a stiff penalty cannot make SGD diverge.",
        "- LwF takes the previous head's logits on the batch before training it (no weight copy is kept) "
        "and distils only the classes that head had seen; the cross-entropy spans every output unit "
        "(`train_units=all`) and the distillation term is Li & Hoiem's (no T^2 factor; `t_squared=True` "
        "for Hinton's scaling).",
        "- `cumulative` (the upper bound) trains on everything seen after each batch until the epoch's "
        "mean training loss improves by less than 1 % (cap 30 epochs), warm-started from the previous "
        "head (the softmax head's regularised loss is convex: the optimum does not depend on the start). "
        "Its checkpoint key is `strategy.x_standardised`; older files with raw rows under `strategy.x` "
        "are refused with a clear error.",
        "- Every strategy gets an open-set score per prediction (`edge.openset`, `docs/openset.md`).",
        "- Comparison with Avalanche 0.6 on the same exported embeddings: `docs/avalanche.md`.",
        "- Strategies that change the loss or the weights (all but `naive` and `replay`) need the NumPy "
        "head; the TFLite head backend refuses them with a clear error.",
        "",
    ]
    return "\n".join(out)


def run_second(args: argparse.Namespace, cache: Path, given_command: str) -> dict[str, Any]:
    """Run (or with ``--render-only`` load) the second table's streams; returns what `render` needs."""
    model = str(args.second_model)
    size = model_input_size(model)
    if args.second_image_size is not None and args.second_image_size != size:
        raise ValueError(f"--second-image-size: expected {size} (the input size of {model}), "
                         f"got {args.second_image_size}")
    keys = [k.strip() for k in args.second_scenarios.split(",") if k.strip()]
    results = Path(args.second_results or f"runs/strategy-report-{Path(model).name}")
    meta_path = results / "meta.json"
    started = time.perf_counter()
    stream_list = second_streams(cache, size, keys)
    reports: dict[str, Any] = {}
    if args.render_only:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        for stream in stream_list:
            reports[stream["key"]] = json.loads((results / stream["key"] / "report.json").read_text(encoding="utf-8"))
    else:
        meta = {"command": given_command, "model": model, "image_size": size, "stream_seconds": {}}
        for stream in stream_list:
            t = time.perf_counter()
            reports[stream["key"]] = run_stream(stream, model, args.second_runs, cache, results / stream["key"])
            meta["stream_seconds"][stream["key"]] = time.perf_counter() - t
            meta["wall_seconds"] = time.perf_counter() - started
            results.mkdir(parents=True, exist_ok=True)
            meta_path.write_text(json.dumps(meta) + "\n", encoding="utf-8")
            print(f"second {stream['key']}: {time.perf_counter() - t:.0f} s", flush=True)
            print(table(reports[stream["key"]]), flush=True)
    return {"reports": reports, "streams": stream_list, "model": model, "image_size": size,
            "runs": len(next(iter(reports.values()))["runs"]), "meta": meta}


#: Marks the start of the section made by `firmware_sim.studies.embedding_bound` (cached embeddings,
#: both backbones, the joint bound): kept as it is when this generator rewrites the file.
KEPT_MARKER = "<!-- embedding_bound: kept by strategy_report -->"


def kept_section(path: Path) -> str:
    """The kept section of the current file (from `KEPT_MARKER` to the end), or ""."""
    if not path.is_file():
        return ""
    text = path.read_text(encoding="utf-8")
    at = text.find(KEPT_MARKER)
    return "" if at < 0 else "\n" + text[at:]


def main(argv: list[str] | None = None) -> int:
    from edge.models import tiny_model_dir
    from firmware_sim.studies.strategy_sweep import main as sweep_main

    p = argparse.ArgumentParser(prog="python -m firmware_sim.studies.strategy_report", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="docs/strategies.md", help="markdown output (default docs/strategies.md)")
    p.add_argument("--runs", type=int, default=3, help="runs per stream (default 3)")
    p.add_argument("--model", default=None, help="model directory (default models/tiny)")
    p.add_argument("--cache", default=None, help="cache directory (default ~/.cache/edge-continual)")
    p.add_argument("--results", default="runs/strategy-report", help="report.json per stream go here")
    p.add_argument("--skip-sweep", action="store_true", help="reuse docs/strategy_sweep.json instead of re-running it")
    p.add_argument("--render-only", action="store_true",
                   help="re-render the markdown from the report.json files of a previous run in --results "
                        "(and --second-results with --second-model)")
    p.add_argument("--second-model", default=None,
                   help="add a second table: this model directory on generated streams at its input size")
    p.add_argument("--second-image-size", type=int, default=None,
                   help="image size of the second table's generated streams (default and only accepted value: "
                        "the second model's input size)")
    p.add_argument("--second-runs", type=int, default=1, help="runs per stream for the second table (default 1)")
    p.add_argument("--second-scenarios", default=",".join(SECOND_KEYS),
                   help=f"comma-separated subset of {','.join(SECOND_KEYS)} (default all)")
    p.add_argument("--second-results", default=None,
                   help="report.json per stream of the second table (default runs/strategy-report-<model name>)")
    p.add_argument("--only-second", action="store_true",
                   help="render the first table from --results (as --render-only) and run only the second table")
    args = p.parse_args(argv)
    if args.only_second and not args.second_model:
        p.error("--only-second needs --second-model")
    started = time.perf_counter()
    cache = Path(args.cache) if args.cache else default_cache_dir()
    model = str(args.model or tiny_model_dir())
    sweep_path = Path(args.out).parent / "strategy_sweep.json"
    results = Path(args.results)
    stream_list = streams(cache)
    meta_path = results / "meta.json"
    given = argv if argv is not None else sys.argv[1:]
    command = ("python -m firmware_sim.studies.strategy_report " + " ".join(given)).strip()
    second = None
    if args.second_model:
        second = run_second(args, cache, given_command=command)
    if args.render_only or args.only_second:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        reports = {s["key"]: json.loads((results / s["key"] / "report.json").read_text(encoding="utf-8"))
                   for s in stream_list}
    else:
        if not args.skip_sweep:
            sweep_main(["--model", model, "--cache", str(cache), "--out", str(sweep_path)])
        reports = {}
        for stream in stream_list:
            t = time.perf_counter()
            reports[stream["key"]] = run_stream(stream, model, args.runs, cache, results / stream["key"])
            print(f"{stream['key']}: {time.perf_counter() - t:.0f} s", flush=True)
            print(table(reports[stream["key"]]), flush=True)
        meta = {"command": command, "wall_seconds": time.perf_counter() - started}
        meta_path.write_text(json.dumps(meta) + "\n", encoding="utf-8")
    sweep = json.loads(sweep_path.read_text(encoding="utf-8"))
    text = render(reports, stream_list, sweep, len(next(iter(reports.values()))["runs"]), meta["wall_seconds"],
                  meta["command"], second=second)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    text += kept_section(Path(args.out))
    Path(args.out).write_text(text, encoding="utf-8")
    print(f"wrote {args.out} in {time.perf_counter() - started:.0f} s ({platform.platform()})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
