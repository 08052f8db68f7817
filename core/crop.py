"""Finding and cropping the planet.

Two locators live here:

* :func:`locate_planet` — the origin's method. Sobel gradients are summed
  across the perpendicular axis into one profile per axis; on each side of the
  disc the profile peaks at the limb, and the disc edge is where the profile
  falls to half of that peak (searching outwards). The crop is that box plus
  a margin.
* :func:`disc_centroid` — a brightness-weighted centre of gravity of the
  pixels above a threshold halfway between the background and the peak
  (PlanetarySystemStacker's robust centre), for centring fixed-size crops.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from luckystack.core._stats import median, percentiles, quantiles
from luckystack.core.errors import FrameError

__all__ = [
    "CropBox",
    "PlanetLocation",
    "locate_planet",
    "disc_centroid",
    "DiscMeasurement",
    "find_disc",
    "bin_area",
    "box_around",
    "expand_box",
    "extract_box",
    "extract_shifted",
]


@dataclass(frozen=True, slots=True)
class CropBox:
    """A half-open pixel box ``[y0, y1) x [x0, x1)`` (numpy order: rows, columns)."""

    y0: int
    x0: int
    y1: int
    x1: int

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def center_yx(self) -> tuple[float, float]:
        """Geometric centre in pixel coordinates (pixel centres at integers)."""
        return (self.y0 + self.y1 - 1) / 2.0, (self.x0 + self.x1 - 1) / 2.0

    def clipped(self, shape_hw: tuple[int, int]) -> CropBox:
        """The box intersected with a frame of ``shape_hw``."""
        h, w = shape_hw
        return CropBox(max(self.y0, 0), max(self.x0, 0), min(self.y1, h), min(self.x1, w))

    def inside(self, shape_hw: tuple[int, int]) -> bool:
        h, w = shape_hw
        return self.y0 >= 0 and self.x0 >= 0 and self.y1 <= h and self.x1 <= w


@dataclass(frozen=True, slots=True)
class PlanetLocation:
    """Result of :func:`locate_planet`.

    Attributes
    ----------
    disc : CropBox
        The disc's edges (half-maximum of the limb gradient), no margin.
    box : CropBox
        ``disc`` plus the margin, clipped to the frame.
    touches_edge : bool
        True when the disc (not the margin) reaches the frame border, i.e.
        the planet is probably cut off.
    contrast : float
        Limb-gradient peak over the profile's robust noise level (the lower
        of the four sides); large for a clear disc.
    """

    disc: CropBox
    box: CropBox
    touches_edge: bool
    contrast: float


def _sobel_profiles(lum: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gx = cv2.Sobel(lum, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(lum, cv2.CV_32F, 0, 1, ksize=3)
    # Sum across the perpendicular axis: the x profile sums |d/dx| over rows.
    return np.abs(gy).sum(axis=1, dtype=np.float64), np.abs(gx).sum(axis=0, dtype=np.float64)


def _outermost_peak(side: np.ndarray) -> int:
    """Index of the outermost local maximum above half the maximum of ``side``.

    ``side`` runs from the disc's centre (index 0) outwards; the result
    counts from index 0.
    """
    top = float(side.max())
    above = np.flatnonzero(side > 0.5 * top)
    i = int(above[-1])
    while i > 0 and side[i - 1] >= side[i]:
        i -= 1
    return i


def _half_max_edges(profile: np.ndarray) -> tuple[int, int, float]:
    """Edges of the disc along one axis from a gradient profile.

    Returns ``(lo, hi, contrast)``: ``lo`` is the first and ``hi`` one past the
    last index inside the half-maximum edges.
    """
    n = profile.size
    floor = median(profile)
    p = profile - floor
    # Robust noise of the profile from its lower half (sky).
    sky = p[p <= percentiles(p, (50,))[0]]
    noise = float(1.4826 * median(np.abs(sky - median(sky)))) + 1e-12
    total = p.clip(min=0)
    if total.sum() <= 0:
        raise FrameError("no planet found: the frame has no gradient structure")
    split = int(round(float((np.arange(n) * total).sum() / total.sum())))
    split = min(max(split, 1), n - 1)
    # The limb is the outermost strong feature on each side: belts inside the
    # disc can have stronger gradients, so the peak is the first local maximum
    # above half of the side's maximum, searching from the outside in.
    i_left = _outermost_peak(p[:split][::-1])
    i_left = split - 1 - i_left
    i_right = split + _outermost_peak(p[split:])
    peak_left, peak_right = float(p[i_left]), float(p[i_right])
    lo = i_left
    while lo > 0 and p[lo - 1] > peak_left / 2.0:
        lo -= 1
    hi = i_right
    while hi < n - 1 and p[hi + 1] > peak_right / 2.0:
        hi += 1
    contrast = min(peak_left, peak_right) / noise
    return lo, hi + 1, contrast


def _bright_border(lum: np.ndarray) -> bool:
    """True when the frame's border holds disc-bright pixels (a clipped planet)."""
    lo, hi = percentiles(lum, (10, 99.9))
    level = lo + 0.5 * (hi - lo)
    border = np.concatenate([lum[0], lum[-1], lum[:, 0], lum[:, -1]])
    return bool((border > level).sum() >= 3)


