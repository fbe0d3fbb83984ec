"""Safe decoding of image files to uint8 RGB frames (Pillow, imported lazily).

`load_image` is the one place the edge side (and the simulator's folder sources) turns an untrusted
file into pixels. It never hangs, never allocates without a bound and never casts silently:

* only regular files are opened (a FIFO, device or directory is refused without blocking), and at
  most ``max_file_bytes`` of them;
* decoding stays within a memory budget, `DECODE_BUDGET_BYTES`: the decoded size is capped at
  ``max_pixels`` (default `MAX_PIXELS` = the budget / `PEAK_BYTES_PER_PIXEL`, the measured peak of a
  decode per pixel) *before* decoding; a JPEG larger than the cap, or than ``target_size``, is
  decoded at a reduced scale (``draft``: 1/2, 1/4, 1/8) instead of in full, so a 100-megapixel
  photo is read at 1/4 scale rather than refused; beyond that (or past Pillow's own bomb limit,
  2 x ``Image.MAX_IMAGE_PIXELS``) the file is an `ImageError`;
* pixel values are converted by the image's real bit depth: 16-bit grayscale (``I;16`` or ``I`` from
  a 16-bit PNG/TIFF) is scaled with ``round(v * 255 / (2**bits - 1))``; 32-bit integer images of
  unknown depth and float images (``F``, e.g. float TIFFs) are refused, since no range can be
  assumed for them;
* the EXIF orientation is applied, so a rotated phone photo is seen upright.

Every failure is an `ImageError` (an `InputError`, so a ``ValueError``) naming the file, expected
vs got.

Example:
    >>> import tempfile, numpy as np
    >>> from PIL import Image
    >>> path = tempfile.mkdtemp() + "/gray16.png"
    >>> Image.fromarray(np.full((2, 3), 65535, dtype=np.uint16)).save(path)
    >>> frame = load_image(path)
    >>> frame.shape, frame.dtype, int(frame.max())
    ((2, 3, 3), dtype('uint8'), 255)
"""

from __future__ import annotations

import os
import stat
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import InputError

#: Most memory one decode may add to the process (bytes): a quarter of a 1 GB Raspberry Pi 4.
DECODE_BUDGET_BYTES = 256 << 20
#: Peak bytes per decoded pixel (Pillow's 4-byte pixels, the RGB array and the decoder's buffers;
#: measured ~10 for RGB and ~14 for palette/RGBA PNGs: tests/test_hardening_round2.py; 20 leaves room
#: for the allocator: at 16 one loaded test run went over the budget).
PEAK_BYTES_PER_PIXEL = 20
#: Default cap on decoded pixels (width x height), from the budget: 13.4 Mpx.
MAX_PIXELS = DECODE_BUDGET_BYTES // PEAK_BYTES_PER_PIXEL
#: Default cap on the bytes of an image file.
MAX_FILE_BYTES = 256 << 20
#: Modes that `Image.convert("RGB")` maps exactly (8 bits per channel or fewer).
_EIGHT_BIT_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK",
                              "YCbCr", "LAB", "HSV"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


class ImageError(InputError):
    """An image file that cannot be decoded safely and exactly."""


