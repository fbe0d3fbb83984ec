"""``edge-agent``: learn, predict and inspect on the device, one command at a time.

Each call opens the backbone, resumes the newest valid checkpoint of ``--state`` (or starts fresh
on first boot), does its work and, for ``learn``, writes a new checkpoint atomically. ``learn``
holds the state folder's OS lock (`edge.lock.StateLock`) from resume to save, so two writers
never lose an update: the second waits up to ``--lock-timeout`` seconds, then fails.

    edge-agent learn   --state state/ --label 3 img1.png img2.png
    edge-agent predict --state state/ img3.png
    edge-agent status  --state state/
    edge-agent run     --state state/ --source camera:0 [--http 127.0.0.1:8080]
    edge-agent teach   --label cup --frames 30 [--http 127.0.0.1:8080]

Without ``--model`` they use the packaged ImageNet backbone (``efficientnet_lite0_224``, int8 on
LiteRT); ``--model`` takes a folder or a name (``edge-agent models list``; ``tiny``: the 32-px test
backbone).

``run`` is the long-running device runtime (`edge.device.loop.DeviceLoop`): it holds the lock for
its lifetime (a second ``run`` on the same state is refused at once), predicts on every frame,
learns what it is taught (``teach``, ``POST /teach``, ``folder:DIR/<label>/`` files) and
checkpoints after each learned batch and on SIGTERM/SIGINT. Labels are names or indices everywhere.

Expected errors (bad image, corrupt model, foreign checkpoint, a held lock, ...) print one line on
stderr and exit with status 2; Ctrl-C prints one line and exits with 130. Warnings (e.g. a corrupt
newest checkpoint skipped in favour of the previous one) are shown without ``-v``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import signal
import sys
from typing import NoReturn, Sequence

import numpy as np

from edge.agent import Agent
from edge.checkpoint import CheckpointStore, resume
from edge.config import (SETTINGS_BY_NAME, AgentConfig, add_arguments, asked_settings, check_stored, float_in,
                         from_untrusted, int_in, validate_agent_config)
from edge.device.labels import LabelMap, check_name
from edge.errors import EdgeError, InputError
from edge.manifest import FIT_POLICIES, Manifest
from edge.preprocess import load_frame
from edge.openset import FALSE_REJECT, MIN_PROBABILITY, OpenSetPolicy
from edge.lock import DEFAULT_TIMEOUT_S, StateLock
from edge.model_store import default_precision, resolve_model
from edge.models import DEFAULT_MODEL_NAME, TINY_MODEL_NAME, default_model_dir
from edge.runtimes import open_backbone
from edge.version import package_version

logger = logging.getLogger(__name__)

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def load_images(paths: Sequence[str], manifest: Manifest) -> list[np.ndarray]:
    """Image files -> the uint8 RGB frames the model sees (`edge.preprocess.load_frame`: safe
    decoding, then the manifest's fit policy), as ``edge-agent run`` and the simulator see them."""
    return [load_frame(path, manifest) for path in paths]


def _frames_for(agent: Agent, paths: Sequence[str]) -> np.ndarray:
    """Images of any size -> one (N, H, W, 3) batch at the model's input size."""
    assert agent.backbone is not None
    return np.stack(load_images(paths, agent.backbone.manifest))


def tsv_field(text: str) -> str:
    """A file name safe for one TSV field: backslash, tab, newline, other control characters and
    undecodable bytes are escaped (``\\t``, ``\\n``, ``\\xNN``), so a name cannot forge rows."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif ch in "\t\n\r":
            out.append({"\t": "\\t", "\n": "\\n", "\r": "\\r"}[ch])
        elif code < 0x20 or code == 0x7F or 0x80 <= code < 0xA0:
            out.append(f"\\x{code:02x}")
        elif 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape from argv)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif 0xD800 <= code <= 0xDFFF or code in (0x2028, 0x2029):
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def _asked_config(args: argparse.Namespace) -> dict[str, object]:
    """The AgentConfig settings asked for explicitly (`edge.config.asked_settings`: a flag given beats
    ``--config FILE``, which beats the default)."""
    return asked_settings(args)


def _config_from_args(args: argparse.Namespace) -> AgentConfig:
    return AgentConfig.from_dict(_asked_config(args))


def _open(args: argparse.Namespace, exclusive: bool = False) -> tuple[Agent, CheckpointStore, int | None, LabelMap]:
    """Backbone + the newest usable checkpoint (older ones when it cannot be restored) + class names.

    Settings asked for explicitly (``--config``, flags) must match a stored state's config.
    """
    from edge.device.loop import restore_agent

    asked = _asked_config(args)
    model_dir = resolve_model(args.model) if args.model else default_model_dir()
    backbone = open_backbone(model_dir, runtime=args.runtime,
                             precision=args.precision or default_precision(model_dir, args.runtime),
                             num_threads=args.threads, providers=args.providers)
    store = CheckpointStore(args.state, backbone.manifest.fingerprint, validate_config=validate_agent_config,
                            exclusive=exclusive)
    resumed = resume(store, lambda ckpt: restore_agent(backbone, ckpt))
    if resumed is not None:
        (agent, labels), ckpt = resumed
        check_stored(ckpt.config, asked)
        return agent, store, ckpt.step, labels
    config = from_untrusted(asked, "option ")
    return Agent(backbone, config), store, None, LabelMap(config.max_classes)


def _label_arg(text: str) -> str | int:
    """``--label``: an int index in [0, max_classes) or a class name."""
    if re.fullmatch(r"[+-]?[0-9]+", text.strip()):  # ASCII digits only: "٣" is not index 3
        return _int_in(0, int(SETTINGS_BY_NAME["max_classes"].high or 0) - 1)(text)
    try:
        return check_name(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _save_with_labels(store: CheckpointStore, agent: Agent, labels: LabelMap) -> "os.PathLike[str]":
    state = agent.state_dict()
    state.update(labels.state_dict())
    return store.save(state, agent.config.to_dict(), agent.step_)


def _cmd_learn(args: argparse.Namespace) -> int:
    with StateLock(args.state, timeout_s=args.lock_timeout):
        agent, store, _, labels = _open(args, exclusive=True)
        max_classes = agent.config.max_classes
        if isinstance(args.label, int) and not 0 <= args.label < max_classes:
            raise InputError(f"--label: expected an int in [0, {max_classes - 1}] (max_classes={max_classes}), "
                             f"got {args.label}")
        index = labels.index_for(args.label, create=True, used=agent.classes_seen().tolist())
        frames = _frames_for(agent, args.images)
        agent.enable_ledger()  # each learn is a teach event with thumbnails (edge.knowledge)
        from edge.knowledge.thumbnails import pictures_for_thumbnails  # thumbnails of the originals
        agent.teach(frames, np.full(len(frames), index, dtype=np.int64), source="cli",
                    thumbnail_frames=pictures_for_thumbnails(args.images))
        labels.add_counts(index, len(frames))
        path = _save_with_labels(store, agent, labels)
    print(f"learned {len(frames)} image(s) as label {labels.name_of(index)}; step {agent.step_}; saved {path}")
    return 0


def _policy(args: argparse.Namespace) -> OpenSetPolicy:
    """The "unknown" rule's knobs from ``--unknown-threshold`` / ``--reject-novel`` (predict, run)."""
    if getattr(args, "closed_set", False):
        logger.warning("--closed-set is deprecated: novelty rejection is off by default now; it means "
                       "--unknown-threshold 0 (always a learned class)")
        return OpenSetPolicy(reject_novel=False, min_probability=0.0)
    return OpenSetPolicy(reject_novel=args.reject_novel, min_probability=args.unknown_threshold,
                         unknown_rate=args.unknown_rate)


def _cmd_predict(args: argparse.Namespace) -> int:
    policy = _policy(args)
    agent, _, step, labels = _open(args)
    if step is None:
        raise InputError(f"state {args.state}: expected a learned state, got none (run learn first)")
    answer = agent.answer_many(_frames_for(agent, args.images), policy, exclude=labels.retired,
                               novelty=True)  # shown (--json) even with rejection off
    for row, path in enumerate(args.images):
        fields = labels.answer_fields(answer, row)
        if args.json:  # the keys of GET /prediction, plus the file
            print(json.dumps({"path": path, **fields}))
        else:
            # shown to 4 places, never as 1.0000: no answer is certain (SLDA's probabilities saturate)
            print(f"{tsv_field(path)}\t{tsv_field(fields['label'])}\t{min(answer.score[row], 0.9999):.4f}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    agent, store, step, labels = _open(args)
    mem = agent.memory_bytes()
    seen = agent.classes_seen().tolist()
    info = {
        "model": agent.backbone.manifest.name if agent.backbone is not None else None,
        "runtime": agent.backbone.info.runtime if agent.backbone is not None else None,
        "precision": agent.backbone.info.precision if agent.backbone is not None else None,
        "step": step or 0,
        "classes_seen": seen,
        "classes": labels.classes(seen),
        "buffer_fill": len(agent.buffer),
        "buffer_capacity": agent.buffer.capacity,
        "buffer_bytes": mem["buffer"],
        "head_bytes": mem["head"],
        "strategy": agent.config.strategy,
        "strategy_bytes": mem["strategy"],
        "state_bytes": mem["total"],
        "state_bytes_on_disk": store.disk_bytes(),
    }
    if args.json:
        print(json.dumps(info))
        return 0
    for key, value in info.items():
        if key == "classes_seen":
            continue  # the classes line names them
        if key == "classes":
            value = ", ".join(f"{c['name']} (index {c['index']}, {c['samples']} samples)"
                              for c in info["classes"]) or "none"
        print(f"{key}: {value}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from edge.device.events import EventWriter, RotatingFile
    from edge.device.loop import DeviceLoop, LoopOptions
    from edge.device.sources import FOLDER_MEMORY_NAME, Source, SourceUnavailable, WaitingSource, is_live, \
        is_realtime, open_source

    policy = _policy(args)
    options = LoopOptions(every=args.every, window=args.window, unknown_threshold=policy.min_probability,
                          reject_novel=policy.reject_novel, unknown_rate=policy.unknown_rate,
                          resize=args.resize, exit_at_end=args.exit_at_end, teach_batch=args.teach_batch)
    server = None
    if not args.no_http:
        from edge.device.http import parse_bind

        host, port = parse_bind(args.http)
    if args.realtime:
        print("edge-agent: warning: --realtime is deprecated and does nothing: a video file plays at its own "
              "frame rate by default (--as-fast-as-possible for batch use)", file=sys.stderr)
    stream = (RotatingFile(args.events, args.events_max_bytes, args.events_keep) if args.events else sys.stdout)
    received: list[int] = []
    try:
        with StateLock(args.state, timeout_s=args.lock_timeout):
            agent, store, step, labels = _open(args, exclusive=True)

            def opener() -> Source:
                return open_source(args.source, watch=not args.exit_at_end, pace=not args.as_fast_as_possible,
                                   memory=os.path.join(args.state, FOLDER_MEMORY_NAME))

            source: Source | None = None
            first_error = None
            try:
                source = opener()
            except SourceUnavailable as exc:
                if not args.wait_for_source:
                    raise InputError(f"{exc} (--wait-for-source waits for it)") from None
                first_error = " ".join(str(exc).split())
            if args.wait_for_source:  # also waits again for a camera or stream that stops
                source = WaitingSource(args.source, opener, realtime=is_realtime(args.source, not args.as_fast_as_possible),
                                       first_error=first_error, reopen=is_live(args.source), opened=source)
            assert source is not None
            events = EventWriter(stream)
            loop = DeviceLoop(agent, source, store=store, labels=labels, options=options, events=events)
            if not args.no_http:
                from edge.device.http import HTTPServer

                server = HTTPServer(loop, host, port, token=args.token, allow_hosts=args.allow_host,
                                    allow_origins=args.allow_origin, max_connections=args.max_connections).start()

            def on_signal(signum: int, _frame: object) -> None:
                received.append(signum)
                loop.stop()

            previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
            try:
                events.emit("started", pid=os.getpid(), source=args.source, step=step or 0,
                            http=None if server is None else f"{server.host}:{server.port}",
                            model=agent.backbone.manifest.name if agent.backbone else None,
                            strategy=agent.config.strategy)
                loop.run()
            finally:
                if server is not None:
                    server.stop()
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
            events.emit("stopped", step=loop.agent.step_, frames=loop.frames, dropped=loop.grabber.dropped,
                        signal=signal.Signals(received[0]).name if received else None)
    finally:
        if stream is not sys.stdout:
            stream.close()
    if loop.final_checkpoint_error is not None:  # what was learned since the last checkpoint is lost
        print(f"edge-agent: error: final checkpoint failed: {loop.final_checkpoint_error}", file=sys.stderr)
        return 1
    return EXIT_INTERRUPTED if received and received[0] == signal.SIGINT else 0


def _cmd_teach(args: argparse.Namespace) -> int:
    import urllib.error
    import urllib.request

    from edge.device.http import parse_bind

    host, port = parse_bind(args.http)
    label: object = int(args.label) if args.label.isascii() and args.label.isdigit() else args.label
    body = {"label": label, **({"frames": args.frames} if args.frames is not None else {"seconds": args.seconds})}
    headers = {"Content-Type": "application/json"}
    if args.token:
        headers["Authorization"] = f"Bearer {args.token}"
    url_host = f"[{host}]" if ":" in host else host
    request = urllib.request.Request(f"http://{url_host}:{port}/teach", data=json.dumps(body).encode(),
                                     headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - http to the given agent
            print(response.read().decode("utf-8", "replace").strip())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read().decode("utf-8", "replace")).get("error", "")
        except ValueError:
            message = ""
        raise InputError(f"teach: the agent answered {exc.code}: {message or exc.reason}") from None
    except urllib.error.URLError as exc:
        raise InputError(f"teach: expected a running agent at {host}:{port}, got {exc.reason}") from None
    return 0


#: argparse types of the other options (edge.config's, which the agent settings use too).
_int_in, _float_in = int_in, float_in


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds (a number), got {text!r:.40}") from None
    if not (math.isfinite(value) and 0.0 <= value <= 86_400.0):
        raise argparse.ArgumentTypeError(f"expected seconds in [0, 86400], got {text:.40}")
    return value


def _add_lock_timeout(parser: argparse.ArgumentParser, default_s: float, help_text: str) -> None:
    """``--lock-timeout`` with this command's own default (an option of a shared parent parser would
    share one default between commands: ``set_defaults`` on one changes it for all)."""
    parser.add_argument("--lock-timeout", type=_seconds, default=default_s, metavar="SECONDS",
                        help=f"{help_text} (default {default_s:g})")


class _OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (``edge-agent learn: error: ...``), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {' '.join(message.split())} (see --help)\n")


def _add_unknown_options(p: argparse.ArgumentParser, what: str) -> None:
    """The "unknown" rule's options (`edge.openset.OpenSetPolicy`), the same for predict and run."""
    p.add_argument("--unknown-threshold", type=_float_in(0.0, 1.0), default=MIN_PROBABILITY,
                   help=f"answer 'unknown' when {what} is below this (default {MIN_PROBABILITY:g}; 0 disables)")
    p.add_argument("--reject-novel", action="store_true",
                   help="also answer 'unknown' when the agent's calibrated open-set score marks an image as "
                        "novel (off by default: taught objects in conditions unlike any taught are rejected "
                        "far above the target rate; needs each object taught in >= 2 learn calls; "
                        "see docs/openset.md)")
    p.add_argument("--unknown-rate", type=_float_in(0.0, 0.5), default=FALSE_REJECT, metavar="RATE",
                   help=f"with --reject-novel: the share of known objects the novelty threshold may call "
                        f"unknown, calibrated on teach bursts held out in turn (default {FALSE_REJECT:g})")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser (exposed for documentation and tests)."""
    parser = _OneLineParser(
        prog="edge-agent",
        description="Continual learning on the device: a frozen backbone, a small trainable head, "
                    "a replay buffer and atomic checkpoints.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log warnings and info")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    common = _OneLineParser(add_help=False)
    common.add_argument("--model", default=None, help="a model folder (with manifest.json) or a NAME: installed "
                        f"(edge-agent models list) or packaged (default: {DEFAULT_MODEL_NAME}, ImageNet weights; "
                        f"{TINY_MODEL_NAME}: the 32-px test backbone)")
    common.add_argument("--state", required=True, help="state directory (checkpoints)")
    common.add_argument("--runtime", default="auto", choices=("auto", "litert", "onnx"),
                        help="inference runtime (default: auto = LiteRT if installed)")
    common.add_argument("--providers", default="cpu", choices=("cpu", "cuda", "tensorrt"),
                        help="ONNX Runtime providers with --runtime onnx (cuda, tensorrt: onnxruntime-gpu, e.g. a Jetson)")
    common.add_argument("--precision", default=None, choices=("fp32", "int8"),
                        help="backbone precision (int8 runs on LiteRT; default fp32, or int8 on LiteRT for a model "
                             f"without an fp32 TFLite file, as the shipped {DEFAULT_MODEL_NAME})")
    common.add_argument("--threads", type=_int_in(1, 256), default=None, help="inference threads")
    fresh = common.add_argument_group(
        "agent configuration (defaults: AgentConfig's; a new state is created with it; a stored state keeps "
        "its own, and a setting given here or in --config that differs from it is an error)")
    add_arguments(fresh)

    p = sub.add_parser("learn", parents=[common], help="learn images as one label")
    p.add_argument("--label", type=_label_arg, required=True,
                   help="class of every image: a name (e.g. cup) or an index in [0, max_classes)")
    p.add_argument("images", nargs="+", help="image files (any size; resized to the model input)")
    _add_lock_timeout(p, DEFAULT_TIMEOUT_S, "wait this long for another writer's lock")
    p.set_defaults(func=_cmd_learn)

    p = sub.add_parser("predict", parents=[common], help="print label and probability per image")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per image and line (default: TSV with escaped file names)")
    _add_unknown_options(p, "its top probability")
    p.add_argument("--closed-set", action="store_true",
                   help="deprecated: the same as --unknown-threshold 0 (always a learned class)")
    p.add_argument("images", nargs="+", help="image files")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("status", parents=[common], help="classes seen, buffer fill, state size")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("run", parents=[common], help="the device runtime: watch a source, predict, learn when taught",
                       description="Read frames from a camera, stream, video file or folder, predict on each, "
                                   "learn when taught (HTTP API or DIR/<label>/ files), checkpoint after each "
                                   "learned batch and on SIGTERM/SIGINT. Events are JSON lines.")
    p.add_argument("--source", required=True,
                   help="camera:N, /dev/videoN, a video file, rtsp://..., gst:PIPELINE, folder:DIR or picamera2[:N]")
    p.add_argument("--http", default="127.0.0.1:8080", metavar="HOST:PORT",
                   help="HTTP API address (default 127.0.0.1:8080; port 0: any free one; a non-loopback "
                        "host needs --token)")
    p.add_argument("--no-http", action="store_true", help="no HTTP API")
    p.add_argument("--token", default=os.environ.get("EDGE_AGENT_TOKEN"),
                   help="bearer token every request must send (default: $EDGE_AGENT_TOKEN)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME[:PORT]",
                   help="also answer requests whose Host is NAME (repeatable; default: only the bound address, "
                        "127.0.0.1, localhost, [::1], and on a non-loopback bind IP literals and this machine's "
                        "name; others get 421: DNS rebinding)")
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="also accept requests from pages of ORIGIN, e.g. http://kiosk.local:8000 (repeatable; "
                        "default: only the agent's own page; others get 403)")
    p.add_argument("--max-connections", type=_int_in(16, 1_000_000), default=None, metavar="N",
                   help="HTTP connections open at once at most (default: 8192, less when the open-file limit, "
                        "raised to its hard limit at start, leaves less room after 256 reserved descriptors)")
    p.add_argument("--wait-for-source", action="store_true",
                   help="when the source cannot be opened (no camera, file or folder yet, a stream down), retry "
                        "every 1 s doubling to 30 s, one log line per attempt, the HTTP API answering meanwhile "
                        "(default: exit 2 at once)")
    p.add_argument("--events", default=None, metavar="FILE", help="append events here (default: stdout)")
    p.add_argument("--events-max-bytes", type=_int_in(0, 2**40), default=0, metavar="N",
                   help="rotate --events FILE before it passes N bytes: FILE -> FILE.1 -> ... (default 0: never)")
    p.add_argument("--events-keep", type=_int_in(1, 100), default=3, metavar="K",
                   help="rotated events files kept, FILE.1 .. FILE.K (default 3)")
    p.add_argument("--every", type=_int_in(1, 10_000), default=1, metavar="K", help="predict every K-th frame")
    p.add_argument("--window", type=_int_in(1, 1000), default=5, help="predictions averaged per answer (default 5)")
    _add_unknown_options(p, "the top probability averaged over --window frames (a file of a folder: its own)")
    p.add_argument("--resize", default=None, choices=FIT_POLICIES,
                   help="override how frames are fitted to the model input: squash, crop (fit shortest) or "
                        "letterbox (fit longest) (default: the model's own, preprocessing.fit of its manifest)")
    p.add_argument("--teach-batch", type=_int_in(1, 1000), default=32,
                   help="frames per learned batch for DIR/<label>/ files (default 32)")
    p.add_argument("--as-fast-as-possible", action="store_true",
                   help="read a video file as fast as the loop can, no frame dropped (batch use; default: at its "
                        "own frame rate, as a camera would deliver it, frames the loop cannot keep up with dropped)")
    p.add_argument("--realtime", action="store_true", help="deprecated, does nothing (a video file plays at its "
                   "own frame rate by default)")
    p.add_argument("--exit-at-end", action="store_true",
                   help="end (exit 0, after the final checkpoint) once a file or folder source is exhausted and "
                        "every teach batch is learned; without it the agent keeps serving and /status says "
                        "source_ended")
    _add_lock_timeout(p, 0.0, "wait this long for another process holding the state (0: refuse at once)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("teach", help="teach a running agent (edge-agent run) over its HTTP API")
    p.add_argument("--label", required=True, help="class name (or index)")
    amount = p.add_mutually_exclusive_group(required=True)
    amount.add_argument("--frames", type=_int_in(1, 1000), help="learn the next N frames")
    amount.add_argument("--seconds", type=_float_in(0.001, 60.0), help="learn the frames of the next S seconds")
    p.add_argument("--http", default="127.0.0.1:8080", metavar="HOST:PORT", help="the agent's address")
    p.add_argument("--token", default=os.environ.get("EDGE_AGENT_TOKEN"), help="bearer token")
    p.set_defaults(func=_cmd_teach)
    from edge.model_store import add_models_subparser  # edge-agent models list|install
    add_models_subparser(sub)
    from edge.knowledge.cli import add_knowledge_subparsers  # undo, forget, rename, samples, export, ...
    add_knowledge_subparsers(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``edge-agent``; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="edge-agent: %(levelname)s: %(message)s")
        return int(args.func(args))
    except KeyboardInterrupt:
        print("edge-agent: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (EdgeError, ValueError, OSError) as exc:
        print(f"edge-agent: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except MemoryError:
        print("edge-agent: error: out of memory (expected the state and images to fit in RAM)", file=sys.stderr)
        return EXIT_USAGE


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
