from datetime import datetime, timezone

import numpy as np
import pytest
from astropy.io import fits

from luckystack.core.bayer import debayer, mosaic, pattern_at
from luckystack.core.errors import FrameError
from luckystack.core.frame import normalise_frame
from luckystack.daemon.fits import read_fits

RNG = np.random.default_rng(7)


def _write(path, data, **cards):
    hdu = fits.PrimaryHDU(data)
    for key, value in cards.items():
        hdu.header[key.replace("_", "-")] = value
    hdu.writeto(path)
    return path


def test_uint8_round_trip(tmp_path):
    img = RNG.integers(0, 256, (30, 40), dtype=np.uint8)
    path = _write(tmp_path / "a.fits", img)
    assert fits.getheader(path)["BITPIX"] == 8
    image, white, pattern, when = read_fits(path)
    assert image.dtype == np.uint8 and white == 255
    np.testing.assert_array_equal(image, img)
    assert pattern is None and when is None


def test_uint16_with_bzero_round_trip(tmp_path):
    img = RNG.integers(0, 65536, (30, 40), dtype=np.uint16)
    img[0, 0], img[0, 1] = 0, 65535
    path = _write(tmp_path / "b.fits", img)
    header = fits.getheader(path)
    assert header["BITPIX"] == 16 and header["BZERO"] == 32768  # stored as signed + offset
    out = read_fits(path)
    assert out.image.dtype == np.uint16 and out.image.dtype.byteorder in "=|"
    assert out.white_level == 65535
    np.testing.assert_array_equal(out.image, img)
    frame = normalise_frame(out.image, white_level=out.white_level)
    assert frame.data.max() == 1.0


def test_signed_int16_without_bzero(tmp_path):
    img = RNG.integers(0, 4096, (20, 20), dtype=np.int16)
    img[3, 3] = -12  # bias-subtracted noise
    out = read_fits(_write(tmp_path / "c.fits", img))
    assert out.image.dtype == np.uint16 and out.white_level == 32767
    assert out.image[3, 3] == 0
    img[3, 3] = 0
    np.testing.assert_array_equal(out.image, img)


def test_int32_holding_16_bit_values(tmp_path):
    img = RNG.integers(0, 65536, (20, 24), dtype=np.int32)
    path = _write(tmp_path / "d.fits", img)
    assert fits.getheader(path)["BITPIX"] == 32
    out = read_fits(path)
    assert out.image.dtype == np.uint16 and out.white_level == 65535
    np.testing.assert_array_equal(out.image, img)


def test_int32_beyond_16_bits_becomes_float(tmp_path):
    img = RNG.integers(0, 2**30, (20, 24), dtype=np.int32)
    out = read_fits(_write(tmp_path / "e.fits", img))
    assert out.image.dtype == np.float32 and out.white_level == 2**31 - 1
    np.testing.assert_allclose(out.image, img, rtol=1e-7)


@pytest.mark.parametrize(("scale", "white"), [(1.0, 1), (60000.0, 65535), (2.0e6, 2_000_000)])
def test_float32_round_trip_and_white_level(tmp_path, scale, white):
    img = (RNG.random((20, 24)) * scale).astype(np.float32)
    img[0, 0] = scale
    path = _write(tmp_path / "f.fits", img)
    assert fits.getheader(path)["BITPIX"] == -32
    out = read_fits(path)
    assert out.image.dtype == np.float32 and out.white_level == white
    np.testing.assert_array_equal(out.image, img)


def test_float64_becomes_float32(tmp_path):
    img = RNG.random((10, 12))
    out = read_fits(_write(tmp_path / "g.fits", img))
    assert out.image.dtype == np.float32 and out.white_level == 1
    np.testing.assert_allclose(out.image, img, rtol=1e-7)


def test_rgb_cube_becomes_hw3(tmp_path):
    rgb = RNG.integers(0, 65536, (18, 22, 3), dtype=np.uint16)
    cube = np.moveaxis(rgb, -1, 0)  # FITS order: NAXIS3 = 3 planes R, G, B
    path = _write(tmp_path / "rgb.fits", cube)
    header = fits.getheader(path)
    assert (header["NAXIS1"], header["NAXIS2"], header["NAXIS3"]) == (22, 18, 3)
    out = read_fits(path)
    assert out.image.shape == (18, 22, 3) and out.image.flags.c_contiguous
    np.testing.assert_array_equal(out.image, rgb)
    assert out.bayer_pattern is None


def test_single_plane_cube_is_mono(tmp_path):
    img = RNG.integers(0, 256, (1, 12, 14), dtype=np.uint8)
    out = read_fits(_write(tmp_path / "one.fits", img))
    assert out.image.shape == (12, 14)


def test_bayer_pattern_and_date_obs(tmp_path):
    rgb = np.zeros((16, 20, 3), np.uint16)
    rgb[..., 0] = 50000  # red
    raw = mosaic(rgb, "GRBG")
    path = _write(
        tmp_path / "bayer.fits",
        raw,
        BAYERPAT="GRBG",
        DATE_OBS="2024-08-14T03:21:07.1234567",
        ROWORDER="TOP-DOWN",
    )
    image, white, pattern, when = read_fits(path)
    assert pattern == "GRBG" and white == 65535
    np.testing.assert_array_equal(image, raw)
    assert when == datetime(2024, 8, 14, 3, 21, 7, 123456, tzinfo=timezone.utc)
    colour = debayer(image, pattern)
    np.testing.assert_array_equal(colour[2:-2, 2:-2], rgb[2:-2, 2:-2])


