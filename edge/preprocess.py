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
of another size are resized with Pillow (imported lazily) using the manifest's resize filter.

Example:
    >>> import numpy as np
    >>> from edge.manifest import Preprocessing
    >>> frames = np.full((2, 4, 4, 3), 255, dtype=np.uint8)
    >>> x = preprocess(frames, (4, 4, 3), Preprocessing())
    >>> x.shape, x.dtype, float(x.max())
    ((2, 4, 4, 3), dtype('float32'), 1.0)
"""

from __future__ import annotations

import numpy as np

from edge.errors import InputError
from edge.manifest import Preprocessing, QuantParams

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


def resize_frames(frames: np.ndarray, height: int, width: int, method: str = "bilinear") -> np.ndarray:
    """Resize a validated ``(N, H, W, C)`` batch with Pillow; returns float32 pixel values."""
    from PIL import Image  # lazy: only needed when a frame size differs from the model's

    filters = {"bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST,
               "bicubic": Image.Resampling.BICUBIC, "area": Image.Resampling.BOX}
    if method not in filters:
        raise InputError(f"resize method: expected one of {sorted(filters)}, got {method!r}")
    out = np.empty((frames.shape[0], height, width, frames.shape[3]), dtype=np.float32)
    for i, frame in enumerate(frames):
        for c in range(frames.shape[3]):
            img = Image.fromarray(np.ascontiguousarray(frame[:, :, c], dtype=np.float32), mode="F")
            out[i, :, :, c] = np.asarray(img.resize((width, height), filters[method]))
    np.clip(out, 0.0, 255.0, out=out)
    return out


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
    return np.clip(q, lo, hi).astype(params.dtype)


def dequantize(q: np.ndarray, params: QuantParams) -> np.ndarray:
    """Int8/uint8 -> float32 with ``v = (q - zero_point) * scale``."""
    return ((np.asarray(q, dtype=np.float32) - np.float32(params.zero_point))
            * np.float32(params.scale)).astype(np.float32, copy=False)


def adapt_pixels(batch: np.ndarray, input_shape: tuple[int, int, int],
                 preprocessing: Preprocessing) -> np.ndarray:
    """A validated batch -> pixel values at the model's size, channels and channel order.

    No normalisation: uint8 stays uint8 when no resize or luma conversion is needed, otherwise the
    result is float32 pixel values in [0, 255].
    """
    height, width, channels = input_shape
    x = batch
    if x.shape[1:3] != (height, width):
        x = resize_frames(x, height, width, preprocessing.resize)
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
            return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
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