def _open_regular(path: Path, max_file_bytes: int) -> Any:
    """A binary file object of a regular file; never blocks on a FIFO or a device."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise ImageError(f"image {path}: expected a readable file, got {type(exc).__name__}: "
                         f"{exc.strerror or exc}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = ("a FIFO" if stat.S_ISFIFO(info.st_mode) else "a directory" if stat.S_ISDIR(info.st_mode)
                    else "a device or socket")
            raise ImageError(f"image {path}: expected a regular file, got {kind}")
        if info.st_size > max_file_bytes:
            raise ImageError(f"image {path}: expected at most {max_file_bytes} bytes, got {info.st_size}")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _png_bit_depth(handle: Any) -> int | None:
    """The IHDR bit depth of a PNG file (None for other files)."""
    handle.seek(0)
    head = handle.read(29)
    handle.seek(0)
    if len(head) >= 25 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return int(head[24])
    return None


def _real_bits(img: Any, handle: Any) -> int | None:
    """Bits per sample of an integer image as stored in the file, when the file says so."""
    if img.format == "PNG":
        return _png_bit_depth(handle)
    if img.format == "TIFF":
        bits = img.tag_v2.get(258) if hasattr(img, "tag_v2") else None
        if isinstance(bits, (tuple, list)):
            bits = bits[0] if bits else None
        return int(bits) if isinstance(bits, int) else None
    if img.mode in _SIXTEEN_BIT_MODES:
        return 16
    return None


def _to_uint8(img: Any, bits: int | None, path: Path) -> np.ndarray:
    """Decoded Pillow image -> (H, W, 3) uint8 RGB, converting by the real bit depth ``bits``."""
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8)  # one copy of the pixels (convert would add another)
    if mode in _EIGHT_BIT_MODES:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    if mode == "F":
        raise ImageError(f"image {path}: expected integer pixels (8 or 16 bits), got 32-bit float pixels "
                         f"({img.format} mode F); convert it to 8-bit explicitly, its range is unknown")
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        if bits is None or not 1 <= bits <= 16:
            raise ImageError(f"image {path}: expected 8- or 16-bit integer pixels, got mode {mode} with "
                             f"{'an unknown' if bits is None else bits}-bit depth; convert it explicitly")
        values = np.asarray(img)
        top = (1 << bits) - 1
        if values.size and (int(values.min()) < 0 or int(values.max()) > top):
            raise ImageError(f"image {path}: expected {bits}-bit values in [0, {top}], got "
                             f"[{values.min()}, {values.max()}]")
        scaled = values.astype(np.uint32)  # v * 255 < 2**24: exact in uint32, in place (memory budget)
        del values
        scaled *= 255
        scaled += top // 2
        scaled //= top
        rgb = np.empty(scaled.shape + (3,), np.uint8)
        rgb[...] = scaled[..., np.newaxis]
        return rgb
    raise ImageError(f"image {path}: expected an 8-bit or 16-bit image, got Pillow mode {mode!r}")


def load_image(path: str | os.PathLike[str], *, max_pixels: int = MAX_PIXELS,
               target_size: tuple[int, int] | None = None,
               max_file_bytes: int = MAX_FILE_BYTES) -> np.ndarray:
    """Decode one image file to a ``(H, W, 3)`` uint8 RGB array, safely (see the module docstring).

    Args:
        path: the image file.
        max_pixels: refuse images with more decoded pixels than this (JPEGs are reduced instead).
        target_size: ``(height, width)`` the caller will resize to; a JPEG is then decoded at the
            smallest reduced scale (1/2, 1/4, 1/8) that is still at least this size.
        max_file_bytes: refuse files larger than this.

    Raises:
        ImageError: not a regular file, too large, undecodable, or pixels of an unknown range.
    """
    from PIL import Image, ImageOps

    path = Path(path)
    with _open_regular(path, int(max_file_bytes)) as handle:
        try:
            with warnings.catch_warnings():
                # the caps below are stricter and checked before decoding (a JPEG is reduced first)
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(handle) as img:
                    width, height = img.size
                    if img.format == "JPEG":
                        want = target_size or (1, 1)
                        scale = 1
                        while (scale < 8 and width // (scale * 2) >= want[1] and height // (scale * 2) >= want[0]
                               and (target_size is not None or width * height // (scale * scale) > max_pixels)):
                            scale *= 2
                        if scale > 1:
                            img.draft("RGB", (max(1, width // scale), max(1, height // scale)))
                            width, height = img.size
                    if width * height > max_pixels:
                        raise ImageError(f"image {path}: expected at most {max_pixels} pixels, got "
                                         f"{img.size[0]}x{img.size[1]} = {img.size[0] * img.size[1]}")
                    img.load()
                    bits = _real_bits(img, handle)  # before exif_transpose, which drops the format
                    ImageOps.exif_transpose(img, in_place=True)  # no copy of the pixels
                    return _to_uint8(img, bits, path)
        except ImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageError(f"image {path}: expected at most {max_pixels} pixels, got a decompression "
                             f"bomb ({exc})") from exc
        except (OSError, ValueError, SyntaxError, EOFError, struct.error, MemoryError, IndexError,
                KeyError, TypeError, ZeroDivisionError) as exc:
            # Pillow's plugins raise all of these on malformed files (SyntaxError: bad header).
            raise ImageError(f"image {path}: expected a readable image file, got {type(exc).__name__}: "
                             f"{exc}") from exc


def load_images(paths: list[str] | tuple[str, ...], *, max_pixels: int = MAX_PIXELS,
                target_size: tuple[int, int] | None = None) -> list[np.ndarray]:
    """`load_image` for each path, in order."""
    return [load_image(p, max_pixels=max_pixels, target_size=target_size) for p in paths]
