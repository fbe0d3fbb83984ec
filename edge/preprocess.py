"""Frames to model input, following the manifest's `Preprocessing`, and int8 (de)quantization.

A frame batch is ``(N, H, W, C)`` (or one ``(H, W, C)`` frame), RGB or grayscale (C = 1 or 3).
Accepted dtypes:

* ``uint8`` pixel values, the normal camera/decoder output;
* floating-point frames holding *pixel values* in ``[0, 255]`` (for example after a resize in float).
  They are treated exactly like uint8 pixels; NaN, inf or values outside ``[0, 255]`` raise
  `InputError` (a frame already normalised to [0, 1] would otherwise be silently wrong only if it
  exceeded the range, so callers must pass pixel values).

Any other dtype (int16, int64, bool, ...) raises `InputError`. Channels are adapted to the model:
grayscale frames are replicated to RGB, RGB frames are converted to luma (ITU-R BT.601) for a
grayscale model; a model that declares ``channel_order="BGR"`` gets its channels reversed. Frames
of another size are fitted by `fit_frame`, the one resizer of the project (the manifest's ``fit``
policy and ``resize`` filter; Pillow, imported lazily); `load_frame` is an image file's way in.

Example:
    >>> import numpy as np
    >>> from edge.manifest import Preprocessing
    >>> frames = np.full((2, 4, 4, 3), 255, dtype=np.uint8)
    >>> x = preprocess(frames, (4, 4, 3), Preprocessing())
    >>> x.shape, x.dtype, float(x.max())
    ((2, 4, 4, 3), dtype('float32'), 1.0)
"""

from __future__ import annotations

import os

import numpy as np

from edge.errors import InputError
from edge.images import load_image
from edge.manifest import DEFAULT_FIT, FIT_POLICIES, RESIZE_METHODS, Manifest, Preprocessing, QuantParams

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_QRANGE = {"int8": (-128, 127), "uint8": (0, 255)}


def as_frame_batch(frames: np.ndarray) -> np.ndarray:
    """Validate frames and return them as a 4-D ``(N, H, W, C)`` array (no copy when possible).

    Raises `InputError` naming expected vs got for a wrong ndim, channel count, dtype, an empty
    batch, or non-finite / out-of-range float pixel values.
    """
    if not isinstance(frames, np.ndarray):
        frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[np.newaxis]
    if frames.ndim != 4:
        raise InputError(
            f"frames: expected shape (N, H, W, C) or (H, W, C), got ndim {frames.ndim} "
            f"shape {frames.shape}"
        )
    if frames.shape[0] == 0:
        raise InputError("frames: expected at least one frame, got an empty batch")
    if frames.shape[-1] not in (1, 3):
        raise InputError(
            f"frames: expected 1 (gray) or 3 (RGB) channels in the last axis, got {frames.shape[-1]} "
            f"(shape {frames.shape})"
        )
    if min(frames.shape[1:3]) == 0:
        raise InputError(f"frames: expected a non-empty image, got shape {frames.shape}")
    if frames.dtype == np.uint8:
        return frames
    if np.issubdtype(frames.dtype, np.floating):
        lo, hi = float(np.min(frames)), float(np.max(frames))
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise InputError("frames: expected finite pixel values, got NaN or inf")
        if lo < 0.0 or hi > 255.0:
            raise InputError(
                f"frames: float frames must hold pixel values in [0, 255], got range [{lo:g}, {hi:g}]"
            )
        return frames
    raise InputError(f"frames: expected dtype uint8 (or float pixel values in [0, 255]), got {frames.dtype}")


