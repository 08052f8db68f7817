import numpy as np
import pytest

from luckystack.core.sharpen import gaussian_laplacian, sharpen_kernel


@pytest.mark.parametrize("fn", [sharpen_kernel, gaussian_laplacian])
@pytest.mark.parametrize("level", [0.0, 0.37, 1.0])
@pytest.mark.parametrize("shape", [(32, 40), (32, 40, 3)])
def test_flat_image_stays_flat(fn, level, shape):
    img = np.full(shape, level, np.float32)
    out = fn(img)
    assert out.shape == img.shape
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, level, atol=1e-6)


@pytest.mark.parametrize("fn", [sharpen_kernel, gaussian_laplacian])
def test_edge_contrast_increases(fn):
    img = np.zeros((32, 32), np.float32)
    img[:, 16:] = 0.5
    from scipy.ndimage import gaussian_filter

    img = gaussian_filter(img, 2.0)
    out = fn(img)
    assert np.abs(np.diff(out, axis=1)).max() > np.abs(np.diff(img, axis=1)).max()
    # The mean level is kept: sharpening redistributes, it does not brighten.
    assert out.mean() == pytest.approx(img.mean(), abs=1e-3)


def test_input_not_mutated():
    img = np.random.default_rng(0).random((16, 16)).astype(np.float32)
    copy = img.copy()
    gaussian_laplacian(img)
    sharpen_kernel(img)
    np.testing.assert_array_equal(img, copy)


def test_bad_arguments():
    with pytest.raises(ValueError):
        gaussian_laplacian(np.zeros((8, 8), np.float32), sigma_px=0)
    with pytest.raises(ValueError):
        sharpen_kernel(np.zeros(8, np.float32))
