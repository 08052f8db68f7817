import numpy as np
import pytest

from luckystack.core._stats import median, percentiles, quantiles


def _samples(rng, n):
    x = rng.normal(0.1, 0.02, n).astype(np.float32)
    ties = (np.round(x * 255) / 255).astype(np.float32)  # 8-bit levels
    return (x, ties, x.reshape(-1, 1)[::2], ties.astype(np.float64), rng.integers(0, 9, n))


@pytest.mark.parametrize("n", [1, 2, 7, 50, 4800, 8560])
def test_quantiles_are_numpy_quantiles_bit_for_bit(n):
    rng = np.random.default_rng(5)
    # 99.9 / 100 as np.percentile(..., 99.9) divides: not the literal 0.999
    qs = (0.0, 0.1, 0.25, 0.5, 0.7, 1 - 0.3, 0.75, 99.9 / 100, 1.0)
    for sample in _samples(rng, n):
        assert quantiles(sample, qs) == tuple(np.quantile(sample, qs).tolist())


@pytest.mark.parametrize("n", [1, 2, 7, 50, 4800, 8560])
def test_percentiles_are_numpy_scalar_percentiles_bit_for_bit(n):
    """np.percentile with a scalar interpolates in the sample's dtype (float32
    here), unlike np.quantile with an array of fractions."""
    rng = np.random.default_rng(9)
    ps = (0, 10, 25, 50, 70, 99.9, 100, 100 * rng.uniform(), 100 * rng.uniform())
    for sample in _samples(rng, n) + (rng.integers(0, 256, n).astype(np.uint8),):
        got = percentiles(sample, ps)
        assert got == tuple(float(np.percentile(sample, p)) for p in ps)
        assert all(type(v) is float for v in got)


def test_percentiles_keep_float32_rounding():
    # The 10th percentile of these falls between two float32 values; numpy's
    # scalar percentile rounds the interpolation to float32, quantiles does not.
    sample = np.array([0.1, 0.7, 0.3], np.float32)
    (p,) = percentiles(sample, (10,))
    assert p == float(np.float32(np.float32(0.1) + (np.float32(0.3) - np.float32(0.1)) * 0.2))
    assert p == float(np.percentile(sample, 10))
    assert p != quantiles(sample, (0.1,))[0]


@pytest.mark.parametrize("n", [1, 2, 3, 49, 50, 4800])
def test_median_is_numpy_median_bit_for_bit(n):
    rng = np.random.default_rng(7)
    for sample in _samples(rng, n):
        assert median(sample) == float(np.median(sample))


def test_median_of_even_count_averages_the_middle_pair():
    assert median(np.array([4.0, 1.0, 3.0, 10.0])) == 3.5
    assert median(np.array([5, 1, 2])) == 2.0
    assert quantiles(np.array([0.0, 10.0]), (0.25, 0.5, 1.0)) == (2.5, 5.0, 10.0)
