"""``edge-sim run`` and ``edge-sim compare``: replay a stream through the edge agent and measure it.

Also the main job, ``edge-sim`` with no arguments: the shipped default backbone on the generated
NICv2-391 stream, ``naive`` against ``replay``, with a short table. The command line's flags map onto
:class:`RunOptions` (its defaults are the flags' defaults), so the main job calls :func:`compare`
directly with ``RunOptions()``. The agent's flags and ``--config FILE`` are `edge.config`'s, the same
as ``edge-agent``'s: a flag given beats the file, the file beats the default.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from edge.config import AgentConfig, add_arguments, flag_settings, load_file, merge_settings
from edge.strategies import STRATEGIES
from firmware_sim.data.core50 import SCENARIOS
from firmware_sim.data.protocols import parse_protocol_params, protocol_help
from firmware_sim.loop.replay import SimOptions

if TYPE_CHECKING:
    from firmware_sim.commands.experiment import ExperimentSpec

__all__ = ["RunOptions", "compare", "compare_command", "default_model_dir", "main_job", "options_from_args",
           "register", "run", "run_command"]

DATA_HELP = ("core50:PATH (official CORe50 or generator output), synthetic[:PATH] (generated CORe50-format "
             "set, made on first use), idx:DIR, npz:PATH, folder:DIR")
SCENARIO_HELP = (f"for core50/synthetic data: {', '.join(SCENARIOS)}; for idx/npz/folder data: a protocol "
                 "(class_incremental, few_shot, domain_incremental, nic_like, split_transfer)")


def default_model_dir() -> Path:
    """The simulator's default backbone: the 32-px tiny one (`edge.models.tiny_model_dir`), fast enough
    for whole-stream runs on a small CPU; the device's default (``edge-agent``) is the ImageNet one."""
    from edge.models import tiny_model_dir

    return tiny_model_dir()


@dataclass(frozen=True)
class RunOptions:
    """Everything ``edge-sim run`` / ``compare`` take besides the strategies; defaults = the flags' defaults."""

    model: str | None = None
    data: str = "synthetic"
    scenario: str = "nicv2_391"
    run: int = 0
    runs: int = 1
    test: str = "full"
    labels: str = "object"
    protocol_param: tuple[str, ...] = ()
    test_split: float | None = None
    runtime: str = "auto"
    precision: str = "fp32"
    threads: int | None = None
    #: agent settings given as flags (`edge.config.flag_settings`; a setting left out is absent)
    agent: Mapping[str, Any] = field(default_factory=dict)
    strategy_param: tuple[str, ...] = ()
    config: str | None = None  # --config FILE: AgentConfig as JSON/TOML, the same file edge-agent takes
    eval_every: int = 1
    latency_frames: int = 100
    cache: str | None = None
    no_plots: bool = False
    no_progress: bool = False
    out: str | None = None


_D = RunOptions()


