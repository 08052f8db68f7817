import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from luckystack.core.bayer import (
    BAYER_PATTERNS,
    DEMOSAIC_METHODS,
    debayer,
    mosaic,
    normalise_pattern,
    pattern_at,
)
from luckystack.core.errors import FrameError

COLOUR = (200, 100, 30)  # distinct R, G, B so any channel mix-up shows


def _uniform(shape_hw, rgb, dtype=np.uint8):
    img = np.empty((*shape_hw, 3), dtype)
    img[...] = np.asarray(rgb, dtype)
    return img


def _disc(shape_hw=(64, 80), centre=(32, 40), radius=18, rgb=(220, 20, 10), dtype=np.uint8):
    yy, xx = np.mgrid[: shape_hw[0], : shape_hw[1]]
    inside = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2
    img = np.zeros((*shape_hw, 3), dtype)
    img[inside] = np.asarray(rgb, dtype)
    return img, inside


def test_mosaic_puts_each_colour_where_the_pattern_says():
    rgb = _uniform((4, 4), (1, 2, 3))
    expected = {
        "RGGB": [[1, 2], [2, 3]],
        "GRBG": [[2, 1], [3, 2]],
        "GBRG": [[2, 3], [1, 2]],
        "BGGR": [[3, 2], [2, 1]],
    }
    for pattern, block in expected.items():
        raw = mosaic(rgb, pattern)
        assert raw.shape == (4, 4) and raw.dtype == np.uint8
        np.testing.assert_array_equal(raw, np.tile(block, (2, 2)))


@pytest.mark.parametrize("pattern", BAYER_PATTERNS)
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_bilinear_debayer_recovers_a_uniform_colour_exactly(pattern, dtype):
    rgb = _uniform((16, 20), [c * (257 if dtype == np.uint16 else 1) for c in COLOUR], dtype)
    out = debayer(mosaic(rgb, pattern), pattern)
    assert out.shape == (16, 20, 3) and out.dtype == dtype
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize("pattern", BAYER_PATTERNS)
@pytest.mark.parametrize("method", DEMOSAIC_METHODS)
def test_every_method_recovers_the_colour_in_the_interior(pattern, method):
    rgb = _uniform((16, 20), COLOUR)
    out = debayer(mosaic(rgb, pattern), pattern, method=method)
    interior = out[3:-3, 3:-3].reshape(-1, 3).astype(int)
    assert np.abs(interior - COLOUR).max() <= 2, interior.mean(axis=0)


@pytest.mark.parametrize("actual", BAYER_PATTERNS)
@pytest.mark.parametrize("assumed", BAYER_PATTERNS)
def test_only_the_right_pattern_gives_the_right_colour(actual, assumed):
    # Guards the test above: a wrong pattern must visibly fail.
    out = debayer(mosaic(_uniform((16, 20), COLOUR), actual), assumed)
    right = bool((out[2:-2, 2:-2] == COLOUR).all())
    assert right == (actual == assumed)


@pytest.mark.parametrize("pattern", BAYER_PATTERNS)
@pytest.mark.parametrize("method", DEMOSAIC_METHODS)
def test_red_disc_stays_red(pattern, method):
    rgb, inside = _disc()
    out = debayer(mosaic(rgb, pattern), pattern, method=method)
    core = cv2.erode(inside.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    mean = out[core].mean(axis=0)
    assert mean[0] > 200 and mean[1] < 40 and mean[2] < 40, mean
    hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV)  # OpenCV hue: 0..180, red near 0/180
    hue = hsv[core][:, 0].astype(int)
    assert np.all((hue <= 8) | (hue >= 172)), np.unique(hue)
    outside = ~cv2.dilate(inside.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    assert out[outside].max() == 0


@pytest.mark.parametrize("pattern", BAYER_PATTERNS)
@pytest.mark.parametrize("method", DEMOSAIC_METHODS)
def test_uniform_grey_stays_grey(pattern, method):
    raw = np.full((15, 17), 117, np.uint8)  # odd sizes on purpose
    out = debayer(raw, pattern, method=method)
    assert out.shape == (15, 17, 3)
    np.testing.assert_array_equal(out, 117)


def test_sixteen_bit_keeps_full_precision():
    rgb = _uniform((12, 12), (40_001, 20_003, 9_007), np.uint16)
    out = debayer(mosaic(rgb, "RGGB"), "RGGB", method="ea")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out[2:-2, 2:-2], rgb[2:-2, 2:-2])


def test_odd_sizes_and_lowercase_patterns_are_accepted():
    rgb = _uniform((9, 13), COLOUR)
    out = debayer(mosaic(rgb, "gbrg"), "gbrg")
    assert out.shape == (9, 13, 3)
    np.testing.assert_array_equal(out[1:-1, 1:-1], rgb[1:-1, 1:-1])


def test_pattern_at_follows_crops_and_flips():
    rgb = np.random.default_rng(1).integers(0, 256, (10, 14, 3), dtype=np.uint8)
    for pattern in BAYER_PATTERNS:
        raw = mosaic(rgb, pattern)
        for y in range(3):
            for x in range(3):
                np.testing.assert_array_equal(
                    raw[y:, x:], mosaic(rgb[y:, x:], pattern_at(pattern, y, x))
                )
        for h in (10, 9):  # even and odd heights
            flipped_raw = raw[:h][::-1]
            np.testing.assert_array_equal(
                flipped_raw, mosaic(rgb[:h][::-1], pattern_at(pattern, h - 1, 0))
            )
    assert pattern_at("RGGB", 1, 0) == "GBRG"
    assert pattern_at("RGGB", 0, 1) == "GRBG"
    assert pattern_at("RGGB", 1, 1) == "BGGR"
    assert pattern_at("RGGB", 2, -2) == "RGGB"


@pytest.mark.parametrize("bad", ["CYYM", "RGBG", "", "RGGBX", None, 8])
def test_bad_patterns_are_frame_errors(bad):
    with pytest.raises(FrameError, match="Bayer pattern"):
        debayer(np.zeros((4, 4), np.uint8), bad)


def test_invalid_inputs_are_refused_clearly():
    with pytest.raises(FrameError, match="2-D"):
        debayer(np.zeros((4, 4, 3), np.uint8), "RGGB")
    with pytest.raises(FrameError, match="too small"):
        debayer(np.zeros((1, 8), np.uint8), "RGGB")
    with pytest.raises(FrameError, match="float32"):
        debayer(np.zeros((4, 4), np.float32), "RGGB")
    with pytest.raises(FrameError, match="VNG"):
        debayer(np.zeros((4, 4), np.uint16), "RGGB", method="vng")
    with pytest.raises(ValueError, match="method"):
        debayer(np.zeros((4, 4), np.uint8), "RGGB", method="ahd")
    with pytest.raises(FrameError, match="RGB image"):
        mosaic(np.zeros((4, 4), np.uint8), "RGGB")
    assert normalise_pattern(" bggr ") == "BGGR"


@settings(deadline=None, max_examples=50)
@given(
    h=st.integers(2, 24),
    w=st.integers(2, 24),
    pattern=st.sampled_from(BAYER_PATTERNS),
    method=st.sampled_from(DEMOSAIC_METHODS),
    seed=st.integers(0, 2**32 - 1),
)
def test_debayer_keeps_shape_dtype_and_does_not_mutate(h, w, pattern, method, seed):
    raw = np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)
    before = raw.copy()
    out = debayer(raw, pattern, method=method)
    assert out.shape == (h, w, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(raw, before)
