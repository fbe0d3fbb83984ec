"""Parity check: the exported files must compute the embedding the Keras backbone computes.

Runs held-out frames through every file of a model directory with the real edge runtimes
(`edge.runtimes`, LiteRT and ONNX Runtime) and compares with the TensorFlow reference. The frames
go in as the device gets them (uint8), so for a uint8-input export (normalisation inside the
graph) the check covers the folded normalisation too; each result records the file's input dtype.

Example:
    >>> from host.parity import compare_embeddings
    >>> import numpy as np
    >>> a = np.ones((2, 4), np.float32)
    >>> compare_embeddings(a, a)["min_cosine"]
    1.0
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edge.manifest import Manifest, ModelFile


class ParityError(ValueError):
    """An exported file's embeddings differ from the reference beyond tolerance."""


def compare_embeddings(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Max abs diff, max diff relative to the reference's largest magnitude, min/mean cosine."""
    if reference.shape != candidate.shape:
        raise ParityError(f"embedding shape: expected {reference.shape}, got {candidate.shape}")
    ref = reference.astype(np.float64)
    cand = candidate.astype(np.float64)
    diff = np.abs(ref - cand)
    denom = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    cos = np.where(denom > 0, np.sum(ref * cand, axis=1) / np.maximum(denom, 1e-30), 0.0)
    both_zero = (np.linalg.norm(ref, axis=1) == 0) & (np.linalg.norm(cand, axis=1) == 0)
    cos = np.where(both_zero, 1.0, cos)
    return {
        "max_abs_diff": float(diff.max()),
        "max_rel_diff": float(diff.max() / max(float(np.abs(ref).max()), 1e-12)),
        "min_cosine": float(np.clip(cos.min(), -1.0, 1.0)),
        "mean_cosine": float(np.clip(cos.mean(), -1.0, 1.0)),
    }


def within_tolerance(metrics: dict[str, float], tolerance: dict[str, float]) -> list[str]:
    """The violated limits as readable strings (empty when every limit holds)."""
    problems = []
    if "max_rel_diff" in tolerance and metrics["max_rel_diff"] > tolerance["max_rel_diff"]:
        problems.append(
            f"max relative diff expected <= {tolerance['max_rel_diff']:g}, got {metrics['max_rel_diff']:.3g}"
        )
    if "min_cosine" in tolerance and metrics["min_cosine"] < tolerance["min_cosine"]:
        problems.append(
            f"min cosine expected >= {tolerance['min_cosine']:g}, got {metrics['min_cosine']:.5f}"
        )
    return problems


def check_parity(model_dir: str | Path, manifest: Manifest, frames_uint8: np.ndarray,
                 reference: np.ndarray, reference_name: str = "keras") -> dict[str, Any]:
    """Compare every file in ``manifest`` against ``reference`` embeddings of ``frames_uint8``.

    Returns the manifest's ``parity`` section. Raises `ParityError` naming each file that is
    beyond its precision's tolerance (expected vs got).
    """
    results: dict[str, Any] = {}
    failures = []
    for entry in manifest.files:
        runtime = "litert" if entry.format == "tflite" else "onnx"
        got = embed_with_edge_runtime(Path(model_dir), manifest, entry, frames_uint8)
        metrics = compare_embeddings(reference, got)
        tolerance = manifest.tolerances[entry.precision]
        problems = within_tolerance(metrics, tolerance)
        results[entry.path] = {**metrics, "runtime": runtime, "tolerance": tolerance,
                               "input_dtype": _input_dtype(manifest, entry), "passed": not problems}
        if problems:
            failures.append(f"{_describe(entry)}: " + "; ".join(problems))
    if failures:
        raise ParityError("parity check failed against the " + reference_name + " reference: "
                          + " | ".join(failures))
    return {"samples": int(len(frames_uint8)), "reference": reference_name, "results": results}


def embed_with_edge_runtime(model_dir: Path, manifest: Manifest, entry: ModelFile,
                            frames_uint8: np.ndarray) -> np.ndarray:
    """Embed frames with one artifact through the edge runtime the device would use.

    Takes the manifest in memory (it is not on disk yet during an export) and checks the file's
    sha256 first, like `edge.runtimes.open_backbone` does.
    """
    from edge.manifest import verify_file
    from edge.runtimes import Backbone, LiteRTBackbone, OnnxBackbone

    verify_file(model_dir / entry.path, entry)
    backbone: Backbone
    if entry.format == "tflite":
        backbone = LiteRTBackbone(model_dir, manifest, precision=entry.precision)
    else:
        backbone = OnnxBackbone(model_dir, manifest, providers="cpu")
    with backbone:
        return backbone.embed(frames_uint8)


def _input_dtype(manifest: Manifest, entry: ModelFile) -> str:
    """The dtype the file's input tensor takes (uint8 camera bytes, float32, or int8 quantized)."""
    if manifest.input_dtype == "uint8":
        return "uint8"
    return entry.input_quantization.dtype if entry.input_quantization is not None else "float32"


def _describe(entry: ModelFile) -> str:
    return f"{entry.path} ({entry.format} {entry.precision})"

