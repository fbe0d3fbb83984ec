"""Crafted and unusual image files: `edge.images.load_image` and ``edge-agent`` (issue 11.6/11.7)."""

from __future__ import annotations

import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _edge_common import need_model
from edge.cli import main
from edge.images import ImageError, load_image


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge size (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def test_decompression_bomb_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_claiming(60000, 60000))
    assert path.stat().st_size < 100
    with pytest.raises(ImageError, match="expected at most .* pixels, got"):
        load_image(path)


def test_big_png_is_capped_and_big_jpeg_is_decoded_reduced(tmp_path: Path) -> None:
    frame = np.random.default_rng(0).integers(0, 256, size=(1200, 1000, 3), dtype=np.uint8)
    Image.fromarray(frame).save(tmp_path / "big.png")
    with pytest.raises(ImageError, match="expected at most 500000 pixels, got 1000x1200"):
        load_image(tmp_path / "big.png", max_pixels=500_000)
    Image.fromarray(frame).save(tmp_path / "big.jpg", quality=90)
    reduced = load_image(tmp_path / "big.jpg", max_pixels=500_000)
    assert reduced.shape == (600, 500, 3) and reduced.dtype == np.uint8  # draft at 1/2 scale
    small = load_image(tmp_path / "big.jpg", target_size=(32, 32))
    assert small.shape == (150, 125, 3)  # 1/8 scale: still >= the model input


def test_fifo_and_directory_are_refused_without_hanging(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "camera.png"
    os.mkfifo(fifo)
    result: list[BaseException | None] = []

    def run() -> None:
        try:
            load_image(fifo)
            result.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            result.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "load_image blocked on a FIFO"
    assert isinstance(result[0], ImageError) and "expected a regular file, got a FIFO" in str(result[0])
    with pytest.raises(ImageError, match="expected a regular file, got a directory"):
        load_image(tmp_path)
    with pytest.raises(ImageError, match="expected a readable file"):
        load_image(tmp_path / "missing.png")


@pytest.mark.parametrize("suffix", ["png", "tif"])
def test_16_bit_grayscale_is_converted_by_its_real_depth(tmp_path: Path, suffix: str) -> None:
    values = np.array([[0, 257, 32896], [65535, 1000, 40000]], dtype=np.uint16)
    path = tmp_path / f"gray16.{suffix}"
    Image.fromarray(values).save(path)
    frame = load_image(path)
    expected = np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert frame.shape == (2, 3, 3) and frame.dtype == np.uint8
    np.testing.assert_array_equal(frame[..., 0], expected)
    assert frame[1, 0, 0] == 255 and frame[0, 0, 0] == 0  # not all white, not clipped


def test_float_and_32_bit_tiffs_are_refused(tmp_path: Path) -> None:
    Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(ImageError, match="32-bit float pixels"):
        load_image(tmp_path / "f.tif")
    Image.fromarray(np.full((4, 4), 70000, dtype=np.int32)).save(tmp_path / "i.tif")
    with pytest.raises(ImageError, match="32-bit depth"):
        load_image(tmp_path / "i.tif")


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    frame = np.zeros((2, 4, 3), dtype=np.uint8)
    frame[0, 0] = (255, 0, 0)  # red top-left
    img = Image.fromarray(frame)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(tmp_path / "rotated.png", exif=exif)
    upright = load_image(tmp_path / "rotated.png")
    assert upright.shape == (4, 2, 3)
    assert tuple(upright[0, 1]) == (255, 0, 0)  # top-left moved to top-right


def test_truncated_and_garbage_files_are_clear_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8) + 7).save(good)
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:60])
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\xff" * 50)
    for name in ("cut.png", "junk.png"):
        with pytest.raises(ImageError, match="expected a readable image file"):
            load_image(tmp_path / name)


def test_cli_reports_crafted_images_in_one_line(tmp_path: Path, capsys) -> None:
    import os

    common = ["--model", str(need_model()), "--state", str(tmp_path / "state")]
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_claiming(60000, 60000))
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    for path, pattern in ((bomb, "pixels"), (fifo, "got a FIFO")):
        assert main(["learn", *common, "--label", "0", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("edge-agent: error: image") and pattern in err and err.count("\n") == 1
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").glob("state-*.npz"))
