import dataclasses
import time

import cv2
import numpy as np
import pytest
from scipy import ndimage

from luckystack.core.sharpen import (
    DEFAULT_CHAIN,
    STEP_TYPES,
    DeconvolveStep,
    GaussianLaplacianStep,
    KernelStep,
    UnsharpStep,
    WaveletStep,
    _lucy_richardson,
    _make_blur,
    apply_chain,
    gaussian_laplacian,
    lucy_richardson,
    make_step,
    protect_highlights,
    sharpen_kernel,
    unsharp_mask,
    wavelet_sharpen,
)
from luckystack.core.simulate import PlanetModel, render_planet


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


# --------------------------------------------------------------------------
# Fixtures: a planet with known truth
# --------------------------------------------------------------------------

SKY = 0.01


def _disc_and_ring(truth_2d, inner=3, outer=6):
    disc = truth_2d > 0
    outside = cv2.distanceTransform((~disc).astype(np.uint8), cv2.DIST_L2, 5)
    return disc, (outside >= inner) & (outside <= outer), outside > 20


def _observed(truth, sigma_px=1.2, noise=0.002, seed=0):
    """The truth blurred by a Gaussian PSF, on a sky of SKY, plus noise."""
    rng = np.random.default_rng(seed)
    sig = (sigma_px, sigma_px, 0)[: truth.ndim]
    blurred = ndimage.gaussian_filter(truth, sig, mode="reflect")
    return (blurred + SKY + rng.normal(0, noise, truth.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def planet():
    """A 60 px Jupiter in a 240x320 frame: (truth, observed stack)."""
    truth = render_planet((240, 320), (119.5, 159.5), PlanetModel(radius_px=60), seed=4)
    return truth, _observed(truth)


def _rmse(a, b):
    return float(np.sqrt(np.mean((np.asarray(a, np.float64) - b) ** 2)))


ALL_FUNCS = [
    ("unsharp", lambda im, **kw: unsharp_mask(im, **kw)),
    ("unsharp_thr", lambda im, **kw: unsharp_mask(im, threshold=0.01, **kw)),
    ("unsharp_dering", lambda im, **kw: unsharp_mask(im, dering=True, **kw)),
    ("wavelet", lambda im, **kw: wavelet_sharpen(im, **kw)),
    ("wavelet_dering", lambda im, **kw: wavelet_sharpen(im, dering=True, **kw)),
    ("lr_gauss", lambda im, **kw: lucy_richardson(im, iterations=10, **kw)),
    ("lr_moffat", lambda im, **kw: lucy_richardson(im, psf="moffat", iterations=10, **kw)),
    ("lr_tv", lambda im, **kw: lucy_richardson(im, iterations=10, regularisation=0.002, **kw)),
    ("chain", lambda im, **kw: apply_chain(im, DEFAULT_CHAIN, **kw)),
    (
        "chain_all",
        lambda im, **kw: apply_chain(
            im,
            (DeconvolveStep(), UnsharpStep(), WaveletStep(gains=(1.5, 1.2), denoise=(1, 0)),
             KernelStep(), GaussianLaplacianStep()),
            **kw,
        ),
    ),
]


# --------------------------------------------------------------------------
# Flat, black, shapes and dtypes
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name,fn", ALL_FUNCS)
@pytest.mark.parametrize("level", [0.0, 0.37, 1.0])
@pytest.mark.parametrize("shape", [(32, 40), (32, 40, 3)])
def test_new_functions_keep_flat_and_black(name, fn, level, shape):
    img = np.full(shape, level, np.float32)
    out = fn(img)
    assert out.shape == shape and out.dtype == np.float32
    np.testing.assert_allclose(out, level, atol=1e-6)
    if len(shape) == 3:
        np.testing.assert_allclose(fn(img, luminance_only=True), level, atol=1e-6)


@pytest.mark.parametrize("name,fn", ALL_FUNCS)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("shape", [(24, 30), (24, 30, 3), (24, 30, 1), (1, 1), (3, 50)])
def test_float32_out_shape_kept_input_untouched(name, fn, dtype, shape):
    img = np.random.default_rng(1).random(shape).astype(dtype)
    copy = img.copy()
    out = fn(img)
    assert out.shape == shape and out.dtype == np.float32
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(img, copy)


@pytest.mark.parametrize("step", [s() for s in STEP_TYPES] + list(DEFAULT_CHAIN))
@pytest.mark.parametrize("level", [0.0, 0.5])
def test_every_step_keeps_flat(step, level):
    for shape in [(20, 24), (20, 24, 3)]:
        img = np.full(shape, level, np.float32)
        np.testing.assert_allclose(apply_chain(img, (step,)), level, atol=1e-6)
        np.testing.assert_allclose(step.apply(img), level, atol=1e-6)


def test_no_step_clips(planet):
    _, observed = planet
    bright = observed * 1.6  # disc above 1.0
    for step in [s() for s in STEP_TYPES]:
        out = apply_chain(bright, (step,), highlight_knee=None)
        assert out.max() > 1.0, step
    out = apply_chain(bright, (UnsharpStep(),), highlight_knee=None, dering=False)
    assert out.min() < 0.0  # the undershoot is kept too: no clipping at 0 either


# --------------------------------------------------------------------------
# Known answers
# --------------------------------------------------------------------------


def test_unsharp_gain_on_a_sinusoid():
    period, sigma, amount = 16.0, 2.0, 1.5
    x = np.arange(256)
    img = np.tile(0.5 + 0.1 * np.sin(2 * np.pi * x / period), (32, 1)).astype(np.float32)
    out = unsharp_mask(img, radius_px=sigma, amount=amount)
    attenuation = np.exp(-2 * np.pi**2 * sigma**2 / period**2)
    expected = 0.1 * (1 + amount * (1 - attenuation))
    amplitude = (out[16, 64:192].max() - out[16, 64:192].min()) / 2
    assert amplitude == pytest.approx(expected, rel=0.02)


def test_unsharp_soft_threshold():
    img = np.zeros((40, 40), np.float32)
    img[:, 20:] = 0.004  # an edge smaller than the threshold: left alone
    np.testing.assert_allclose(unsharp_mask(img, threshold=0.01), img, atol=1e-7)
    img[:, 20:] = 0.2  # a large edge: detail shrunk by exactly the threshold
    d = img - cv2.GaussianBlur(img, (0, 0), 2.0, borderType=cv2.BORDER_REFLECT)
    expected = img + 2.0 * np.sign(d) * np.maximum(np.abs(d) - 0.01, 0)
    np.testing.assert_allclose(unsharp_mask(img, amount=2.0, threshold=0.01), expected, atol=1e-6)


@pytest.mark.parametrize("kernel", ["b3spline", "linear"])
@pytest.mark.parametrize("shape", [(37, 53), (37, 53, 3), (5, 300)])
def test_wavelet_unit_gains_reconstruct_exactly(kernel, shape):
    img = np.random.default_rng(2).random(shape).astype(np.float32)
    for layers in (1, 4, 8):
        out = wavelet_sharpen(img, gains=(1.0,) * layers, denoise=(0.0,) * layers, kernel=kernel)
        np.testing.assert_array_equal(out, img)


def test_wavelet_layers_sum_to_the_image():
    # gains 0 on every layer leave the residual c_N; gain 2 on every layer
    # gives 2 * image - c_N, so the two outputs average to the image.
    img = np.random.default_rng(3).random((40, 48)).astype(np.float32)
    residual = wavelet_sharpen(img, gains=(0, 0, 0))
    doubled = wavelet_sharpen(img, gains=(2, 2, 2))
    np.testing.assert_allclose((residual + doubled) / 2, img, atol=1e-6)
    assert residual.std() < 0.2 * img.std()  # the residual is smooth
    assert residual.mean() == pytest.approx(img.mean(), abs=0.01)


def test_wavelet_denoise_in_noise_sigmas():
    rng = np.random.default_rng(4)
    noise = rng.normal(0.2, 0.01, (128, 128)).astype(np.float32)
    # denoise=3 sigma on layers 1-2 removes nearly all of their noise
    out = wavelet_sharpen(noise, gains=(1, 1), denoise=(3, 3))
    assert out.std() < 0.5 * noise.std()
    # the same thresholds leave a strong edge almost untouched
    edge = np.zeros((128, 128), np.float32)
    edge[:, 64:] = 0.5
    edge = ndimage.gaussian_filter(edge, 1.0) + noise - 0.2
    out = wavelet_sharpen(edge, gains=(1, 1), denoise=(3, 3))
    jump = out[:, 70:].mean() - out[:, :58].mean()
    assert jump == pytest.approx(0.5, abs=0.01)


def test_wavelet_gain_sharpens_the_planet(planet):
    truth, observed = planet
    disc = truth > 0
    out = wavelet_sharpen(observed, gains=(1.5, 1.5, 1.2))
    before = _rmse(observed[disc] - SKY, truth[disc])
    assert _rmse(out[disc] - SKY, truth[disc]) < 0.9 * before


@pytest.mark.parametrize("psf", ["gaussian", "moffat"])
def test_lucy_richardson_restores_a_blurred_disc(psf):
    truth = render_planet((160, 160), (79.5, 79.5), PlanetModel(radius_px=50), seed=2)
    forward, _, _ = _make_blur(psf, 1.5, 3.0)  # blur with exactly the PSF we deconvolve
    rng = np.random.default_rng(5)
    observed = forward(truth.astype(np.float32)) + rng.normal(0, 0.001, truth.shape)
    observed = observed.astype(np.float32)
    out = lucy_richardson(observed, psf=psf, sigma_px=1.5, iterations=30, stop_tol=0)
    before, after = _rmse(observed, truth), _rmse(out, truth)
    assert after < 0.7 * before, (before, after)
    # flux is conserved on the disc
    assert out.sum() == pytest.approx(observed.sum(), rel=0.01)


def test_lucy_richardson_explicit_psf_matches_named_gaussian(planet):
    _, observed = planet
    taps = cv2.getGaussianKernel(13, 1.5).astype(np.float64)
    kernel = taps @ taps.T
    a = lucy_richardson(observed, psf=kernel, iterations=5, stop_tol=0, dering=False)
    b = lucy_richardson(observed, psf="gaussian", iterations=5, stop_tol=0, dering=False)
    assert _rmse(a, b) < 2e-3


def test_lucy_richardson_on_the_sim_stack(planet):
    truth, observed = planet
    disc = truth > 0
    out = lucy_richardson(observed, sigma_px=1.2, iterations=20, stop_tol=0)
    before = _rmse(observed[disc] - SKY, truth[disc])
    after = _rmse(out[disc] - SKY, truth[disc])
    assert after < 0.8 * before
    assert np.isfinite(out).all()


def test_lucy_richardson_handles_negative_and_zero_sky():
    img = np.zeros((64, 64), np.float32)
    img[20:44, 20:44] = 0.5
    img = ndimage.gaussian_filter(img, 1.5)
    img += np.random.default_rng(6).normal(0, 0.003, img.shape).astype(np.float32)
    assert img.min() < 0
    out = lucy_richardson(img, iterations=30, stop_tol=0, dering=False)
    assert np.isfinite(out).all()
    assert out.min() >= img.min() - 1e-3  # LR keeps the estimate above its offset floor


def test_stopping_rule():
    img = ndimage.gaussian_filter(
        render_planet((96, 96), (47.5, 47.5), PlanetModel(radius_px=30)), 1.5
    ).astype(np.float32)
    forward, adjoint, _ = _make_blur("gaussian", 1.5, 3.0)
    _, n_all = _lucy_richardson(img, forward, adjoint, 50, 0.0, 0.0)
    assert n_all == 50
    _, n_loose = _lucy_richardson(img, forward, adjoint, 50, 1e-2, 0.0)
    _, n_tight = _lucy_richardson(img, forward, adjoint, 50, 1e-3, 0.0)
    assert 1 <= n_loose < n_tight < 50
    # the rule is what it says: the last update was below the tolerance
    u_prev, _ = _lucy_richardson(img, forward, adjoint, n_tight - 1, 0.0, 0.0)
    u_last, _ = _lucy_richardson(img, forward, adjoint, n_tight, 0.0, 0.0)
    assert np.linalg.norm(u_last - u_prev) / np.linalg.norm(u_prev + 1e-3) < 1e-3


def _best_time(fn, repeats=5):
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


@pytest.mark.parametrize("psf", ["gaussian", "moffat"])
def test_lucy_richardson_is_fast(psf):
    img = _observed(render_planet((200, 200), (99.5, 99.5), PlanetModel(radius_px=70)))
    assert _best_time(lambda: lucy_richardson(img, psf=psf, iterations=20, stop_tol=0)) < 0.1


def test_default_chain_is_fast():
    img = _observed(render_planet((200, 200), (99.5, 99.5), PlanetModel(radius_px=70)))
    assert _best_time(lambda: apply_chain(img, DEFAULT_CHAIN)) < 0.1


# --------------------------------------------------------------------------
# Halo, highlights, colour
# --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_default_chain_leaves_no_halo(seed):
    truth = render_planet((240, 320), (119.5, 159.5), PlanetModel(radius_px=60), seed=seed)
    observed = _observed(truth, seed=seed)
    disc, ring, sky = _disc_and_ring(truth)
    out = apply_chain(observed, DEFAULT_CHAIN)
    background = np.median(out[sky])
    disc_level = np.percentile(out[disc], 99)
    assert abs(out[ring].mean() - background) < 0.005 * disc_level
    # the sky beyond the chain's reach (plus the ramp) is left as it was
    reach = sum(step.reach_px for step in DEFAULT_CHAIN)
    outside = cv2.distanceTransform((truth == 0).astype(np.uint8), cv2.DIST_L2, 5)
    far = outside > reach + max(2.0, reach / 2) + 3
    assert far.sum() > 1000
    np.testing.assert_array_equal(out[far], observed[far])
    # and the test can see a halo: without deringing there is one
    halo = apply_chain(observed, (UnsharpStep(radius_px=2.0, amount=1.5),), dering=False)
    assert halo[ring].mean() - background < -0.005 * disc_level


@pytest.mark.parametrize(
    "fn",
    [
        lambda im: unsharp_mask(im, radius_px=2, amount=1.5, dering=True),
        lambda im: wavelet_sharpen(im, gains=(2, 1.6, 1.3), dering=True),
        lambda im: lucy_richardson(im, sigma_px=1.2, iterations=40, stop_tol=0),
    ],
)
def test_each_sharpener_deringed(fn, planet):
    truth, observed = planet
    disc, ring, sky = _disc_and_ring(truth)
    out = fn(observed)
    assert abs(out[ring].mean() - np.median(out[sky])) < 0.004


def test_highlights_of_a_bright_disc_are_protected():
    truth = render_planet(
        (200, 200), (99.5, 99.5), PlanetModel(radius_px=70, brightness=0.95), seed=3
    )
    observed = _observed(truth, sigma_px=1.0)
    strong = (UnsharpStep(radius_px=2.0, amount=2.0),)
    assert apply_chain(observed, strong, highlight_knee=None).max() > 1.0  # would clip
    assert apply_chain(observed, strong).max() <= 1.0
    assert apply_chain(observed, DEFAULT_CHAIN).max() <= 1.0
    # below the knee nothing changed
    raw = apply_chain(observed, DEFAULT_CHAIN, highlight_knee=None)
    low = raw < 0.9
    np.testing.assert_array_equal(apply_chain(observed, DEFAULT_CHAIN)[low], raw[low])


def test_protect_highlights_known_answers():
    img = np.array([[0.2, 0.9, 0.95, 1.0, 1.5, 3.0]], np.float32)
    out = protect_highlights(img, knee=0.9, ceiling=1.0)
    assert out[0, 0] == 0.2 and out[0, 1] == pytest.approx(0.9)
    assert (np.diff(out[0]) > 0)[:-1].all() and out.max() <= 1.0
    expected = 0.9 + 0.1 * np.tanh((1.5 - 0.9) / 0.1)
    assert out[0, 4] == pytest.approx(expected, rel=1e-5)
    # nothing above the ceiling: unchanged
    ok = np.array([[0.2, 0.99, 1.0]], np.float32)
    np.testing.assert_array_equal(protect_highlights(ok), ok)
    # colour: one factor for all channels keeps the hue
    rgb = np.array([[[1.2, 0.6, 0.3]]], np.float32)
    out = protect_highlights(rgb)
    assert out.max() <= 1.0
    assert out[0, 0, 0] / out[0, 0, 1] == pytest.approx(2.0, rel=1e-5)


def test_luminance_only_keeps_hue():
    model = PlanetModel(radius_px=60, colour=(1.0, 0.85, 0.65))
    truth = render_planet((240, 320), (119.5, 159.5), model, seed=5)
    observed = _observed(truth, noise=0.001)
    disc = ndimage.binary_erosion(truth[..., 1] > 0, iterations=4)
    chain = DEFAULT_CHAIN + (UnsharpStep(radius_px=1.5, amount=1.0),)
    out = apply_chain(observed, chain, luminance_only=True)
    ratio_in = observed[..., 0][disc] / observed[..., 1][disc]
    ratio_out = out[..., 0][disc] / out[..., 1][disc]
    np.testing.assert_allclose(ratio_out, ratio_in, rtol=0.01)
    # the luminance was sharpened, not left alone
    assert np.abs(out - observed)[disc].mean() > 0.005
    # per-channel processing shifts the hue more
    rgb = apply_chain(observed, chain)
    err_rgb = np.abs(rgb[..., 0][disc] / rgb[..., 1][disc] - ratio_in).mean()
    assert err_rgb > 3 * np.abs(ratio_out - ratio_in).mean()


def test_luminance_only_ignored_for_mono(planet):
    _, observed = planet
    a = unsharp_mask(observed, luminance_only=True)
    np.testing.assert_array_equal(a, unsharp_mask(observed))


# --------------------------------------------------------------------------
# Chain and steps
# --------------------------------------------------------------------------


def test_step_kinds_and_make_step():
    kinds = {cls.kind for cls in STEP_TYPES}
    assert kinds == {"unsharp", "wavelet", "deconvolve", "kernel", "gaussian_laplacian"}
    for cls in STEP_TYPES:
        assert make_step(cls.kind) == cls()
        assert "kind" not in {f.name for f in dataclasses.fields(cls)}
    step = make_step("wavelet", gains=[2, 1.5], denoise=[1, 0])
    assert step == WaveletStep(gains=(2.0, 1.5), denoise=(1.0, 0.0))
    assert isinstance(step.gains, tuple) and hash(step)
    with pytest.raises(dataclasses.FrozenInstanceError):
        step.gains = (1.0,)
    with pytest.raises(ValueError, match="unknown sharpening step kind 'blur'"):
        make_step("blur")
    with pytest.raises(ValueError, match="unknown field.*radius.*radius_px"):
        make_step("unsharp", radius=2)
    assert all(isinstance(s, STEP_TYPES) for s in DEFAULT_CHAIN) and DEFAULT_CHAIN


def test_chain_applies_steps_in_order(planet):
    _, observed = planet
    steps = (UnsharpStep(radius_px=1.0, amount=0.5), GaussianLaplacianStep(sigma_px=1.0))
    by_hand = gaussian_laplacian(unsharp_mask(observed, radius_px=1.0, amount=0.5))
    out = apply_chain(observed, steps, dering=False, highlight_knee=None)
    np.testing.assert_allclose(out, by_hand, atol=1e-6)
    np.testing.assert_array_equal(apply_chain(observed, ()), observed)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda im: unsharp_mask(im, radius_px=0), "radius_px must be > 0"),
        (lambda im: unsharp_mask(im, amount=-1), "amount must be >= 0"),
        (lambda im: unsharp_mask(im, threshold=np.nan), "threshold must be finite"),
        (lambda im: unsharp_mask(im, amount="a lot"), "amount must be a real number"),
        (lambda im: wavelet_sharpen(im, gains=()), "gains must give 1 to 10 layers"),
        (lambda im: wavelet_sharpen(im, gains=(1,) * 11), "gains must give 1 to 10 layers"),
        (lambda im: wavelet_sharpen(im, gains=(1,), denoise=(1, 1)), "at most one value per layer"),
        (lambda im: wavelet_sharpen(im, gains=(1, -2)), r"gains\[1\] must be >= 0"),
        (lambda im: wavelet_sharpen(im, gains=(1,), denoise=(-1,)), r"denoise\[0\]"),
        (lambda im: wavelet_sharpen(im, kernel="haar"), "kernel must be one of"),
        (lambda im: wavelet_sharpen(im, gains=3), "sequences of numbers"),
        (lambda im: lucy_richardson(im, psf="airy"), "psf must be one of 'gaussian', 'moffat'"),
        (lambda im: lucy_richardson(im, sigma_px=-1), "sigma_px must be > 0"),
        (lambda im: lucy_richardson(im, beta=1.0), "beta must be > 1"),
        (lambda im: lucy_richardson(im, iterations=0), "iterations must be an integer >= 1"),
        (lambda im: lucy_richardson(im, iterations=2.5), "iterations must be an integer"),
        (lambda im: lucy_richardson(im, stop_tol=-0.1), "stop_tol must be >= 0"),
        (lambda im: lucy_richardson(im, regularisation=1), "regularisation must be <= 0.1"),
        (lambda im: lucy_richardson(im, psf=np.ones((4, 4))), "odd side lengths"),
        (lambda im: lucy_richardson(im, psf=-np.ones((3, 3))), "non-negative"),
        (lambda im: protect_highlights(im, knee=1.0), "knee must be below ceiling"),
        (lambda im: apply_chain(im, ("unsharp",)), r"steps\[0\] must be a sharpening step"),
        (lambda im: apply_chain(im, (), highlight_knee=1.5), "highlight_knee must be below"),
        (lambda im: unsharp_mask(im[..., None].repeat(2, 2), luminance_only=True),
         "luminance_only=True needs an"),
    ],
)
def test_invalid_parameters_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call(np.zeros((16, 16), np.float32))


