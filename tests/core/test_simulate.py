"""Known-answer tests of the capture-session simulator."""

import doctest
import math

import cv2
import numpy as np
import pytest
from scipy import ndimage

from luckystack.core import simulate
from luckystack.core.simulate import (
    BAD_FRAME_KINDS,
    PlanetModel,
    SeeingModel,
    random_warp_field,
    render_planet,
    render_planet_sprite,
    simulate_frame,
    simulate_session,
)

SHAPE = (160, 200)
SMALL = PlanetModel(radius_px=40.0)
# camera so good that frames are the expected image to ~1e-4 of white
NOISELESS = dict(photons_at_white=1e9, read_noise=0.0, background=0.0)


def centroid(image):
    """Brightness-weighted centroid (row, col) of a 2-D image."""
    image = np.asarray(image, np.float64)
    rows, cols = np.indices(image.shape)
    total = image.sum()
    return np.array([(rows * image).sum() / total, (cols * image).sum() / total])


def hf_energy(image):
    """Mean squared Laplacian: high-frequency energy."""
    return float(np.mean(cv2.Laplacian(np.asarray(image, np.float64), cv2.CV_64F) ** 2))


@pytest.fixture(scope="module")
def session():
    return simulate_session(
        24,
        shape=SHAPE,
        model=SMALL,
        bad_frames={"black": 1, "clipped": 2, "blurred": 1},
        seed=11,
    )


# ---------------------------------------------------------------- determinism


def test_same_seed_gives_identical_session():
    kwargs = dict(shape=SHAPE, model=SMALL, bad_frames={"clipped": 1}, seed=5)
    a = simulate_session(6, **kwargs)
    b = simulate_session(6, **kwargs)
    assert all(np.array_equal(x, y) for x, y in zip(a.frames, b.frames, strict=True))
    np.testing.assert_array_equal(a.truth, b.truth)
    np.testing.assert_array_equal(a.shifts_yx, b.shifts_yx)
    np.testing.assert_array_equal(a.sigmas_px, b.sigmas_px)
    assert a.kinds == b.kinds


def test_different_seed_gives_different_session():
    a = simulate_session(4, shape=SHAPE, model=SMALL, seed=1)
    b = simulate_session(4, shape=SHAPE, model=SMALL, seed=2)
    assert not np.array_equal(a.frames[0], b.frames[0])
    assert not np.array_equal(a.shifts_yx, b.shifts_yx)
    assert not np.array_equal(a.truth, b.truth)  # different cloud texture


def test_render_planet_is_seeded():
    a = render_planet(SHAPE, (80, 100), SMALL, seed=3)
    np.testing.assert_array_equal(a, render_planet(SHAPE, (80, 100), SMALL, seed=3))
    assert not np.array_equal(a, render_planet(SHAPE, (80, 100), SMALL, seed=4))


def test_global_random_state_is_untouched():
    np.random.seed(123)
    expected = np.random.random()
    np.random.seed(123)
    simulate_session(2, shape=SHAPE, model=SMALL, seed=0)
    assert np.random.random() == expected


# ---------------------------------------------------------- dtypes and levels


@pytest.mark.parametrize(
    ("bit_depth", "dtype", "white"),
    [(8, np.uint8, 255), (12, np.uint16, 65535), (16, np.uint16, 65535)],
)
def test_dtype_shape_and_white_level(bit_depth, dtype, white):
    s = simulate_session(3, shape=SHAPE, model=SMALL, bit_depth=bit_depth, seed=2)
    assert s.white_level == white
    assert len(s.frames) == 3
    for frame in s.frames:
        assert frame.dtype == dtype
        assert frame.shape == SHAPE
    assert s.truth.shape == SHAPE and s.truth.dtype == np.float64
    if bit_depth == 12:
        stacked = np.stack(s.frames)
        assert np.all(stacked % 16 == 0)
        assert stacked.max() <= 4095 * 16


