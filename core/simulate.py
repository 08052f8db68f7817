"""Seeded simulator of a planetary capture session with known truth.

The simulator renders a Jupiter-like planet (oblate, limb-darkened disc with
belts, turbulent cloud texture, festoons and ovals), then produces the frames a
planetary camera would record through turbulent air: every frame is the planet
translated by a random tip-tilt shift (plus optional drift and local warping),
blurred by a Gaussian PSF whose width varies from frame to frame, plus sky
background, photon noise and read noise, quantised to 8, 12 or 16 bits.

Everything the stacker has to estimate is returned alongside the frames
(:class:`SimulatedSession`): the noise-free truth, the true shift and PSF width
of every frame and which frames are deliberately bad.  All randomness comes
from ``np.random.default_rng(seed)``, so a seed reproduces a session exactly.

Conventions
-----------
* Coordinates are ``(row, column)`` -- numpy order -- and a pixel's centre sits
  at its integer index, so the centre of an ``(H, W)`` frame is
  ``((H - 1) / 2, (W - 1) / 2)``.
* Shifts follow :func:`scipy.ndimage.shift`: frame ``i`` shows the truth moved
  by ``+shifts_yx[i]``, i.e. the planet centre is at ``center_yx + shifts_yx[i]``.
* Intensities are fractions of white in ``[0, 1]``; colour images are
  ``(H, W, 3)`` in **RGB** order (convert before ``cv2.imwrite``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np

from luckystack.core._validate import check_real
from scipy import ndimage

__all__ = [
    "BAD_FRAME_KINDS",
    "PlanetModel",
    "PlanetSprite",
    "SeeingModel",
    "SimulatedSession",
    "random_warp_field",
    "render_planet",
    "render_planet_sprite",
    "simulate_frame",
    "simulate_session",
]

#: Kinds of deliberately bad frames :func:`simulate_session` can insert.
BAD_FRAME_KINDS: tuple[str, ...] = ("black", "clipped", "blurred")

# Photon counts below this many electrons are always drawn exactly (Poisson);
# above it the normal approximation N(lam, lam) is used unless
# ``SeeingModel.exact_poisson`` is set.
_POISSON_EXACT_BELOW = 10.0


# --------------------------------------------------------------------------
# Parameter and result types
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlanetModel:
    """Appearance of the simulated (Jupiter-like) planet.

    Attributes
    ----------
    radius_px : float
        Equatorial radius in pixels.
    oblateness : float
        Flattening ``f``; the polar radius is ``radius_px * (1 - f)``.
        Jupiter: 0.065.
    limb_darkening : float
        Coefficient ``u`` of the linear law ``I(mu) = 1 - u * (1 - mu)``,
        in [0, 1].
    bands : int
        Number of dark belts (NEB, SEB, NTB, STB, NNTB, SSTB, then more
        alternating towards the poles).
    band_contrast : float
        Darkness of the main belts as a fraction of the zone level, in
        [0, 1]. All other albedo detail (turbulence, festoons, polar
        darkening, spots) scales with it, so ``band_contrast=0`` gives a plain
        limb-darkened ellipse.
    spots : int
        Number of ovals: the first is a Great-Red-Spot-like oval, the others
        small white ovals or dark barges (fine detail).
    brightness : float
        Level of the bright zones at disc centre, as a fraction of white, in
        (0, 1]. Small bright ovals may exceed it slightly (the image is
        clipped to 1).
    colour : tuple of 3 float or None
        RGB multipliers in [0, 1] for a colour planet, e.g.
        ``(1.0, 0.9, 0.75)``; belts are then browner (darker in blue) and the
        red spot redder. ``None`` renders a monochrome planet.
    """

    radius_px: float = 60.0
    oblateness: float = 0.065
    limb_darkening: float = 0.6
    bands: int = 6
    band_contrast: float = 0.25
    spots: int = 3
    brightness: float = 0.75
    colour: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        check_real("radius_px", self.radius_px, low=0.5)
        check_real("oblateness", self.oblateness, low=0.0, high=0.5)
        check_real("limb_darkening", self.limb_darkening, low=0.0, high=1.0)
        _check_count("bands", self.bands)
        check_real("band_contrast", self.band_contrast, low=0.0, high=1.0)
        _check_count("spots", self.spots)
        check_real("brightness", self.brightness, low=0.0, high=1.0, low_open=True)
        if self.colour is not None:
            if len(self.colour) != 3:
                raise ValueError(
                    f"PlanetModel.colour must be None or 3 RGB multipliers; got {self.colour!r}"
                )
            for value in self.colour:
                check_real("colour component", value, low=0.0, high=1.0)


@dataclass(frozen=True, slots=True)
class SeeingModel:
    """Atmosphere and camera of a simulated session.

    Attributes
    ----------
    jitter_px : float
        RMS random frame-to-frame shift on each axis, in pixels.
    drift_px_per_frame : tuple of 2 float
        Linear drift ``(dy, dx)`` added per frame (frame 0 has none).
    sigma_min_px, sigma_max_px : float
        Gaussian PSF sigma of the best and worst frames, in pixels; 0 means
        no blur.
    lucky_fraction : float
        Expected share of frames whose sigma lies within 10 % of the range
        above ``sigma_min_px`` (see Notes of :func:`simulate_session`).
    warp_px : float
        RMS amplitude (each axis, over the disc) of a smooth random local
        displacement field -- anisoplanatic tip-tilt that distorts the disc
        differently in every frame -- with a spatial scale of about half the
        planet radius. 0 disables warping.
    photons_at_white : float
        Expected photo-electrons at full white (sets the photon noise).
    read_noise : float
        RMS Gaussian read noise, in electrons.
    background : float
        Sky level, fraction of white, added to every pixel before the noise.
    jitter_correlation : float
        Frame-to-frame correlation ``rho`` in [0, 1) of the random shifts
        (AR(1) process with stationary RMS ``jitter_px``). 0: i.i.d.
    sigma_correlation : float
        Frame-to-frame correlation in [0, 1) of the seeing quality (AR(1)
        latent process; the distribution of sigmas is unchanged). 0: i.i.d.
    exact_poisson : bool
        Draw photon noise exactly everywhere. By default counts of at least
        10 electrons use the normal approximation ``N(lam, lam)``, which has
        the same mean and variance and is several times faster.
    """

    jitter_px: float = 3.0
    drift_px_per_frame: tuple[float, float] = (0.0, 0.0)
    sigma_min_px: float = 0.8
    sigma_max_px: float = 3.0
    lucky_fraction: float = 0.15
    warp_px: float = 0.0
    photons_at_white: float = 2000.0
    read_noise: float = 2.0
    background: float = 0.01
    jitter_correlation: float = 0.0
    sigma_correlation: float = 0.0
    exact_poisson: bool = False

    def __post_init__(self) -> None:
        check_real("jitter_px", self.jitter_px, low=0.0)
        if len(self.drift_px_per_frame) != 2:
            raise ValueError(
                "SeeingModel.drift_px_per_frame must be a (dy, dx) pair; "
                f"got {self.drift_px_per_frame!r}"
            )
        for value in self.drift_px_per_frame:
            check_real("drift_px_per_frame component", value)
        check_real("sigma_min_px", self.sigma_min_px, low=0.0)
        check_real("sigma_max_px", self.sigma_max_px, low=0.0)
        if self.sigma_max_px < self.sigma_min_px:
            raise ValueError(
                f"SeeingModel.sigma_max_px ({self.sigma_max_px}) must be >= "
                f"sigma_min_px ({self.sigma_min_px})"
            )
        check_real("lucky_fraction", self.lucky_fraction, low=0.0, high=1.0)
        check_real("warp_px", self.warp_px, low=0.0)
        check_real("photons_at_white", self.photons_at_white, low=0.0, low_open=True)
        check_real("read_noise", self.read_noise, low=0.0)
        check_real("background", self.background, low=0.0, high=1.0)
        check_real("jitter_correlation", self.jitter_correlation, low=0.0, high=0.999)
        check_real("sigma_correlation", self.sigma_correlation, low=0.0, high=0.999)


@dataclass(frozen=True, slots=True, eq=False)
class PlanetSprite:
    """Pixel-integrated planet sampled on a fine grid, for fast sub-pixel placement.

    Made by :func:`render_planet_sprite` and consumed by :func:`simulate_frame`.
    Sample ``(i, j)`` holds the mean of the planet over a one-pixel square
    centred ``((i - cy) / supersample, (j - cx) / supersample)`` pixels from the
    planet centre, so the value of a frame pixel at any sub-pixel position is a
    cubic B-spline interpolation of the grid; positions are reproduced to
    better than 0.002 px.

    Attributes
    ----------
    image : (h, w) or (h, w, 3) ndarray of float32
        The samples, fraction of white; 0 off the planet.
    supersample : int
        Samples per frame pixel along each axis.
    center_yx : tuple of 2 float
        Position of the planet centre in ``image``, in samples.
    half_extent_yx : tuple of 2 float
        Half-height and half-width, in frame pixels, outside which the
        planet is exactly 0.
    coefficients : (h + 2, w + 2) or (h + 2, w + 2, 3) ndarray of float32
        Cubic B-spline coefficients of ``image`` (as
        :func:`scipy.ndimage.spline_filter`) with one ring of zeros around
        them, so sample ``(i, j)`` of ``image`` is ``(i + 1, j + 1)`` here.
    """

    image: np.ndarray
    supersample: int
    center_yx: tuple[float, float]
    half_extent_yx: tuple[float, float]
    coefficients: np.ndarray


@dataclass(frozen=True, slots=True, eq=False)
class SimulatedSession:
    """Frames of a simulated capture session together with the truth.

    Attributes
    ----------
    frames : list of (H, W) or (H, W, 3) ndarray of uint8 or uint16
        The recorded frames (RGB channel order for colour).
    truth : (H, W) or (H, W, 3) ndarray of float64
        Noise-free, unblurred planet at the reference position ``center_yx``
        (zero shift), fraction of white in [0, 1], background 0.
    shifts_yx : (n, 2) ndarray of float64
        True translation ``(dy, dx)`` of each frame's content relative to
        ``truth`` (``frame ≈ scipy.ndimage.shift(truth, shifts_yx[i])``);
        ``nan`` for "black" frames, which contain no planet.
    sigmas_px : (n,) ndarray of float64
        Gaussian PSF sigma of each frame; ``inf`` for "black" frames.
    kinds : tuple of str
        Per frame: ``"good"``, ``"black"`` (background and noise only),
        ``"clipped"`` (planet centre on a frame edge, about half the disc
        outside) or ``"blurred"`` (sigma ``max(4 * sigma_max_px, 8)``).
    white_level : int
        Stored value of full white: 255 for 8-bit, 65535 for 12- and 16-bit
        data (12-bit values are stored like cameras do, multiplied by 16, so
        they are multiples of 16 and at most 65520).
    center_yx : tuple of 2 float
        Planet centre of ``truth``, pixels.
    """

    frames: list[np.ndarray]
    truth: np.ndarray
    shifts_yx: np.ndarray
    sigmas_px: np.ndarray
    kinds: tuple[str, ...]
    white_level: int
    center_yx: tuple[float, float] | None = None

    def best_indices(self, k: int) -> np.ndarray:
        """Indices of the ``k`` truly sharpest usable frames.

        Parameters
        ----------
        k : int
            How many frames to return (non-negative).

        Returns
        -------
        (m,) ndarray of intp
            Indices of "good" frames in ascending order of PSF sigma (ties
            keep frame order); ``m = min(k, number of good frames)``.

        Raises
        ------
        ValueError
            If ``k`` is negative.
        """
        if int(k) != k or k < 0:
            raise ValueError(f"k must be a non-negative integer; got {k!r}")
        good = np.flatnonzero(np.asarray(self.kinds) == "good")
        order = np.argsort(self.sigmas_px[good], kind="stable")
        return good[order[: int(k)]]


# --------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------


def _check_count(name: str, value: object, *, low: int = 0) -> None:
    """Raise ValueError unless ``value`` is an integer >= ``low``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}; got {value!r}")