@pytest.mark.parametrize("key", ["BAYER", "COLORTYP"])
def test_bayer_keyword_variants(tmp_path, key):
    path = _write(tmp_path / "v.fits", np.zeros((8, 8), np.uint8), **{key: "bggr"})
    assert read_fits(path).bayer_pattern == "BGGR"


def test_bayer_offsets_shift_the_pattern(tmp_path):
    path = _write(
        tmp_path / "o.fits", np.zeros((8, 8), np.uint8), BAYERPAT="RGGB", XBAYROFF=1, YBAYROFF=0
    )
    assert read_fits(path).bayer_pattern == "GRBG"


def test_non_bayer_values_and_unsupported_patterns(tmp_path):
    mono = _write(tmp_path / "m.fits", np.zeros((8, 8), np.uint8), BAYERPAT="NONE")
    assert read_fits(mono).bayer_pattern is None
    cmy = _write(tmp_path / "cmy.fits", np.zeros((8, 8), np.uint8), BAYERPAT="CYYM")
    with pytest.raises(FrameError, match="unsupported Bayer pattern BAYERPAT = 'CYYM'"):
        read_fits(cmy)


@pytest.mark.parametrize("height", [16, 15])
def test_bottom_up_files_are_flipped_with_their_bayer_pattern(tmp_path, height):
    rgb = np.zeros((height, 20, 3), np.uint8)
    rgb[: height // 2, :, 0] = 200  # red top half, blue bottom half
    rgb[height // 2 :, :, 2] = 200
    stored = mosaic(rgb, "RGGB")[::-1]  # written bottom row first ...
    pat_stored = pattern_at("RGGB", height - 1, 0)  # ... so its first stored pixel's pattern
    path = _write(tmp_path / "bu.fits", stored, BAYERPAT=pat_stored, ROWORDER="BOTTOM-UP")
    image, _, pattern, _ = read_fits(path)
    np.testing.assert_array_equal(image, mosaic(rgb, "RGGB"))
    assert pattern == "RGGB"
    colour = debayer(image, pattern)
    assert colour[2, 5, 0] == 200 and colour[height - 3, 5, 2] == 200  # red still on top
    forced = read_fits(path, row_order="top-down")
    np.testing.assert_array_equal(forced.image, stored)
    assert forced.bayer_pattern == pat_stored


def test_no_roworder_means_top_down(tmp_path):
    img = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    path = _write(tmp_path / "n.fits", img)
    np.testing.assert_array_equal(read_fits(path).image, img)
    np.testing.assert_array_equal(read_fits(path, row_order="bottom-up").image, img[::-1])


def test_date_obs_variants(tmp_path):
    cases = {
        "2024-08-14T03:21:07": datetime(2024, 8, 14, 3, 21, 7, tzinfo=timezone.utc),
        "2024-08-14T03:21:07Z": datetime(2024, 8, 14, 3, 21, 7, tzinfo=timezone.utc),
        "not a date": None,
    }
    for i, (text, want) in enumerate(cases.items()):
        path = _write(tmp_path / f"t{i}.fits", np.zeros((8, 8), np.uint8), DATE_OBS=text)
        assert read_fits(path).time == want
    split = _write(
        tmp_path / "split.fits",
        np.zeros((8, 8), np.uint8),
        DATE_OBS="2024-08-14",
        TIME_OBS="03:21:07.5",
    )
    assert read_fits(split).time == datetime(2024, 8, 14, 3, 21, 7, 500000, tzinfo=timezone.utc)


def test_image_in_an_extension_and_compressed(tmp_path):
    img = RNG.integers(0, 65536, (20, 24), dtype=np.uint16)
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(img)]).writeto(tmp_path / "ext.fits")
    np.testing.assert_array_equal(read_fits(tmp_path / "ext.fits").image, img)
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(img)]).writeto(tmp_path / "c.fits")
    np.testing.assert_array_equal(read_fits(tmp_path / "c.fits").image, img)


def test_truncated_file_is_a_frame_error(tmp_path):
    path = _write(tmp_path / "t.fits", RNG.integers(0, 65536, (100, 120), dtype=np.uint16))
    data = path.read_bytes()
    path.write_bytes(data[:-15000])
    with pytest.raises(FrameError, match=r"truncated FITS: t.fits needs 26880 bytes .* has 13800"):
        read_fits(path)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        pytest.param(b"", "empty file", id="empty"),
        pytest.param(b"hello" * 200, "corrupt or unreadable FITS", id="garbage"),
        pytest.param(
            b"SIMPLE  =                    T" + b" " * 50, "corrupt or unreadable", id="header-cut"
        ),
    ],
)
def test_corrupt_files_are_frame_errors(tmp_path, content, match):
    path = tmp_path / "x.fits"
    path.write_bytes(content)
    with pytest.raises(FrameError, match=match):
        read_fits(path)


def test_header_only_file_has_no_image(tmp_path):
    fits.PrimaryHDU().writeto(tmp_path / "h.fits")
    with pytest.raises(FrameError, match="no image data"):
        read_fits(tmp_path / "h.fits")


def test_unsupported_shapes_and_sizes(tmp_path):
    with pytest.raises(FrameError, match="3-plane RGB cube"):
        read_fits(_write(tmp_path / "four.fits", np.zeros((4, 8, 8), np.uint8)))
    with pytest.raises(FrameError, match="limit"):
        read_fits(_write(tmp_path / "big.fits", np.zeros((64, 64), np.uint8)), max_pixels=1000)


def test_missing_file_is_a_frame_error(tmp_path):
    with pytest.raises(FrameError, match="vanished"):
        read_fits(tmp_path / "nope.fits")
    with pytest.raises(FrameError, match="directory"):
        read_fits(tmp_path)