@pytest.mark.parametrize(
    "image,match",
    [
        (np.zeros(8), "image must be"),
        (np.zeros((4, 4, 4, 4)), "image must be"),
        (np.zeros((4, 4, 7)), "image must be"),
        (np.zeros((0, 4)), "empty"),
        (np.full((4, 4), np.nan), "NaN or infinite"),
        (np.full((4, 4), 1j), "real numbers"),
    ],
)
@pytest.mark.parametrize(
    "fn", [unsharp_mask, wavelet_sharpen, lucy_richardson, protect_highlights,
           lambda im: apply_chain(im, DEFAULT_CHAIN)],
)
def test_invalid_images_raise(fn, image, match):
    with pytest.raises(ValueError, match=match):
        fn(image)


@pytest.mark.parametrize(
    "make",
    [
        lambda: UnsharpStep(radius_px=0),
        lambda: WaveletStep(gains=()),
        lambda: WaveletStep(gains=(1, 1), denoise=(1, 1, 1)),
        lambda: DeconvolveStep(psf="airy"),
        lambda: DeconvolveStep(iterations=0),
        lambda: DeconvolveStep(psf=np.ones((3, 3))),
        lambda: GaussianLaplacianStep(sigma_px=0),
    ],
)
def test_invalid_steps_raise_at_construction(make):
    with pytest.raises(ValueError):
        make()
