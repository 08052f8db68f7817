"""Local de-warping with alignment points, and drizzle.

Atmospheric seeing does not only move a planet as a whole (tip-tilt, removed by
:func:`luckystack.core.register.estimate_shift`): different parts of the disc
move by different sub-pixel amounts in every frame (anisoplanatic warping).
Stacking globally aligned frames then blurs fine detail. AutoStakkert! and
PlanetarySystemStacker correct this with *alignment points* (APs): small
patches on the planet, each registered on its own. This module does the same
with pure functions on numpy arrays:

1. :func:`place_alignment_points` -- a regular grid of patches over the disc
   of the reference, keeping only patches that are mostly on the disc and
   have enough gradient structure.
2. :func:`estimate_local_shifts` -- a sub-pixel shift per AP: one smooth field
   (Gaussian RBFs on the APs) fitted to Gaussian-windowed Lucas-Kanade data of
   all patches at once by Gauss-Newton, vectorised over the APs; points that
   do not match, or disagree with their neighbours and match worse than is
   typical, are rejected and the field there comes from their neighbours.
3. :func:`displacement_field` -- that field as a dense ``(2, H, W)`` array,
   tending to the global shift away from the APs (or, for shifts from
   elsewhere, Gaussian-process regression through them); :func:`dewarp`
   resamples an image along it with :func:`cv2.remap`.
4. :func:`align_locally` -- 2 + 3 on a crop that is already globally aligned.
5. :class:`DrizzleStack` / :func:`drizzle_accumulate` -- variable-pixel linear
   reconstruction (drizzle) onto an upsampled grid.

Conventions
-----------
* Coordinates are ``(row, column)``; a pixel's centre is at its integer index.
* A *shift* or *displacement* is that of the moving image's **content**
  relative to the reference, as in :func:`estimate_shift`: ``moving ≈
  scipy.ndimage.shift(reference, shift_yx)``, i.e. ``moving(x + s) =
  reference(x)``. A displacement field ``f`` is sampled on the **reference**
  grid: ``moving(x + f(x)) ≈ reference(x)``, so ``dewarp(moving, f) ≈
  reference``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from luckystack.core import _stats
from luckystack.core.errors import FrameError

if TYPE_CHECKING:
    from scipy import sparse

__all__ = [
    "AlignmentGrid",
    "LocalShifts",
    "place_alignment_points",
    "estimate_local_shifts",
    "PreparedReference",
    "prepare_reference",
    "displacement_field",
    "dewarp",
    "align_locally",
    "drizzle_accumulate",
    "fill_holes",
    "DrizzleStack",
]


# --------------------------------------------------------------------------
# Result types
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class AlignmentGrid:
    """Alignment points placed on a reference image.

    Attributes
    ----------
    origins_yx : (n, 2) ndarray of intp
        Top-left pixel of each AP's ``box_px`` x ``box_px`` patch (rows, cols).
    box_px : int
        Side of every patch, pixels.
    step_px : int
        Spacing of the grid, pixels.
    shape : tuple of 2 int
        ``(H, W)`` of the reference the grid was placed on.
    structure : (n,) ndarray of float64
        Structure of each patch: RMS gradient of the (lightly smoothed)
        reference over the patch divided by the disc's mean brightness,
        per pixel.
    disc_fraction : (n,) ndarray of float64
        Share of each patch's pixels on the disc.
    """

    origins_yx: np.ndarray
    box_px: int
    step_px: int
    shape: tuple[int, int]
    structure: np.ndarray
    disc_fraction: np.ndarray

    @property
    def centers_yx(self) -> np.ndarray:
        """``(n, 2)`` float64 patch centres, ``origin + (box_px - 1) / 2``."""
        return self.origins_yx.astype(np.float64) + (self.box_px - 1) / 2.0

    def __len__(self) -> int:
        return int(self.origins_yx.shape[0])


@dataclass(frozen=True, slots=True, eq=False)
class LocalShifts:
    """Result of :func:`estimate_local_shifts`.

    Attributes
    ----------
    shifts_yx : (n, 2) ndarray of float64
        Displacement ``(dy, dx)`` of the moving image's content at each AP
        centre ``c`` (``moving(c + s) ≈ reference(c)``): the fitted field
        there. At rejected APs it comes from the accepted ones.
    sigma_yx : (n, 2) ndarray of float64
        1-sigma uncertainty of each accepted AP's own measurement, per axis
        (from the residual noise and the patch's structure tensor; large along
        a belt, where the aperture problem leaves the shift unconstrained);
        ``inf`` for rejected APs.
    peak : (n,) ndarray of float64
        Gaussian-weighted normalised correlation of the aligned patches, in
        [-1, 1].
    valid : (n,) ndarray of bool
        APs whose measurement was accepted.
    base_yx : tuple of 2 float
        The shift the search started from (the global shift; 0 for a
        globally aligned crop). A displacement field tends to it far from the
        APs.
    smooth_px : float
        Correlation length ``l`` of the field through the APs (the grid
        spacing), pixels.
    prior_rms_px : float
        Prior RMS ``tau`` of the field.
    coefficients_yx : (n, 2) ndarray of float64 or None
        Coefficients of the fitted field on the Gaussian RBFs of width
        ``smooth_px`` at the AP centres; :func:`displacement_field` evaluates
        exactly this field. None for shifts from elsewhere (then the field
        is interpolated from ``shifts_yx`` and ``sigma_yx``).
    """

    shifts_yx: np.ndarray
    sigma_yx: np.ndarray
    peak: np.ndarray
    valid: np.ndarray
    base_yx: tuple[float, float]
    smooth_px: float
    prior_rms_px: float = 1.0
    coefficients_yx: np.ndarray | None = None

    @property
    def rms_px(self) -> float:
        """RMS (2-D) of the accepted shifts about their mean; 0 with < 2 APs."""
        s = self.shifts_yx[self.valid]
        if s.shape[0] < 2:
            return 0.0
        return float(np.sqrt(((s - s.mean(axis=0)) ** 2).sum(axis=1).mean()))


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def _as_lum(name: str, image: np.ndarray) -> np.ndarray:
    """``image`` as a finite 2-D float32 array, or FrameError."""
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise FrameError(f"{name} must be a 2-D luminance image, got shape {arr.shape}")
    if arr.size == 0 or not np.isfinite(arr).all():
        raise FrameError(f"{name} must be non-empty and finite")
    return arr.astype(np.float32, copy=False)


def _smooth(image: np.ndarray, sigma_px: float) -> np.ndarray:
    if sigma_px <= 0:
        return image
    return cv2.GaussianBlur(image, (0, 0), sigma_px, borderType=cv2.BORDER_REPLICATE)


def _gradients(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Central-difference gradients ``(d/dy, d/dx)`` in float32."""
    gy = cv2.Sobel(image, cv2.CV_32F, 0, 1, ksize=1, scale=0.5, borderType=cv2.BORDER_REPLICATE)
    gx = cv2.Sobel(image, cv2.CV_32F, 1, 0, ksize=1, scale=0.5, borderType=cv2.BORDER_REPLICATE)
    return gy, gx


def _auto_disc_mask(lum: np.ndarray, edge_level: float) -> np.ndarray:
    """Pixels above ``edge_level`` of the way from the sky to the bright end."""
    step = max(2, min(lum.shape) // 100)
    lo, hi = (float(v) for v in np.percentile(lum[::step, ::step], (10, 99.5)))
    if hi - lo <= 1e-6:
        return np.zeros(lum.shape, bool)
    return lum > lo + edge_level * (hi - lo)


def _kernel(a: np.ndarray, b: np.ndarray, length: float) -> np.ndarray:
    """Gaussian kernel matrix between point sets ``a`` (n, 2) and ``b`` (m, 2)."""
    d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=2)
    return np.exp(-0.5 * d2 / (length * length))