def _check_shape(shape: object) -> tuple[int, int]:
    """Return ``shape`` as a pair of positive ints or raise ValueError."""
    try:
        rows, cols = shape  # type: ignore[misc]
    except (TypeError, ValueError) as err:
        raise ValueError(f"shape must be a (rows, cols) pair; got {shape!r}") from err
    for value in (rows, cols):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"shape must be two positive integers; got {shape!r}")
    return int(rows), int(cols)


def _check_point(name: str, point: object) -> tuple[float, float]:
    """Return ``point`` as a finite ``(y, x)`` float pair or raise ValueError."""
    try:
        y, x = (float(v) for v in point)  # type: ignore[union-attr]
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a (row, col) pair of numbers; got {point!r}") from err
    if not (math.isfinite(y) and math.isfinite(x)):
        raise ValueError(f"{name} must be finite; got {point!r}")
    return y, x


def _frame_center(shape: tuple[int, int]) -> tuple[float, float]:
    return (shape[0] - 1) / 2.0, (shape[1] - 1) / 2.0


# --------------------------------------------------------------------------
# Planet rendering
# --------------------------------------------------------------------------


def _belt_layout(count: int) -> list[tuple[float, float, float, bool]]:
    """Nominal belts ``(latitude deg, width deg, relative depth, split)``, north +."""
    layout = [
        (12.5, 10.0, 1.00, False),  # NEB
        (-14.0, 12.0, 0.95, True),  # SEB, with a lighter core between its components
        (25.0, 5.0, 0.60, False),  # NTB
        (-28.5, 5.0, 0.60, False),  # STB
        (36.0, 4.0, 0.45, False),  # NNTB
        (-40.0, 4.0, 0.45, False),  # SSTB
    ]
    extra = count - len(layout)
    for j in range(max(extra, 0)):
        hemisphere = 1.0 if j % 2 == 0 else -1.0
        layout.append((hemisphere * min(46.0 + 5.0 * (j // 2), 80.0), 3.5, 0.35, False))
    return layout[:count]


def _soft_band(lat: np.ndarray, low: float, high: float, edge: float) -> np.ndarray:
    """Smooth top-hat in latitude: ~1 for ``low < lat < high``, edges of width ``edge``."""
    return 0.5 * (np.tanh((lat - low) / edge) - np.tanh((lat - high) / edge))


def _texture_map(model: PlanetModel, seed: int) -> tuple[np.ndarray, float]:
    """Albedo map of the visible hemisphere in latitude/longitude.

    Returns the map, shape ``(n, n)`` (mono) or ``(n, n, 3)`` (RGB) float32,
    with rows from latitude +90 to -90 deg and columns from longitude -90 to
    +90 deg, and the cell size in degrees.  Zones are at about 1, belts and
    other dark detail below, bright ovals slightly above.
    """
    rng = np.random.default_rng(seed)
    n = int(np.clip(math.ceil(2.0 * math.pi * model.radius_px), 360, 4096))
    step = 180.0 / n
    lat = (90.0 - (np.arange(n, dtype=np.float32) + 0.5) * step)[:, None]
    lon = (-90.0 + (np.arange(n, dtype=np.float32) + 0.5) * step)[None, :]
    contrast = model.band_contrast

    def noise(sigma_lat_deg: float, sigma_lon_deg: float) -> np.ndarray:
        """Unit-variance Gaussian-filtered noise; broad fields are drawn coarser."""
        factor = int(np.clip(min(sigma_lat_deg, sigma_lon_deg) / step / 2.0, 1, 8))
        size = -(-n // factor)
        white = rng.standard_normal((size, size), dtype=np.float32)
        field = cv2.GaussianBlur(
            white,
            (0, 0),
            sigmaX=max(sigma_lon_deg / step / factor, 0.5),
            sigmaY=max(sigma_lat_deg / step / factor, 0.5),
            borderType=cv2.BORDER_REFLECT,
        )
        if factor > 1:
            field = cv2.resize(field, (n, n), interpolation=cv2.INTER_CUBIC)
        return field / max(float(field.std()), 1e-12)

    def rows(lat_lo: float, lat_hi: float) -> slice:
        """Rows of the map covering latitudes [lat_lo, lat_hi] (degrees)."""
        first = int(np.clip(math.floor((90.0 - lat_hi) / step), 0, n))
        last = int(np.clip(math.ceil((90.0 - lat_lo) / step) + 1, 0, n))
        return slice(first, last)

    def cols(lon_lo: float, lon_hi: float) -> slice:
        first = int(np.clip(math.floor((lon_lo + 90.0) / step), 0, n))
        last = int(np.clip(math.ceil((lon_hi + 90.0) / step) + 1, 0, n))
        return slice(first, last)

    # Random draws happen in a fixed order so that a seed fixes the planet.
    wobble = noise(3.0, 8.0) * 1.0  # belt edges wander by ~1 deg
    turbulence = 0.55 * noise(0.5, 1.6) + 0.35 * noise(1.2, 4.0) + 0.25 * noise(0.35, 0.35)
    turbulence /= max(float(turbulence.std()), 1e-12)
    fine = noise(0.35, 0.7)
    polar_mottle = noise(1.0, 1.5)

    lat_wavy = lat + wobble
    reach = 5.0 + float(np.abs(wobble).max())  # beyond this a soft band is 0
    belts = np.zeros((n, n), np.float32)
    neb_south_edge = 7.5
    for k, (lat0, width, depth, split) in enumerate(_belt_layout(model.bands)):
        lat0 += float(rng.normal(0.0, 1.0))
        width *= float(rng.uniform(0.85, 1.15))
        depth *= float(rng.uniform(0.85, 1.10))
        band_rows = rows(lat0 - width / 2 - reach, lat0 + width / 2 + reach)
        wavy = lat_wavy[band_rows]
        band = _soft_band(wavy, lat0 - width / 2, lat0 + width / 2, 0.6)
        if split:
            band -= 0.5 * _soft_band(wavy, lat0 - 0.18 * width, lat0 + 0.18 * width, 0.5)
        belts[band_rows] += depth * band
        if k == 0:
            neb_south_edge = lat0 - width / 2
    belts *= contrast * np.clip(1.0 + 0.5 * turbulence, 0.0, None)

    polar_ramp = np.clip((np.abs(lat) - 48.0) / 30.0, 0.0, 1.0)
    polar_ramp = polar_ramp * polar_ramp * (3.0 - 2.0 * polar_ramp)
    polar = contrast * polar_ramp * (1.8 + 0.4 * polar_mottle)
    texture = contrast * 0.15 * fine

    festoons = np.zeros((n, n), np.float32)
    if model.bands >= 1:
        for _ in range(5):
            lon0 = float(rng.uniform(-75.0, 75.0))
            lat1 = float(rng.uniform(0.5, 2.5))
            lon1 = lon0 + float(rng.choice([-1.0, 1.0]) * rng.uniform(4.0, 10.0))
            box = (
                rows(lat1 - 5.0, neb_south_edge + 5.0),
                cols(min(lon0, lon1) - 5.0, max(lon0, lon1) + 5.0),
            )
            la, lo = lat[box[0]], lon[:, box[1]]
            seg_lat, seg_lon = lat1 - neb_south_edge, lon1 - lon0
            t = ((la - neb_south_edge) * seg_lat + (lo - lon0) * seg_lon) / (
                seg_lat**2 + seg_lon**2
            )
            t = np.clip(t, 0.0, 1.0)
            d2 = (la - neb_south_edge - t * seg_lat) ** 2 + (lo - lon0 - t * seg_lon) ** 2
            festoons[box] += (1.0 - 0.6 * t) * np.exp(-d2 / (2 * 0.45**2))
            # dark "projection" at the root of the festoon
            festoons[box] += np.exp(-((la - neb_south_edge) ** 2 + (lo - lon0) ** 2) / (2 * 1.2**2))
    festoons *= 0.9 * contrast

    red_spot = np.zeros((n, n), np.float32)
    barges = np.zeros((n, n), np.float32)
    ovals = np.zeros((n, n), np.float32)
    for k in range(model.spots):
        if k == 0:
            kind, lat0, lon0, half_lon, half_lat = "red", -22.0, 0.0, 9.0, 5.5
            lon0 = float(rng.uniform(-35.0, 35.0))
            lat0 += float(rng.normal(0.0, 0.5))
        else:
            kind = str(rng.choice(["oval", "oval", "barge"]))
            lon0 = float(rng.uniform(-60.0, 60.0))
            size = float(rng.uniform(0.8, 1.3))
            if kind == "oval":
                lat0, half_lon, half_lat = -33.0 + float(rng.normal(0, 1.5)), 2.2, 1.6
            else:
                lat0, half_lon, half_lat = 16.5 + float(rng.normal(0, 1.0)), 3.0, 1.2
            half_lon *= size
            half_lat *= size
        box = (
            rows(lat0 - 2.0 * half_lat - 1.0, lat0 + 2.0 * half_lat + 1.0),
            cols(lon0 - 2.0 * half_lon - 1.0, lon0 + 2.0 * half_lon + 1.0),
        )
        q = np.sqrt(
            ((lon[:, box[1]] - lon0) / half_lon) ** 2 + ((lat[box[0]] - lat0) / half_lat) ** 2
        )
        core = 0.5 * (1.0 - np.tanh((q - 0.9) / 0.08))
        if kind == "red":
            lighter_centre = 1.0 - 0.3 * np.exp(-((q / 0.4) ** 2))
            red_spot[box] += 1.1 * contrast * core * lighter_centre
            ovals[box] += 0.6 * contrast * np.exp(-(((q - 1.2) / 0.15) ** 2))  # bright collar
        elif kind == "oval":
            ovals[box] += 1.0 * contrast * core
            barges[box] += 0.4 * contrast * np.exp(-(((q - 1.15) / 0.15) ** 2))  # dark rim
        else:
            barges[box] += 1.0 * contrast * core

    # (darkness field, RGB tint): tints > 1 darken that channel more.
    components = [
        (belts, (0.85, 1.0, 1.2)),  # brownish belts
        (polar, (0.9, 1.0, 1.1)),
        (texture, (1.0, 1.0, 1.0)),
        (festoons, (1.05, 1.0, 0.9)),  # blue-grey festoons
        (red_spot, (0.45, 1.0, 1.5)),  # red spot
        (barges, (0.7, 1.0, 1.3)),
        (-ovals, (1.0, 1.0, 1.0)),  # white ovals and collars
    ]
    if model.colour is None:
        albedo = 1.0 - sum(field for field, _ in components)
    else:
        albedo = np.stack(
            [1.0 - sum(field * tint[c] for field, tint in components) for c in range(3)],
            axis=-1,
        )
    return np.clip(albedo, 0.02, 1.5).astype(np.float32), step


def _disc_radiance(
    dy: np.ndarray,
    dx: np.ndarray,
    model: PlanetModel,
    albedo: np.ndarray,
    step_deg: float,
    edge_px: float,
) -> np.ndarray:
    """Planet radiance at offsets ``(dy, dx)`` px from its centre (2-D float32 grids).

    The limb is anti-aliased over ``edge_px`` pixels (the sample spacing).
    Returns float32 of shape ``dy.shape`` (mono) or ``dy.shape + (3,)``.
    """
    a = model.radius_px
    b = a * (1.0 - model.oblateness)
    x = dx / np.float32(a)
    y = dy / np.float32(b)
    r = np.sqrt(x * x + y * y)
    # distance to the limb in pixels: (1 - r) / |grad r|, |grad r| = g / r
    g = np.sqrt((x / np.float32(a)) ** 2 + (y / np.float32(b)) ** 2)
    ratio = np.divide(r, g, out=np.full_like(r, a), where=g > 0)
    coverage = np.clip(0.5 + (1.0 - r) * ratio / np.float32(edge_px), 0.0, 1.0)
    scale = np.where(r > 1.0, 1.0 / np.maximum(r, 1e-12), 1.0).astype(np.float32)
    x = x * scale
    y = y * scale
    mu = np.sqrt(np.clip(1.0 - x * x - y * y, 0.0, 1.0))
    limb = 1.0 - np.float32(model.limb_darkening) * (1.0 - mu)
    lat = np.degrees(np.arcsin(np.clip(-y, -1.0, 1.0)))
    lon = np.degrees(np.arctan2(x, mu))
    map_y = ((90.0 - lat) / np.float32(step_deg) - 0.5).astype(np.float32)
    map_x = ((lon + 90.0) / np.float32(step_deg) - 0.5).astype(np.float32)
    surface = cv2.remap(albedo, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    weight = coverage * limb * np.float32(model.brightness)
    if model.colour is None:
        return (surface * weight).astype(np.float32, copy=False)
    tint = np.asarray(model.colour, np.float32)
    return (surface * weight[..., None] * tint).astype(np.float32, copy=False)


def render_planet(
    shape: tuple[int, int],
    center_yx: tuple[float, float],
    model: PlanetModel = PlanetModel(),
    *,
    seed: int = 0,
    supersample: int = 4,
) -> np.ndarray:
    """Render the noise-free, unblurred planet.

    Parameters
    ----------
    shape : tuple of 2 int
        ``(rows, cols)`` of the image.
    center_yx : tuple of 2 float
        Planet centre ``(row, col)`` in pixels (pixel centres at integer
        indices); may be fractional or outside the image.
    model : PlanetModel, optional
        Planet geometry and appearance.
    seed : int, optional
        Seed of the cloud texture, spot positions and belt details.
    supersample : int, optional
        Samples per pixel along each axis; each pixel is the mean of
        ``supersample**2`` samples, and the limb is additionally
        anti-aliased analytically within each sample.

    Returns
    -------
    (rows, cols) or (rows, cols, 3) ndarray of float64
        Fraction of white in [0, 1]; RGB if ``model.colour`` is set.
        Background is exactly 0.

    Raises
    ------
    ValueError
        For a bad ``shape``, a non-finite centre or ``supersample < 1``.

    Notes
    -----
    The planet is an oblate spheroid seen from its equatorial plane, north
    up, rendered by orthographic projection of a latitude/longitude albedo
    map: zones near 1, belts darker by ``band_contrast`` with wavy edges and
    zonally stretched turbulence, festoons from the NEB, polar darkening and
    ovals. The linear limb-darkening law ``I = 1 - u (1 - mu)`` multiplies
    the albedo, then ``brightness`` (and ``colour``) scale the result.

    Examples
    --------
    >>> img = render_planet((64, 64), (31.5, 31.5), PlanetModel(radius_px=20))
    >>> img.shape, img.dtype, float(img[0, 0])
    ((64, 64), dtype('float64'), 0.0)
    """
    rows, cols = _check_shape(shape)
    cy, cx = _check_point("center_yx", center_yx)
    _check_count("supersample", supersample, low=1)
    texture = _texture_map(model, seed)
    return _render_planet((rows, cols), (cy, cx), model, texture, int(supersample))


def _render_planet(
    shape: tuple[int, int],
    center_yx: tuple[float, float],
    model: PlanetModel,
    texture: tuple[np.ndarray, float],
    ss: int,
) -> np.ndarray:
    """:func:`render_planet` with a precomputed texture map."""
    rows, cols = shape
    cy, cx = center_yx
    channels = () if model.colour is None else (3,)
    out = np.zeros((rows, cols) + channels, np.float64)

    half_y = model.radius_px * (1.0 - model.oblateness) + 1.0
    half_x = model.radius_px + 1.0
    r0 = max(int(math.floor(cy - half_y)), 0)
    r1 = min(int(math.ceil(cy + half_y)) + 1, rows)
    c0 = max(int(math.floor(cx - half_x)), 0)
    c1 = min(int(math.ceil(cx + half_x)) + 1, cols)
    if r0 >= r1 or c0 >= c1:
        return out

    albedo, step = texture
    sub = (np.arange(ss, dtype=np.float64) + 0.5) / ss - 0.5
    dy = ((np.arange(r0, r1)[:, None] + sub[None, :]).ravel() - cy).astype(np.float32)
    dx = ((np.arange(c0, c1)[:, None] + sub[None, :]).ravel() - cx).astype(np.float32)
    grid_y, grid_x = np.meshgrid(dy, dx, indexing="ij")
    samples = _disc_radiance(grid_y, grid_x, model, albedo, step, 1.0 / ss)
    h, w = r1 - r0, c1 - c0
    block = samples.reshape((h, ss, w, ss) + channels).mean(axis=(1, 3), dtype=np.float64)
    out[r0:r1, c0:c1] = np.clip(block, 0.0, 1.0)
    return out


def render_planet_sprite(
    model: PlanetModel = PlanetModel(), *, seed: int = 0, supersample: int = 4
) -> PlanetSprite:
    """Render the pixel-integrated planet on a fine grid for :func:`simulate_frame`.

    Parameters
    ----------
    model : PlanetModel, optional
        Planet geometry and appearance.
    seed : int, optional
        Texture seed; the same seed gives the same planet as
        :func:`render_planet`.
    supersample : int, optional
        Grid samples per pixel along each axis (>= 1; 4 keeps interpolation
        errors of the planet position below 0.005 px).

    Returns
    -------
    PlanetSprite

    Raises
    ------
    ValueError
        If ``supersample < 1``.

    Notes
    -----
    The planet is evaluated every ``1 / supersample`` px (limb anti-aliased
    over one sample) and convolved with a one-pixel-wide box (trapezoid rule,
    ``supersample + 1`` taps), so every sample is the mean of the planet over
    a pixel-sized square centred on it.
    """
    _check_count("supersample", supersample, low=1)
    return _render_sprite(model, _texture_map(model, seed), int(supersample))


def _render_sprite(model: PlanetModel, texture: tuple[np.ndarray, float], ss: int) -> PlanetSprite:
    """:func:`render_planet_sprite` with a precomputed texture map."""
    # two pixels of zeros around the disc keep the spline coefficients ~0 at the border
    half_y = model.radius_px * (1.0 - model.oblateness) + 2.0
    half_x = model.radius_px + 2.0
    ny = 2 * int(math.ceil(half_y * ss)) + 1
    nx = 2 * int(math.ceil(half_x * ss)) + 1
    cy, cx = (ny - 1) / 2.0, (nx - 1) / 2.0
    dy = ((np.arange(ny) - cy) / ss).astype(np.float32)
    dx = ((np.arange(nx) - cx) / ss).astype(np.float32)
    grid_y, grid_x = np.meshgrid(dy, dx, indexing="ij")
    albedo, step = texture
    samples = _disc_radiance(grid_y, grid_x, model, albedo, step, 1.0 / ss)
    if ss > 1:
        box = np.ones(ss + 1, np.float32)
        box[[0, -1]] = 0.5
        box /= ss
        samples = cv2.sepFilter2D(
            samples, cv2.CV_32F, box, box, borderType=cv2.BORDER_CONSTANT
        ).reshape(samples.shape)
    image = np.clip(samples, 0.0, 1.0).astype(np.float32)
    coefficients = np.zeros((ny + 2, nx + 2) + image.shape[2:], np.float32)
    if image.ndim == 2:
        coefficients[1:-1, 1:-1] = ndimage.spline_filter(
            image.astype(np.float64), order=3, mode="grid-constant"
        )
    else:
        for c in range(image.shape[2]):
            coefficients[1:-1, 1:-1, c] = ndimage.spline_filter(
                image[..., c].astype(np.float64), order=3, mode="grid-constant"
            )
    return PlanetSprite(image, ss, (cy, cx), (half_y - 0.5, half_x - 0.5), coefficients)


# --------------------------------------------------------------------------
# Frame rendering
# --------------------------------------------------------------------------


def random_warp_field(
    shape: tuple[int, int],
    *,
    rms_px: float,
    scale_px: float,
    rng: np.random.Generator,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Draw a smooth random displacement field.

    Parameters
    ----------
    shape : tuple of 2 int
        ``(rows, cols)`` of the frame.
    rms_px : float
        RMS displacement on each axis over ``mask`` (or the whole frame).
    scale_px : float
        Correlation length of the field, pixels (> 0).
    rng : numpy.random.Generator
        Source of randomness.
    mask : (rows, cols) ndarray of bool, optional
        Region (typically the planet disc) over which the field is made
        zero-mean and scaled to ``rms_px``; a field with zero mean over the
        disc does not move the planet as a whole.

    Returns
    -------
    (2, rows, cols) ndarray of float32
        Displacement ``(dy, dx)`` of the content at each pixel.

    Raises
    ------
    ValueError
        For a bad shape, negative ``rms_px`` or non-positive ``scale_px``.
    """
    rows, cols = _check_shape(shape)
    check_real("rms_px", rms_px, low=0.0)
    check_real("scale_px", scale_px, low=0.0, low_open=True)
    # white noise on a grid of scale/4 cells, Gaussian-filtered over 2 cells
    # (correlation ~ scale), then interpolated to the pixels
    cell = max(scale_px / 4.0, 1.0)
    margin = 6  # cells dropped at each border, where the filter sees the border rule
    ny = int(math.ceil(rows / cell)) + 1 + 2 * margin
    nx = int(math.ceil(cols / cell)) + 1 + 2 * margin
    coarse = rng.standard_normal((ny, nx, 2), dtype=np.float32)
    coarse = cv2.GaussianBlur(coarse, (0, 0), 2.0, borderType=cv2.BORDER_REFLECT)
    field = cv2.resize(
        np.ascontiguousarray(coarse[margin : ny - margin, margin : nx - margin]),
        (cols, rows),
        interpolation=cv2.INTER_CUBIC,
    )
    field = np.moveaxis(field.reshape(rows, cols, 2), -1, 0)
    select = mask if mask is not None and mask.any() else np.ones((rows, cols), bool)
    values = field[:, select]
    field -= values.mean(axis=1)[:, None, None]
    rms = float(np.sqrt(np.mean((values - values.mean(axis=1, keepdims=True)) ** 2)))
    field *= rms_px / max(rms, 1e-12)
    return np.ascontiguousarray(field, dtype=np.float32)


def _render_optics(
    sprite: PlanetSprite,
    shape: tuple[int, int],
    planet_yx: tuple[float, float],
    sigma_px: float,
    warp_field: np.ndarray | None,
) -> np.ndarray:
    """Planet at ``planet_yx`` (warped, blurred), float32 frame, no background."""
    rows, cols = shape
    channels = sprite.image.shape[2:]
    out = np.zeros((rows, cols) + channels, np.float32)
    py, px = planet_yx
    warp_margin = 0.0
    if warp_field is not None:
        warp_margin = float(np.abs(warp_field).max(initial=0.0))
    blur_pad = int(math.ceil(4.0 * sigma_px)) + 1 if sigma_px > 0 else 0
    reach_y = sprite.half_extent_yx[0] + warp_margin + blur_pad + 1
    reach_x = sprite.half_extent_yx[1] + warp_margin + blur_pad + 1
    # work on the planet's neighbourhood only, clipped to the frame plus blur pad
    r0 = max(int(math.floor(py - reach_y)), -blur_pad)
    r1 = min(int(math.ceil(py + reach_y)) + 1, rows + blur_pad)
    c0 = max(int(math.floor(px - reach_x)), -blur_pad)
    c1 = min(int(math.ceil(px + reach_x)) + 1, cols + blur_pad)
    if r0 >= min(r1, rows) or c0 >= min(c1, cols) or r1 <= 0 or c1 <= 0:
        return out
    region = _sample_sprite(sprite, (r0, r1, c0, c1), (py, px), warp_field)
    if sigma_px > 0:
        region = cv2.GaussianBlur(region, (0, 0), sigma_px, borderType=cv2.BORDER_CONSTANT)
    region = region.reshape((r1 - r0, c1 - c0) + channels)
    fr0, fr1 = max(r0, 0), min(r1, rows)
    fc0, fc1 = max(c0, 0), min(c1, cols)
    out[fr0:fr1, fc0:fc1] = region[fr0 - r0 : fr1 - r0, fc0 - c0 : fc1 - c0]
    np.maximum(out, 0.0, out=out)  # cubic interpolation may undershoot at the limb
    return out


def _bspline_taps(start: float, count: int, step: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices into a zero-padded axis and weights of cubic B-spline interpolation.

    Positions ``start + step * i`` (i < count) of an axis of ``size`` samples;
    the padded axis has ``size + 2`` entries with zeros at both ends.
    """
    base = math.floor(start)
    t = start - base
    weights = np.array(
        [
            (1 - t) ** 3 / 6,
            (3 * t**3 - 6 * t**2 + 4) / 6,
            (-3 * t**3 + 3 * t**2 + 3 * t + 1) / 6,
            t**3 / 6,
        ],
        np.float32,
    )
    index = base + np.arange(4)[:, None] + step * np.arange(count)[None, :]  # base-1+k, +1 pad
    return np.clip(index, 0, size + 1), weights


def _sample_sprite(
    sprite: PlanetSprite,
    box: tuple[int, int, int, int],
    planet_yx: tuple[float, float],
    warp_field: np.ndarray | None,
) -> np.ndarray:
    """Pixel values of frame rows ``r0:r1``, cols ``c0:c1`` for the planet at ``planet_yx``."""
    r0, r1, c0, c1 = box
    ss = sprite.supersample
    coef = sprite.coefficients
    start_y = (r0 - planet_yx[0]) * ss + sprite.center_yx[0]
    start_x = (c0 - planet_yx[1]) * ss + sprite.center_yx[1]
    if warp_field is None:
        # pure translation: separable, same fractional phase for every pixel
        rows, wy = _bspline_taps(start_y, r1 - r0, ss, coef.shape[0] - 2)
        cols, wx = _bspline_taps(start_x, c1 - c0, ss, coef.shape[1] - 2)
        partial = sum(wy[k] * coef[rows[k]] for k in range(4))
        return sum(wx[k] * partial[:, cols[k]] for k in range(4)).astype(np.float32)
    rows_frame, cols_frame = warp_field.shape[1:]
    iy = np.clip(np.arange(r0, r1), 0, rows_frame - 1)
    ix = np.clip(np.arange(c0, c1), 0, cols_frame - 1)
    local = warp_field[:, iy[:, None], ix[None, :]].astype(np.float64)
    coords = np.empty((2, r1 - r0, c1 - c0))
    coords[0] = (start_y + 1.0) + ss * (np.arange(r1 - r0)[:, None] - local[0])
    coords[1] = (start_x + 1.0) + ss * (np.arange(c1 - c0)[None, :] - local[1])
    if coef.ndim == 2:
        return ndimage.map_coordinates(
            coef, coords, order=3, prefilter=False, mode="grid-constant"
        )
    return np.stack(
        [
            ndimage.map_coordinates(
                coef[..., c], coords, order=3, prefilter=False, mode="grid-constant"
            )
            for c in range(coef.shape[2])
        ],
        axis=-1,
    )


def _expose(expected: np.ndarray, seeing: SeeingModel, rng: np.random.Generator) -> np.ndarray:
    """Photon and read noise: ``expected`` (fraction of white) -> noisy float32, same units."""
    photons = np.float32(seeing.photons_at_white)
    lam = expected.astype(np.float32) * photons
    z = rng.standard_normal(lam.shape, dtype=np.float32)
    read = np.float32(seeing.read_noise)
    if seeing.exact_poisson:
        exact = np.ones(lam.shape, bool)
    else:
        exact = lam < _POISSON_EXACT_BELOW
    electrons = lam + np.sqrt(lam + read * read) * z
    if exact.any():
        low = lam[exact]
        electrons[exact] = rng.poisson(low).astype(np.float32) + read * z[exact]
    return electrons / photons


def _quantise(image: np.ndarray, bit_depth: int) -> np.ndarray:
    """Fraction-of-white float image -> camera integers (12-bit stored as value * 16)."""
    top = (1 << bit_depth) - 1
    codes = np.clip(np.rint(image * np.float32(top)), 0, top)
    if bit_depth == 8:
        return codes.astype(np.uint8)
    codes = codes.astype(np.uint16)
    if bit_depth == 12:
        codes <<= 4
    return codes


def simulate_frame(
    sprite: PlanetSprite,
    shape: tuple[int, int],
    *,
    center_yx: tuple[float, float] | None = None,
    shift_yx: tuple[float, float] = (0.0, 0.0),
    sigma_px: float = 0.0,
    warp_field: np.ndarray | None = None,
    seeing: SeeingModel = SeeingModel(),
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Render one frame: shifted, warped, blurred planet plus background and noise.

    Parameters
    ----------
    sprite : PlanetSprite
        The planet, from :func:`render_planet_sprite`.
    shape : tuple of 2 int
        ``(rows, cols)`` of the frame.
    center_yx : tuple of 2 float, optional
        Reference planet centre (the truth's); default the frame centre
        ``((rows - 1) / 2, (cols - 1) / 2)``.
    shift_yx : tuple of 2 float, optional
        Translation of the planet relative to ``center_yx``, ``(dy, dx)``
        pixels, :func:`scipy.ndimage.shift` convention.
    sigma_px : float, optional
        Gaussian PSF sigma in pixels; 0 for no blur.
    warp_field : (2, rows, cols) ndarray, optional
        Local displacement ``(dy, dx)`` of the content at each pixel, added
        to ``shift_yx`` (see :func:`random_warp_field`).
    seeing : SeeingModel, optional
        Only its camera part is used here: ``background``,
        ``photons_at_white``, ``read_noise``, ``exact_poisson``.
    rng : numpy.random.Generator, optional
        Source of the noise. ``None`` returns the noise-free expectation.

    Returns
    -------
    (rows, cols) or (rows, cols, 3) ndarray of float64
        Fraction of white, not quantised or clipped (noise may take it
        slightly outside [0, 1]).

    Raises
    ------
    ValueError
        For a bad shape, non-finite centre or shift, negative sigma or a
        warp field of the wrong shape.

    Notes
    -----
    ``frame(p) = G_sigma * T(p - c - s - w(p)) + background``, then
    ``Poisson(frame * photons) + N(0, read_noise^2)`` electrons divided by
    ``photons``, where ``T`` is the pixel-integrated planet (cubic B-spline
    interpolation of the sprite), ``c`` the centre, ``s`` the shift, ``w``
    the warp field and ``G_sigma`` a Gaussian. Expected counts of at least
    10 electrons draw the photon noise from ``N(lam, lam)`` unless
    ``seeing.exact_poisson``. Only the planet's neighbourhood is
    interpolated and blurred, so the cost hardly depends on the frame size.

    Examples
    --------
    >>> sprite = render_planet_sprite(PlanetModel(radius_px=15))
    >>> frame = simulate_frame(sprite, (48, 64), shift_yx=(1.5, -2.25), sigma_px=1.0)
    >>> frame.shape, round(float(frame[0, 0]), 3)
    ((48, 64), 0.01)
    """
    rows, cols = _check_shape(shape)
    center = _frame_center((rows, cols)) if center_yx is None else center_yx
    cy, cx = _check_point("center_yx", center)
    sy, sx = _check_point("shift_yx", shift_yx)
    check_real("sigma_px", sigma_px, low=0.0)
    if warp_field is not None:
        warp_field = np.asarray(warp_field, np.float32)
        if warp_field.shape != (2, rows, cols):
            raise ValueError(
                f"warp_field must have shape (2, {rows}, {cols}); got {warp_field.shape}"
            )
    expected = _render_optics(sprite, (rows, cols), (cy + sy, cx + sx), float(sigma_px), warp_field)
    expected += np.float32(seeing.background)
    if rng is None:
        return expected.astype(np.float64)
    return _expose(expected, seeing, rng).astype(np.float64)


# --------------------------------------------------------------------------
# Sessions
# --------------------------------------------------------------------------


def _ar1(rng: np.random.Generator, size: tuple[int, ...], rho: float) -> np.ndarray:
    """Stationary unit-variance AR(1) along axis 0 (i.i.d. when ``rho == 0``)."""
    e = rng.standard_normal(size)
    if rho == 0.0 or size[0] < 2:
        return e
    from scipy.signal import lfilter  # lazy: only correlated seeing needs it

    scale = math.sqrt(1.0 - rho * rho)
    e[0] /= scale  # so that x[0] = e[0] has unit variance, like every later x[t]
    return lfilter([scale], [1.0, -rho], e, axis=0)


def _draw_sigmas(rng: np.random.Generator, n: int, seeing: SeeingModel) -> np.ndarray:
    """PSF sigmas: P(sigma within 10 % of the range above sigma_min) = lucky_fraction."""
    from scipy.special import ndtr  # lazy: only the session needs it

    lucky = min(max(seeing.lucky_fraction, 1e-3), 1.0 - 1e-3)
    power = math.log(0.1) / math.log(lucky)
    u = ndtr(_ar1(rng, (n,), seeing.sigma_correlation))
    span = seeing.sigma_max_px - seeing.sigma_min_px
    return seeing.sigma_min_px + span * u**power


def _disc_mask(
    shape: tuple[int, int], planet_yx: tuple[float, float], model: PlanetModel
) -> np.ndarray:
    rows, cols = shape
    a = model.radius_px
    b = a * (1.0 - model.oblateness)
    y = (np.arange(rows) - planet_yx[0])[:, None] / b
    x = (np.arange(cols) - planet_yx[1])[None, :] / a
    return (y * y + x * x) <= 1.0


def simulate_session(
    n_frames: int,
    *,
    shape: tuple[int, int] = (240, 320),
    model: PlanetModel = PlanetModel(),
    seeing: SeeingModel = SeeingModel(),
    bit_depth: int = 8,
    bad_frames: Mapping[str, int] | None = None,
    seed: int = 0,
    center_yx: tuple[float, float] | None = None,
) -> SimulatedSession:
    """Simulate a planetary capture session with known truth.

    Parameters
    ----------
    n_frames : int
        Number of frames (>= 1).
    shape : tuple of 2 int, optional
        ``(rows, cols)`` of every frame.
    model : PlanetModel, optional
        The planet (``colour`` set: RGB frames).
    seeing : SeeingModel, optional
        Atmosphere (shifts, PSF widths, warping) and camera (noise).
    bit_depth : {8, 12, 16}, optional
        8: uint8, white 255. 12: uint16 holding the 12-bit value times 16
        (as cameras and SER/FITS writers store it), white level 65535.
        16: uint16, white 65535.
    bad_frames : mapping of str to int, optional
        How many frames of each kind in ``BAD_FRAME_KINDS`` replace randomly
        chosen (seeded) frames, e.g. ``{"black": 1, "clipped": 1,
        "blurred": 1}``.
    seed : int, optional
        Seed of everything random: planet texture, seeing, bad-frame
        choice and noise.
    center_yx : tuple of 2 float, optional
        Reference planet centre; default the frame centre.

    Returns
    -------
    SimulatedSession

    Raises
    ------
    ValueError
        If ``n_frames < 1``, the shape is not two positive integers,
        ``bit_depth`` is not 8, 12 or 16, a bad-frame kind is unknown or its
        count negative, or there are more bad frames than frames.

    Notes
    -----
    * Shifts: ``jitter_px * AR1(jitter_correlation) + t * drift_px_per_frame``
      for frame ``t`` on each axis (i.i.d. Gaussian with the default zero
      correlation).
    * PSF sigmas: ``sigma_min + (sigma_max - sigma_min) * U**p`` with
      ``U = Phi(AR1(sigma_correlation))`` uniform on (0, 1) and
      ``p = ln 0.1 / ln lucky_fraction``, so a share ``lucky_fraction`` of the
      frames lies within 10 % of the range above ``sigma_min`` and the rest
      spread up to ``sigma_max``.
    * Warp (``warp_px > 0``): a fresh :func:`random_warp_field` per frame,
      correlation length ``radius_px / 2``, zero-mean over the disc so the
      planet as a whole stays at ``shifts_yx`` (the disc-average
      displacement; a registration method that weights features differently
      can legitimately differ from it by ~``warp_px / 2``). Shifts and sigmas
      do not depend on ``warp_px``: the same seed gives the same ones.
    * Bad frames: "black" has no planet (``shifts_yx`` nan, sigma inf);
      "clipped" puts the planet centre on a randomly chosen frame edge;
      "blurred" uses sigma ``max(4 * sigma_max_px, 8)``.
    * Noise: see :func:`simulate_frame`; values are rounded to the nearest
      code and clipped to ``[0, 2**bit_depth - 1]``.

    Examples
    --------
    >>> s = simulate_session(4, shape=(64, 80), model=PlanetModel(radius_px=18),
    ...                      bad_frames={"black": 1}, seed=3)
    >>> len(s.frames), s.frames[0].dtype, s.white_level, s.kinds.count("black")
    (4, dtype('uint8'), 255, 1)
    """
    _check_count("n_frames", n_frames, low=1)
    n = int(n_frames)
    rows, cols = _check_shape(shape)
    if isinstance(bit_depth, bool) or bit_depth not in (8, 12, 16):
        raise ValueError(f"bit_depth must be 8, 12 or 16; got {bit_depth!r}")
    counts = {kind: 0 for kind in BAD_FRAME_KINDS}
    for kind, count in (bad_frames or {}).items():
        if kind not in counts:
            raise ValueError(
                f"unknown bad frame kind {kind!r}; expected one of {', '.join(BAD_FRAME_KINDS)}"
            )
        _check_count(f"bad_frames[{kind!r}]", count)
        counts[kind] = int(count)
    if sum(counts.values()) > n:
        raise ValueError(
            f"{sum(counts.values())} bad frames requested but the session has only {n} frames"
        )
    center = _frame_center((rows, cols)) if center_yx is None else center_yx
    cy, cx = _check_point("center_yx", center)

    planet_seq, seeing_seq, bad_seq, noise_seq = np.random.SeedSequence(seed).spawn(4)
    planet_seed = int(planet_seq.generate_state(1)[0])
    seeing_rng = np.random.default_rng(seeing_seq)
    bad_rng = np.random.default_rng(bad_seq)
    noise_rng = np.random.default_rng(noise_seq)

    texture = _texture_map(model, planet_seed)  # same planet as render_planet(seed=planet_seed)
    truth = _render_planet((rows, cols), (cy, cx), model, texture, 4)
    sprite = _render_sprite(model, texture, 4)

    jitter = seeing.jitter_px * _ar1(seeing_rng, (n, 2), seeing.jitter_correlation)
    drift = np.arange(n)[:, None] * np.asarray(seeing.drift_px_per_frame, np.float64)[None, :]
    shifts = jitter + drift
    sigmas = _draw_sigmas(seeing_rng, n, seeing)

    kinds = ["good"] * n
    chosen = bad_rng.permutation(n)[: sum(counts.values())]
    position = 0
    for kind in BAD_FRAME_KINDS:
        for index in chosen[position : position + counts[kind]]:
            kinds[index] = kind
        position += counts[kind]
    for index, kind in enumerate(kinds):
        if kind == "black":
            shifts[index] = np.nan
            sigmas[index] = np.inf
        elif kind == "blurred":
            sigmas[index] = max(4.0 * seeing.sigma_max_px, 8.0)
        elif kind == "clipped":
            edge = int(bad_rng.integers(4))  # 0 top, 1 bottom, 2 left, 3 right
            if edge < 2:
                shifts[index, 0] = (-0.5 if edge == 0 else rows - 0.5) - cy
            else:
                shifts[index, 1] = (-0.5 if edge == 2 else cols - 0.5) - cx

    frames = []
    background = np.float32(seeing.background)
    channels = () if model.colour is None else (3,)
    for index in range(n):
        if kinds[index] == "black":
            expected = np.full((rows, cols) + channels, background, np.float32)
        else:
            planet_yx = (cy + shifts[index, 0], cx + shifts[index, 1])
            warp = None
            if seeing.warp_px > 0:
                warp = random_warp_field(
                    (rows, cols),
                    rms_px=seeing.warp_px,
                    scale_px=model.radius_px / 2.0,
                    rng=seeing_rng,
                    mask=_disc_mask((rows, cols), planet_yx, model),
                )
            expected = _render_optics(sprite, (rows, cols), planet_yx, sigmas[index], warp)
            expected += background
        frames.append(_quantise(_expose(expected, seeing, noise_rng), bit_depth))

    return SimulatedSession(
        frames=frames,
        truth=truth,
        shifts_yx=shifts,
        sigmas_px=sigmas,
        kinds=tuple(kinds),
        white_level=255 if bit_depth == 8 else 65535,
        center_yx=(cy, cx),
    )