def locate_planet(
    lum: np.ndarray, *, margin: float = 0.15, min_contrast: float = 8.0
) -> PlanetLocation:
    """Find the planet's disc with the origin's Sobel half-maximum method.

    Parameters
    ----------
    lum : (H, W) float32 ndarray
        Luminance working data.
    margin : float, optional
        Margin added on every side, as a fraction of the disc's size on that
        axis (0.15 adds 15 % of the width left and right).
    min_contrast : float, optional
        Smallest accepted ratio of the limb-gradient peak to the profile's
        noise; below it the frame is taken to hold no planet.

    Returns
    -------
    PlanetLocation

    Raises
    ------
    FrameError
        If the frame is blank (no structure) or no disc stands out of the noise.

    Notes
    -----
    ``profile_x[j] = sum_i |Sobel_x(lum)[i, j]|`` (likewise for y). The profile
    minus its median is split at its centre of mass; each half's maximum marks
    a limb, and the edge is the outermost index, walking outwards from that
    maximum, where the profile is still above half of it.
    """
    if lum.ndim != 2:
        raise FrameError(f"expected 2-D luminance, got shape {lum.shape}")
    if not np.isfinite(lum).all():
        raise FrameError("frame contains NaN or infinite values")
    span = float(lum.max() - lum.min())
    if span <= 1e-6:
        raise FrameError("blank frame: every pixel has the same value")
    profile_y, profile_x = _sobel_profiles(lum)
    y0, y1, cy = _half_max_edges(profile_y)
    x0, x1, cx = _half_max_edges(profile_x)
    contrast = min(cy, cx)
    if contrast < min_contrast:
        raise FrameError(
            f"no planet found: limb contrast {contrast:.1f} is below {min_contrast:g}"
        )
    h, w = lum.shape
    if y1 - y0 < 3 or x1 - x0 < 3:
        raise FrameError(f"no planet found: disc of {x1 - x0}x{y1 - y0} px is too small")
    disc = CropBox(y0, x0, y1, x1)
    my = int(round(margin * disc.height))
    mx = int(round(margin * disc.width))
    box = CropBox(y0 - my, x0 - mx, y1 + my, x1 + mx).clipped((h, w))
    touches = y0 <= 0 or x0 <= 0 or y1 >= h or x1 >= w or _bright_border(lum)
    return PlanetLocation(disc=disc, box=box, touches_edge=touches, contrast=contrast)


def disc_centroid(lum: np.ndarray) -> tuple[float, float]:
    """Brightness-weighted centre of gravity of the planet, ``(y, x)``.

    Pixels above a threshold halfway between the background (the frame's
    10th percentile) and the bright end (99.9th percentile) contribute with
    weight ``lum - threshold``.

    Raises
    ------
    FrameError
        If no pixel rises above the threshold (a uniform frame).
    """
    lo = float(np.percentile(lum, 10))
    hi = float(np.percentile(lum, 99.9))
    if hi - lo <= 1e-6:
        raise FrameError("blank frame: no disc above the background")
    thr = 0.5 * (lo + hi)
    weights = np.clip(lum - thr, 0.0, None).astype(np.float32)
    m = cv2.moments(weights)
    if m["m00"] <= 0:
        raise FrameError("no planet found: nothing above the centroid threshold")
    return m["m01"] / m["m00"], m["m10"] / m["m00"]


@dataclass(frozen=True, slots=True)
class DiscMeasurement:
    """Result of :func:`find_disc`.

    Attributes
    ----------
    center_yx : tuple of float
        Brightness-weighted centre of gravity of the disc (rows, columns).
    disc : CropBox
        Bounding box of the disc (pixels above the half-level threshold).
    area_px : int
        Pixels in the disc.
    touches_edge : bool
        The disc reaches the frame border (the planet is probably cut off).
    snr : float
        Disc level above the background, in units of the background noise.
    """

    center_yx: tuple[float, float]
    disc: CropBox
    area_px: int
    touches_edge: bool
    snr: float


