"""The per-frame pipeline: locate, score, register, stack, sharpen.

:class:`LiveStacker` composes the pure steps of :mod:`luckystack.core` and
holds the only state (the rolling buffer and recent history). It reads no
files: the daemon feeds it normalised frames. ``watch`` and ``run`` both
drive this one class, so identical frames give identical images.

Two methods exist:

* ``"seed"`` — the origin script: Sobel half-maximum crop plus margin, no
  registration or rejection beyond "no planet", crops scaled to the largest
  and averaged.
* ``"default"`` — lucky imaging: fixed-size crops centred on the disc's
  centre of gravity, quality scores, rejection (clipped, saturated, size
  jumps, poor quality), sub-pixel registration against the running stack,
  and a best-``keep``-of-``buffer_size`` selection.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np
from scipy import fft as sp_fft

from luckystack.core.crop import (
    CropBox,
    box_around,
    expand_box,
    extract_box,
    extract_shifted,
    find_disc,
    locate_planet,
)
from luckystack.core.errors import FrameError, RegistrationError
from luckystack.core.frame import Frame, luminance
from luckystack.core.quality import measure_sharpness
from luckystack.core.register import ShiftEstimate, estimate_shift
from luckystack.core.sharpen import (
    DEFAULT_CHAIN,
    SharpenStep,
    apply_chain,
    gaussian_laplacian,
    sharpen_kernel,
)
from luckystack.core.stack import Combine, ResizingStack, RollingStack, Weighting

__all__ = [
    "SharpenParams",
    "PipelineParams",
    "FrameOutcome",
    "LiveStacker",
    "apply_sharpening",
    "compose_panels",
]

Method = Literal["default", "seed"]


@dataclass(frozen=True, slots=True)
class SharpenParams:
    """How the stack is sharpened.

    ``method``: ``"chain"`` (``steps``, or :data:`DEFAULT_CHAIN` when empty,
    with deringing and highlight protection), ``"gaussian_laplacian"``
    (origin), ``"kernel"`` (origin's 3x3 kernel) or ``"none"``.
    """

    method: Literal["chain", "gaussian_laplacian", "kernel", "none"] = "chain"
    steps: tuple[SharpenStep, ...] = ()
    luminance_only: bool = True
    dering: bool = True
    highlight_knee: float | None = 0.9
    sigma_px: float = 1.0
    amount: float = 1.0


@dataclass(frozen=True, slots=True)
class PipelineParams:
    """Every tunable of the pipeline (converted from the daemon's settings)."""

    method: Method = "default"
    crop_margin: float = 0.15
    min_contrast: float = 8.0
    buffer_size: int = 20
    keep: int | None = None
    keep_fraction: float | None = None
    combine: Combine = "mean"
    weighting: Weighting = "none"
    quality_blur_px: float = 1.0
    min_quality_ratio: float = 0.25
    quality_history: int = 50
    max_size_change: float = 0.2
    saturation_level: float = 0.995
    max_saturated_fraction: float = 0.01
    register: bool = True
    min_peak: float = 0.3
    #: Bin crops by this factor for registration (0 = auto: 2 when the crop's
    #: short side is >= 192 px). Seeing-limited crops hold no detail near
    #: Nyquist; binning makes the FFTs 4x cheaper at no measurable loss.
    register_bin: int = 0
    sharpen: SharpenParams = field(default_factory=SharpenParams)
    #: Buffers larger than this many bytes as float32 are kept as uint16.
    float_buffer_limit_bytes: int = 256 * 1024 * 1024

    def keep_count(self) -> int:
        """How many of the buffered frames are stacked."""
        if self.keep is not None:
            return min(self.keep, self.buffer_size)
        if self.keep_fraction is not None:
            return max(1, min(self.buffer_size, int(round(self.keep_fraction * self.buffer_size))))
        return self.buffer_size


@dataclass(frozen=True, slots=True)
class FrameOutcome:
    """What the pipeline decided about one frame (one CSV row's content).

    ``box`` is the crop in frame pixels; ``shift_yx`` the sub-pixel residual
    displacement of the frame's content relative to the stack, removed
    before stacking; ``center_yx`` the disc's centre of gravity.
    """

    accepted: bool
    reason: str = ""
    box: CropBox | None = None
    disc: CropBox | None = None
    center_yx: tuple[float, float] | None = None
    sharpness: float | None = None
    shift_yx: tuple[float, float] | None = None
    stacked: int = 0


def _fast_even(n: int) -> int:
    """The smallest even size >= n whose FFT is fast (factors 2, 3, 5)."""
    m = sp_fft.next_fast_len(n, real=False)
    while m % 2:
        m = sp_fft.next_fast_len(m + 1, real=False)
    return m


def _estimate_binned(reference: np.ndarray, moving: np.ndarray, factor: int) -> ShiftEstimate:
    """:func:`estimate_shift` on copies binned ``factor`` x ``factor`` (area mean)."""
    if factor <= 1:
        return estimate_shift(reference, moving)
    h, w = reference.shape[0] // factor, reference.shape[1] // factor

    def binned(img: np.ndarray) -> np.ndarray:
        img = np.ascontiguousarray(img[: h * factor, : w * factor], dtype=np.float32)
        return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)

    est = estimate_shift(binned(reference), binned(moving))
    dy, dx = est.shift_yx
    return ShiftEstimate(shift_yx=(dy * factor, dx * factor), peak=est.peak)


def compose_panels(panels: list[tuple[str, np.ndarray]], *, gap_px: int = 4) -> np.ndarray:
    """Images side by side, each under a text label, as one float32 image.

    Panels are scaled to the tallest one's height (bilinear) and must all be
    mono or all colour; labels are drawn in white on a black band.
    """
    height = max(img.shape[0] for _, img in panels)
    band = max(14, height // 12)
    scale = band / 30.0
    columns = []
    for i, (label, img) in enumerate(panels):
        img = np.asarray(img, dtype=np.float32)
        if img.shape[0] != height:
            width = max(1, round(img.shape[1] * height / img.shape[0]))
            img = cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)
        text = np.zeros((band, img.shape[1]), np.uint8)  # putText draws 8-bit only
        cv2.putText(text, label, (3, band - max(3, band // 5)), cv2.FONT_HERSHEY_SIMPLEX,
                    scale, 255, 1, cv2.LINE_AA)
        head = text.astype(np.float32) / 255.0
        if img.ndim == 3:
            head = np.repeat(head[:, :, None], img.shape[2], axis=2)
        columns.append(np.concatenate([head, np.clip(img, 0.0, None)], axis=0))
        if i + 1 < len(panels):
            columns.append(np.zeros((height + band, gap_px) + img.shape[2:], np.float32))
    return np.concatenate(columns, axis=1)


def apply_sharpening(image: np.ndarray, params: SharpenParams) -> np.ndarray:
    """Sharpen ``image`` (working data) as ``params`` say; float32 result."""
    if params.method == "chain":
        return apply_chain(
            image,
            params.steps or DEFAULT_CHAIN,
            luminance_only=params.luminance_only,
            dering=params.dering,
            highlight_knee=params.highlight_knee,
        )
    if params.method == "gaussian_laplacian":
        return gaussian_laplacian(image, sigma_px=params.sigma_px, amount=params.amount)
    if params.method == "kernel":
        return sharpen_kernel(image)
    return np.asarray(image, dtype=np.float32).copy()


class LiveStacker:
    """Rolling lucky-imaging stack, fed one normalised frame at a time.

    Parameters
    ----------
    params : PipelineParams
    crop_size_hw : tuple of int, optional
        Fixed crop size (default method). Taken from the first accepted frame
        when omitted; pass it when resuming a session.
    """

    def __init__(self, params: PipelineParams, *, crop_size_hw: tuple[int, int] | None = None):
        if params.buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {params.buffer_size}")
        self.params = params
        self.crop_size_hw = crop_size_hw
        self._stack: RollingStack | ResizingStack | None = None
        if params.method == "seed":
            self._stack = ResizingStack(params.buffer_size)
        self._scores: deque[float] = deque(maxlen=params.quality_history)
        self._sizes: deque[tuple[int, int]] = deque(maxlen=params.quality_history)
        self._first_crop: np.ndarray | None = None
        self._best_crop: np.ndarray | None = None
        self._best_score = -np.inf
        self._channels: int | None = None
        self.accepted = 0
        self.rejected = 0

    # -- public ----------------------------------------------------------------
    @property
    def stack_size(self) -> int:
        return 0 if self._stack is None else len(self._stack)

    def add(self, frame: Frame) -> FrameOutcome:
        """Run one frame through the pipeline; never raises for a bad frame.

        Returns
        -------
        FrameOutcome
            ``accepted=False`` with a reason for a frame that cannot be used.
        """
        try:
            if self.params.method == "seed":
                outcome = self._add_seed(frame)
            else:
                outcome = self._add_default(frame)
        except (FrameError, RegistrationError) as err:
            outcome = FrameOutcome(accepted=False, reason=str(err))
        if outcome.accepted:
            self.accepted += 1
        else:
            self.rejected += 1
        return outcome

    def replay(self, frame: Frame, outcome: FrameOutcome) -> None:
        """Re-insert a frame exactly as a recorded accepted ``outcome`` says.

        Used when resuming a session from the crop CSV: the frame is cropped
        at the recorded box and moved by the recorded shift, without deciding
        anything again, so the buffer is rebuilt as it was.
        """
        if not outcome.accepted or outcome.box is None:
            raise ValueError("only accepted outcomes with a crop box can be replayed")
        self._check_channels(frame)
        if outcome.sharpness is not None:
            self._scores.append(outcome.sharpness)
        if outcome.disc is not None:
            self._sizes.append((outcome.disc.height, outcome.disc.width))
        self._push(self.crop_for(frame, outcome), outcome.sharpness or 0.0)
        self.accepted += 1

    def crop_for(self, frame: Frame, outcome: FrameOutcome) -> np.ndarray:
        """The stacked crop of ``frame`` as a recorded accepted ``outcome`` made it."""
        if outcome.box is None:
            raise ValueError("the outcome has no crop box")
        if self.params.method == "seed":
            return extract_box(frame.data, outcome.box)
        if self.crop_size_hw is None:
            self.crop_size_hw = (outcome.box.height, outcome.box.width)
        dy, dx = outcome.shift_yx or (0.0, 0.0)
        return extract_shifted(frame.data, outcome.box, (-dy, -dx))

    def best_crop(self) -> np.ndarray | None:
        """The sharpest accepted (registered) crop seen so far."""
        return self._best_crop

    def comparison(self) -> np.ndarray | None:
        """Best single crop | stack | sharpened stack, side by side, labelled."""
        stacked = self.stacked()
        if stacked is None or self._best_crop is None:
            return None
        return compose_panels(
            [
                ("best frame", self._best_crop),
                (f"stack of {self.stack_count()}", stacked),
                ("sharpened", self.sharpen(stacked)),
            ]
        )

    def stack_count(self) -> int:
        """Frames in the current stack (selected frames of the buffer)."""
        if isinstance(self._stack, RollingStack):
            return self._stack.selected_count
        return self.stack_size

    def set_first_crop(self, crop: np.ndarray) -> None:
        """Set the session's first crop (shown in the comparison image)."""
        self._first_crop = np.array(crop, dtype=np.float32)

    def note_history(self, outcome: FrameOutcome) -> None:
        """Feed a recorded rejected outcome's score and size to the history."""
        if outcome.sharpness is not None:
            self._scores.append(outcome.sharpness)

    def stacked(self) -> np.ndarray | None:
        """The current stack (working data), or None before any frame."""
        if self._stack is None or len(self._stack) == 0:
            return None
        return self._stack.result()

    def sharpen(self, image: np.ndarray) -> np.ndarray:
        return apply_sharpening(image, self.params.sharpen)

    def first_crop(self) -> np.ndarray | None:
        """The first accepted (registered) crop of the session."""
        return self._first_crop

    # -- internals -------------------------------------------------------------
    def _register_bin(self) -> int:
        if self.params.register_bin > 0:
            return self.params.register_bin
        return 2 if self.crop_size_hw is not None and min(self.crop_size_hw) >= 192 else 1

    def _check_channels(self, frame: Frame) -> None:
        channels = 1 if frame.data.ndim == 2 else frame.data.shape[2]
        if self._channels is None:
            self._channels = channels
        elif channels != self._channels:
            kinds = {1: "mono", 3: "colour"}
            raise FrameError(
                f"frame is {kinds.get(channels, channels)} but the session is "
                f"{kinds.get(self._channels, self._channels)}"
            )

    def _push(self, crop: np.ndarray, score: float) -> None:
        if self._stack is None:
            p = self.params
            self._stack = RollingStack(
                p.buffer_size,
                crop.shape,
                keep=p.keep_count(),
                combine=p.combine,
                weighting=p.weighting,
                storage="float32"
                if p.buffer_size * crop.size * 4 <= p.float_buffer_limit_bytes
                else "uint16",
            )
        self._stack.push(crop, score)
        if self._first_crop is None:
            self._first_crop = crop.copy()
        if score > self._best_score or self._best_crop is None:
            self._best_score = score
            self._best_crop = crop.copy()

    def _add_seed(self, frame: Frame) -> FrameOutcome:
        self._check_channels(frame)
        lum = luminance(frame.data)
        loc = locate_planet(lum, margin=self.params.crop_margin, min_contrast=self.params.min_contrast)
        crop = extract_box(frame.data, loc.box)
        score = measure_sharpness(extract_box(lum, loc.box), blur_sigma_px=self.params.quality_blur_px)
        cy, cx = loc.disc.center_yx
        self._push(crop, score)
        return FrameOutcome(
            accepted=True,
            box=loc.box,
            disc=loc.disc,
            center_yx=(cy, cx),
            sharpness=score,
            stacked=len(self._stack) if self._stack is not None else 0,
        )

    def _add_default(self, frame: Frame) -> FrameOutcome:
        p = self.params
        self._check_channels(frame)
        lum = luminance(frame.data)
        found = find_disc(lum)
        if found.touches_edge:
            raise FrameError("planet clipped by the frame edge")
        disc_box = found.disc
        disc_lum = extract_box(lum, disc_box)
        saturated = float((disc_lum >= p.saturation_level).mean())
        if saturated > p.max_saturated_fraction:
            raise FrameError(f"saturated: {saturated:.1%} of the disc at white")
        center = found.center_yx
        size = (disc_box.height, disc_box.width)
        base = dict(disc=disc_box, center_yx=center)
        if self._sizes:
            ref_h = float(np.median([s[0] for s in self._sizes]))
            ref_w = float(np.median([s[1] for s in self._sizes]))
            change = max(abs(size[0] - ref_h) / ref_h, abs(size[1] - ref_w) / ref_w)
            if change > p.max_size_change:
                return FrameOutcome(
                    accepted=False,
                    reason=f"size jump: disc {size[1]}x{size[0]} px vs recent "
                    f"{ref_w:.0f}x{ref_h:.0f} px",
                    **base,
                )
        if self.crop_size_hw is None:
            h, w = expand_box(disc_box, p.crop_margin, multiple=2)
            # Sizes with small prime factors keep the registration FFTs fast.
            self.crop_size_hw = (_fast_even(h), _fast_even(w))
        box = box_around(center, self.crop_size_hw)
        crop_lum = extract_box(lum, box)
        score = measure_sharpness(crop_lum, blur_sigma_px=p.quality_blur_px)
        base.update(box=box, sharpness=score)
        if p.min_quality_ratio > 0 and len(self._scores) >= 5:
            median = float(np.median(self._scores))
            self._scores.append(score)
            if score < p.min_quality_ratio * median:
                return FrameOutcome(
                    accepted=False,
                    reason=f"low quality: sharpness {score:.3g} < {p.min_quality_ratio:g} "
                    f"x recent median {median:.3g}",
                    **base,
                )
        else:
            self._scores.append(score)
        shift = (0.0, 0.0)
        if p.register and self._stack is not None and len(self._stack) > 0:
            reference = luminance(self._stack.mean())
            est = _estimate_binned(reference, crop_lum, self._register_bin())
            if est.peak < p.min_peak:
                return FrameOutcome(
                    accepted=False,
                    reason=f"registration failed: correlation peak {est.peak:.2f} < {p.min_peak:g}",
                    **base,
                )
            limit = 0.25 * min(self.crop_size_hw)
            if max(abs(est.shift_yx[0]), abs(est.shift_yx[1])) > limit:
                return FrameOutcome(
                    accepted=False,
                    reason=f"registration failed: shift {est.shift_yx} exceeds {limit:.0f} px",
                    **base,
                )
            shift = est.shift_yx
        aligned = extract_shifted(frame.data, box, (-shift[0], -shift[1]))
        self._sizes.append(size)
        self._push(aligned, score)
        return FrameOutcome(
            accepted=True, shift_yx=shift, stacked=self._stack.selected_count, **base  # type: ignore[union-attr]
        )