def test_bit_depths_agree_on_brightness():
    # same seed: same planet, shifts and noise draws; only the quantisation differs
    means = [
        np.mean(simulate_session(2, shape=SHAPE, model=SMALL, bit_depth=b, seed=9).frames[0])
        / (255 if b == 8 else 65535)
        for b in (8, 12, 16)
    ]
    np.testing.assert_allclose(means, means[2], atol=2e-3)


def test_colour_session_is_rgb():
    model = PlanetModel(radius_px=40.0, colour=(1.0, 0.9, 0.7))
    s = simulate_session(2, shape=SHAPE, model=model, seed=1)
    assert s.truth.shape == SHAPE + (3,)
    assert s.frames[0].shape == SHAPE + (3,)
    disc = s.truth[..., 0] > 0.05
    # belts are browner than a plain tint: the channels are not proportional
    ratio = s.truth[..., 2][disc] / s.truth[..., 0][disc]
    assert ratio.std() > 0.01
    assert ratio.mean() < 0.7


# ----------------------------------------------------------------- the truth


def test_truth_range_background_and_area():
    model = PlanetModel()
    truth = render_planet((240, 320), (119.5, 159.5), model)
    assert truth.min() >= 0.0 and truth.max() <= 1.0
    assert truth[0, 0] == 0.0 and truth[-1, -1] == 0.0
    assert np.all(truth[:, :95] == 0.0)  # more than a radius plus a pixel left of centre
    area = math.pi * model.radius_px**2 * (1 - model.oblateness)
    assert np.count_nonzero(truth > 0) == pytest.approx(area, rel=0.03)
    # the zones at disc centre sit at the requested brightness
    assert np.median(truth[115:125, 150:170]) == pytest.approx(model.brightness, rel=0.1)


def test_plain_disc_has_exact_area_and_limb_darkening():
    model = PlanetModel(radius_px=50.0, band_contrast=0.0, limb_darkening=0.0, brightness=0.5)
    truth = render_planet((128, 128), (63.3, 64.1), model)
    area = math.pi * 50.0**2 * (1 - model.oblateness)
    assert truth.sum() / 0.5 == pytest.approx(area, rel=2e-3)
    assert truth[63, 64] == pytest.approx(0.5)
    np.testing.assert_allclose(centroid(truth), (63.3, 64.1), atol=1e-3)

    darkened = render_planet((128, 128), (63.5, 63.5), PlanetModel(radius_px=50.0, band_contrast=0))
    # linear law with u = 0.6: I(mu) = 1 - 0.6 (1 - mu); at x = 0.8 R, mu = 0.6
    centre = darkened[63:65, 63:65].mean()
    x = 63.5 + 0.8 * 50.0
    at_08 = np.interp(x, np.arange(128), darkened[63:65].mean(axis=0))
    assert at_08 / centre == pytest.approx(1 - 0.6 * (1 - 0.6), rel=0.02)


def test_oblateness_shapes_the_disc():
    model = PlanetModel(radius_px=50.0, oblateness=0.1, band_contrast=0.0)
    truth = render_planet((128, 128), (63.5, 63.5), model)
    rows = np.flatnonzero(truth[:, 63] > 0.05)
    cols = np.flatnonzero(truth[63, :] > 0.05)
    assert rows.size == pytest.approx(2 * 45, abs=2)
    assert cols.size == pytest.approx(2 * 50, abs=2)


def test_planet_off_frame_renders_black():
    assert not render_planet((50, 50), (500.0, 25.0), SMALL).any()


# ----------------------------------------------------- geometry of the frames


def test_unblurred_noiseless_frames_are_shifted_truth():
    seeing = SeeingModel(sigma_min_px=0.0, sigma_max_px=0.0, **NOISELESS)
    s = simulate_session(12, shape=SHAPE, model=SMALL, seeing=seeing, bit_depth=16, seed=4)
    assert np.all(s.sigmas_px == 0.0)
    truth_centroid = centroid(s.truth)
    for frame, shift in zip(s.frames, s.shifts_yx, strict=True):
        error = centroid(frame) - truth_centroid - shift
        assert np.all(np.abs(error) < 0.05), error
    # the shifts are real, sub-pixel and a few pixels large
    assert np.std(s.shifts_yx) > 1.0
    assert np.any(np.abs(s.shifts_yx - np.round(s.shifts_yx)) > 0.2)