def _background_noise(lum: np.ndarray, quartiles: tuple[float, float] | None = None) -> float:
    """Noise of the darker half of the frame (the sky).

    The larger of the quartile estimate ``(median - q25) / 0.6745`` and the
    standard deviation of the darker half: with 8-bit data the sky often
    sits on one or two levels, where the quartiles coincide although the
    noise is not zero. ``quartiles`` = (q25, median) if already known.
    """
    if quartiles is None:
        quartiles = quantiles(lum, (0.25, 0.5))
    q25, med = quartiles
    # The darker half's std from sums instead of gathering it with boolean
    # indexing: d = lum - median, zeroed above the median (in place, by
    # OpenCV). Centred on the median, the sums do not lose the small sky
    # variance to the sky level (sum(x^2)/n - mean^2 of lum itself would).
    n = max(int(np.count_nonzero(lum <= med)), 1)
    d = lum - med
    cv2.threshold(d, 0.0, 0.0, cv2.THRESH_TOZERO_INV, dst=d)
    mean = cv2.sumElems(d)[0] / n
    var = max(cv2.norm(d, cv2.NORM_L2SQR) / n - mean * mean, 0.0)
    return max((float(med) - float(q25)) / 0.6745, var**0.5, 1e-5)


def bin_area(lum: np.ndarray, scale: int) -> np.ndarray:
    """``lum`` area-averaged over ``scale`` x ``scale`` blocks (the remainder dropped)."""
    if scale == 1:
        return lum
    sh, sw = lum.shape[0] // scale, lum.shape[1] // scale
    # Whole multiples of the factor take OpenCV's fast integer area path.
    return cv2.resize(lum[: sh * scale, : sw * scale], (sw, sh), interpolation=cv2.INTER_AREA)


def find_disc(
    lum: np.ndarray, *, min_area_px: int = 30, min_snr: float = 5.0, edge_level: float = 0.2
) -> DiscMeasurement:
    """Find the planet as the largest bright region; robust to belts and moons.

    Pixels above ``edge_level`` of the way from the background (10th
    percentile) to the bright end (99.9th percentile) form a mask; its
    largest connected component is the disc. The centre is the
    brightness-weighted centre of gravity of that component's pixels above
    the half level (weights ``lum - half``), as PlanetarySystemStacker does.

    Raises
    ------
    FrameError
        Blank frame, no region of ``min_area_px`` pixels, or a disc less than
        ``min_snr`` background-noise sigmas above the background.

    Notes
    -----
    Runs on every frame (on the decode thread), so it favours single-pass
    OpenCV calls, which release the GIL, over numpy temporaries and boolean
    indexing; the results are those of the plain numpy formulation up to
    float rounding (the percentiles are ``np.quantile``'s, bit for bit).
    """
    if lum.ndim != 2:
        raise FrameError(f"expected 2-D luminance, got shape {lum.shape}")
    # The search runs on a copy binned to about 128-255 rows (area average):
    # the percentiles and connected components are the costliest steps at
    # full size, and the centre of gravity is then measured at full size.
    scale = max(1, min(lum.shape) // 128)
    small = bin_area(lum, scale)
    if not np.isfinite(small).all():
        raise FrameError("frame contains NaN or infinite values")
    # Percentiles from every other binned pixel (>= ~4000 samples) suffice.
    stats_sample = small[::2, ::2] if small.size >= 16384 else small
    # 99.9 / 100, as np.percentile(..., 99.9) divides (it is not the literal 0.999).
    lo, q25, med, hi = quantiles(stats_sample, (0.10, 0.25, 0.50, 99.9 / 100))
    if hi - lo <= 1e-6:
        raise FrameError("blank frame: no disc above the background")
    noise = _background_noise(small, (q25, med)) * scale  # binning averaged the noise down
    if (hi - lo) / noise < 2 * min_snr:
        raise FrameError(
            f"no planet found: brightest pixels only {(hi - lo) / noise:.1f} sigma above "
            "the background (blank or black frame)"
        )
    thr = 0.5 * (lo + hi)
    # The extent uses a lower threshold than the centre: limb darkening and
    # seeing put the half level well inside the limb.
    edge = lo + edge_level * (hi - lo)
    mask = (small > edge).view(np.uint8)
    # 16-bit labels make the labelling ~2x cheaper; they suffice because the
    # 8-connected components of an h x w image number at most
    # ceil(h/2) * ceil(w/2).
    max_labels = ((small.shape[0] + 1) // 2) * ((small.shape[1] + 1) // 2)
    ltype = cv2.CV_16U if max_labels < 65535 else cv2.CV_32S
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8, ltype=ltype)
    if n < 2:
        raise FrameError("no planet found: nothing above the background")
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA])) if n > 2 else 1
    sx0, sy0, sw, sh, count = stats[best].tolist()
    area = count * scale * scale
    if area < min_area_px:
        raise FrameError(f"no planet found: largest bright region is {area} px")
    rows, cols = slice(sy0, sy0 + sh), slice(sx0, sx0 + sw)
    # The mask is the component itself when it is the only one (the usual case).
    region = mask[rows, cols] if n == 2 else (labels[rows, cols] == best).view(np.uint8)
    snr = (cv2.mean(small[rows, cols], mask=region)[0] - lo) / noise
    if snr < min_snr:
        raise FrameError(f"no planet found: disc only {snr:.1f} sigma above the background")
    hh, ww = lum.shape
    x0, y0 = sx0 * scale, sy0 * scale
    x1, y1 = min(ww, (sx0 + sw) * scale), min(hh, (sy0 + sh) * scale)
    if scale > 1:  # refine the box edges at full resolution
        pad = scale
        px0, py0 = max(0, x0 - pad), max(0, y0 - pad)
        px1, py1 = min(ww, x1 + pad), min(hh, y1 + pad)
        inside = (lum[py0:py1, px0:px1] > edge).view(np.uint8)
        bx, by, bw, bh = cv2.boundingRect(inside)  # of the non-zero pixels
        if bw > 0 and bh > 0:
            x0, x1 = px0 + bx, px0 + bx + bw
            y0, y1 = py0 + by, py0 + by + bh
    # Weights max(lum - thr, 0): the subtraction makes the one temporary,
    # which OpenCV clips in place.
    weights = lum[y0:y1, x0:x1] - thr
    cv2.threshold(weights, 0.0, 0.0, cv2.THRESH_TOZERO, dst=weights)
    m = cv2.moments(weights)
    if m["m00"] <= 0:
        raise FrameError("no planet found: empty disc")
    center = (y0 + m["m01"] / m["m00"], x0 + m["m10"] / m["m00"])
    touches = x0 <= 0 or y0 <= 0 or x1 >= ww or y1 >= hh
    return DiscMeasurement(
        center_yx=center, disc=CropBox(y0, x0, y1, x1), area_px=area,
        touches_edge=touches, snr=snr,
    )