def fit_frame(image: np.ndarray, target: Manifest | tuple[int, int], policy: str | None = None,
              method: str | None = None) -> np.ndarray:
    """One uint8 ``(H, W, C)`` frame (C = 1 or 3) -> uint8 ``(height, width, C)``: the one resizer.

    Every way in (``edge-agent learn``/``predict``/``run``, the simulator's image sources, frames of
    another size given to the agent) fits frames here, so one image gives one model input.
    ``target`` is the model's `Manifest` (its input size, ``preprocessing.fit`` and
    ``preprocessing.resize``) or a ``(height, width)``; ``policy`` and ``method`` override (default
    ``squash`` / ``bilinear`` for a bare size). Policies (Edge Impulse's image block): ``squash``
    stretches the whole frame (aspect ratio lost), ``crop`` scales the shorter side to fit and cuts
    the centre, ``letterbox`` scales the longer side to fit and pads with black. Resizing is
    Pillow's filter on uint8 pixels (deterministic); a frame already at the size is returned as is.

    Example:
        >>> frame = np.zeros((48, 64, 3), np.uint8); frame[:, :8] = 255     # a white band on the left
        >>> [fit_frame(frame, (32, 32), p).shape for p in FIT_POLICIES]
        [(32, 32, 3), (32, 32, 3), (32, 32, 3)]
        >>> int(fit_frame(frame, (32, 32), "crop")[:, 0].max())         # the band was cut away
        0
        >>> int(fit_frame(frame, (32, 32), "letterbox")[0].max())       # black bar on top
        0
    """
    if isinstance(target, Manifest):
        height, width = int(target.input_shape[0]), int(target.input_shape[1])
        policy = policy or target.preprocessing.fit
        method = method or target.preprocessing.resize
    else:
        height, width = int(target[0]), int(target[1])
    policy = policy or DEFAULT_FIT
    method = method or "bilinear"
    if policy not in FIT_POLICIES:
        raise InputError(f"resize policy: expected one of {FIT_POLICIES}, got {policy!r}")
    if method not in RESIZE_METHODS:
        raise InputError(f"resize method: expected one of {RESIZE_METHODS}, got {method!r}")
    frame = np.asarray(image)
    if (frame.ndim != 3 or frame.shape[2] not in (1, 3) or frame.dtype != np.uint8
            or min(frame.shape[:2]) < 1):
        raise InputError(f"frame: expected uint8 (H, W, 3) RGB or (H, W, 1) gray, got "
                         f"{frame.dtype}{frame.shape}")
    if not (0 < height <= 65536 and 0 < width <= 65536):
        raise InputError(f"fit size: expected a positive (height, width), got {(height, width)}")
    h, w = frame.shape[:2]
    if (h, w) == (height, width):
        return frame
    if policy == "squash":
        return _resize(frame, height, width, method)
    if policy == "crop":
        scale = max(height / h, width / w)
        ch, cw = min(h, max(1, round(height / scale))), min(w, max(1, round(width / scale)))
        top, left = (h - ch) // 2, (w - cw) // 2
        return _resize(frame[top:top + ch, left:left + cw], height, width, method)
    scale = min(height / h, width / w)
    nh, nw = max(1, min(height, round(h * scale))), max(1, min(width, round(w * scale)))
    out = np.zeros((height, width, frame.shape[2]), np.uint8)
    top, left = (height - nh) // 2, (width - nw) // 2
    out[top:top + nh, left:left + nw] = _resize(frame, nh, nw, method)
    return out


def _resize(frame: np.ndarray, height: int, width: int, method: str) -> np.ndarray:
    """Pillow resize of one uint8 (H, W, 1|3) frame (a copy, even at the same size)."""
    from PIL import Image  # lazy: only needed when a frame size differs from the model's

    filters = {"bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST,
               "bicubic": Image.Resampling.BICUBIC, "area": Image.Resampling.BOX}
    gray = frame.shape[2] == 1
    img = Image.fromarray(np.ascontiguousarray(frame[:, :, 0] if gray else frame))
    out = np.asarray(img.resize((width, height), filters[method]), dtype=np.uint8)
    return out[:, :, np.newaxis] if gray else out