def test_blurred_noiseless_frames_keep_the_centroid():
    seeing = SeeingModel(sigma_min_px=1.0, sigma_max_px=3.0, **NOISELESS)
    s = simulate_session(8, shape=SHAPE, model=SMALL, seeing=seeing, bit_depth=16, seed=6)
    for frame, shift in zip(s.frames, s.shifts_yx, strict=True):
        np.testing.assert_allclose(centroid(frame), centroid(s.truth) + shift, atol=0.05)


def test_shift_follows_scipy_ndimage_convention():
    sprite = render_planet_sprite(SMALL, seed=2)
    center = (79.5, 99.5)
    truth = render_planet(SHAPE, center, SMALL, seed=2)
    shift = (2.3, -4.6)
    frame = simulate_frame(
        sprite, SHAPE, shift_yx=shift, sigma_px=1.0, seeing=SeeingModel(background=0)
    )
    blurred = ndimage.gaussian_filter(truth, 1.0)
    forward = np.abs(frame - ndimage.shift(blurred, shift, order=3)).mean()
    backward = np.abs(frame - ndimage.shift(blurred, (-shift[0], -shift[1]), order=3)).mean()
    assert forward < 2e-3
    assert backward > 10 * forward


def test_frame_at_zero_shift_matches_truth():
    sprite = render_planet_sprite(SMALL, seed=8)
    truth = render_planet(SHAPE, (79.5, 99.5), SMALL, seed=8)
    frame = simulate_frame(sprite, SHAPE, seeing=SeeingModel(background=0.0))
    assert np.abs(frame - truth).mean() < 5e-4
    assert np.abs(frame - truth).max() < 0.05


def test_frame_adds_background_and_noise():
    sprite = render_planet_sprite(SMALL)
    seeing = SeeingModel(background=0.05)
    expected = simulate_frame(sprite, SHAPE, sigma_px=1.0, seeing=seeing)
    assert expected[0, 0] == pytest.approx(0.05)
    noisy = simulate_frame(sprite, SHAPE, sigma_px=1.0, seeing=seeing, rng=np.random.default_rng(0))
    residual = (noisy - expected)[:20, :20]
    assert residual.std() == pytest.approx(math.sqrt(0.05 * 2000 + 4) / 2000, rel=0.1)


def test_larger_sigma_has_less_high_frequency_energy():
    sprite = render_planet_sprite(SMALL)
    energies = [
        hf_energy(simulate_frame(sprite, SHAPE, sigma_px=sigma, seeing=SeeingModel(background=0)))
        for sigma in (0.0, 0.8, 1.5, 3.0)
    ]
    assert energies == sorted(energies, reverse=True)
    assert energies[0] > 4 * energies[-1]


def test_session_sharpness_ranks_like_sigma():
    seeing = SeeingModel(photons_at_white=1e6, read_noise=0.0)
    s = simulate_session(16, shape=SHAPE, model=SMALL, seeing=seeing, bit_depth=16, seed=3)
    energy = [hf_energy(frame / s.white_level) for frame in s.frames]
    rank_sigma = np.argsort(np.argsort(s.sigmas_px))
    rank_energy = np.argsort(np.argsort(energy))
    assert np.corrcoef(rank_sigma, rank_energy)[0, 1] < -0.9


def test_sigmas_follow_the_lucky_fraction():
    seeing = SeeingModel(sigma_min_px=1.0, sigma_max_px=3.0, lucky_fraction=0.2)
    sigmas = simulate._draw_sigmas(np.random.default_rng(0), 20000, seeing)
    assert sigmas.min() >= 1.0 and sigmas.max() <= 3.0
    assert np.mean(sigmas <= 1.2) == pytest.approx(0.2, abs=0.015)
    assert np.mean(sigmas > 2.5) > 0.15  # the rest spreads up to sigma_max


