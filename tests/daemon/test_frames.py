import struct
import zlib

import cv2
import numpy as np
import pytest

from luckystack.core.errors import FrameError
from luckystack.daemon.frames import read_frame


def _write(path, img, ext=None):
    ok, buf = cv2.imencode(ext or path.suffix, img)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


@pytest.mark.parametrize("ext", [".png", ".tif", ".bmp", ".jpg"])
def test_reads_8bit_mono_and_colour(tmp_path, ext):
    mono = (np.arange(64 * 48) % 251).astype(np.uint8).reshape(48, 64)
    f = read_frame(_write(tmp_path / f"m{ext}", mono))
    assert f.image.shape == (48, 64) and f.image.dtype == np.uint8
    if ext != ".jpg":
        np.testing.assert_array_equal(f.image, mono)
    colour = np.zeros((48, 64, 3), np.uint8)
    colour[..., 2] = 200  # red in OpenCV's BGR
    c = read_frame(_write(tmp_path / f"c{ext}", colour))
    assert c.image.shape == (48, 64, 3)
    assert c.image[..., 0].mean() > 190  # red first: RGB order


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_reads_16bit_exactly(tmp_path, ext):
    img = np.random.default_rng(0).integers(0, 65536, (40, 50), dtype=np.uint16)
    f = read_frame(_write(tmp_path / f"a{ext}", img))
    assert f.image.dtype == np.uint16
    np.testing.assert_array_equal(f.image, img)


def test_corrupt_inputs_rejected_with_reason(tmp_path):
    (tmp_path / "zero.png").write_bytes(b"")
    with pytest.raises(FrameError, match="empty"):
        read_frame(tmp_path / "zero.png")
    (tmp_path / "text.png").write_text("hello, not an image")
    with pytest.raises(FrameError, match="cannot decode"):
        read_frame(tmp_path / "text.png")
    good = _write(tmp_path / "g.png", np.full((64, 64), 9, np.uint8)).read_bytes()
    (tmp_path / "trunc.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(FrameError):
        read_frame(tmp_path / "trunc.png")
    with pytest.raises(FrameError, match="vanished"):
        read_frame(tmp_path / "missing.png")
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(FrameError, match="directory"):
        read_frame(tmp_path / "dir.png")


def test_decompression_bomb_refused_before_decoding(tmp_path):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
    (tmp_path / "bomb.png").write_bytes(png)
    with pytest.raises(FrameError, match="decompression bomb"):
        read_frame(tmp_path / "bomb.png")


def _png(tmp_path, name="f.png"):
    img = (np.arange(48 * 64) % 251).astype(np.uint8).reshape(48, 64)
    path = tmp_path / name
    path.write_bytes(cv2.imencode(".png", img)[1].tobytes())
    return path, img


def test_a_file_above_the_byte_limit_is_refused_unread(tmp_path):
    path, img = _png(tmp_path)
    size = path.stat().st_size
    np.testing.assert_array_equal(read_frame(path, max_bytes=size).image, img)  # at the limit
    with pytest.raises(FrameError, match=rf"refused: f.png is {size:,} bytes, above the "
                                         rf"{size - 1:,} byte limit"):
        read_frame(path, max_bytes=size - 1)


def _stat_seen_short(monkeypatch, by: int):
    """fstat reports the file ``by`` bytes shorter: as if it grew after the stat."""
    import os

    from luckystack.daemon import frames

    real = os.fstat

    def fstat(fd):
        st = list(real(fd))
        st[6] -= by  # st_size
        return os.stat_result(st)

    monkeypatch.setattr(frames.os, "fstat", fstat)


def test_a_file_that_grew_after_the_stat_is_read_whole(tmp_path, monkeypatch):
    path, img = _png(tmp_path)
    _stat_seen_short(monkeypatch, 100)
    np.testing.assert_array_equal(read_frame(path).image, img)


def test_a_file_that_grew_beyond_the_limit_after_the_stat_is_refused(tmp_path, monkeypatch):
    path, _ = _png(tmp_path)
    size = path.stat().st_size
    _stat_seen_short(monkeypatch, 100)  # fstat: size - 100, under the limit
    with pytest.raises(FrameError, match=rf"f.png grew beyond the {size - 50:,} byte limit"):
        read_frame(path, max_bytes=size - 50)
