import numpy as np
import pytest
from scipy.ndimage import shift as nd_shift

from luckystack.core.errors import FrameError, RegistrationError
from luckystack.core.register import estimate_shift


def _scene(shape=(128, 128)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    cy, cx = shape[0] / 2, shape[1] / 2
    disc = (((yy - cy) ** 2 + (xx - cx) ** 2) < (0.3 * shape[0]) ** 2).astype(float)
    belts = 1 + 0.3 * np.sin(yy / 3.0) + 0.2 * np.cos((xx + yy) / 5.0)
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(disc * belts, 1.5)


@pytest.mark.parametrize("shift", [(-7.0, 12.0), (2.5, -1.25), (-2.4, 1.32), (0.3, 0.71)])
def test_known_shift_recovered_noiseless(shift):
    ref = _scene()
    est = estimate_shift(ref, nd_shift(ref, shift, order=3))
    assert est.shift_yx == pytest.approx(shift, abs=0.1)
    assert est.peak > 0.95


@pytest.mark.parametrize("shift", [(3.3, -4.6), (-0.45, 0.8)])
def test_known_shift_recovered_noisy(shift):
    rng = np.random.default_rng(7)
    ref = _scene()
    moving = nd_shift(ref, shift, order=3)
    sigma = 0.05 * ref.max()
    est = estimate_shift(ref + rng.normal(0, sigma, ref.shape), moving + rng.normal(0, sigma, ref.shape))
    assert est.shift_yx == pytest.approx(shift, abs=0.25)


def test_self_registration_is_zero():
    ref = _scene()
    est = estimate_shift(ref, ref)
    assert est.shift_yx == (0.0, 0.0)
    assert est.peak == pytest.approx(1.0)


def test_inputs_not_mutated():
    ref = _scene()
    mov = nd_shift(ref, (1, 2))
    r0, m0 = ref.copy(), mov.copy()
    estimate_shift(ref, mov, window=True)
    np.testing.assert_array_equal(ref, r0)
    np.testing.assert_array_equal(mov, m0)


def test_shape_mismatch_and_flat_images_raise():
    with pytest.raises(FrameError, match="same shape"):
        estimate_shift(np.zeros((8, 8)), np.zeros((8, 9)))
    with pytest.raises(FrameError, match="2-D"):
        estimate_shift(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)))
    with pytest.raises(RegistrationError, match="flat"):
        estimate_shift(np.ones((16, 16)), _scene((16, 16)))


def test_spectrum_is_the_complex_dft_and_the_peak_is_exact_for_a_copy():
    from luckystack.core.register import _complex, _spectrum

    rng = np.random.default_rng(3)
    img = rng.normal(size=(30, 44)).astype(np.float32)
    np.testing.assert_allclose(_complex(_spectrum(img)), np.fft.fft2(img), rtol=0, atol=1e-3)
    est = estimate_shift(img, img.copy())
    assert est.shift_yx == (0.0, 0.0)
    assert est.peak == pytest.approx(1.0, abs=1e-5)


def test_known_shift_recovered_on_odd_and_prime_sizes():
    for shape in [(97, 103), (121, 128), (75, 77)]:  # the disc inside: no edge bias
        ref = _scene(shape)
        est = estimate_shift(ref, nd_shift(ref, (2.25, -3.5), order=3))
        assert est.shift_yx == pytest.approx((2.25, -3.5), abs=0.1), shape
        assert est.peak > 0.95