def _gp_coefficients(
    points: np.ndarray,
    values: np.ndarray,
    sigma: np.ndarray,
    length: float,
    prior_rms: float,
) -> np.ndarray:
    """Coefficients ``c`` (n, 2) with ``f(x) = sum_k c_k exp(-|x - p_k|^2 / 2 l^2)``.

    Gaussian-process regression per axis: ``c = (K + diag(sigma^2) / tau^2)^-1 v``
    with a small noise floor for conditioning.
    """
    k = _kernel(points, points, length)
    coef = np.empty_like(values)
    for axis in range(2):
        noise = (np.minimum(sigma[:, axis], 1e3) ** 2 + 0.02**2) / (prior_rms * prior_rms)
        coef[:, axis] = np.linalg.solve(k + np.diag(noise), values[:, axis])
    return coef


def _check_positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}; got {value!r}")
    return v


# --------------------------------------------------------------------------
# 1. Alignment points
# --------------------------------------------------------------------------


def place_alignment_points(
    reference_lum: np.ndarray,
    *,
    box_px: int = 32,
    step_px: int = 20,
    min_structure: float = 0.02,
    min_disc_fraction: float = 0.6,
    disc_mask: np.ndarray | None = None,
    edge_level: float = 0.25,
) -> AlignmentGrid:
    """Place a regular grid of alignment points over the planet.

    Parameters
    ----------
    reference_lum : (H, W) ndarray
        Luminance of the reference (e.g. the running stack's mean).
    box_px : int, optional
        Side of each AP's patch, pixels (>= 8). Larger is less noisy but
        follows the warp less closely; the simulated seeing's warp has a
        correlation length of about a quarter of the planet's radius.
    step_px : int, optional
        Grid spacing, pixels (>= 4). ``step_px < box_px`` overlaps the patches.
    min_structure : float, optional
        Smallest accepted structure: RMS of the gradient magnitude of the
        reference (smoothed with sigma 1 px) over the patch, divided by the
        mean brightness of the disc. Units 1/px. Measured (reference blurred
        with sigma 1.5 px): 0.035-0.06 for patches of the simulated Jupiter
        (``core.simulate``, radius 60 px) and for patches straddling the limb;
        0.005-0.02 inside a featureless limb-darkened disc with 1 % noise.
    min_disc_fraction : float, optional
        Smallest share of the patch's pixels that must be on the disc, in
        (0, 1]. The default keeps patches straddling the limb when at least
        60 % of them is planet and drops patches on the sky and the
        dimmest edge.
    disc_mask : (H, W) ndarray of bool, optional
        The disc. Default: pixels brighter than ``edge_level`` of the way from
        the sky (10th percentile) to the bright end (99.5th percentile).
    edge_level : float, optional
        Threshold of the default disc mask, in (0, 1).

    Returns
    -------
    AlignmentGrid
        Possibly empty (a blank reference or a planet smaller than a patch).

    Raises
    ------
    FrameError
        If ``reference_lum`` is not a finite 2-D image, or ``disc_mask`` has
        another shape.
    ValueError
        For out-of-range parameters.

    Notes
    -----
    Candidate centres lie on a grid of spacing ``step_px`` aligned on the
    centre of the disc mask's bounding box; every patch lies entirely inside
    the image. A candidate is kept when ``disc_fraction >= min_disc_fraction``
    and ``sqrt(mean(|grad R_s|^2)) / mean(R over disc) >= min_structure``,
    ``R_s`` the reference smoothed with a Gaussian of sigma 1 px.

    Examples
    --------
    >>> yy, xx = np.mgrid[:128, :128]
    >>> disc = ((yy - 64) ** 2 + (xx - 64) ** 2 < 45**2) * (1 + 0.3 * np.sin(yy / 2.5))
    >>> grid = place_alignment_points(disc.astype(np.float32))
    >>> len(grid) > 5, bool((grid.disc_fraction >= 0.6).all())
    (True, True)
    """
    ref = _as_lum("reference_lum", reference_lum)
    if isinstance(box_px, bool) or int(box_px) != box_px or box_px < 8:
        raise ValueError(f"box_px must be an integer >= 8; got {box_px!r}")
    if isinstance(step_px, bool) or int(step_px) != step_px or step_px < 4:
        raise ValueError(f"step_px must be an integer >= 4; got {step_px!r}")
    box, step = int(box_px), int(step_px)
    _check_positive("min_structure", min_structure, allow_zero=True)
    if not 0 < min_disc_fraction <= 1:
        raise ValueError(f"min_disc_fraction must be in (0, 1]; got {min_disc_fraction!r}")
    if not 0 < edge_level < 1:
        raise ValueError(f"edge_level must be in (0, 1); got {edge_level!r}")
    h, w = ref.shape
    empty = AlignmentGrid(
        np.zeros((0, 2), np.intp), box, step, (h, w), np.zeros(0), np.zeros(0)
    )
    if disc_mask is None:
        mask = _auto_disc_mask(ref, edge_level)
    else:
        mask = np.asarray(disc_mask, bool)
        if mask.shape != ref.shape:
            raise FrameError(
                f"disc_mask must have the reference's shape {ref.shape}; got {mask.shape}"
            )
    if h < box or w < box or not mask.any():
        return empty
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    cy = 0.5 * (rows[0] + rows[-1])
    cx = 0.5 * (cols[0] + cols[-1])
    half = (box - 1) / 2.0

    def axis_origins(center: float, size: int) -> np.ndarray:
        lo = -math.floor((center - half) / step)
        hi = math.floor((size - 1 - half - center) / step)
        o = np.rint(center + step * np.arange(lo, hi + 1) - half).astype(np.intp)
        return o[(o >= 0) & (o + box <= size)]

    oy, ox = axis_origins(cy, h), axis_origins(cx, w)
    if oy.size == 0 or ox.size == 0:
        return empty
    origins = np.stack(np.meshgrid(oy, ox, indexing="ij"), axis=-1).reshape(-1, 2)
    # Patch sums through an integral image: fraction on the disc, gradient energy.
    mask_f = mask.astype(np.float64)
    smooth = _smooth(ref, 1.0)
    gy, gx = _gradients(smooth)
    energy = (gy.astype(np.float64) ** 2 + gx.astype(np.float64) ** 2)

    def patch_sums(a: np.ndarray) -> np.ndarray:
        s = cv2.integral(a)
        y0, x0 = origins[:, 0], origins[:, 1]
        return s[y0 + box, x0 + box] - s[y0, x0 + box] - s[y0 + box, x0] + s[y0, x0]

    n_px = float(box * box)
    fraction = patch_sums(mask_f) / n_px
    level = float(ref[mask].mean())
    if level <= 0:
        return empty
    structure = np.sqrt(np.maximum(patch_sums(energy), 0.0) / n_px) / level
    keep = (fraction >= min_disc_fraction) & (structure >= min_structure)
    return AlignmentGrid(
        origins_yx=np.ascontiguousarray(origins[keep]),
        box_px=box,
        step_px=step,
        shape=(h, w),
        structure=structure[keep],
        disc_fraction=fraction[keep],
    )


# --------------------------------------------------------------------------
# 2. Local shifts
# --------------------------------------------------------------------------


