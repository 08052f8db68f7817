"""Sharpening of the stacked image.

Every function takes working data (float, 1.0 = white; mono ``(H, W)`` or
colour ``(H, W, 3)``), returns a new float32 array of the same shape and
leaves a flat image flat.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["ORIGIN_KERNEL", "sharpen_kernel", "gaussian_laplacian"]

#: The origin script's 3x3 sharpening kernel (sums to 1, so flat stays flat).
ORIGIN_KERNEL = np.array([[-1, -1, -1], [-1, 9, -1], [-1, -1, -1]], dtype=np.float32)


def _as_float32(image: np.ndarray) -> np.ndarray:
    if image.ndim not in (2, 3):
        raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {image.shape}")
    return np.ascontiguousarray(image, dtype=np.float32)


def sharpen_kernel(image: np.ndarray, *, kernel: np.ndarray = ORIGIN_KERNEL) -> np.ndarray:
    """Convolve with a sharpening kernel (the origin's method).

    Parameters
    ----------
    image : (H, W[, C]) ndarray
    kernel : (k, k) ndarray, optional
        Should sum to 1 so that flat areas keep their level.

    Returns
    -------
    (H, W[, C]) float32 ndarray
    """
    img = _as_float32(image)
    return cv2.filter2D(img, cv2.CV_32F, kernel.astype(np.float32), borderType=cv2.BORDER_REFLECT)


def gaussian_laplacian(
    image: np.ndarray, *, sigma_px: float = 1.0, amount: float = 1.0
) -> np.ndarray:
    """Sharpen by subtracting the Laplacian of a Gaussian-blurred copy (origin's method).

    Notes
    -----
    ``out = image - amount * Laplacian(GaussianBlur(image, sigma_px))``.
    """
    if sigma_px <= 0:
        raise ValueError(f"sigma_px must be positive, got {sigma_px}")
    img = _as_float32(image)
    blurred = cv2.GaussianBlur(img, (0, 0), sigma_px, borderType=cv2.BORDER_REFLECT)
    lap = cv2.Laplacian(blurred, cv2.CV_32F, ksize=1, borderType=cv2.BORDER_REFLECT)
    return img - np.float32(amount) * lap
