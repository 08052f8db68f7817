import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from luckystack.core.errors import FrameError
from luckystack.core.quality import estimate_noise, measure_sharpness
from luckystack.core.simulate import PlanetModel, render_planet


@pytest.fixture(scope="module")
def truth():
    return render_planet((160, 160), (80.0, 80.0), PlanetModel(radius_px=55.0)).astype(np.float32)


def test_blurrier_frame_scores_lower(truth):
    scores = [measure_sharpness(gaussian_filter(truth, s)) for s in (0.8, 1.5, 2.5, 4.0)]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] > 2 * scores[-1]


def test_brightness_scale_does_not_change_score(truth):
    img = gaussian_filter(truth, 1.2)
    assert measure_sharpness(0.3 * img) == pytest.approx(measure_sharpness(img), rel=1e-3)


def test_noise_does_not_make_a_blurry_frame_look_sharp(truth):
    rng = np.random.default_rng(0)
    sharp = gaussian_filter(truth, 1.0)
    blurry = gaussian_filter(truth, 2.5)
    noisy_blurry = blurry + rng.normal(0, 0.02, blurry.shape).astype(np.float32)
    assert measure_sharpness(noisy_blurry) < measure_sharpness(sharp)
    assert measure_sharpness(noisy_blurry) == pytest.approx(measure_sharpness(blurry), rel=0.5)


def test_noise_estimate_recovers_sigma():
    rng = np.random.default_rng(1)
    img = np.full((128, 128), 0.5, np.float32) + rng.normal(0, 0.01, (128, 128)).astype(np.float32)
    assert estimate_noise(img) == pytest.approx(0.01, rel=0.1)


def test_score_is_finite_nonnegative_scalar(truth):
    s = measure_sharpness(truth)
    assert isinstance(s, float) and np.isfinite(s) and s >= 0


def test_bad_inputs():
    with pytest.raises(FrameError, match="dark"):
        measure_sharpness(np.zeros((32, 32), np.float32))
    with pytest.raises(FrameError, match="2-D"):
        measure_sharpness(np.zeros((32, 32, 3), np.float32))


def test_noise_gain_matches_white_noise_through_blur_and_laplacian():
    # The correction must use the kernel the score blurs with: on pure white
    # noise the Laplacian energy is the gain times the variance.
    from luckystack.core.quality import _laplacian_noise_gain

    rng = np.random.default_rng(3)
    sigma = 0.01
    img = (0.5 + rng.normal(0, sigma, (512, 512))).astype(np.float32)
    for blur in (0.0, 1.0, 1.7):
        score = measure_sharpness(img, blur_sigma_px=blur, noise_sigma=sigma)
        raw = measure_sharpness(img, blur_sigma_px=blur, noise_sigma=0.0)
        assert raw > 0
        # the corrected energy is a small remainder of the raw one
        assert score < 0.05 * raw
        assert raw * 0.25 == pytest.approx(_laplacian_noise_gain(blur) * sigma**2, rel=0.05)


def test_estimated_noise_variance_cancels_white_noise():
    rng = np.random.default_rng(4)
    flat = np.full((256, 256), 0.5, np.float32)
    noisy = flat + rng.normal(0, 0.01, flat.shape).astype(np.float32)
    raw = measure_sharpness(noisy, noise_sigma=0.0)
    assert measure_sharpness(noisy) < 0.05 * raw
