"""Colour filter array (Bayer) mosaics: demosaicing and pattern bookkeeping.

A Bayer pattern is named by the colours of the 2x2 block at the array's
origin, read row by row: ``"RGGB"`` means ``raw[0, 0]`` is red, ``raw[0, 1]``
and ``raw[1, 0]`` are green and ``raw[1, 1]`` is blue. Rows are in numpy
order (row 0 first, i.e. the top of the image as luckystack displays it).

OpenCV names its ``COLOR_Bayer??2RGB`` conversions after the pattern of the
block starting at *(1, 1)* — the second row's second and third pixels — so an
``RGGB`` sensor needs ``COLOR_BayerBG2RGB``. :func:`debayer` hides this: it
takes the pattern in the usual (origin) naming. The tests check it on a
synthetic mosaic made by :func:`mosaic`.
"""

from __future__ import annotations

import cv2
import numpy as np

from luckystack.core.errors import FrameError

__all__ = [
    "BAYER_PATTERNS",
    "DEMOSAIC_METHODS",
    "normalise_pattern",
    "pattern_at",
    "mosaic",
    "debayer",
]

#: The supported 2x2 Bayer patterns, named from the array's origin.
BAYER_PATTERNS = ("RGGB", "GRBG", "GBRG", "BGGR")
#: Demosaicing methods: OpenCV's bilinear, variable number of gradients
#: (uint8 only) and edge-aware.
DEMOSAIC_METHODS = ("bilinear", "vng", "ea")


def normalise_pattern(pattern: str) -> str:
    """Return ``pattern`` upper-cased and checked against :data:`BAYER_PATTERNS`.

    Raises
    ------
    FrameError
        If the pattern is not one of ``RGGB``, ``GRBG``, ``GBRG``, ``BGGR``
        (CMY patterns such as ``CYYM`` are not supported).
    """
    if not isinstance(pattern, str):
        raise FrameError(f"Bayer pattern must be a string such as 'RGGB', got {pattern!r}")
    norm = pattern.strip().upper()
    if norm not in BAYER_PATTERNS:
        raise FrameError(
            f"unsupported Bayer pattern {pattern!r}: expected one of {', '.join(BAYER_PATTERNS)}"
        )
    return norm


def pattern_at(pattern: str, y: int, x: int) -> str:
    """Return the pattern of the 2x2 block that starts at row ``y``, column ``x``.

    Use it after cropping a mosaic at ``(y, x)``, or after flipping it: a
    vertical flip of an ``H``-row mosaic has the pattern
    ``pattern_at(pattern, H - 1, 0)``, a horizontal flip of a ``W``-column one
    ``pattern_at(pattern, 0, W - 1)``.

    Parameters
    ----------
    pattern : str
        The pattern at the origin, one of :data:`BAYER_PATTERNS`.
    y, x : int
        Offsets in pixels (any integers; only their parity matters).

    Returns
    -------
    str

    Examples
    --------
    >>> pattern_at("RGGB", 1, 0)
    'GBRG'
    >>> pattern_at("RGGB", 1, 1)
    'BGGR'
    """
    p = normalise_pattern(pattern)
    rows = [p[0:2], p[2:4]]
    if y % 2:
        rows = rows[::-1]
    if x % 2:
        rows = [r[::-1] for r in rows]
    return rows[0] + rows[1]


def _channel_index(pattern: str) -> np.ndarray:
    """(2, 2) array of RGB channel indices (0, 1, 2) of the pattern's cells."""
    return np.array([["RGB".index(c) for c in pattern[:2]], ["RGB".index(c) for c in pattern[2:]]])


def mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """Sample an RGB image through a Bayer filter: the inverse of demosaicing.

    Parameters
    ----------
    rgb : (H, W, 3) ndarray
        Colour image in RGB order, any dtype.
    pattern : str
        One of :data:`BAYER_PATTERNS`.

    Returns
    -------
    (H, W) ndarray
        Same dtype as ``rgb``; each pixel keeps only the channel its filter
        passes.

    Raises
    ------
    FrameError
        For a bad shape or pattern.

    Examples
    --------
    >>> raw = mosaic(np.dstack([np.full((2, 2), v, np.uint8) for v in (1, 2, 3)]), "RGGB")
    >>> raw.tolist()
    [[1, 2], [2, 3]]
    """
    p = normalise_pattern(pattern)
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise FrameError(f"expected an (H, W, 3) RGB image to mosaic, got shape {rgb.shape}")
    h, w = rgb.shape[:2]
    chan = _channel_index(p)
    idx = np.tile(chan, ((h + 1) // 2, (w + 1) // 2))[:h, :w]
    return np.take_along_axis(rgb, idx[:, :, None], axis=2)[:, :, 0]


def _cv_code(pattern: str, method: str) -> int:
    # OpenCV names the pattern of the block at (1, 1): cells [1,1] then [1,0]
    # of ours, i.e. RGGB -> "BG", GRBG -> "GB", GBRG -> "GR", BGGR -> "RG".
    suffix = {"bilinear": "", "vng": "_VNG", "ea": "_EA"}[method]
    return getattr(cv2, f"COLOR_Bayer{pattern[3]}{pattern[2]}2RGB{suffix}")


def debayer(raw: np.ndarray, pattern: str, *, method: str = "bilinear") -> np.ndarray:
    """Demosaic a raw Bayer frame into an RGB image with OpenCV.

    Parameters
    ----------
    raw : (H, W) uint8 or uint16 ndarray
        The sensor mosaic, values as read (not rescaled). Odd heights and
        widths are accepted: OpenCV interpolates the incomplete last row or
        column from its neighbours. At least 2x2 pixels.
    pattern : str
        Pattern at ``raw[0:2, 0:2]``, one of :data:`BAYER_PATTERNS`
        (case-insensitive).
    method : {"bilinear", "vng", "ea"}, optional
        OpenCV's bilinear interpolation (fast, the default), variable number
        of gradients (``uint8`` only) or edge-aware interpolation.

    Returns
    -------
    (H, W, 3) ndarray
        RGB, same dtype as ``raw``.

    Raises
    ------
    FrameError
        For a bad pattern, a frame that is not 2-D, smaller than 2x2, of an
        unsupported dtype, or ``uint16`` with ``method="vng"``.
    ValueError
        For an unknown ``method``.

    Notes
    -----
    The one-pixel border is less accurate than the interior with every
    method (OpenCV extrapolates it). A uniform grey mosaic demosaics to the
    same uniform grey, and a uniform colour to exactly that colour with
    ``"bilinear"``.

    Examples
    --------
    >>> rgb = np.zeros((6, 6, 3), np.uint8); rgb[..., 0] = 200
    >>> debayer(mosaic(rgb, "GRBG"), "GRBG")[2, 2].tolist()
    [200, 0, 0]
    """
    if method not in DEMOSAIC_METHODS:
        raise ValueError(
            f"unknown demosaicing method {method!r}: expected one of {', '.join(DEMOSAIC_METHODS)}"
        )
    p = normalise_pattern(pattern)
    raw = np.asarray(raw)
    if raw.ndim != 2:
        raise FrameError(f"expected a 2-D (H, W) Bayer mosaic, got shape {raw.shape}")
    if raw.shape[0] < 2 or raw.shape[1] < 2:
        raise FrameError(f"Bayer mosaic too small: {raw.shape[1]}x{raw.shape[0]} px, need 2x2")
    if raw.dtype not in (np.uint8, np.uint16):
        raise FrameError(
            f"cannot demosaic {raw.dtype} data: expected uint8 or uint16 sensor values"
        )
    if method == "vng" and raw.dtype != np.uint8:
        raise FrameError(
            "OpenCV's VNG demosaicing supports uint8 only; "
            f"got {raw.dtype} (use method='ea' or 'bilinear' to keep 16-bit precision)"
        )
    return cv2.cvtColor(np.ascontiguousarray(raw), _cv_code(p, method))
