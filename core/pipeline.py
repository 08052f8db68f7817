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
  optional local de-warping with alignment points, a
  best-``keep``-of-``buffer_size`` selection and optional drizzle.

Alignment points (``PipelineParams.alignment_points``, on by default)
---------------------------------------------------------------------
Besides the stack of aligned crops, the default method keeps an *anchor*: a
mono :class:`RollingStack` of the same capacity, ``keep`` and weighting, fed
the same scores, so it holds (and selects) the same frames -- but each as its
luminance crop *globally* aligned (translation only). The anchor's mean is the
reference of the global registration and of the alignment points: the mean of
many globally aligned frames has the planet's true geometry (the warps average
out), whereas de-warping every frame onto a mean of earlier de-warped frames
lets the reference drift (measured -0.8 to -1.0 dB, ``bench/warp_eval.py``).
Once the anchor holds ``ap_min_frames`` frames, each new frame is de-warped:
a grid of alignment points is placed on the reference
(:func:`~luckystack.core.warp.place_alignment_points`) and prepared once
every ``ap_regrid_frames`` accepted frames (the reference changes by one frame
in ``buffer_size`` per frame), every point's shift is
measured starting from the global shift
(:func:`~luckystack.core.warp.estimate_local_shifts`), and the crop is
resampled from the full frame along the smooth field through them
(:func:`~luckystack.core.warp.dewarp`: one interpolation). The recorded
``shift_yx`` stays the global shift.

The AP step is a function of the frame, its crop box, its global shift, the
anchor's state and the frame's place in the session (which prepared reference)
only. :meth:`LiveStacker.replay` therefore rebuilds the anchor
from the recorded boxes and shifts and re-runs the step, and frames processed
after a resume are de-warped against the same reference as in an
uninterrupted run (the replayed frames themselves are de-warped against the
partly rebuilt anchor, so they may differ slightly until they leave the
buffer).

Memory: the anchor adds one mono crop per buffered frame (a third of the
colour buffer; uint16 above ``float_buffer_limit_bytes`` like the stack).