def options_from_args(args: argparse.Namespace) -> RunOptions:
    """The parsed flags of ``run`` / ``compare`` as :class:`RunOptions`."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunOptions) if f.name != "agent"}
    values["protocol_param"] = tuple(values["protocol_param"])
    values["strategy_param"] = tuple(values["strategy_param"] or ())
    return RunOptions(agent=flag_settings(args), **values)


def _add_common(p: argparse.ArgumentParser, strategy: bool = True) -> None:
    """The options of ``run``, ``compare`` and ``device``; ``strategy``: with ``--strategy`` (compare
    has ``--strategies``)."""
    p.add_argument("--model", default=_D.model, help="model directory with manifest.json (default: models/tiny, the 32-px tiny backbone; "
                   "the device default is models/efficientnet_lite0_224)")
    p.add_argument("--data", default=_D.data, help=f"data spec (default synthetic): {DATA_HELP}")
    p.add_argument("--scenario", default=_D.scenario, help=f"scenario or protocol (default nicv2_391): {SCENARIO_HELP}")
    p.add_argument("--run", type=int, default=_D.run, help="first run (batch order) to replay (default 0)")
    p.add_argument("--runs", type=int, default=_D.runs, help="number of runs from --run on; reports mean +- std")
    p.add_argument("--test", choices=("full", "reduced"), default=_D.test,
                   help="CORe50 test set: full, or reduced (every 20th frame, as NICv2 papers use)")
    p.add_argument("--labels", choices=("object", "category"), default=_D.labels, help="50 objects or 10 categories")
    p.add_argument("--protocol-param", action="append", default=list(_D.protocol_param), metavar="KEY=VALUE",
                   help="parameter of an idx/npz/folder protocol, e.g. classes_per_experience=2 or "
                        "pretrain_classes=5-9 / [5,6,7,8,9] (repeatable; every parameter is listed below)")
    p.add_argument("--test-split", type=float, default=_D.test_split, metavar="FRACTION",
                   help="idx/npz/folder data without its own test split: hold out this fraction of every "
                        "class as the test set (stratified, seeded with --seed; default 0.2)")
    rt = p.add_argument_group("backbone runtime")
    rt.add_argument("--runtime", choices=("auto", "litert", "onnx"), default=_D.runtime, help="inference runtime")
    rt.add_argument("--precision", choices=("fp32", "int8"), default=_D.precision, help="model file precision")
    rt.add_argument("--threads", type=int, default=_D.threads, help="runtime threads (default: runtime's choice)")
    ag = p.add_argument_group("agent (the flags and --config file of edge-agent; default: AgentConfig's)")
    add_arguments(ag, skip=() if strategy else ("strategy",))
    out = p.add_argument_group("measurement and output")
    out.add_argument("--eval-every", type=int, default=_D.eval_every, help="evaluate after every K batches (default 1)")
    out.add_argument("--latency-frames", type=int, default=_D.latency_frames, help="frames timed end to end at batch 1")
    out.add_argument("--cache", default=_D.cache, help="embedding cache directory (default ~/.cache/edge-continual)")
    out.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    out.add_argument("--no-progress", action="store_true",
                     help="hide progress (a bar on a terminal, a plain line every 10 s in a log)")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("run", help="replay a stream through one strategy and report the metrics",
                              description="Replay a stream through the edge agent (frozen backbone + head + "
                                          "replay) and write report.json, curve.csv, summary.md and plots.",
                              epilog=protocol_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_common(p)
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=run_command)

    p = subparsers.add_parser("compare", help="several strategies on the same stream, one table and one plot",
                              description="Replay one stream through several strategies, reusing the "
                                          "embeddings, and write one table (summary.md, report.json) and "
                                          "one overlay plot.",
                              epilog=protocol_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_common(p, strategy=False)
    p.add_argument("--strategies", default="naive,replay",
                   help=f"comma list of strategies (default naive,replay; known: {', '.join(sorted(STRATEGIES))})")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=compare_command)


def _parse_params(items: Sequence[str]) -> dict[str, Any]:
    """``--protocol-param KEY=VALUE`` items: lists (``[5,6]``, ``5,6``) and ranges (``5-9``) parse as lists."""
    return parse_protocol_params(items, "--protocol-param")


def _config(options: RunOptions, strategy: str | None = None) -> AgentConfig:
    """The agent config of a run: ``--config FILE``, the flags given on top, ``strategy`` (compare's) on top."""
    values = merge_settings(load_file(options.config) if options.config else {}, options.agent,
                            options.strategy_param, strategy)
    config = AgentConfig.from_dict(values)
    if config.head_backend == "tflite":  # the simulator's agent works on embeddings: name the head file explicitly
        if config.head_file is not None:
            head_file = Path(config.head_file)
        else:
            from edge.manifest import load_manifest
            from edge.tflite_head import find_head_file

            model_dir = Path(options.model or default_model_dir())
            head_file = Path(find_head_file(model_dir, load_manifest(model_dir), config))
        config = dataclasses.replace(config, head_file=str(head_file.resolve()))
    return config


def _spec(options: RunOptions, configs: dict[str, AgentConfig]) -> ExperimentSpec:
    from firmware_sim.commands.experiment import ExperimentSpec

    if options.runs < 1:
        raise ValueError(f"--runs: expected >= 1, got {options.runs}")
    return ExperimentSpec(
        model=str(options.model or default_model_dir()), data=options.data, scenario=options.scenario,
        configs=configs, runs=list(range(options.run, options.run + options.runs)), runtime=options.runtime,
        precision=options.precision, num_threads=options.threads, test=options.test, labels=options.labels,
        seed=next(iter(configs.values())).seed,  # the agent's: every config of a run shares the flags and file
        protocol_params=_parse_params(options.protocol_param), cache_dir=options.cache,
        test_split=options.test_split,
        options=SimOptions(eval_every=options.eval_every, latency_frames=options.latency_frames,
                           progress=not options.no_progress),  # plain lines when stderr is no tty
        plots=not options.no_plots,
    )


def _print_result(report: dict[str, Any], out: str | None) -> None:
    from firmware_sim.commands.experiment import TABLE_COLUMNS, summary_rows
    from firmware_sim.measure.report import markdown_table

    stream = report["streams"][0]
    emb = stream["embedding"]
    print(f"{report['scenario']} on {report['data']}: {stream['n_batches']} batches, "
          f"{stream['n_train_frames']} training frames, {stream['n_test_frames']} test frames "
          f"({report.get('test_split') or 'test split not recorded'}); "
          f"backbone {report['backbone']['name']} ({report['backbone']['runtime']} {report['backbone']['precision']}), "
          f"embedding {emb['mean_ms']:.3f} ms/frame ({emb['fps']:.0f} fps)"
          + (f"; {len(report['runs'])} runs" if len(report["runs"]) > 1 else ""))
    print(markdown_table(summary_rows(report), TABLE_COLUMNS))
    tail = f" -> {out}" if out else ""
    print(f"wall time {report['wall_seconds']:.1f} s{tail}")


def run(options: RunOptions, strategy: str | None = None) -> int:
    """Replay the stream through one strategy (default: ``--strategy``, else the ``--config`` file's,
    else replay); print the table and write the outputs to ``options.out``."""
    from firmware_sim.commands.experiment import run_experiment

    config = _config(options, strategy)
    report = run_experiment(_spec(options, {config.strategy: config}), options.out)
    _print_result(report, options.out)
    return 0


def compare(options: RunOptions, strategies: Sequence[str]) -> int:
    """Replay the stream through several strategies; print one table and write the outputs."""
    from firmware_sim.commands.experiment import run_experiment

    report = run_experiment(_spec(options, {n: _config(options, n) for n in strategies}), options.out)
    _print_result(report, options.out)
    return 0


def run_command(args: argparse.Namespace) -> int:
    return run(options_from_args(args))


def compare_command(args: argparse.Namespace) -> int:
    names = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown or not names:
        raise ValueError(f"--strategies: expected a comma list of {', '.join(sorted(STRATEGIES))}, "
                         f"got {args.strategies!r}")
    return compare(options_from_args(args), names)


def _backbone_line(model_dir: Path) -> str:
    """``tiny (tiny_cnn_32, 32x32 input, models/tiny)``: which backbone a run uses, for its first line."""
    from edge.manifest import load_manifest

    m = load_manifest(model_dir, verify=False)
    h, w = m.input_shape[0], m.input_shape[1]
    return f"{m.name} ({m.architecture}, {h}x{w} input, {model_dir})"


def main_job(out: str = "runs/edge-sim-default") -> int:
    """``edge-sim`` with no arguments: the tiny backbone, generated NICv2-391, ``naive`` and ``replay``
    against the device's default strategy (`edge.config.AgentConfig`)."""
    from edge.config import AgentConfig

    default = AgentConfig().strategy
    print(f"edge-sim main job: backbone {_backbone_line(default_model_dir())}; generated NICv2-391 stream, "
          f"naive and replay vs the device default {default} (see `edge-sim --help` for everything else)",
          flush=True)
    return compare(RunOptions(out=out), ["naive", "replay", default])