def load_frame(path: str | os.PathLike[str], target: Manifest | tuple[int, int],
               policy: str | None = None) -> np.ndarray:
    """An image file -> the uint8 frame the model sees: `edge.images.load_image` then `fit_frame`.

    The JPEG decoder's reduced scale is chosen from the target size alone (``target_size``), the
    same for every caller, so one file gives one frame everywhere.
    """
    size = decode_size(target)
    return fit_frame(load_image(path, target_size=size), target, policy)


def decode_size(target: Manifest | tuple[int, int]) -> tuple[int, int]:
    """The ``(height, width)`` handed to `edge.images.load_image` as ``target_size`` for ``target``."""
    if isinstance(target, Manifest):
        return int(target.input_shape[0]), int(target.input_shape[1])
    return int(target[0]), int(target[1])


def preprocess(frames: np.ndarray, input_shape: tuple[int, int, int],
               preprocessing: Preprocessing) -> np.ndarray:
    """Frames (uint8, or float pixels in [0, 255]) -> float32 ``(N, H, W, C)`` model input.

    Computes ``(x * scale - mean) / std`` per channel after channel adaptation and resize.
    """
    batch = as_frame_batch(frames)
    return normalise_pixels(adapt_pixels(batch, input_shape, preprocessing), preprocessing)


def quantize(values: np.ndarray, params: QuantParams) -> np.ndarray:
    """Float -> int8/uint8 with ``q = clip(round(v / scale) + zero_point)``."""
    lo, hi = _QRANGE[params.dtype]
    q = np.rint(np.asarray(values, dtype=np.float32) / np.float32(params.scale)) + params.zero_point
    out: np.ndarray = np.clip(q, lo, hi).astype(params.dtype)
    return out


def dequantize(q: np.ndarray, params: QuantParams) -> np.ndarray:
    """Int8/uint8 -> float32 with ``v = (q - zero_point) * scale``."""
    return ((np.asarray(q, dtype=np.float32) - np.float32(params.zero_point))
            * np.float32(params.scale)).astype(np.float32, copy=False)


def adapt_pixels(batch: np.ndarray, input_shape: tuple[int, int, int],
                 preprocessing: Preprocessing) -> np.ndarray:
    """A validated batch -> pixel values at the model's size, channels and channel order.

    Frames of another size are fitted by `fit_frame` (the manifest's ``fit`` and ``resize``); float
    pixels are first rounded to uint8 for it. No normalisation: uint8 stays uint8 unless a luma
    conversion is needed, float pixels at the model's size stay float.
    """
    height, width, channels = input_shape
    x = batch
    if x.shape[1:3] != (height, width):
        if x.dtype != np.uint8:
            x = np.clip(np.rint(x), 0, 255).astype(np.uint8)
        x = np.stack([fit_frame(frame, (height, width), preprocessing.fit, preprocessing.resize)
                      for frame in x])
    if channels == 3 and x.shape[3] == 1:
        x = np.repeat(x, 3, axis=3)
    elif channels == 1 and x.shape[3] == 3:
        x = (x.astype(np.float32, copy=False) @ _LUMA)[..., np.newaxis]
    if preprocessing.channel_order == "BGR" and channels == 3:
        x = x[..., ::-1]
    return x


def pixel_lut(preprocessing: Preprocessing, channels: int, quant: QuantParams | None = None) -> np.ndarray:
    """``(channels, 256)`` table: pixel value -> model input, per channel.

    The values are computed with the same float32 operations as `preprocess` (and `quantize` when
    ``quant`` is given), so a table lookup gives bit-identical model input for uint8 pixels.
    """
    pixels = np.arange(256, dtype=np.float32)[:, np.newaxis].repeat(channels, axis=1)
    std = np.asarray(preprocessing.std, dtype=np.float32)
    mult = np.float32(preprocessing.scale) / std
    offset = -np.asarray(preprocessing.mean, dtype=np.float32) / std
    table = pixels * mult
    table += offset
    table = table.astype(np.float32, copy=False)
    if quant is not None:
        table = quantize(table, quant)
    return np.ascontiguousarray(table.T)


