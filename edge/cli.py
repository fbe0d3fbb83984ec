"""``edge-agent``: learn, predict and inspect on the device, one command at a time.

Each call opens the backbone, resumes the newest valid checkpoint of ``--state`` (or starts fresh
on first boot), does its work and, for ``learn``, writes a new checkpoint atomically.

    edge-agent learn   --model models/default --state state/ --label 3 img1.png img2.png
    edge-agent predict --model models/default --state state/ img3.png
    edge-agent status  --model models/default --state state/

Expected errors (bad image, corrupt model, foreign checkpoint, ...) print one line on stderr and
exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Sequence

import numpy as np

from edge.agent import Agent, AgentConfig
from edge.buffer import POLICIES, STORAGES
from edge.checkpoint import CheckpointStore
from edge.errors import EdgeError, InputError
from edge.heads import HEADS
from edge.runtimes import open_backbone
from edge.strategies import STRATEGIES

EXIT_USAGE = 2


def load_images(paths: Sequence[str]) -> list[np.ndarray]:
    """Decode image files to uint8 RGB arrays (Pillow, imported lazily)."""
    from PIL import Image, UnidentifiedImageError

    frames = []
    for path in paths:
        try:
            with Image.open(path) as img:
                frames.append(np.asarray(img.convert("RGB"), dtype=np.uint8))
        except (OSError, UnidentifiedImageError) as exc:
            raise InputError(f"image {path}: expected a readable image file, got {exc}") from exc
    return frames


def _frames_for(agent: Agent, paths: Sequence[str]) -> np.ndarray:
    """Images of any size -> one (N, H, W, 3) batch at the model's input size."""
    from edge.preprocess import resize_frames

    h, w, _ = agent.backbone.manifest.input_shape
    out = []
    for frame in load_images(paths):
        if frame.shape[:2] != (h, w):
            frame = np.rint(resize_frames(frame[None], h, w)[0]).astype(np.uint8)
        out.append(frame)
    return np.stack(out)


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


def _open(args: argparse.Namespace) -> tuple[Agent, CheckpointStore, int | None]:
    backbone = open_backbone(args.model, runtime=args.runtime, precision=args.precision,
                             num_threads=args.threads)
    store = CheckpointStore(args.state, backbone.manifest.fingerprint)
    ckpt = store.latest()
    if ckpt is None:
        return Agent(backbone, _config_from_args(args)), store, None
    agent = Agent(backbone, AgentConfig.from_dict(ckpt.config))
    agent.load_state_dict(ckpt.state)
    return agent, store, ckpt.step


def _cmd_learn(args: argparse.Namespace) -> int:
    agent, store, _ = _open(args)
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
        print(f"{path}\t{label}\t{row[label]:.4f}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    agent, store, step = _open(args)
    mem = agent.memory_bytes()
    info = {
        "model": agent.backbone.manifest.name,
        "runtime": agent.backbone.info.runtime,
        "precision": agent.backbone.info.precision,
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


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="Continual learning on the device: a frozen backbone, a small trainable head, "
                    "a replay buffer and atomic checkpoints.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log warnings and info")
    sub = parser.add_subparsers(dest="command", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", required=True, help="model directory with manifest.json")
    common.add_argument("--state", required=True, help="state directory (checkpoints)")
    common.add_argument("--runtime", default="auto", choices=("auto", "litert", "onnx"),
                        help="inference runtime (default: auto = LiteRT if installed)")
    common.add_argument("--precision", default="fp32", choices=("fp32", "int8"),
                        help="backbone precision (int8 runs on LiteRT)")
    common.add_argument("--threads", type=int, default=None, help="inference threads")
    fresh = common.add_argument_group("new state (used on first boot only; later runs use the "
                                      "configuration stored in the checkpoint)")
    fresh.add_argument("--head", default="softmax", choices=sorted(HEADS))
    fresh.add_argument("--strategy", default="replay", choices=sorted(STRATEGIES),
                       help="continual-learning strategy (default replay; see docs/strategies.md)")
    fresh.add_argument("--strategy-param", action="append", default=[], metavar="KEY=VALUE",
                       help="strategy hyperparameter, e.g. shrinkage=0.001 (repeatable)")
    fresh.add_argument("--max-classes", type=int, default=50)
    fresh.add_argument("--buffer-capacity", type=int, default=1000)
    fresh.add_argument("--buffer-policy", default="class_balanced", choices=POLICIES)
    fresh.add_argument("--buffer-storage", default="int8", choices=STORAGES)
    fresh.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("learn", parents=[common], help="learn images as one label")
    p.add_argument("--label", type=int, required=True, help="class label of every image")
    p.add_argument("images", nargs="+", help="image files (any size; resized to the model input)")
    p.set_defaults(func=_cmd_learn)

    p = sub.add_parser("predict", parents=[common], help="print label and probability per image")
    p.add_argument("images", nargs="+", help="image files")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("status", parents=[common], help="classes seen, buffer fill, state size")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``edge-agent``; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (EdgeError, ValueError, OSError) as exc:
        print(f"edge-agent: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
