"""``edge-agent``: learn, predict and inspect on the device, one command at a time.

Each call opens the backbone, resumes the newest valid checkpoint of ``--state`` (or starts fresh
on first boot), does its work and, for ``learn``, writes a new checkpoint atomically. ``learn``
holds the state folder's OS lock (`edge.lock.StateLock`) from resume to save, so two writers
never lose an update: the second waits up to ``--lock-timeout`` seconds, then fails.

    edge-agent learn   --model models/default --state state/ --label 3 img1.png img2.png
    edge-agent predict --model models/default --state state/ img3.png
    edge-agent status  --model models/default --state state/

Expected errors (bad image, corrupt model, foreign checkpoint, a held lock, ...) print one line on
stderr and exit with status 2; Ctrl-C prints one line and exits with 130. Warnings (e.g. a corrupt
newest checkpoint skipped in favour of the previous one) are shown without ``-v``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from typing import Callable, NoReturn, Sequence

import numpy as np

from edge.agent import Agent, AgentConfig
from edge.buffer import POLICIES, STORAGES
from edge.checkpoint import CONFIG_LIMITS, Checkpoint, CheckpointStore, resume, validate_agent_config
from edge.errors import CheckpointError, EdgeError, InputError
from edge.heads import HEADS
from edge.images import load_image
from edge.lock import DEFAULT_TIMEOUT_S, StateLock
from edge.models import default_model_dir
from edge.runtimes import open_backbone
from edge.strategies import STRATEGIES
from edge.version import package_version

logger = logging.getLogger("edge.cli")

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def load_images(paths: Sequence[str], target_size: tuple[int, int] | None = None) -> list[np.ndarray]:
    """Decode image files to uint8 RGB arrays safely (`edge.images.load_image`)."""
    return [load_image(path, target_size=target_size) for path in paths]


def _frames_for(agent: Agent, paths: Sequence[str]) -> np.ndarray:
    """Images of any size -> one (N, H, W, 3) batch at the model's input size."""
    from edge.preprocess import resize_frames

    assert agent.backbone is not None
    h, w, _ = agent.backbone.manifest.input_shape
    out = []
    for frame in load_images(paths, target_size=(h, w)):
        if frame.shape[:2] != (h, w):
            frame = np.rint(resize_frames(frame[None], h, w)[0]).astype(np.uint8)
        out.append(frame)
    return np.stack(out)


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


def parse_key_values(items: Sequence[str], option: str) -> dict[str, object]:
    """``KEY=VALUE`` items of a command-line ``option`` -> a dict (ints, floats, true/false, else strings)."""
    params: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{option}: expected KEY=VALUE, got {item!r}")
        for cast in (int, float):
            try:
                params[key] = cast(value)
                break
            except ValueError:
                continue
        else:
            params[key] = {"true": True, "false": False}.get(value.lower(), value)
    return params


def _strategy_params(items: Sequence[str]) -> dict[str, object]:
    """``--strategy-param KEY=VALUE`` items -> strategy parameters."""
    return parse_key_values(items, "--strategy-param")


def _config_from_args(args: argparse.Namespace) -> AgentConfig:
    return AgentConfig(head=args.head, strategy=args.strategy, max_classes=args.max_classes,
                       strategy_params=_strategy_params(args.strategy_param),
                       buffer_capacity=args.buffer_capacity, buffer_policy=args.buffer_policy,
                       buffer_storage=args.buffer_storage, seed=args.seed)


def _open(args: argparse.Namespace, exclusive: bool = False) -> tuple[Agent, CheckpointStore, int | None]:
    """Backbone + the newest usable checkpoint (older ones when it cannot be restored)."""
    backbone = open_backbone(args.model or default_model_dir(), runtime=args.runtime, precision=args.precision,
                             num_threads=args.threads)
    store = CheckpointStore(args.state, backbone.manifest.fingerprint, validate_config=validate_agent_config,
                            exclusive=exclusive)

    def restore(ckpt: Checkpoint) -> Agent:
        agent = Agent(backbone, AgentConfig.from_dict(ckpt.config))
        agent.load_state_dict(ckpt.state)
        return agent

    resumed = resume(store, restore)
    if resumed is not None:
        return resumed[0], store, resumed[1].step
    config = _config_from_args(args)
    try:
        validate_agent_config(config.to_dict())
    except CheckpointError as exc:
        raise InputError(str(exc).replace("config.", "option ", 1)) from exc
    return Agent(backbone, config), store, None


