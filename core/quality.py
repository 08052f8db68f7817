"""Per-frame sharpness scores."""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from luckystack.core.errors import FrameError

__all__ = ["measure_sharpness", "estimate_noise"]


def estimate_noise(lum: np.ndarray) -> float:
    """Robust per-pixel noise sigma of a 2-D image.

    Uses the median absolute deviation of the difference between each pixel
    and the mean of its 3x3 neighbourhood; seeing-blurred planetary detail is
    smooth at that scale, so the residual is dominated by noise. The factor
    ``sqrt(9/8)`` undoes the neighbourhood's own share of the noise.
    """
    img = lum.astype(np.float32, copy=False)
    resid = (img - cv2.blur(img, (3, 3), borderType=cv2.BORDER_REFLECT))[::2, ::2]
    mad = float(np.median(np.abs(resid - np.median(resid))))
    return 1.4826 * mad * float(np.sqrt(9.0 / 8.0))


def _mean_noise_variance(img: np.ndarray, scratch: np.ndarray | None = None) -> float:
    """Mean per-pixel noise variance of a crop, from its 3x3 residual.

    Photon noise makes the disc noisier than the sky and varies with the
    limb darkening, so a median or MAD (which sees mostly the many sky
    pixels, and the typical rather than the mean variance) underestimates the
    noise energy that enters the Laplacian. The mean of the squared residual
    ``r = x - mean_3x3(x)`` (scaled by 9/8, its noise share) is the mean
    variance; the finest-scale detail of a seeing-limited crop adds little.
    ``scratch`` (float32, the shape of ``img``) receives the 3x3 mean.
    """
    box = cv2.blur(img, (3, 3), dst=scratch, borderType=cv2.BORDER_REFLECT)
    # cv2.norm sums the squared difference in one pass (double accumulator)
    # without a residual temporary.
    return cv2.norm(img, box, cv2.NORM_L2SQR) / img.size * (9.0 / 8.0)


def _gaussian_ksize(blur_sigma_px: float) -> int:
    """Kernel size of the pre-blur: the Gaussian truncated at 3 sigma.

    OpenCV's default for float images is 4 sigma (9 taps for sigma 1); the
    tail beyond 3 sigma weighs ~1e-4 per tap and changes scores by ~0.1 %
    (0.4 % at sigma 2), while 7 taps make the blur, the costliest step,
    ~20 % cheaper. :func:`_laplacian_noise_gain` uses the same kernel.
    """
    return 2 * int(np.ceil(3.0 * blur_sigma_px)) + 1


@lru_cache(maxsize=16)
def _laplacian_noise_gain(blur_sigma_px: float) -> float:
    """Variance gain of blur+Laplacian applied to unit white noise.

    A pure function of the blur, which is the same for every frame of a
    session: cached instead of filtered again per frame.
    """
    impulse = np.zeros((41, 41), np.float32)
    impulse[20, 20] = 1.0
    if blur_sigma_px > 0:
        k = _gaussian_ksize(blur_sigma_px)
        impulse = cv2.GaussianBlur(impulse, (k, k), blur_sigma_px)
    lap = cv2.Laplacian(impulse, cv2.CV_32F, ksize=1)
    return float((lap.astype(np.float64) ** 2).sum())


def measure_sharpness(
    lum: np.ndarray, *, blur_sigma_px: float = 1.0, noise_sigma: float | None = None
) -> float:
    """Sharpness of a planet crop: noise-corrected Laplacian energy over brightness².

    Parameters
    ----------
    lum : (H, W) ndarray
        Luminance of a crop around the planet.
    blur_sigma_px : float, optional
        Gaussian pre-blur (truncated at 3 sigma); suppresses pixel noise
        before the Laplacian.
    noise_sigma : float, optional
        Per-pixel noise of ``lum`` (uniform). When omitted, the mean noise
        variance over the crop is estimated from its finest-scale residual.

    Returns
    -------
    float
        A finite score ``>= 0``; larger is sharper. Comparable between frames
        of one session; invariant to a brightness scale factor.

    Raises
    ------
    FrameError
        If ``lum`` is not 2-D, is too small, or is completely dark.

    Notes
    -----
    ``S = max(0, mean(L²) - g σ²) / m²`` where ``L`` is the Laplacian of the
    blurred crop, ``σ²`` the mean noise variance, ``g`` the variance gain of blur+Laplacian on
    white noise (so noise adds nothing on average) and ``m`` the mean of the
    pixels where the blurred crop is above half its maximum (the disc).

    It runs on every frame (on the decode thread): the steps are single-pass
    OpenCV calls (they release the GIL) and BLAS dot products, and one
    scratch image serves as the disc mask, the 3x3 mean and the Laplacian in
    turn, which keeps the working set small.
    """
    if lum.ndim != 2:
        raise FrameError(f"expected a 2-D crop, got shape {lum.shape}")
    if min(lum.shape) < 8:
        raise FrameError(f"crop too small to score: {lum.shape}")
    img = np.ascontiguousarray(lum, dtype=np.float32)
    if blur_sigma_px > 0:
        k = _gaussian_ksize(blur_sigma_px)
        blurred = cv2.GaussianBlur(img, (k, k), blur_sigma_px)
    else:
        blurred = img
    # The disc level: mean of the pixels above half the (blurred) peak.
    bright = float(blurred.max())
    if not np.isfinite(bright) or bright <= 0:
        raise FrameError("cannot score a dark crop")
    # A 0/1 float mask turns the masked mean into two dot products (the
    # mask with itself counts its pixels), cheaper than boolean indexing (a
    # gather into a temporary), np.count_nonzero or a masked cv2.mean.
    _, scratch = cv2.threshold(blurred, 0.5 * bright, 1.0, cv2.THRESH_BINARY)
    flat_mask = scratch.ravel()
    level = float(np.dot(img.ravel(), flat_mask)) / float(np.dot(flat_mask, flat_mask))
    if level <= 0:
        raise FrameError("cannot score a dark crop")
    if noise_sigma is None:
        noise_var = _mean_noise_variance(img, scratch)
    else:
        noise_var = noise_sigma**2
    lap = cv2.Laplacian(blurred, cv2.CV_32F, dst=scratch, ksize=1, borderType=cv2.BORDER_REFLECT)
    energy = cv2.norm(lap, cv2.NORM_L2SQR) / lap.size
    energy -= _laplacian_noise_gain(float(blur_sigma_px)) * noise_var
    return max(energy, 0.0) / (level * level)