def test_drift_without_jitter_is_linear():
    seeing = SeeingModel(jitter_px=0.0, drift_px_per_frame=(0.5, -0.25))
    s = simulate_session(5, shape=SHAPE, model=SMALL, seeing=seeing, seed=0)
    np.testing.assert_allclose(s.shifts_yx, np.arange(5)[:, None] * [[0.5, -0.25]])


def test_correlated_jitter_keeps_its_rms():
    seeing = SeeingModel(jitter_px=2.0, jitter_correlation=0.9)
    jitter = seeing.jitter_px * simulate._ar1(np.random.default_rng(1), (8000, 2), 0.9)
    assert jitter.std() == pytest.approx(2.0, rel=0.15)
    lag1 = np.corrcoef(jitter[1:, 0], jitter[:-1, 0])[0, 1]
    assert lag1 == pytest.approx(0.9, abs=0.03)


def test_warp_distorts_but_keeps_shifts_and_sigmas():
    base = dict(shape=SHAPE, model=SMALL, bit_depth=16, seed=7)
    still = simulate_session(3, seeing=SeeingModel(**NOISELESS), **base)
    warped = simulate_session(3, seeing=SeeingModel(warp_px=0.8, **NOISELESS), **base)
    np.testing.assert_array_equal(still.shifts_yx, warped.shifts_yx)
    np.testing.assert_array_equal(still.sigmas_px, warped.sigmas_px)
    for a, b in zip(still.frames, warped.frames, strict=True):
        assert np.abs(a.astype(float) - b).max() > 0.05 * 65535


def test_random_warp_field_is_zero_mean_with_rms_over_mask():
    mask = np.zeros((100, 120), bool)
    mask[20:80, 30:90] = True
    field = random_warp_field(
        (100, 120), rms_px=0.7, scale_px=20.0, rng=np.random.default_rng(0), mask=mask
    )
    assert field.shape == (2, 100, 120)
    np.testing.assert_allclose(field[:, mask].mean(axis=1), 0.0, atol=1e-5)
    assert np.sqrt(np.mean(field[:, mask] ** 2)) == pytest.approx(0.7, rel=1e-4)
    # smooth on the requested scale: strongly correlated over a few pixels, much less
    # over a few scale lengths
    dy = field[0]
    assert np.corrcoef(dy[:, :-3].ravel(), dy[:, 3:].ravel())[0, 1] > 0.95
    assert np.corrcoef(dy[:, :-60].ravel(), dy[:, 60:].ravel())[0, 1] < 0.6


# ----------------------------------------------------------------- bad frames


def test_kinds_hold_the_requested_bad_frames(session):
    assert len(session.kinds) == 24
    assert session.kinds.count("black") == 1
    assert session.kinds.count("clipped") == 2
    assert session.kinds.count("blurred") == 1
    assert session.kinds.count("good") == 20
    assert set(session.kinds) <= {"good", *BAD_FRAME_KINDS}


def test_black_frame_has_no_planet(session):
    index = session.kinds.index("black")
    assert np.isinf(session.sigmas_px[index])
    assert np.all(np.isnan(session.shifts_yx[index]))
    frame = session.frames[index] / session.white_level
    assert frame.max() < 0.1
    assert frame.mean() == pytest.approx(0.01, abs=0.003)


def test_clipped_frame_disc_touches_the_edge(session):
    for index in (i for i, kind in enumerate(session.kinds) if kind == "clipped"):
        frame = session.frames[index] / session.white_level
        edges = [frame[0], frame[-1], frame[:, 0], frame[:, -1]]
        assert max(np.count_nonzero(edge > 0.2) for edge in edges) > 20
        # the planet centre sits on the frame boundary: about half the disc is outside
        center = np.asarray(session.center_yx) + session.shifts_yx[index]
        distance = min(center[0] + 0.5, SHAPE[0] - 0.5 - center[0],
                       center[1] + 0.5, SHAPE[1] - 0.5 - center[1])
        assert abs(distance) < 1e-9
        truth_flux = session.truth.sum()
        flux = np.clip(frame - 0.01, 0, None).sum()
        assert 0.3 * truth_flux < flux < 0.7 * truth_flux