def box_around(center_yx: tuple[float, float], size_hw: tuple[int, int]) -> CropBox:
    """The ``size_hw`` box whose centre is nearest to ``center_yx``."""
    h, w = size_hw
    y0 = int(np.floor(center_yx[0] - (h - 1) / 2.0 + 0.5))
    x0 = int(np.floor(center_yx[1] - (w - 1) / 2.0 + 0.5))
    return CropBox(y0, x0, y0 + h, x0 + w)


def expand_box(box: CropBox, margin: float, *, multiple: int = 2) -> tuple[int, int]:
    """Size ``(h, w)`` of ``box`` grown by ``margin`` per side, rounded up to ``multiple``."""
    h = box.height * (1 + 2 * margin)
    w = box.width * (1 + 2 * margin)
    return (
        int(np.ceil(h / multiple) * multiple),
        int(np.ceil(w / multiple) * multiple),
    )


def extract_box(data: np.ndarray, box: CropBox) -> np.ndarray:
    """Copy of ``data`` inside ``box``; parts outside the frame are zero."""
    h, w = data.shape[:2]
    out = np.zeros((box.height, box.width) + data.shape[2:], dtype=data.dtype)
    c = box.clipped((h, w))
    if c.height > 0 and c.width > 0:
        out[c.y0 - box.y0 : c.y1 - box.y0, c.x0 - box.x0 : c.x1 - box.x0] = data[
            c.y0 : c.y1, c.x0 : c.x1
        ]
    return out


def extract_shifted(
    data: np.ndarray, box: CropBox, shift_yx: tuple[float, float]
) -> np.ndarray:
    """Crop ``box`` from ``data`` after moving the content by ``shift_yx``.

    ``out[i, j] = data[box.y0 + i - dy, box.x0 + j - dx]`` with bicubic
    interpolation, so a frame whose content sits ``(dy, dx)`` away from the
    reference comes out aligned when called with ``-shift``. Samples outside
    the frame are zero. Sampling the full frame (not a crop) keeps the crop's
    borders free of edge artefacts.
    """
    dy, dx = float(shift_yx[0]), float(shift_yx[1])
    if dy == 0.0 and dx == 0.0:
        return extract_box(data, box)
    m = np.array([[1.0, 0.0, box.x0 - dx], [0.0, 1.0, box.y0 - dy]], dtype=np.float64)
    return cv2.warpAffine(
        data,
        m,
        (box.width, box.height),
        flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