class InputMapper:
    """Validated frames -> the model file's input tensor, built once per backbone.

    ``input_dtype`` is the file's input tensor dtype: ``"uint8"`` (normalisation inside the graph:
    camera bytes pass unchanged), ``"float32"`` (normalised in NumPy) or ``"int8"`` (normalised and
    quantized with ``quant``). For uint8 frames of the model's size and channel count the float32
    and int8 inputs come from a per-channel lookup table (`pixel_lut`), bit-identical to
    `preprocess` (+ `quantize`). Any other frame (another size, channel count, float pixels) takes
    the general path: resize / channel adaptation, then the same arithmetic; for a uint8 model the
    float pixels are rounded to the nearest integer.

    Example:
        >>> from edge.manifest import Preprocessing
        >>> m = InputMapper((2, 2, 3), Preprocessing(), "float32")
        >>> m(np.full((1, 2, 2, 3), 255, np.uint8)).max()
        np.float32(1.0)
    """

    def __init__(self, input_shape: tuple[int, int, int], preprocessing: Preprocessing,
                 input_dtype: str, quant: QuantParams | None = None) -> None:
        if input_dtype not in ("uint8", "float32", "int8"):
            raise InputError(f"model input dtype: expected uint8, float32 or int8, got {input_dtype!r}")
        if input_dtype == "int8" and quant is None:
            raise InputError("model input dtype int8: expected quantization parameters, got none")
        self.input_shape = tuple(int(v) for v in input_shape)
        self.preprocessing = preprocessing
        self.input_dtype = input_dtype
        self.quant = quant
        self._dtype = np.dtype(input_dtype)
        channels = self.input_shape[2]
        self._bgr = preprocessing.channel_order == "BGR" and channels == 3
        self._lut: np.ndarray | None = None
        self._lut1: np.ndarray | None = None
        if input_dtype != "uint8":
            self._lut = pixel_lut(preprocessing, channels, quant if input_dtype == "int8" else None)
            if (self._lut == self._lut[:1]).all():  # the same map on every channel: one lookup
                self._lut1 = np.ascontiguousarray(self._lut[0])

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """``batch``: frames already validated by `as_frame_batch` (4-D, uint8 or float pixels)."""
        if batch.dtype == np.uint8 and batch.shape[1:] == self.input_shape:
            return self._lookup(batch[..., ::-1] if self._bgr else batch)
        pixels = adapt_pixels(batch, self.input_shape, self.preprocessing)  # type: ignore[arg-type]
        if self.input_dtype == "uint8":
            if pixels.dtype == np.uint8:
                return np.ascontiguousarray(pixels)
            rounded: np.ndarray = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
            return rounded
        if pixels.dtype == np.uint8:
            return self._lookup(pixels)
        x = normalise_pixels(pixels, self.preprocessing)
        return quantize(x, self.quant) if self.input_dtype == "int8" else x  # type: ignore[arg-type]


    def _lookup(self, src: np.ndarray) -> np.ndarray:
        """uint8 pixels in the model's channel order -> model input."""
        if self._lut is None:
            return np.ascontiguousarray(src)
        if self._lut1 is not None:
            return np.take(self._lut1, src)
        out = np.empty(src.shape, dtype=self._dtype)
        for c in range(src.shape[3]):
            out[..., c] = np.take(self._lut[c], src[..., c])
        return out


def normalise_pixels(pixels: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """``(x * scale - mean) / std`` per channel in float32 (a new array)."""
    std = np.asarray(preprocessing.std, dtype=np.float32)
    mult = np.float32(preprocessing.scale) / std
    offset = -np.asarray(preprocessing.mean, dtype=np.float32) / std
    out = pixels.astype(np.float32, copy=False) * mult
    out += offset
    return out.astype(np.float32, copy=False)