class _PatchSet:
    """Pixels of every AP patch (every ``stride``-th), with window and field basis."""

    def __init__(
        self, origins: np.ndarray, centers: np.ndarray, box: int, stride: int, length: float
    ) -> None:
        n = origins.shape[0]
        offs = np.arange(0, box, stride)
        m = offs.size
        self.n, self.m = n, m
        self.rows = origins[:, 0, None] + offs  # (n, m)
        self.cols = origins[:, 1, None] + offs
        t = offs - (box - 1) / 2.0
        g = np.exp(-0.5 * (t / (box / 4.0)) ** 2)
        win = np.outer(g, g).astype(np.float32)
        self.g = g
        self.wflat, self.w2flat = win.ravel(), (win * win).ravel()
        self.wsum_total = float(win.sum())
        self.py = np.broadcast_to(self.rows[:, :, None].astype(np.float32), (n, m, m))
        self.px = np.broadcast_to(self.cols[:, None, :].astype(np.float32), (n, m, m))
        # ey[j, a, k] = exp(-(rows[j, a] - cy_k)^2 / 2 l^2); ex[j, k, b] likewise for columns.
        self.ey = np.exp(
            -0.5 * ((self.rows[:, :, None] - centers[None, None, :, 0]) / length) ** 2
        ).astype(np.float32)
        self.ex = np.exp(
            -0.5 * ((self.cols[:, None, :] - centers[None, :, 1, None]) / length) ** 2
        ).astype(np.float32)

    def gather(self, image: np.ndarray) -> np.ndarray:
        return image[self.rows[:, :, None], self.cols[:, None, :]]

    def basis_moments(self, weights: np.ndarray) -> np.ndarray:
        """``S[j, k] = sum_x weights[j, x] phi_k(x)`` over patch ``j``: (n, n)."""
        t = np.matmul(weights.reshape(self.n, self.m, self.m), self.ex.transpose(0, 2, 1))
        return np.einsum("jak,jak->jk", t, self.ey, dtype=np.float64)

    def field(self, coef: np.ndarray, base: np.ndarray) -> np.ndarray:
        """(2, n, m, m) field ``b + sum_k c_k ey_k ex_k`` at the patch pixels."""
        out = np.empty((2, self.n, self.m, self.m), np.float32)
        for axis in range(2):
            np.matmul(self.ey * coef[axis], self.ex, out=out[axis])  # batched over patches
            out[axis] += np.float32(base[axis])
        return out

    def sample(
        self, image: np.ndarray, field: np.ndarray, interpolation: int = cv2.INTER_CUBIC
    ) -> np.ndarray:
        """``image(x + field(x))`` at the patch pixels."""
        n, m = self.n, self.m
        map_y = (self.py + field[0]).reshape(n * m, m)
        map_x = (self.px + field[1]).reshape(n * m, m)
        out = cv2.remap(image, map_x, map_y, interpolation, borderMode=cv2.BORDER_REPLICATE)
        return out.reshape(n, m, m)

    def wsum(
        self, a: np.ndarray, b: np.ndarray | None = None, weights: np.ndarray | None = None
    ) -> np.ndarray:
        """Per-patch weighted sums ``sum_x w a b``."""
        prod = a if b is None else a * b
        return (prod.reshape(self.n, -1) @ (self.wflat if weights is None else weights)).astype(
            np.float64
        )

    def centred(self, p: np.ndarray) -> np.ndarray:
        """Patches minus their weighted means."""
        return p - (self.wsum(p) / self.wsum_total).astype(np.float32)[:, None, None]


