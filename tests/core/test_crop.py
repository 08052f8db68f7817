import numpy as np
import pytest

from luckystack.core.crop import (
    CropBox,
    box_around,
    extract_box,
    extract_shifted,
    find_disc,
    locate_planet,
)
from luckystack.core.errors import FrameError
from luckystack.core.frame import normalise_frame
from luckystack.core.simulate import PlanetModel, SeeingModel, simulate_session


@pytest.fixture(scope="module")
def sessions():
    out = []
    for seed, center in ((1, (100.0, 150.0)), (2, (130.0, 190.0)), (3, (90.0, 120.0))):
        out.append(
            simulate_session(
                6, shape=(240, 320), model=PlanetModel(radius_px=50.0),
                seeing=SeeingModel(jitter_px=3.0), seed=seed, center_yx=center,
            )
        )
    return out


def _true_center(session, i):
    cy, cx = session.center_yx
    dy, dx = session.shifts_yx[i]
    return cy + dy, cx + dx


def test_origin_crop_contains_disc_centre_within_2px(sessions):
    for s in sessions:
        for i, frame in enumerate(s.frames):
            loc = locate_planet(normalise_frame(frame).data)
            ty, tx = _true_center(s, i)
            cy, cx = loc.disc.center_yx
            assert abs(cy - ty) <= 2 and abs(cx - tx) <= 2
            assert loc.box.y0 <= ty < loc.box.y1 and loc.box.x0 <= tx < loc.box.x1
            assert not loc.touches_edge
            # the disc's width is the diameter, within the blur
            assert loc.disc.width == pytest.approx(100, abs=8)


def test_find_disc_centre_of_gravity_within_half_pixel(sessions):
    for s in sessions:
        for i, frame in enumerate(s.frames):
            d = find_disc(normalise_frame(frame).data)
            ty, tx = _true_center(s, i)
            assert d.center_yx == pytest.approx((ty, tx), abs=0.5)
            assert d.disc.width == pytest.approx(100, abs=8)


def test_blank_and_black_frames_have_no_planet():
    with pytest.raises(FrameError, match="blank"):
        locate_planet(np.zeros((64, 64), np.float32))
    with pytest.raises(FrameError, match="blank"):
        find_disc(np.full((64, 64), 0.3, np.float32))
    noise = np.random.default_rng(0).normal(0.01, 0.002, (64, 64)).astype(np.float32)
    with pytest.raises(FrameError, match="no planet"):
        find_disc(noise)
    with pytest.raises(FrameError, match="no planet"):
        locate_planet(noise)


def test_clipped_planet_touches_edge():
    s = simulate_session(3, shape=(200, 200), model=PlanetModel(radius_px=40.0),
                         seed=4, center_yx=(100.0, 10.0))
    for frame in s.frames:
        data = normalise_frame(frame).data
        assert find_disc(data).touches_edge
        assert locate_planet(data).touches_edge


def test_box_around_is_centred_and_sized():
    b = box_around((50.0, 60.0), (20, 30))
    assert (b.height, b.width) == (20, 30)
    assert b.center_yx == pytest.approx((50.0, 60.0), abs=0.5)


def test_extract_box_pads_outside_with_zero():
    data = np.arange(100, dtype=np.float32).reshape(10, 10)
    out = extract_box(data, CropBox(-2, -2, 3, 3))
    assert out.shape == (5, 5)
    assert out[:2].sum() == 0 and out[:, :2].sum() == 0
    np.testing.assert_array_equal(out[2:, 2:], data[:3, :3])


def test_extract_shifted_integer_shift_equals_offset_box():
    rng = np.random.default_rng(1)
    data = rng.random((40, 50)).astype(np.float32)
    box = CropBox(10, 10, 30, 30)
    moved = extract_shifted(data, box, (-3.0, 2.0))
    np.testing.assert_allclose(moved, extract_box(data, CropBox(13, 8, 33, 28)), atol=1e-5)


def test_crop_stays_in_bounds_near_edges():
    rng = np.random.default_rng(2)
    data = rng.random((30, 30)).astype(np.float32)
    for center in ((0.0, 0.0), (29.0, 29.0), (15.0, -5.0)):
        box = box_around(center, (16, 16))
        assert extract_box(data, box).shape == (16, 16)
        assert box.clipped(data.shape).inside(data.shape)


def test_background_noise_is_std_of_darker_half():
    from luckystack.core.crop import _background_noise

    rng = np.random.default_rng(6)
    sky = (20 + rng.normal(0, 1.5, (160, 213))).round().astype(np.float32) / 255
    q25, med = np.percentile(sky, (25, 50))
    ref = max((med - q25) / 0.6745, float(sky[sky <= med].std()), 1e-5)
    assert _background_noise(sky, (q25, med)) == pytest.approx(ref, rel=1e-5)
    assert _background_noise(sky) == pytest.approx(ref, rel=1e-5)


def test_find_disc_takes_the_planet_not_a_moon():
    s = simulate_session(2, shape=(480, 640), model=PlanetModel(radius_px=100.0), seed=7,
                         center_yx=(240.0, 300.0))
    for i, frame in enumerate(s.frames):
        data = normalise_frame(frame).data.copy()
        data[40:52, 560:572] = data.max()  # a bright moon far from the disc
        d = find_disc(data)
        ty, tx = _true_center(s, i)
        assert d.center_yx == pytest.approx((ty, tx), abs=0.5)
        assert d.disc.width == pytest.approx(200, abs=12)
        assert not d.touches_edge