def test_blurred_frame_is_the_blurriest(session):
    index = session.kinds.index("blurred")
    assert session.sigmas_px[index] == max(4 * SeeingModel().sigma_max_px, 8.0)
    good = [i for i, kind in enumerate(session.kinds) if kind == "good"]
    energy = {i: hf_energy(cv2.GaussianBlur(session.frames[i] / 255.0, (0, 0), 1.0))
              for i in good + [index]}
    assert energy[index] < min(energy[i] for i in good)


def test_best_indices_are_the_sharpest_good_frames(session):
    best = session.best_indices(5)
    assert len(best) == 5
    assert all(session.kinds[i] == "good" for i in best)
    sigmas = session.sigmas_px[best]
    assert np.all(np.diff(sigmas) >= 0)
    others = [i for i, kind in enumerate(session.kinds) if kind == "good" and i not in best]
    assert sigmas.max() <= session.sigmas_px[others].min()
    assert len(session.best_indices(100)) == 20
    assert len(session.best_indices(0)) == 0
    with pytest.raises(ValueError, match="non-negative"):
        session.best_indices(-1)


def test_bad_frames_can_fill_the_session():
    s = simulate_session(2, shape=SHAPE, model=SMALL, bad_frames={"black": 2})
    assert s.kinds == ("black", "black")
    assert len(s.best_indices(3)) == 0


# ----------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(n_frames=0), "n_frames"),
        (dict(n_frames=-3), "n_frames"),
        (dict(n_frames=2.5), "n_frames"),
        (dict(n_frames=2, shape=(0, 10)), "shape"),
        (dict(n_frames=2, shape=(10,)), "shape"),
        (dict(n_frames=2, shape=(10.0, 20)), "shape"),
        (dict(n_frames=2, bit_depth=10), "bit_depth"),
        (dict(n_frames=2, bit_depth=True), "bit_depth"),
        (dict(n_frames=2, bad_frames={"cloudy": 1}), "unknown bad frame kind"),
        (dict(n_frames=2, bad_frames={"black": -1}), "bad_frames"),
        (dict(n_frames=2, bad_frames={"black": 2, "blurred": 1}), "3 bad frames"),
        (dict(n_frames=2, center_yx=(np.nan, 3.0)), "center_yx"),
    ],
)
def test_simulate_session_rejects_bad_input(kwargs, match):
    n_frames = kwargs.pop("n_frames")
    with pytest.raises(ValueError, match=match):
        simulate_session(n_frames, **kwargs)


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: PlanetModel(radius_px=-5), "radius_px"),
        (lambda: PlanetModel(oblateness=1.0), "oblateness"),
        (lambda: PlanetModel(bands=2.5), "bands"),
        (lambda: PlanetModel(brightness=0.0), "brightness"),
        (lambda: PlanetModel(colour=(1.0, 0.5)), "colour"),
        (lambda: SeeingModel(sigma_min_px=2.0, sigma_max_px=1.0), "sigma_max_px"),
        (lambda: SeeingModel(photons_at_white=0), "photons_at_white"),
        (lambda: SeeingModel(jitter_px=float("nan")), "jitter_px"),
        (lambda: SeeingModel(drift_px_per_frame=(1.0,)), "drift"),
        (lambda: SeeingModel(lucky_fraction=1.5), "lucky_fraction"),
        (lambda: render_planet((10, 10), (5, 5), supersample=0), "supersample"),
        (lambda: render_planet((10, -1), (5, 5)), "shape"),
        (lambda: simulate_frame(render_planet_sprite(SMALL), SHAPE, sigma_px=-1), "sigma_px"),
        (
            lambda: simulate_frame(
                render_planet_sprite(SMALL), SHAPE, warp_field=np.zeros((2, 10, 10))
            ),
            "warp_field",
        ),
    ],
)
def test_models_and_frames_reject_bad_input(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


def test_docstring_examples():
    failures, _ = doctest.testmod(simulate, verbose=False)
    assert failures == 0