Drizzle (``PipelineParams.drizzle_scale > 1``)
----------------------------------------------
The stacked image is then the drizzle (:class:`~luckystack.core.warp.DrizzleStack`)
of the frames the rolling stack selects, ``drizzle_scale`` times larger. Each
buffered frame keeps its raw (unaligned) crop and its global shift and local
shifts; a frame entering the selection is drizzled in, one leaving it is
drizzled out again (the accumulation is linear), so the cost per frame does
not depend on the buffer size. Extra memory: one raw crop per buffered frame
(the size of the stack's own buffer) plus the float64 accumulators at the
output size; the displacement field is recomputed from the stored local
shifts (0.4 ms) rather than stored.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np

from luckystack.core import _stats
from luckystack.core.crop import (
    CropBox,
    DiscMeasurement,
    bin_area,
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
from luckystack.core.warp import (
    AlignmentGrid,
    DrizzleStack,
    LocalShifts,
    dewarp,
    displacement_field,
    estimate_local_shifts,
    PreparedReference,
    place_alignment_points,
    prepare_reference,
)

__all__ = [
    "SharpenParams",
    "PipelineParams",
    "FrameMeasure",
    "FrameOutcome",
    "LiveStacker",
    "LUCKY_CUT_REASON",
    "apply_sharpening",
    "compose_panels",
]

Method = Literal["default", "seed"]

#: Scores in the history before the lucky cut applies (a quantile of fewer is noise).
_LUCKY_MIN_HISTORY = 10
#: How the reason of a usable frame left out by the lucky cut begins.
LUCKY_CUT_REASON = "below the lucky cut"


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
    #: Lucky selection: register and stack only frames whose sharpness is
    #: among the best ``best_fraction`` of the last ``quality_history`` frames
    #: (1 = every frame). Frames below the cut are scored and recorded but not
    #: registered, which is where most of the work per frame goes.
    best_fraction: float = 0.25
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
    #: De-warp every frame locally with alignment points (needs ``register``).
    alignment_points: bool = True
    #: Side of an alignment point's patch, px (0 = auto: about the disc radius / 2).
    ap_box_px: int = 0
    #: Spacing of the alignment points, px (0 = auto: about the disc radius / 3).
    ap_step_px: int = 0
    #: De-warp only once the anchor (the reference) holds this many frames.
    ap_min_frames: int = 5
    #: Reject a point whose own shift is further than this from the global shift, px.
    ap_search_px: float = 4.0
    #: Gauss-Newton iterations of the alignment points' field per frame.
    ap_iterations: int = 3
    #: Drizzle the selected frames onto a grid this many times finer (1 = off).
    drizzle_scale: float = 1.0
    #: Drop size of the drizzle, fraction of an input pixel, in (0, 1].
    drizzle_pixfrac: float = 0.7
    #: Place the alignment points on the reference, and prepare it, again every
    #: this many accepted frames (periods counted from the session's first
    #: frame, so a resumed session uses the same references). The reference
    #: changes by one frame in ``buffer_size`` per frame; 4 saves ~4 ms per
    #: frame (r = 100 px) of the 1-every-frame cost, at the same quality
    #: (``bench/warp_eval.py``).
    ap_regrid_frames: int = 4
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

    def uses_alignment_points(self) -> bool:
        """True when frames are de-warped with alignment points."""
        return self.method == "default" and self.register and self.alignment_points

    def uses_drizzle(self) -> bool:
        """True when the stack is drizzled onto a finer grid."""
        return self.method == "default" and self.drizzle_scale > 1.0

    def ap_geometry(self, crop_size_hw: tuple[int, int]) -> tuple[int, int]:
        """``(box_px, step_px)`` of the alignment points for crops of ``crop_size_hw``.

        Auto (0) sizes follow the disc radius, estimated from the crop size
        and ``crop_margin`` (the crop is the disc plus the margin per side):
        box ``r / 2`` (>= 16), step ``r / 3`` (>= 8). Deriving them from the
        crop size, which the crop CSV records, makes them the same after a
        resume.
        """
        radius = min(crop_size_hw) / (2.0 * (1.0 + 2.0 * self.crop_margin))
        box = self.ap_box_px or max(16, int(round(radius / 2.0)))
        step = self.ap_step_px or max(8, int(round(radius / 3.0)))
        return box, step


@dataclass(frozen=True, slots=True)
class _Aligned:
    """One frame as pushed: its stacked crop, anchor crop and drizzle inputs."""

    crop: np.ndarray
    anchor: np.ndarray | None
    raw: np.ndarray | None  # unaligned crop at the box (drizzle only)
    shift_yx: tuple[float, float]
    grid: AlignmentGrid | None
    local: LocalShifts | None


class _DrizzleWindow:
    """Drizzle of exactly the frames a :class:`RollingStack` selects.

    Frames are keyed by the rolling stack's sequence numbers. After every push
    :meth:`sync` drizzles in the frames that entered the selection and out
    (negative weight) those that left it, then forgets frames no longer
    buffered.
    """

    def __init__(self, shape_hw: tuple[int, int], channels: int | None, params: PipelineParams):
        self.stack = DrizzleStack(
            shape_hw, scale=params.drizzle_scale, pixfrac=params.drizzle_pixfrac,
            channels=channels,
        )
        self.quality_weighted = params.weighting == "quality"
        # seq -> (raw crop, global shift, grid, local shifts, weight)
        self.frames: dict[
            int,
            tuple[np.ndarray, tuple[float, float], AlignmentGrid | None, LocalShifts | None, float],
        ] = {}
        self.active: set[int] = set()

    def store(self, seq: int, frame: _Aligned, score: float) -> None:
        if frame.raw is None:
            raise ValueError("a drizzled frame needs its raw crop")
        # The same weight as RollingStack's quality weighting.
        weight = float(max(score, 0.0)) + 1e-12 if self.quality_weighted else 1.0
        self.frames[seq] = (frame.raw, frame.shift_yx, frame.grid, frame.local, weight)

    def _apply(self, seq: int, sign: float) -> None:
        raw, shift, grid, local, weight = self.frames[seq]
        field = None
        if grid is not None and local is not None:
            # The field includes the global shift (it tends to it away from the points).
            field = displacement_field(grid, local)
            shift = (0.0, 0.0)
        if sign > 0:
            self.stack.add(raw, shift, field=field, weight=weight)
        else:
            self.stack.remove(raw, shift, field=field, weight=weight)

    def update(self, seq: int, grid: AlignmentGrid, local: LocalShifts) -> None:
        """Give frame ``seq`` its local shifts (drizzled out and in again if selected)."""
        raw, shift, _, _, weight = self.frames[seq]
        active = seq in self.active
        if active:
            self._apply(seq, -1.0)
        self.frames[seq] = (raw, shift, grid, local, weight)
        if active:
            self._apply(seq, 1.0)

    def sync(self, rolling: RollingStack) -> None:
        selected = set(rolling.selected_seqs())
        for seq in sorted(self.active - selected):
            self._apply(seq, -1.0)
        for seq in sorted(selected - self.active):
            self._apply(seq, 1.0)
        self.active = selected
        buffered = set(rolling.buffered_seqs())
        for seq in [s for s in self.frames if s not in buffered]:
            del self.frames[seq]

    def result(self) -> np.ndarray:
        return self.stack.result()


@dataclass(frozen=True, slots=True)
class _Pending:
    """A replayed frame whose de-warping waits until the anchor is rebuilt."""

    region: np.ndarray  # the frame around the box, edge-padded like BORDER_REPLICATE
    offset_yx: tuple[int, int]  # the box's origin in ``region``
    crop_lum: np.ndarray  # luminance at the box, unaligned
    shift_yx: tuple[float, float]


def _padded_region(data: np.ndarray, box: CropBox, margin: int) -> np.ndarray:
    """``data`` over ``box`` grown by ``margin``; outside the frame, its nearest edge pixel."""
    h, w = data.shape[:2]
    y0, x0, y1, x1 = box.y0 - margin, box.x0 - margin, box.y1 + margin, box.x1 + margin
    cy0, cx0, cy1, cx1 = max(y0, 0), max(x0, 0), min(y1, h), min(x1, w)
    if cy0 >= cy1 or cx0 >= cx1:
        raise FrameError("the crop box lies outside the frame")
    pads = [(cy0 - y0, y1 - cy1), (cx0 - x0, x1 - cx1)] + [(0, 0)] * (data.ndim - 2)
    return np.pad(data[cy0:cy1, cx0:cx1], pads, mode="edge").astype(np.float32, copy=False)


@dataclass(frozen=True, slots=True, eq=False)
class FrameMeasure:
    """What one frame tells on its own (:meth:`LiveStacker.measure`).

    Pure, so it may be computed on another thread (while the previous frame
    is stacked) and handed to :meth:`LiveStacker.add`, which then skips
    these steps with the same result. ``error`` is the FrameError the frame
    is rejected with (blank, clipped, saturated); ``box``, ``crop_lum`` and
    ``sharpness`` are None until the session's crop size is known.
    """

    params: PipelineParams
    lum: np.ndarray
    disc: DiscMeasurement | None = None
    error: FrameError | None = None
    crop_size_hw: tuple[int, int] | None = None
    box: CropBox | None = None
    crop_lum: np.ndarray | None = None
    sharpness: float | None = None


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


def _next_fast_len(n: int) -> int:
    """The smallest size >= ``n`` with no prime factor above 11.

    ``scipy.fft.next_fast_len(n, real=False)``: the sizes crops have always
    had (a resumed session keeps its crop size), without importing scipy.fft.
    """
    m = max(int(n), 1)
    while True:
        r = m
        for p in (2, 3, 5, 7, 11):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


def _fast_even(n: int) -> int:
    """The smallest even size >= n whose FFT is fast (factors 2, 3, 5, 7, 11)."""
    m = _next_fast_len(n)
    while m % 2:
        m = _next_fast_len(m + 1)
    return m


def _estimate_binned(reference: np.ndarray, moving: np.ndarray, factor: int) -> ShiftEstimate:
    """:func:`estimate_shift` on copies binned ``factor`` x ``factor`` (area mean)."""
    if factor <= 1:
        return estimate_shift(reference, moving)
    est = estimate_shift(
        bin_area(reference.astype(np.float32, copy=False), factor),
        bin_area(moving.astype(np.float32, copy=False), factor),
    )
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
        if params.uses_drizzle():
            if params.combine != "mean":
                raise ValueError(
                    f"drizzle stacks with the (weighted) mean; combine {params.combine!r} "
                    "cannot be drizzled"
                )
            if not 0 < params.drizzle_pixfrac <= 1:
                raise ValueError(f"drizzle_pixfrac must be in (0, 1], got {params.drizzle_pixfrac}")
        self.params = params
        self.crop_size_hw = crop_size_hw
        self._stack: RollingStack | ResizingStack | None = None
        #: Globally aligned luminance crops of the same frames: the reference.
        self._anchor: RollingStack | None = None
        #: The prepared AP reference and the ``ap_regrid_frames`` period it serves.
        self._ap_ref: tuple[int, PreparedReference] | None = None
        self._drizzle: _DrizzleWindow | None = None
        #: Replayed frames waiting to be de-warped (partial history; see replay()).
        self._pending: dict[int, _Pending] = {}
        self._replay_complete: bool | None = None
        self._best_seq = -1
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
    def replay_frames(self) -> int:
        """How many of the last accepted frames a resume should :meth:`replay`.

        ``buffer_size``; with alignment points ``2 * buffer_size +
        ap_regrid_frames``: each buffered frame was de-warped against the
        anchor of the ``buffer_size`` frames before it, as prepared at the
        start of its ``ap_regrid_frames`` period.
        """
        p = self.params
        if p.uses_alignment_points():
            return 2 * p.buffer_size + max(1, p.ap_regrid_frames)
        return p.buffer_size

    @property
    def stack_size(self) -> int:
        return 0 if self._stack is None else len(self._stack)

    def measure(self, frame: Frame) -> FrameMeasure | None:
        """The steps of :meth:`add` that depend on ``frame`` alone; None for ``seed``.

        Reads the stacker's crop size and changes nothing: it may run on
        another thread while :meth:`add` stacks the frame before.
        """
        p = self.params
        if p.method == "seed":
            return None
        lum = luminance(frame.data)
        try:
            found = find_disc(lum)
            if found.touches_edge:
                raise FrameError("planet clipped by the frame edge")
            disc_lum = extract_box(lum, found.disc)
            saturated = float((disc_lum >= p.saturation_level).mean())
            if saturated > p.max_saturated_fraction:
                raise FrameError(f"saturated: {saturated:.1%} of the disc at white")
        except FrameError as err:
            return FrameMeasure(p, lum, error=err)
        size = self.crop_size_hw
        if size is None:
            return FrameMeasure(p, lum, found)
        return FrameMeasure(p, lum, found, None, size, *self._crop_scored(lum, found, size))

    def _crop_scored(
        self, lum: np.ndarray, found: DiscMeasurement, size_hw: tuple[int, int]
    ) -> tuple[CropBox, np.ndarray, float]:
        """The crop box of ``size_hw`` around the disc, its luminance and sharpness."""
        box = box_around(found.center_yx, size_hw)
        crop_lum = extract_box(lum, box)
        return box, crop_lum, measure_sharpness(crop_lum, blur_sigma_px=self.params.quality_blur_px)

    def add(self, frame: Frame, measure: FrameMeasure | None = None) -> FrameOutcome:
        """Run one frame through the pipeline; never raises for a bad frame.

        Parameters
        ----------
        frame : Frame
        measure : FrameMeasure, optional
            :meth:`measure` of this frame, computed ahead; the same outcome
            as without it.

        Returns
        -------
        FrameOutcome
            ``accepted=False`` with a reason for a frame that cannot be used.
        """
        self._settle()
        try:
            if self.params.method == "seed":
                outcome = self._add_seed(frame)
            else:
                if measure is None or measure.params is not self.params:
                    measure = self.measure(frame)
                outcome = self._add_default(frame, measure)
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
        at the recorded box and moved by the recorded (global) shift, without
        deciding anything again, so the buffer is rebuilt as it was.

        With alignment points the anchor is rebuilt exactly from the same
        boxes and shifts, so frames added afterwards are registered and
        de-warped as in an uninterrupted run. The replayed crops themselves
        are de-warped again, deterministically:

        * a frame replayed after the anchor holds ``buffer_size`` frames, or
          when the replay started at the session's first frame (its recorded
          ``stacked`` is 1), against the anchor as rebuilt so far: that is the
          anchor :meth:`add` used, so the crop is the same (to rounding).
          Replaying the last :attr:`replay_frames` accepted frames (after
          :meth:`start_at` with the number accepted before them) thus
          rebuilds the whole state: the frames still buffered at the end were
          de-warped against references prepared at the same points as in the
          uninterrupted run;
        * a frame replayed earlier (the anchor it was de-warped against is
          not rebuilt) once the replay is over (at the next :meth:`add` or
          :meth:`stacked`), against the rebuilt anchor without itself, if it
          is still buffered; frames that were not de-warped (recorded
          ``stacked`` at most ``ap_min_frames``) stay so. Such crops differ
          from the uninterrupted run's by the difference of the references,
          until they leave the buffer.
        """
        if not outcome.accepted or outcome.box is None:
            raise ValueError("only accepted outcomes with a crop box can be replayed")
        self._check_channels(frame)
        if outcome.sharpness is not None:
            self._scores.append(outcome.sharpness)
        if outcome.disc is not None:
            self._sizes.append((outcome.disc.height, outcome.disc.width))
        score = outcome.sharpness or 0.0
        if self.params.method == "seed":
            self._push(_Aligned(self.crop_for(frame, outcome), None, None, (0.0, 0.0), None, None),
                       score)
        else:
            p = self.params
            if self.crop_size_hw is None:
                self.crop_size_hw = (outcome.box.height, outcome.box.width)
            shift = outcome.shift_yx or (0.0, 0.0)
            if not p.uses_alignment_points():
                self._push(self._align(frame, None, outcome.box, shift), score)
            else:
                if self._replay_complete is None:
                    # The first frame of the session had 1 frame in the stack after it.
                    self._replay_complete = self._stack is not None or (
                        outcome.stacked == 1 and p.keep_count() > 1
                    )
                lum = luminance(frame.data)
                anchor_full = self._anchor is not None and len(self._anchor) >= p.buffer_size
                if self._replay_complete or anchor_full:
                    # The anchor is the one add() used for this frame: the same step, exactly.
                    self._push(self._align(frame, lum, outcome.box, shift), score)
                else:
                    self._replay_deferred(frame, lum, outcome, shift, score)
        self.accepted += 1

    def _replay_deferred(
        self,
        frame: Frame,
        lum: np.ndarray,
        outcome: FrameOutcome,
        shift: tuple[float, float],
        score: float,
    ) -> None:
        """Replay with the global shift now; keep what de-warping needs for later."""
        p = self.params
        box = outcome.box
        assert box is not None
        back = (-shift[0], -shift[1])
        anchor = extract_shifted(lum, box, back)
        crop = anchor if frame.data.ndim == 2 else extract_shifted(frame.data, box, back)
        raw = extract_box(frame.data, box) if p.uses_drizzle() else None
        seq = self._stack.next_seq if isinstance(self._stack, RollingStack) else 0
        self._push(_Aligned(crop, anchor, raw, shift, None, None), score)
        # Was it de-warped when it was added? Only if the anchor held ap_min_frames
        # then: the stack held min(frames before it + 1, keep) after it.
        dewarped = outcome.stacked >= p.keep_count() or outcome.stacked - 1 >= p.ap_min_frames
        if dewarped:
            margin = int(np.ceil(max(abs(shift[0]), abs(shift[1])) + p.ap_search_px)) + 8
            self._pending[seq] = _Pending(
                region=_padded_region(frame.data, box, margin),
                offset_yx=(margin, margin),
                crop_lum=extract_box(lum, box),
                shift_yx=shift,
            )

    def _settle(self) -> None:
        """De-warp the replayed frames that wait for the rebuilt anchor."""
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        stack, anchor = self._stack, self._anchor
        if not isinstance(stack, RollingStack) or anchor is None:
            return
        buffered = set(stack.buffered_seqs())
        for seq in sorted(pending):
            if seq not in buffered:
                continue
            item = pending[seq]
            found = self._local_shifts(
                anchor.mean_without(seq), item.crop_lum, item.shift_yx, cached=False
            )
            if found is None:
                continue  # stays globally aligned
            grid, local = found
            crop = dewarp(item.region, displacement_field(grid, local), offset_yx=item.offset_yx)
            stack.replace(seq, crop)
            if self._drizzle is not None:
                self._drizzle.update(seq, grid, local)
            if seq == self._best_seq:
                self._best_crop = crop.copy()

    def crop_for(self, frame: Frame, outcome: FrameOutcome) -> np.ndarray:
        """The crop of ``frame`` at a recorded accepted ``outcome``'s box and shift.

        This is the stacked crop without alignment points (the global shift
        only); it is exact for the session's first frame, which is never
        de-warped (the anchor is empty then).
        """
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
        self._settle()
        return self._best_crop

    def comparison(self) -> np.ndarray | None:
        """Best single crop | stack | sharpened stack, side by side, labelled."""
        stacked = self.stacked()  # settles replayed frames first
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

    def note_history(self, outcome: FrameOutcome) -> None:
        """Feed a recorded rejected outcome's score and size to the history."""
        if outcome.sharpness is not None:
            self._scores.append(outcome.sharpness)

    def stacked(self) -> np.ndarray | None:
        """The current stack (working data), or None before any frame.

        With drizzle it is ``drizzle_scale`` times the crop size.
        """
        if self._stack is None or len(self._stack) == 0:
            return None
        self._settle()
        if self._drizzle is not None:
            return self._drizzle.result()
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

    def _rolling(self, shape: tuple[int, ...]) -> RollingStack:
        p = self.params
        size = int(np.prod(shape))
        return RollingStack(
            p.buffer_size,
            shape,
            keep=p.keep_count(),
            combine=p.combine,
            weighting=p.weighting,
            storage="float32" if p.buffer_size * size * 4 <= p.float_buffer_limit_bytes else "uint16",
        )

    def _reference(self) -> np.ndarray:
        """Luminance reference of the registration (and the alignment points)."""
        if self._anchor is not None:
            return self._anchor.mean()
        assert self._stack is not None
        return luminance(self._stack.mean())

    def _prepared(self, reference: np.ndarray, period: int | None) -> PreparedReference:
        """Alignment points placed on ``reference``, prepared; cached for ``period``.

        ``period`` is ``accepted // ap_regrid_frames`` of the frame being
        aligned: the first frame of a period prepares the anchor's mean as it
        is then, the others reuse it. None prepares ``reference`` uncached.
        """
        if period is not None and self._ap_ref is not None:
            cached_period, prep = self._ap_ref
            if cached_period == period and prep.reference.shape == reference.shape:
                return prep
        assert self.crop_size_hw is not None
        box, step = self.params.ap_geometry(self.crop_size_hw)
        grid = place_alignment_points(reference, box_px=box, step_px=step)
        prep = prepare_reference(reference, grid)
        if period is not None:
            self._ap_ref = (period, prep)
        return prep

    def start_at(self, accepted_before: int) -> None:
        """Count ``accepted_before`` frames as accepted before the first replayed one.

        A resumed session calls this before :meth:`replay`: the prepared AP
        references are renewed every ``ap_regrid_frames`` accepted frames
        counted from the session's first frame.
        """
        if accepted_before < 0:
            raise ValueError(f"accepted_before must be >= 0, got {accepted_before}")
        self.accepted = int(accepted_before)

    def _align(
        self,
        frame: Frame,
        lum: np.ndarray | None,
        box: CropBox,
        shift: tuple[float, float],
        reference: np.ndarray | None = None,
    ) -> _Aligned:
        """The crops of ``frame`` at ``box`` with its content moved back by ``shift``.

        With alignment points (and an anchor of ``ap_min_frames``), the
        stacked crop is also de-warped against ``reference`` (default: the
        anchor's mean), in one interpolation from the full frame.
        """
        p = self.params
        back = (-shift[0], -shift[1])
        raw = extract_box(frame.data, box) if p.uses_drizzle() else None
        if not p.uses_alignment_points():
            return _Aligned(extract_shifted(frame.data, box, back), None, raw, shift, None, None)
        assert lum is not None
        anchor = extract_shifted(lum, box, back)
        if self._anchor is not None and len(self._anchor) >= max(1, p.ap_min_frames):
            if reference is None:
                reference = self._anchor.mean()
            found = self._local_shifts(reference, extract_box(lum, box), shift)
            if found is not None:
                grid, local = found
                field_yx = displacement_field(grid, local)
                crop = dewarp(frame.data, field_yx, offset_yx=(box.y0, box.x0))
                return _Aligned(crop, anchor, raw, shift, grid, local)
        crop = anchor if frame.data.ndim == 2 else extract_shifted(frame.data, box, back)
        return _Aligned(crop, anchor, raw, shift, None, None)

    def _local_shifts(
        self,
        reference: np.ndarray,
        crop_lum: np.ndarray,
        shift: tuple[float, float],
        *,
        cached: bool = True,
    ) -> tuple[AlignmentGrid, LocalShifts] | None:
        """Alignment points on ``reference`` and their shifts; None if the fit fails.

        ``cached``: ``reference`` is the anchor's mean before this frame, whose
        prepared version is shared by the frames of one ``ap_regrid_frames``
        period (see :meth:`_prepared`).
        """
        period = self.accepted // max(1, self.params.ap_regrid_frames) if cached else None
        prep = self._prepared(reference, period)
        grid = prep.grid
        try:
            local = estimate_local_shifts(
                prep, crop_lum, grid, initial_yx=shift, search_px=self.params.ap_search_px,
                iterations=self.params.ap_iterations,
            )
        except np.linalg.LinAlgError:  # a degenerate fit: keep the global alignment
            return None
        return grid, local

    def _push(self, aligned: _Aligned, score: float) -> None:
        crop = aligned.crop
        if self._stack is None:
            p = self.params
            self._stack = self._rolling(crop.shape)
            if aligned.anchor is not None:
                self._anchor = self._rolling(aligned.anchor.shape)
            if p.uses_drizzle():
                channels = crop.shape[2] if crop.ndim == 3 else None
                self._drizzle = _DrizzleWindow(crop.shape[:2], channels, p)
        if self._anchor is not None and aligned.anchor is not None:
            self._anchor.push(aligned.anchor, score)
        seq = -1
        if isinstance(self._stack, RollingStack):
            seq = self._stack.next_seq
            self._stack.push(crop, score)
            if self._drizzle is not None:
                self._drizzle.store(seq, aligned, score)
                self._drizzle.sync(self._stack)
        else:
            self._stack.push(crop, score)
        if self._pending and isinstance(self._stack, RollingStack):
            buffered = set(self._stack.buffered_seqs())
            for old in [k for k in self._pending if k not in buffered]:
                del self._pending[old]
        if self._first_crop is None:
            self._first_crop = crop.copy()
        if score > self._best_score or self._best_crop is None:
            self._best_score = score
            self._best_crop = crop.copy()
            self._best_seq = seq

    def _add_seed(self, frame: Frame) -> FrameOutcome:
        self._check_channels(frame)
        lum = luminance(frame.data)
        loc = locate_planet(lum, margin=self.params.crop_margin, min_contrast=self.params.min_contrast)
        crop = extract_box(frame.data, loc.box)
        score = measure_sharpness(extract_box(lum, loc.box), blur_sigma_px=self.params.quality_blur_px)
        cy, cx = loc.disc.center_yx
        self._push(_Aligned(crop, None, None, (0.0, 0.0), None, None), score)
        return FrameOutcome(
            accepted=True,
            box=loc.box,
            disc=loc.disc,
            center_yx=(cy, cx),
            sharpness=score,
            stacked=len(self._stack) if self._stack is not None else 0,
        )

    def _quality_rejection(self, score: float) -> str | None:
        """Why a frame scoring ``score`` is not stacked, judged on the history before it.

        Two tests on the last ``quality_history`` scores: a frame far below
        the median (``min_quality_ratio``) is a bad frame; one below the
        ``1 - best_fraction`` quantile is merely not lucky enough. Both need
        a few frames of history (5 and ``_LUCKY_MIN_HISTORY``) so that a
        session's first frames fill the stack at once.
        """
        p = self.params
        n = len(self._scores)
        if n < 5:
            return None
        history = np.fromiter(self._scores, np.float64, n)
        if p.min_quality_ratio > 0:
            median = _stats.median(history)
            if score < p.min_quality_ratio * median:
                return (
                    f"low quality: sharpness {score:.3g} < {p.min_quality_ratio:g} "
                    f"x recent median {median:.3g}"
                )
        if p.best_fraction < 1 and n >= _LUCKY_MIN_HISTORY:
            (cut,) = _stats.quantiles(history, (1.0 - p.best_fraction,))
            if score < cut:
                return (
                    f"{LUCKY_CUT_REASON}: sharpness {score:.3g} < {cut:.3g}, the best "
                    f"{p.best_fraction:.0%} of the last {n} frames"
                )
        return None

    def _add_default(self, frame: Frame, measure: FrameMeasure) -> FrameOutcome:
        p = self.params
        self._check_channels(frame)
        if measure.error is not None:
            raise measure.error
        lum, found = measure.lum, measure.disc
        assert found is not None
        disc_box = found.disc
        center = found.center_yx
        size = (disc_box.height, disc_box.width)
        base = dict(disc=disc_box, center_yx=center)
        if self._sizes:
            hw = np.array(self._sizes)
            ref_h, ref_w = _stats.median(hw[:, 0]), _stats.median(hw[:, 1])
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
        if measure.crop_size_hw == self.crop_size_hw and measure.box is not None:
            box, crop_lum, score = measure.box, measure.crop_lum, measure.sharpness
        else:  # measured before the crop size was known
            box, crop_lum, score = self._crop_scored(lum, found, self.crop_size_hw)
        base.update(box=box, sharpness=score)
        rejection = self._quality_rejection(score)
        self._scores.append(score)
        if rejection is not None:
            return FrameOutcome(accepted=False, reason=rejection, **base)
        shift = (0.0, 0.0)
        reference = None
        if p.register and self._stack is not None and len(self._stack) > 0:
            reference = self._reference()
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
        aligned = self._align(frame, lum, box, shift, reference)
        self._sizes.append(size)
        self._push(aligned, score)
        return FrameOutcome(
            accepted=True, shift_yx=shift, stacked=self._stack.selected_count, **base  # type: ignore[union-attr]
        )
