"""Per-frame sharpness scores."""

from __future__ import annotations

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


def _mean_noise_variance(img: np.ndarray) -> float:
    """Mean per-pixel noise variance of a crop, from its 3x3 residual.

    Photon noise makes the disc noisier than the sky and varies with the
    limb darkening, so a median or MAD (which sees mostly the many sky
    pixels, and the typical rather than the mean variance) underestimates the
    noise energy that enters the Laplacian. The mean of the squared residual
    ``r = x - mean_3x3(x)`` (scaled by 9/8, its noise share) is the mean
    variance; the finest-scale detail of a seeing-limited crop adds little.
    """
    resid = (img - cv2.blur(img, (3, 3), borderType=cv2.BORDER_REFLECT)).ravel()
    return float(np.dot(resid, resid)) / resid.size * (9.0 / 8.0)


def _laplacian_noise_gain(blur_sigma_px: float) -> float:
    """Variance gain of blur+Laplacian applied to unit white noise."""
    impulse = np.zeros((41, 41), np.float32)
    impulse[20, 20] = 1.0
    k = cv2.GaussianBlur(impulse, (0, 0), blur_sigma_px) if blur_sigma_px > 0 else impulse
    k = cv2.Laplacian(k, cv2.CV_32F, ksize=1)
    return float((k.astype(np.float64) ** 2).sum())


def measure_sharpness(
    lum: np.ndarray, *, blur_sigma_px: float = 1.0, noise_sigma: float | None = None
) -> float:
    """Sharpness of a planet crop: noise-corrected Laplacian energy over brightness².

    Parameters
    ----------
    lum : (H, W) ndarray
        Luminance of a crop around the planet.
    blur_sigma_px : float, optional
        Gaussian pre-blur; suppresses pixel noise before the Laplacian.
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
    """
    if lum.ndim != 2:
        raise FrameError(f"expected a 2-D crop, got shape {lum.shape}")
    if min(lum.shape) < 8:
        raise FrameError(f"crop too small to score: {lum.shape}")
    img = lum.astype(np.float32, copy=False)
    blurred = cv2.GaussianBlur(img, (0, 0), blur_sigma_px) if blur_sigma_px > 0 else img
    # The disc level: mean of the pixels above half the (blurred) peak.
    bright = float(blurred.max())
    if not np.isfinite(bright) or bright <= 0:
        raise FrameError("cannot score a dark crop")
    disc_mask = blurred > 0.5 * bright
    level = float(img[disc_mask].mean())
    if level <= 0:
        raise FrameError("cannot score a dark crop")
    if noise_sigma is None:
        noise_var = _mean_noise_variance(img)
    else:
        noise_var = noise_sigma**2
    lap = cv2.Laplacian(blurred, cv2.CV_32F, ksize=1, borderType=cv2.BORDER_REFLECT).ravel()
    energy = float(np.dot(lap, lap)) / lap.size
    energy -= _laplacian_noise_gain(blur_sigma_px) * noise_var
    return max(energy, 0.0) / (level * level)