class _LKPass:
    """One coarse-to-fine pass: the smoothed reference, its patches and moments."""

    def __init__(
        self,
        sigma: float,
        *,
        ref: np.ndarray,
        origins: np.ndarray,
        centers: np.ndarray,
        box: int,
        length: float,
    ) -> None:
        self.sigma = sigma
        # Smooth passes see only smooth images: every other patch pixel suffices.
        self.patches = p = _PatchSet(origins, centers, box, 2 if sigma >= 1.5 else 1, length)
        self.interp = cv2.INTER_LINEAR if sigma >= 1.5 else cv2.INTER_CUBIC
        r_s = _smooth(ref, sigma)
        gy, gx = _gradients(r_s)
        self.rp = p.centred(p.gather(r_s))
        self.gyp, self.gxp = gyp, gxp = p.gather(gy), p.gather(gx)
        w, w2 = p.wflat.reshape(p.m, p.m), p.w2flat
        hyy, hxx, hxy = p.wsum(gyp, gyp), p.wsum(gxp, gxp), p.wsum(gyp, gxp)
        ayy, axx, axy = p.wsum(gyp, gyp, w2), p.wsum(gxp, gxp, w2), p.wsum(gyp, gxp, w2)
        self.hmat = np.stack([np.stack([hyy, hxy], -1), np.stack([hxy, hxx], -1)], -2)
        self.amat = np.stack([np.stack([ayy, axy], -1), np.stack([axy, axx], -1)], -2)
        # b_j responds to a coefficient change dc as S_j dc (S_j: 2 x 2n).
        syy = p.basis_moments(w * gyp * gyp)
        sxx = p.basis_moments(w * gxp * gxp)
        sxy = p.basis_moments(w * gyp * gxp)
        self.smat = np.stack(
            [np.concatenate([syy, sxy], axis=1), np.concatenate([sxy, sxx], axis=1)], axis=1
        )
        # Per-AP pieces of the Gauss-Newton normal equations (reference only):
        # A^-1 S (n, 2, 2n) and S^T A^-1 S (n, 2n, 2n).
        self.ainv_s = np.einsum("jpq,jqa->jpa", np.linalg.inv(_regularised(self.amat)), self.smat)
        self.normal = np.matmul(self.smat.transpose(0, 2, 1), self.ainv_s)

    def residual(
        self, m_s: np.ndarray, coef: np.ndarray, base: np.ndarray, interp: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``b_j = sum w g e`` (n, 2), residual variance (n,) and correlation peak (n,).

        ``m_s`` is the (intensity-matched) moving image smoothed as this pass.
        """
        p = self.patches
        field = p.field(coef.reshape(2, p.n).astype(np.float32), base)
        moved = p.centred(p.sample(m_s, field, self.interp if interp is None else interp))
        e = moved - self.rp
        b = np.stack([p.wsum(self.gyp, e), p.wsum(self.gxp, e)], axis=1)
        den = np.sqrt(p.wsum(moved, moved) * p.wsum(self.rp, self.rp))
        peak = np.where(den > 0, p.wsum(moved, self.rp) / np.maximum(den, 1e-300), 0.0)
        return b, p.wsum(e, e) / p.wsum_total, peak


class PreparedReference:
    """A reference and its alignment points, prepared for many frames.

    Everything :func:`estimate_local_shifts` computes from the reference alone
    (smoothed patches, gradients, structure tensors, the field's normal
    equations, the sky level): about half its cost per frame. Pass it as
    ``reference_lum`` to measure frame after frame against the same
    reference; see :func:`prepare_reference`.

    Attributes
    ----------
    reference : (H, W) ndarray of float32
    grid : AlignmentGrid
    presmooth_px : tuple of float
    smooth_px : float
        Correlation length of the field, pixels.
    prior_rms_px : float
    """

    __slots__ = (
        "reference", "grid", "presmooth_px", "smooth_px", "prior_rms_px",
        "sky", "level", "kmat", "prior_term", "passes",
    )

    def __init__(
        self,
        reference: np.ndarray,
        grid: AlignmentGrid,
        presmooth_px: tuple[float, ...],
        smooth_px: float,
        prior_rms_px: float,
    ) -> None:
        self.reference = reference
        self.grid = grid
        self.presmooth_px = presmooth_px
        self.smooth_px = smooth_px
        self.prior_rms_px = prior_rms_px
        self.sky = _sky_level(reference)
        self.level = float(reference.mean()) - self.sky
        n = len(grid)
        self.kmat = _kernel(grid.centers_yx, grid.centers_yx, smooth_px)
        self.prior_term = np.kron(np.eye(2), self.kmat) / (prior_rms_px * prior_rms_px)
        self.passes = [] if n == 0 else [
            _LKPass(sigma, ref=reference, origins=grid.origins_yx, centers=grid.centers_yx,
                    box=grid.box_px, length=smooth_px)
            for sigma in presmooth_px
        ]


def prepare_reference(
    reference_lum: np.ndarray,
    grid: AlignmentGrid,
    *,
    presmooth_px: tuple[float, ...] = (1.5,),
    smooth_px: float | None = None,
    prior_rms_px: float = 1.0,
) -> PreparedReference:
    """Prepare ``reference_lum`` and ``grid`` once for :func:`estimate_local_shifts`.

    Parameters are those of :func:`estimate_local_shifts`, whose results
    with the prepared reference are the same as with the plain one.

    Raises
    ------
    FrameError
        If the reference is not a finite 2-D image of the grid's shape.
    ValueError
        For out-of-range parameters.

    Examples
    --------
    >>> yy, xx = np.mgrid[:96, :96]
    >>> ref = ((yy - 48) ** 2 + (xx - 48) ** 2 < 40**2) * (1 + 0.3 * np.sin(xx / 2.0 + yy / 3.0))
    >>> ref = ref.astype(np.float32)
    >>> grid = place_alignment_points(ref, box_px=24, step_px=16)
    >>> prep = prepare_reference(ref, grid)
    >>> moved = np.roll(ref, 1, axis=1)
    >>> a = estimate_local_shifts(prep, moved, grid).shifts_yx
    >>> b = estimate_local_shifts(ref, moved, grid).shifts_yx
    >>> bool(np.array_equal(a, b))
    True
    """
    ref = _as_lum("reference_lum", reference_lum)
    if ref.shape != grid.shape:
        raise FrameError(f"images of shape {ref.shape} do not match the grid's {grid.shape}")
    sigmas = tuple(float(s) for s in presmooth_px)
    if not sigmas or any(not math.isfinite(s) or s < 0 for s in sigmas):
        raise ValueError(f"presmooth_px must be one or more sigmas >= 0; got {presmooth_px!r}")
    length = _check_positive("smooth_px", grid.step_px if smooth_px is None else smooth_px)
    prior = _check_positive("prior_rms_px", prior_rms_px)
    return PreparedReference(ref, grid, sigmas, length, prior)


def estimate_local_shifts(
    reference_lum: np.ndarray | PreparedReference,
    moving_lum: np.ndarray,
    grid: AlignmentGrid,
    *,
    initial_yx: tuple[float, float] = (0.0, 0.0),
    search_px: float = 4.0,
    presmooth_px: tuple[float, ...] = (1.5,),
    smooth_px: float | None = None,
    iterations: int | tuple[int, ...] = 4,
    min_peak: float = 0.3,
    max_deviation_px: float = 1.0,
    prior_rms_px: float = 1.0,
) -> LocalShifts:
    """Estimate a sub-pixel shift of the moving image at every alignment point.

    The shifts are those of one smooth field fitted to all APs at once (a
    Gaussian-RBF field with one coefficient per AP and axis), so a patch whose
    content is only a belt constrains the field across the belt and its
    neighbours fill in the rest.

    Parameters
    ----------
    reference_lum, moving_lum : (H, W) ndarray
        Same-shape luminance images; ``grid`` was placed on the reference (or
        one of the same geometry). ``reference_lum`` may be a
        :class:`PreparedReference` (from :func:`prepare_reference` with this
        grid) to skip the reference's share of the work; ``presmooth_px``,
        ``smooth_px`` and ``prior_rms_px`` are then the prepared ones.
    grid : AlignmentGrid
        The alignment points.
    initial_yx : tuple of 2 float, optional
        Starting shift: 0 for a globally aligned moving crop, or the global
        shift of an unaligned one (the shifts returned then include it). Far
        from the APs the field tends to it.
    search_px : float, optional
        APs whose own measured shift lies further than this from
        ``initial_yx`` on either axis are rejected.
    presmooth_px : tuple of float, optional
        Gaussian pre-smoothing sigmas of the coarse-to-fine passes; both
        images are smoothed alike (the moving frame is noisy, and smoothing
        widens the capture range of the gradient method). Passes with sigma
        >= 1.5 use every other patch pixel and bilinear sampling. The default
        single pass costs half of ``(2.0, 1.0)`` and scored the same on the
        simulated sessions (``bench/warp_eval.py``), up to 4 px local shifts.
    smooth_px : float, optional
        Correlation length ``l`` of the field (its RBF width), pixels;
        default the grid spacing.
    iterations : int or tuple of int, optional
        Gauss-Newton iterations per pass (one number for every pass, or one
        per pass).
    min_peak : float, optional
        APs whose aligned patches correlate less than this (Gaussian-weighted
        normalised correlation) are rejected.
    max_deviation_px : float, optional
        Outlier test: an AP is rejected when its own measured shift differs
        from the prediction of all the others (leave-one-out) by more than
        this and by more than 3 predicted standard deviations, on either axis,
        *and* it matches worse than is typical (correlation peak more than
        0.05 below the median, or residual variance above 4 times the
        median). A genuine strong warp is not predictable from the
        neighbours either, but it matches well.
    prior_rms_px : float, optional
        Prior RMS ``tau`` of the displacement (the field's Gaussian-process
        prior; regularises patches with little structure).

    Returns
    -------
    LocalShifts
        ``shifts_yx`` are the fitted field at the AP centres; rejected APs'
        data are left out of the fit.

    Raises
    ------
    FrameError
        If the images are not finite 2-D images of the same shape, or their
        shape is not the grid's.
    ValueError
        For out-of-range parameters.

    Notes
    -----
    The field is ``f(x) = b + sum_k c_k phi_k(x)``, ``phi_k(x) = exp(-|x -
    x_k|^2 / 2 l^2)`` (per axis), ``b = initial_yx``. With ``R`` and ``M`` the
    smoothed images, ``w`` a Gaussian window of sigma ``box_px / 4`` over each
    patch ``j`` and ``g = grad R``, a Gauss-Newton iteration computes per patch

    * ``e = a M(x + f(x)) - R(x)`` (bicubic :func:`cv2.remap`; both patches'
      weighted means removed; ``a M`` has the reference's sky level and mean),
    * ``r_j = sum_x w g e`` (2-vector), which responds to a coefficient change
      as ``S_j dc``, ``S_j = sum_x w g g^T phi(x)^T`` (2 x 2n, the reference's
      structure tensor carried by each basis function: the
      inverse-compositional approximation), with noise covariance
      ``C_j = s2_j sum_x w^2 g g^T``, ``s2_j`` the patch's residual variance,

    and solves ``(sum_j S_j^T C_j^-1 S_j + P) dc = -sum_j S_j^T C_j^-1 r_j - P c``
    with the prior ``P = I_2 (x) K / tau^2``, ``K_kl = phi_k(x_l)`` (a MAP step;
    the field changes by at most 2 px per step). Windows that overlap are
    treated as independent, which overweights the data by roughly the
    overlap factor. An AP's *own* shift, used for the verdicts, is
    ``H_j^-1 (S_j c - r_j)``, ``H_j = sum_x w g g^T``, with the uncertainty
    ``sqrt(diag(s2_j H_j^-1 A_j H_j^-1))``, ``A_j = sum w^2 g g^T``.
    """
    mov = _as_lum("moving_lum", moving_lum)
    if isinstance(reference_lum, PreparedReference):
        prep = reference_lum
        if prep.grid is not grid and (
            prep.grid.shape != grid.shape
            or not np.array_equal(prep.grid.origins_yx, grid.origins_yx)
            or prep.grid.box_px != grid.box_px
        ):
            raise ValueError("the prepared reference was prepared with another grid")
    else:
        prep = prepare_reference(
            reference_lum, grid, presmooth_px=presmooth_px, smooth_px=smooth_px,
            prior_rms_px=prior_rms_px,
        )
    ref = prep.reference
    if ref.shape != mov.shape:
        raise FrameError(f"images must have the same shape, got {ref.shape} and {mov.shape}")
    search = _check_positive("search_px", search_px)
    max_dev = _check_positive("max_deviation_px", max_deviation_px)
    sigmas, length, prior = prep.presmooth_px, prep.smooth_px, prep.prior_rms_px
    if np.ndim(iterations) == 0:
        counts = (iterations,) * len(sigmas)
    else:
        counts = tuple(iterations)  # type: ignore[arg-type]
    if len(counts) != len(sigmas) or any(
        isinstance(c, bool) or int(c) != c or c < 1 for c in counts
    ):
        raise ValueError(
            f"iterations must be an integer >= 1 or one per pass ({len(sigmas)}); "
            f"got {iterations!r}"
        )
    base = np.array([float(initial_yx[0]), float(initial_yx[1])], np.float64)
    n = len(grid)
    if n == 0:
        z = np.zeros((0, 2))
        return LocalShifts(z, z.copy(), np.zeros(0), np.zeros(0, bool), tuple(base), length, prior)

    centers = grid.centers_yx
    kmat, prior_term = prep.kmat, prep.prior_term
    gain, offset = _intensity_match(prep, mov)
    matched = mov * np.float32(gain) + np.float32(offset)
    passes = prep.passes
    moving = [_smooth(matched, lk.sigma) for lk in passes]

    def fit(coef: np.ndarray, schedule, exclude: np.ndarray) -> np.ndarray:
        """Gauss-Newton iterations of the coefficients (2n,) without the ``exclude``d APs' data."""
        for lk, m_s, count in schedule:
            for _ in range(int(count)):
                b, resid, peak = lk.residual(m_s, coef, base)
                use = (peak >= min_peak) & ~exclude  # patches that do not match carry no data
                coef = coef + _gauss_newton_step(lk, coef, b, resid, use, prior_term, kmat)
        return coef

    schedule = list(zip(passes, moving, counts))
    coef = fit(np.zeros(2 * n), schedule, np.zeros(n, bool))
    # Per-AP verdicts on the finest pass. Each AP's own measurement: the structure-
    # weighted field over its patch minus its LK residual, H^-1 (S c - b).
    lk = passes[-1]
    b, resid, peak = lk.residual(moving[-1], coef, base, cv2.INTER_CUBIC)
    with np.errstate(divide="ignore", invalid="ignore"):
        own = np.linalg.solve(_regularised(lk.hmat), (lk.smat @ coef - b)[:, :, None])[:, :, 0]
    own = np.nan_to_num(own)
    sig = _lk_sigma(lk.hmat, lk.amat, resid)
    valid = (
        (peak >= min_peak)
        & np.all(np.abs(own) <= search, axis=1)
        & np.all(np.isfinite(own), axis=1)
    )
    # Outliers: APs that disagree with their neighbours *and* match worse than is
    # typical (a strong but genuine warp is not predictable from the neighbours either).
    if valid.sum() >= 4:
        typical_peak = _stats.median(peak[valid])
        typical_resid = _stats.median(resid[valid])
        suspect = (peak < typical_peak - 0.05) | (resid > 4.0 * typical_resid)
        if (suspect & valid).any():  # only suspects can be outliers
            valid &= ~_loo_outliers(centers, own, sig, valid, suspect, length, max_dev)
    if not valid.all():  # fit again from scratch without the rejected APs' data
        coef = fit(np.zeros(2 * n), schedule, ~valid)
    shifts = base + (kmat @ coef.reshape(2, n).T)  # the fitted field at the AP centres
    sig = np.where(valid[:, None], sig, np.inf)
    return LocalShifts(
        shifts_yx=shifts,
        sigma_yx=sig,
        peak=peak,
        valid=valid,
        base_yx=(float(base[0]), float(base[1])),
        smooth_px=length,
        prior_rms_px=prior,
        coefficients_yx=coef.reshape(2, n).T.copy(),
    )


def _sky_level(image: np.ndarray) -> float:
    """Mean of the pixels darker than 20 % of the way from the 10th to the 99th percentile.

    Unlike a low percentile, the mean of the sky's noise is its level, so a
    noisy frame and a clean reference get the same sky level.
    """
    sample = image[::4, ::4]
    lo, hi = _stats.quantiles(sample, (0.10, 0.99))
    dark = sample[sample < lo + 0.2 * (hi - lo)]
    return float(dark.mean()) if dark.size else lo


def _intensity_match(ref: PreparedReference, mov: np.ndarray) -> tuple[float, float]:
    """``(a, c)`` such that ``a * mov + c`` has the reference's sky level and mean.

    Blur changes neither, so a blurrier frame is not brightened to make up for
    its lower contrast (which would bias the patches at the limb).
    """
    r_sky, m_sky = ref.sky, _sky_level(mov)
    r_level = ref.level
    m_level = float(mov.mean()) - m_sky
    if m_level <= 1e-12 or r_level <= 1e-12:
        return 1.0, 0.0
    a = r_level / m_level
    return a, r_sky - a * m_sky


def _regularised(mats: np.ndarray) -> np.ndarray:
    """(n, 2, 2) symmetric matrices plus a tiny ridge, so that flat patches stay solvable."""
    ridge = 1e-6 * np.trace(mats, axis1=1, axis2=2) + 1e-20
    return mats + ridge[:, None, None] * np.eye(2)


def _lk_sigma(hmat: np.ndarray, amat: np.ndarray, resid: np.ndarray) -> np.ndarray:
    """Per-axis 1-sigma of windowed LK shifts: ``sqrt(diag(s2 H^-1 A H^-1))``, >= 0.01 px."""
    inv = np.linalg.inv(_regularised(hmat))
    cov = resid[:, None, None] * (inv @ amat @ inv)
    var = np.stack([cov[:, 0, 0], cov[:, 1, 1]], axis=1)
    sig = np.sqrt(np.nan_to_num(np.maximum(var, 0.0), nan=np.inf, posinf=np.inf))
    return np.maximum(sig, 0.01)


def _gauss_newton_step(
    lk: _LKPass,
    coef: np.ndarray,
    b: np.ndarray,
    resid: np.ndarray,
    use: np.ndarray,
    prior_term: np.ndarray,
    kmat: np.ndarray,
) -> np.ndarray:
    """Coefficient step solving ``S dc = -b`` weighted by ``(s2 A)^-1``, with the GP prior.

    Damped locally: where the field would move by more than 2 px at an AP, that
    AP's coefficients are scaled down (a bad region must not slow the others).
    """
    n = kmat.shape[0]
    weight = use / np.maximum(resid, 1e-30)  # 1 / s2 of each patch, 0 if unused
    normal = np.tensordot(weight, lk.normal, axes=1) + prior_term
    rhs = -np.einsum("j,jpa,jp->a", weight, lk.ainv_s, b) - prior_term @ coef
    step = np.linalg.solve(normal, rhs).reshape(2, n)
    change = np.abs(step @ kmat).max(axis=0)
    return (step * np.minimum(1.0, 2.0 / np.maximum(change, 1e-12))).ravel()


def _loo_outliers(
    centers: np.ndarray,
    values: np.ndarray,
    sig: np.ndarray,
    valid: np.ndarray,
    suspect: np.ndarray,
    length: float,
    max_dev: float,
) -> np.ndarray:
    """Suspect APs whose value disagrees with the leave-one-out GP prediction of the others.

    Closed form (Rasmussen & Williams 2006, eq. 5.12): with ``A = (K + N)^-1``,
    the prediction residual of point ``i`` is ``r_i = (A y)_i / A_ii`` with the
    standard deviation ``tau / sqrt(A_ii)``. The prior ``tau`` is the robust
    spread (1.4826 MAD) of the values themselves, so a strong warp widens the
    tolerance. A suspect point is an outlier when ``|r_i| > max(max_dev, 3 sd_i)``
    on either axis; the worst is removed and the rest re-tested, at most a third
    of the points.
    """
    idx = np.flatnonzero(valid)
    flagged = np.zeros(valid.shape, bool)
    for _ in range(max(1, idx.size // 3)):
        if idx.size < 4:
            break
        k = _kernel(centers[idx], centers[idx], length)
        score = np.zeros(idx.size)
        for axis in range(2):
            v = values[idx, axis]
            tau = max(1.4826 * float(np.median(np.abs(v - np.median(v)))), 0.05)
            noise = (np.minimum(sig[idx, axis], 1e3) ** 2 + 0.02**2) / (tau * tau)
            a = np.linalg.inv(k + np.diag(noise))
            resid = np.abs((a @ v) / np.diag(a))
            sd = tau / np.sqrt(np.diag(a))
            score = np.maximum(score, resid / np.maximum(max_dev, 3.0 * sd))
        score[~suspect[idx]] = 0.0
        worst = int(np.argmax(score))
        if score[worst] <= 1.0:
            break
        flagged[idx[worst]] = True
        idx = np.delete(idx, worst)
    return flagged


# --------------------------------------------------------------------------
# 3. Dense field and de-warping
# --------------------------------------------------------------------------


def displacement_field(
    grid: AlignmentGrid,
    shifts: LocalShifts,
    shape: tuple[int, int] | None = None,
    *,
    smooth: float | None = None,
    prior_rms_px: float | None = None,
) -> np.ndarray:
    """Smooth dense displacement field through the alignment points.

    Parameters
    ----------
    grid : AlignmentGrid
        The alignment points.
    shifts : LocalShifts
        Their shifts.
    shape : tuple of 2 int, optional
        ``(H, W)`` of the field; default the grid's reference shape.
    smooth : float, optional
        Correlation length ``l`` of the interpolation, pixels; default
        ``shifts.smooth_px``. Larger is smoother.
    prior_rms_px : float, optional
        Prior RMS ``tau`` of the displacement; with the shifts' uncertainties
        it sets how closely the field follows each AP. Default
        ``shifts.prior_rms_px``.

    Returns
    -------
    (2, H, W) ndarray of float32
        ``(dy, dx)`` at every pixel of the reference grid:
        ``moving(x + f(x)) ≈ reference(x)``.

    Raises
    ------
    ValueError
        If ``shifts`` does not belong to ``grid`` or a parameter is out of
        range.

    Notes
    -----
    The field is ``f(x) = b + sum_k c_k exp(-|x - x_k|^2 / 2 l^2)`` per axis,
    ``b = shifts.base_yx`` (the global shift), ``x_k`` the AP centres. With
    the default ``smooth`` and ``prior_rms_px``, ``c`` is
    ``shifts.coefficients_yx``: exactly the field :func:`estimate_local_shifts`
    fitted. Otherwise (or for shifts without coefficients) ``c`` comes from
    Gaussian-process regression through the accepted APs,
    ``c = (K + diag(sigma_k^2) / tau^2)^-1 (s - b)``, ``K_kl`` the kernel between
    APs and ``sigma_k`` each AP's uncertainty on that axis, so a poorly
    constrained axis (along a belt) follows the neighbours. More than ~2 ``l``
    from every AP (sky, a limb without APs) the field tends to ``b``. The
    kernel is separable, so the field is two matrix products per axis,
    ``E_y^T diag(c) E_x`` (about 0.3 ms for 200 x 200 and 20 APs).

    Examples
    --------
    >>> yy, xx = np.mgrid[:96, :96]
    >>> ref = ((yy - 48) ** 2 + (xx - 48) ** 2 < 40**2) * (1 + 0.3 * np.sin(xx / 2.0 + yy / 3.0))
    >>> ref = ref.astype(np.float32)
    >>> grid = place_alignment_points(ref, box_px=24, step_px=16)
    >>> f = displacement_field(grid, estimate_local_shifts(ref, ref, grid))
    >>> f.shape, float(np.abs(f).max()) < 0.01
    ((2, 96, 96), True)
    """
    n = len(grid)
    if shifts.shifts_yx.shape != (n, 2):
        raise ValueError(
            f"shifts has {shifts.shifts_yx.shape[0]} points but the grid has {n}"
        )
    h, w = grid.shape if shape is None else (int(shape[0]), int(shape[1]))
    if h < 1 or w < 1:
        raise ValueError(f"shape must be two positive integers; got {shape!r}")
    length = _check_positive("smooth", shifts.smooth_px if smooth is None else smooth)
    prior = _check_positive(
        "prior_rms_px", shifts.prior_rms_px if prior_rms_px is None else prior_rms_px
    )
    base = np.asarray(shifts.base_yx, np.float64)
    field = np.empty((2, h, w), np.float32)
    field[0], field[1] = base
    exact = (
        shifts.coefficients_yx is not None
        and length == shifts.smooth_px
        and prior == shifts.prior_rms_px
    )
    if exact:  # the field estimate_local_shifts fitted
        pts, coef = grid.centers_yx, np.asarray(shifts.coefficients_yx, np.float64)
    else:
        valid = shifts.valid
        if not valid.any():
            return field
        pts = grid.centers_yx[valid]
        coef = _gp_coefficients(
            pts, shifts.shifts_yx[valid] - base, shifts.sigma_yx[valid], length, prior
        )
    if pts.shape[0] == 0:
        return field
    # float32 products: the field is used in float32 (cv2.remap), ~2x faster.
    ey = np.exp(-0.5 * ((np.arange(h)[None, :] - pts[:, 0, None]) / length) ** 2)  # (n, H)
    ex = np.exp(-0.5 * ((np.arange(w)[None, :] - pts[:, 1, None]) / length) ** 2)  # (n, W)
    ey32, ex32 = ey.T.astype(np.float32), ex.astype(np.float32)
    for axis in range(2):
        field[axis] += (ey32 * coef[:, axis].astype(np.float32)) @ ex32
    return field


_BORDERS = {"replicate": cv2.BORDER_REPLICATE, "constant": cv2.BORDER_CONSTANT}


def dewarp(
    image: np.ndarray,
    field: np.ndarray,
    *,
    offset_yx: tuple[float, float] = (0.0, 0.0),
    border: str = "replicate",
) -> np.ndarray:
    """Resample ``image`` along a displacement field (bicubic).

    Parameters
    ----------
    image : (H', W') or (H', W', C) ndarray
        Mono or colour (C <= 4) image, any numeric dtype; computed in float32.
    field : (2, H, W) ndarray
        Displacement ``(dy, dx)`` on the output grid, e.g. from
        :func:`displacement_field`.
    offset_yx : tuple of 2 float, optional
        Position of the output's pixel (0, 0) in ``image``. With
        ``image`` a full frame, ``offset_yx = (box.y0, box.x0)`` and a field
        that includes the global shift, the aligned, de-warped crop comes out
        of a single interpolation (no crop-then-dewarp double resampling).
    border : {"replicate", "constant"}, optional
        Samples outside ``image``: the nearest edge pixel (default: a crop's
        sky border stays sky when the field reaches past it, instead of a
        black rim that would darken the stack's edges) or 0.

    Returns
    -------
    (H, W) or (H, W, C) ndarray of float32
        ``out[y, x] = image[y + oy + dy(y, x), x + ox + dx(y, x)]``.

    Raises
    ------
    FrameError
        For a bad image or a field that is not ``(2, H, W)``.
    ValueError
        For an unknown ``border``.

    Notes
    -----
    :func:`cv2.remap` with ``INTER_CUBIC`` (Keys a = -0.75, as
    :func:`luckystack.core.crop.extract_shifted`); OpenCV quantises sub-pixel
    positions to 1/32 px. A zero field with zero offset returns the image
    unchanged.
    """
    img = np.asarray(image)
    if img.ndim not in (2, 3) or (img.ndim == 3 and not 1 <= img.shape[2] <= 4):
        raise FrameError(f"expected a mono or colour image, got shape {img.shape}")
    fld = np.asarray(field)
    if fld.ndim != 3 or fld.shape[0] != 2:
        raise FrameError(f"field must have shape (2, H, W); got {fld.shape}")
    if border not in _BORDERS:
        raise ValueError(f"border must be one of {sorted(_BORDERS)}; got {border!r}")
    h, w = fld.shape[1:]
    oy, ox = float(offset_yx[0]), float(offset_yx[1])
    map_y = fld[0].astype(np.float32) + (np.arange(h, dtype=np.float32) + np.float32(oy))[:, None]
    map_x = fld[1].astype(np.float32) + (np.arange(w, dtype=np.float32) + np.float32(ox))[None, :]
    src = img.astype(np.float32, copy=False)
    return cv2.remap(
        src, map_x, map_y, cv2.INTER_CUBIC, borderMode=_BORDERS[border], borderValue=0
    )


def align_locally(
    reference_lum: np.ndarray,
    crop: np.ndarray,
    crop_lum: np.ndarray,
    grid: AlignmentGrid,
    *,
    smooth: float | None = None,
    border: str = "replicate",
    **shift_options: object,
) -> tuple[np.ndarray, LocalShifts]:
    """De-warp a globally aligned crop onto the reference.

    Parameters
    ----------
    reference_lum : (H, W) ndarray
        The reference luminance the grid was placed on.
    crop : (H, W) or (H, W, C) ndarray
        The globally aligned crop (mono or colour).
    crop_lum : (H, W) ndarray
        Its luminance.
    grid : AlignmentGrid
        Alignment points on the reference.
    smooth : float, optional
        Correlation length of the field (see :func:`displacement_field`).
    border : {"replicate", "constant"}, optional
        See :func:`dewarp`.
    **shift_options
        Passed to :func:`estimate_local_shifts` (``search_px``,
        ``min_peak``, ...).

    Returns
    -------
    dewarped : (H, W) or (H, W, C) ndarray of float32
    shifts : LocalShifts

    Raises
    ------
    FrameError
        If the shapes disagree.
    """
    if np.shape(crop)[:2] != np.shape(crop_lum):
        raise FrameError(
            f"crop {np.shape(crop)} and crop_lum {np.shape(crop_lum)} differ in shape"
        )
    shifts = estimate_local_shifts(
        reference_lum, crop_lum, grid, **shift_options  # type: ignore[arg-type]
    )
    field = displacement_field(grid, shifts, smooth=smooth)
    return dewarp(crop, field, border=border), shifts


# --------------------------------------------------------------------------
# 5. Drizzle
# --------------------------------------------------------------------------


def _output_shape(shape_hw: tuple[int, int], scale: float) -> tuple[int, int]:
    return int(round(shape_hw[0] * scale)), int(round(shape_hw[1] * scale))


def _overlaps(centers: np.ndarray, half: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Output-pixel indices and overlap lengths of drops ``[c - half, c + half]``.

    ``centers`` has any shape; the results get one trailing axis of taps.
    Taps outside ``[0, size)`` get overlap 0 (and a clipped index).
    """
    taps = int(math.ceil(2 * half)) + 1
    first = np.floor(centers - half + 0.5).astype(np.intp)
    k = first[..., None] + np.arange(taps)
    lo = np.maximum(centers[..., None] - half, k - 0.5)
    hi = np.minimum(centers[..., None] + half, k + 0.5)
    length = np.clip(hi - lo, 0.0, None)
    inside = (k >= 0) & (k < size)
    return np.clip(k, 0, size - 1), np.where(inside, length, 0.0)


def _overlap_matrix(
    n_in: int, shift: float, scale: float, half: float, size: int
) -> sparse.csr_matrix:
    """``(n_in, size)`` matrix of overlap lengths for a pure translation on one axis."""
    from scipy import sparse  # here: only drizzle needs it (its import costs the daemon ~0.2 s)

    centers = (np.arange(n_in) - shift + 0.5) * scale - 0.5
    k, length = _overlaps(centers, half, size)
    rows = np.repeat(np.arange(n_in), k.shape[1])
    return sparse.csr_matrix((length.ravel(), (rows, k.ravel())), shape=(n_in, size))


def _invert_field(field: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Reference position ``x`` of every moving pixel ``p``: ``x + d(x) = p``.

    ``d = shift + field`` (field on the reference grid); two fixed-point
    steps ``x <- p - d(x)`` (bilinear samples of the smooth field).
    """
    h, w = field.shape[1:]
    py = np.arange(h, dtype=np.float32)[:, None] + np.zeros((1, w), np.float32)
    px = np.zeros((h, 1), np.float32) + np.arange(w, dtype=np.float32)[None, :]
    fy = field[0].astype(np.float32) + np.float32(shift[0])
    fx = field[1].astype(np.float32) + np.float32(shift[1])
    xy, xx = py - fy, px - fx
    for _ in range(2):
        sy = cv2.remap(fy, xx, xy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        sx = cv2.remap(fx, xx, xy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        xy, xx = py - sy, px - sx
    return np.stack([xy, xx]).astype(np.float64)


def drizzle_accumulate(
    flux: np.ndarray,
    weight: np.ndarray,
    image: np.ndarray,
    shift_yx: tuple[float, float] = (0.0, 0.0),
    *,
    scale: float = 2.0,
    pixfrac: float = 0.7,
    field: np.ndarray | None = None,
    frame_weight: float = 1.0,
) -> None:
    """Drop one frame's pixels onto an upsampled grid (in place).

    Parameters
    ----------
    flux : (H*s, W*s) or (H*s, W*s, C) ndarray of float64
        Accumulated ``sum(weight * value)``; updated in place.
    weight : (H*s, W*s) ndarray of float64
        Accumulated ``sum(weight)``; updated in place.
    image : (H, W) or (H, W, C) ndarray
        The frame (or crop) on the input grid; not yet aligned.
    shift_yx : tuple of 2 float, optional
        Displacement of the image's content relative to the reference
        (``image ≈ scipy.ndimage.shift(reference, shift_yx)``).
    scale : float, optional
        Output pixels per input pixel (1.5, 2, ...); the output shape is
        ``round(H * scale), round(W * scale)``.
    pixfrac : float, optional
        Side of each drop as a fraction of an input pixel, in (0, 1]. Smaller
        keeps more resolution but needs more frames (and dithering) to cover
        the output grid.
    field : (2, H, W) ndarray, optional
        Local displacement field on the reference grid (from
        :func:`displacement_field`), added to ``shift_yx``.
    frame_weight : float, optional
        Weight of the frame; a negative weight removes a frame added before
        with the same arguments (the accumulation is linear), for rolling
        windows.

    Raises
    ------
    FrameError
        If the shapes disagree.
    ValueError
        For out-of-range ``scale`` or ``pixfrac``.

    Notes
    -----
    Input pixel ``p`` (centre) shows the reference's content at ``x = p - d``,
    ``d = shift + field(x)``; on the output grid that is
    ``X = (x + 0.5) * scale - 0.5``. The drop is a square of side
    ``pixfrac * scale`` output pixels centred on ``X``; every output pixel gets
    ``frame_weight * A`` in ``weight`` and ``frame_weight * A * value`` in
    ``flux``, ``A`` the area it shares with the drop (Fruchter & Hook 2002,
    without geometric distortion of the drop's shape). A pure translation is
    separable and done as two sparse matrix products (about 3 ms for a
    200 x 200 mono frame at ``scale=2``, one core); with a field every pixel
    has its own position and the drops are summed with :func:`numpy.bincount`
    (about 20 ms). Drop positions with a field are computed in float32
    (~1e-5 px).

    References
    ----------
    .. [1] A. S. Fruchter, R. N. Hook, "Drizzle: a method for the linear
       reconstruction of undersampled images", PASP 114, 144-152 (2002).
       :DOI:`10.1086/338393`
    """
    img = np.asarray(image)
    if img.ndim not in (2, 3):
        raise FrameError(f"expected a mono or colour image, got shape {img.shape}")
    scale = _check_positive("scale", scale)
    if not 0 < pixfrac <= 1:
        raise ValueError(f"pixfrac must be in (0, 1]; got {pixfrac!r}")
    h, w = img.shape[:2]
    oh, ow = _output_shape((h, w), scale)
    if weight.shape != (oh, ow) or flux.shape != (oh, ow) + img.shape[2:]:
        raise FrameError(
            f"accumulators must be {(oh, ow) + img.shape[2:]} for an image of shape "
            f"{img.shape} at scale {scale:g}; got {flux.shape} and {weight.shape}"
        )
    half = 0.5 * pixfrac * scale
    values = img.astype(np.float64, copy=False)
    channels = img.shape[2] if img.ndim == 3 else 0
    if field is None:
        ay = _overlap_matrix(h, float(shift_yx[0]), scale, half, oh)  # (h, oh)
        ax = _overlap_matrix(w, float(shift_yx[1]), scale, half, ow)  # (w, ow)
        ayt = ay.T.tocsr()
        weight += frame_weight * np.outer(ay.sum(axis=0), ax.sum(axis=0))
        if channels:
            for c in range(channels):
                flux[..., c] += frame_weight * (ayt @ (ax.T @ values[..., c].T).T)
        else:
            flux += frame_weight * (ayt @ (ax.T @ values.T).T)
        return
    fld = np.asarray(field)
    if fld.shape != (2, h, w):
        raise FrameError(f"field must have shape (2, {h}, {w}); got {fld.shape}")
    pos = _invert_field(fld, np.asarray(shift_yx, np.float64))
    ky, ly = _overlaps((pos[0] + 0.5) * scale - 0.5, half, oh)  # (h, w, t)
    kx, lx = _overlaps((pos[1] + 0.5) * scale - 0.5, half, ow)
    index = (ky[..., :, None] * ow + kx[..., None, :]).ravel()
    area = (ly[..., :, None] * lx[..., None, :]).reshape(h, w, -1)
    size = oh * ow
    weight += frame_weight * np.bincount(index, area.ravel(), minlength=size).reshape(oh, ow)
    if channels:
        for c in range(channels):
            contrib = (area * values[..., c, None]).ravel()
            flux[..., c] += frame_weight * np.bincount(index, contrib, minlength=size).reshape(
                oh, ow
            )
    else:
        contrib = (area * values[..., None]).ravel()
        flux += frame_weight * np.bincount(index, contrib, minlength=size).reshape(oh, ow)


def fill_holes(
    flux: np.ndarray, weight: np.ndarray, *, min_weight: float = 1e-3
) -> np.ndarray:
    """``flux / weight``, with uncovered pixels filled from their neighbourhood.

    Parameters
    ----------
    flux : (H, W) or (H, W, C) ndarray
    weight : (H, W) ndarray
    min_weight : float, optional
        Pixels whose weight is at most ``min_weight`` times the largest
        weight count as holes.

    Returns
    -------
    (H, W) or (H, W, C) ndarray of float32

    Notes
    -----
    Holes get a normalised convolution ``G * flux / G * weight`` over the
    covered pixels, with a Gaussian ``G`` of sigma 1, 2, 4, ... output pixels,
    the smallest that reaches covered pixels. An image with no coverage at
    all is zeros.
    """
    wgt = np.asarray(weight, np.float64)
    fl = np.asarray(flux, np.float64)
    top = float(wgt.max(initial=0.0))
    if top <= 0:
        return np.zeros(fl.shape, np.float32)
    good = wgt > min_weight * top
    colour = fl.ndim == 3

    def per_pixel(a: np.ndarray) -> np.ndarray:
        return a[..., None] if colour else a

    result = fl / per_pixel(np.where(good, wgt, 1.0))
    holes = ~good
    if not holes.any():
        return result.astype(np.float32)
    result[holes] = 0.0
    wg = np.where(good, wgt, 0.0)
    fg = np.where(per_pixel(good), fl, 0.0)
    sigma = 1.0
    while holes.any() and sigma <= 2 * max(wgt.shape):
        bw = cv2.GaussianBlur(wg, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
        bf = cv2.GaussianBlur(fg, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
        bf = bf.reshape(fl.shape)  # OpenCV drops a single channel axis
        reached = holes & (bw > 1e-6 * top)
        result[reached] = (bf / per_pixel(np.where(bw > 0, bw, 1.0)))[reached]
        holes &= ~reached
        sigma *= 2.0
    return result.astype(np.float32)


class DrizzleStack:
    """Running drizzle of frames onto a finer grid.

    Parameters
    ----------
    shape_hw : tuple of 2 int
        ``(H, W)`` of the input frames (crops).
    scale : float, optional
        Output pixels per input pixel (e.g. 1.5 or 2).
    pixfrac : float, optional
        Drop size as a fraction of an input pixel, in (0, 1].
    channels : int, optional
        3 for colour input, None for mono.

    Examples
    --------
    >>> d = DrizzleStack((16, 16), scale=2.0, pixfrac=0.6)
    >>> for s in [(0.0, 0.0), (0.5, 0.5), (0.5, 0.0), (0.0, 0.5)]:
    ...     d.add(np.ones((16, 16)), s)
    >>> d.result().shape, round(float(d.result().std()), 6), len(d)
    ((32, 32), 0.0, 4)
    """

    def __init__(
        self,
        shape_hw: tuple[int, int],
        *,
        scale: float = 2.0,
        pixfrac: float = 0.7,
        channels: int | None = None,
    ) -> None:
        h, w = (int(v) for v in shape_hw)
        if h < 1 or w < 1:
            raise ValueError(f"shape_hw must be two positive integers; got {shape_hw!r}")
        self.scale = _check_positive("scale", scale)
        if not 0 < pixfrac <= 1:
            raise ValueError(f"pixfrac must be in (0, 1]; got {pixfrac!r}")
        self.pixfrac = float(pixfrac)
        self.shape_hw = (h, w)
        self.output_shape = _output_shape((h, w), self.scale)
        extra = () if channels is None else (int(channels),)
        self.flux = np.zeros(self.output_shape + extra, np.float64)
        self.weight = np.zeros(self.output_shape, np.float64)
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(
        self,
        image: np.ndarray,
        shift_yx: tuple[float, float] = (0.0, 0.0),
        *,
        field: np.ndarray | None = None,
        weight: float = 1.0,
    ) -> None:
        """Drizzle one frame (see :func:`drizzle_accumulate` for the arguments)."""
        self._accumulate(image, shift_yx, field, weight)
        self._count += 1

    def remove(
        self,
        image: np.ndarray,
        shift_yx: tuple[float, float] = (0.0, 0.0),
        *,
        field: np.ndarray | None = None,
        weight: float = 1.0,
    ) -> None:
        """Take out a frame added before with the same arguments (rolling windows)."""
        self._accumulate(image, shift_yx, field, -weight)
        self._count -= 1

    def _accumulate(
        self,
        image: np.ndarray,
        shift_yx: tuple[float, float],
        field: np.ndarray | None,
        weight: float,
    ) -> None:
        drizzle_accumulate(
            self.flux, self.weight, image, shift_yx,
            scale=self.scale, pixfrac=self.pixfrac, field=field, frame_weight=weight,
        )

    def result(self) -> np.ndarray:
        """The drizzled image (float32, ``output_shape``), holes filled."""
        return fill_holes(self.flux, self.weight)
