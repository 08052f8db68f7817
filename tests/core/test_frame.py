import numpy as np
import pytest

from luckystack.core.errors import FrameError
from luckystack.core.frame import luminance, normalise_frame, to_uint16


@pytest.mark.parametrize(
    "dtype, white", [(np.uint8, 255), (np.uint16, 65535)]
)
def test_integer_frames_scale_to_unit_white(dtype, white):
    img = np.zeros((16, 16), dtype)
    img[4, 5] = white
    img[2, 2] = white // 2
    f = normalise_frame(img)
    assert f.white_level == white
    assert f.data.dtype == np.float32
    assert f.data[4, 5] == 1.0
    assert f.data[2, 2] == pytest.approx((white // 2) / white)


def test_rgba_drops_alpha_and_keeps_rgb():
    img = np.zeros((10, 12, 4), np.uint8)
    img[..., 0] = 255
    img[..., 3] = 7
    f = normalise_frame(img)
    assert f.data.shape == (10, 12, 3)
    assert f.is_colour
    np.testing.assert_array_equal(f.data[..., 0], 1.0)
    np.testing.assert_array_equal(f.data[..., 1:], 0.0)


def test_single_channel_3d_becomes_mono():
    f = normalise_frame(np.ones((9, 9, 1), np.uint16))
    assert f.data.shape == (9, 9)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((0, 5), np.uint8), "empty"),
        (np.zeros((5, 5, 2), np.uint8), "shape"),
        (np.zeros((20, 20), np.int32), "unsupported pixel type"),
        (np.full((20, 20), np.nan, np.float32), "NaN"),
        (np.zeros((4, 40), np.uint8), "too small"),
    ],
)
def test_bad_frames_raise_frame_error_with_reason(bad, match):
    with pytest.raises(FrameError, match=match):
        normalise_frame(bad)


def test_luminance_of_grey_rgb_is_the_grey_level():
    data = np.full((8, 8, 3), 0.4, np.float32)
    np.testing.assert_allclose(luminance(data), 0.4, rtol=1e-6)


def test_to_uint16_rounds_and_clips():
    data = np.array([[-0.5, 0.0, 0.5, 1.0, 2.0]], np.float32)
    np.testing.assert_array_equal(to_uint16(data), [[0, 0, 32768, 65535, 65535]])


def test_uint16_round_trip_is_exact():
    rng = np.random.default_rng(3)
    img = rng.integers(0, 65536, (32, 32), dtype=np.uint16)
    np.testing.assert_array_equal(to_uint16(normalise_frame(img).data), img)