def _cmd_learn(args: argparse.Namespace) -> int:
    with StateLock(args.state, timeout_s=args.lock_timeout):
        agent, store, _ = _open(args, exclusive=True)
        max_classes = agent.config.max_classes
        if not 0 <= args.label < max_classes:
            raise InputError(f"--label: expected an int in [0, {max_classes - 1}] (max_classes={max_classes}), "
                             f"got {args.label}")
        frames = _frames_for(agent, args.images)
        agent.learn_many(frames, np.full(len(frames), args.label, dtype=np.int64))
        path = store.save(agent.state_dict(), agent.config.to_dict(), agent.step_)
    print(f"learned {len(frames)} image(s) as label {args.label}; step {agent.step_}; saved {path}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    agent, _, step = _open(args)
    if step is None:
        raise InputError(f"state {args.state}: expected a learned state, got none (run learn first)")
    proba = agent.predict_proba_many(_frames_for(agent, args.images))
    for path, row in zip(args.images, proba):
        label = int(row.argmax())
        if args.json:
            print(json.dumps({"path": path, "label": label, "probability": round(float(row[label]), 6)}))
        else:
            print(f"{tsv_field(path)}\t{label}\t{row[label]:.4f}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    agent, store, step = _open(args)
    mem = agent.memory_bytes()
    info = {
        "model": agent.backbone.manifest.name if agent.backbone is not None else None,
        "runtime": agent.backbone.info.runtime if agent.backbone is not None else None,
        "precision": agent.backbone.info.precision if agent.backbone is not None else None,
        "step": step or 0,
        "classes_seen": agent.classes_seen().tolist(),
        "buffer_fill": len(agent.buffer),
        "buffer_capacity": agent.buffer.capacity,
        "buffer_bytes": mem["buffer"],
        "head_bytes": mem["head"],
        "strategy": agent.config.strategy,
        "strategy_bytes": mem["strategy"],
        "state_bytes_on_disk": store.disk_bytes(),
    }
    if args.json:
        print(json.dumps(info))
    else:
        for key, value in info.items():
            print(f"{key}: {value}")
    return 0


def _int_in(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type: an int in [lo, hi], else a one-line usage error naming expected vs got."""
    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int, got {text!r:.40}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"expected an int in [{lo}, {hi}], got {text:.40}")
        return value
    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds (a number), got {text!r:.40}") from None
    if not (math.isfinite(value) and 0.0 <= value <= 86_400.0):
        raise argparse.ArgumentTypeError(f"expected seconds in [0, 86400], got {text:.40}")
    return value


class _OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (``edge-agent learn: error: ...``), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {' '.join(message.split())} (see --help)\n")


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
    common.add_argument("--model", default=None, help="model directory with manifest.json "
                        "(default: the model shipped in the package, edge.models.default_model_dir())")
    common.add_argument("--state", required=True, help="state directory (checkpoints)")
    common.add_argument("--runtime", default="auto", choices=("auto", "litert", "onnx"),
                        help="inference runtime (default: auto = LiteRT if installed)")
    common.add_argument("--precision", default="fp32", choices=("fp32", "int8"),
                        help="backbone precision (int8 runs on LiteRT)")
    common.add_argument("--threads", type=_int_in(1, 256), default=None, help="inference threads")
    common.add_argument("--lock-timeout", type=_seconds, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                        help=f"learn: wait this long for another writer's lock (default {DEFAULT_TIMEOUT_S:g})")
    fresh = common.add_argument_group("new state (used on first boot only; later runs use the "
                                      "configuration stored in the checkpoint)")
    fresh.add_argument("--head", default="softmax", choices=sorted(HEADS))
    fresh.add_argument("--strategy", default="replay", choices=sorted(STRATEGIES),
                       help="continual-learning strategy (default replay; see docs/strategies.md)")
    fresh.add_argument("--strategy-param", action="append", default=[], metavar="KEY=VALUE",
                       help="strategy hyperparameter, e.g. shrinkage=0.001 (repeatable)")
    fresh.add_argument("--max-classes", type=_int_in(*CONFIG_LIMITS["max_classes"]), default=50)
    fresh.add_argument("--buffer-capacity", type=_int_in(*CONFIG_LIMITS["buffer_capacity"]), default=1000)
    fresh.add_argument("--buffer-policy", default="class_balanced", choices=POLICIES)
    fresh.add_argument("--buffer-storage", default="int8", choices=STORAGES)
    fresh.add_argument("--seed", type=_int_in(*CONFIG_LIMITS["seed"]), default=0)

    p = sub.add_parser("learn", parents=[common], help="learn images as one label")
    p.add_argument("--label", type=_int_in(0, CONFIG_LIMITS["max_classes"][1] - 1), required=True,
                   help="class label of every image (in [0, max_classes))")
    p.add_argument("images", nargs="+", help="image files (any size; resized to the model input)")
    p.set_defaults(func=_cmd_learn)

    p = sub.add_parser("predict", parents=[common], help="print label and probability per image")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per image and line (default: TSV with escaped file names)")
    p.add_argument("images", nargs="+", help="image files")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("status", parents=[common], help="classes seen, buffer fill, state size")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_status)
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
