"""The raw baseline: a bare LiteRT interpreter / ONNX Runtime session invoke, no edge code in the loop.

Built from the same file, thread count and provider list as the edge backbone of a case, fed the
same input tensor (`model_input`: camera bytes for a uint8-input model; preprocessed, and for int8
quantized, values for older ones), so ``agent / raw`` is the overhead of everything the edge
layer adds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from edge.manifest import Manifest, ModelFile, load_manifest
from edge.preprocess import InputMapper, as_frame_batch
from edge.runtimes import PROVIDER_CHAINS


def model_input(manifest: Manifest, entry: ModelFile, frames: np.ndarray) -> np.ndarray:
    """The exact input tensor the edge backbone feeds this file for ``frames``: the camera bytes
    for a uint8-input model, the normalised (and for int8 quantized) values for older ones."""
    if manifest.input_dtype == "uint8":
        dtype, quant = "uint8", None
    elif entry.precision == "int8" and entry.input_quantization is not None:
        dtype, quant = entry.input_quantization.dtype, entry.input_quantization
    else:
        dtype, quant = "float32", None
    return InputMapper(manifest.input_shape, manifest.preprocessing, dtype, quant)(as_frame_batch(frames))


def raw_runner(model_dir: Path, runtime: str, precision: str, providers: str, threads: int | None,
               frames: np.ndarray) -> Callable[[], np.ndarray]:
    """A zero-argument function running one bare inference on ``frames``; returns the raw output."""
    manifest = load_manifest(model_dir, verify=False)
    if runtime == "litert":
        from ai_edge_litert.interpreter import Interpreter

        entry = manifest.file("tflite", precision)
        x = model_input(manifest, entry, frames)
        interp = Interpreter(model_path=str(Path(model_dir) / entry.path), num_threads=threads)
        inp = interp.get_input_details()[0]
        interp.resize_tensor_input(inp["index"], list(x.shape))
        interp.allocate_tensors()
        feed = x
        i_in, i_out = inp["index"], interp.get_output_details()[0]["index"]

        def run_litert() -> np.ndarray:
            interp.set_tensor(i_in, feed)
            interp.invoke()
            return interp.get_tensor(i_out)

        return run_litert
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    chain = [p for p in PROVIDER_CHAINS[providers] if p in ort.get_available_providers()]
    session = ort.InferenceSession(str(Path(model_dir) / manifest.file("onnx", "fp32").path),
                                   sess_options=options, providers=chain)
    name = session.get_inputs()[0].name
    x = model_input(manifest, manifest.file("onnx", "fp32"), frames)

    def run_onnx() -> np.ndarray:
        return session.run(None, {name: x})[0]

    return run_onnx
