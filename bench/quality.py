#!/usr/bin/env python
"""Quality benchmark: luckystack's stacks scored against a simulated truth.

Simulates capture sessions with known truth (:mod:`luckystack.core.simulate`),
runs the pipeline variants on them, and scores the final image of each
against the noise-free, unblurred planet with PSNR and SSIM after
registration and a linear intensity fit. See ``bench/README.md``.

Usage::

    .venv/bin/python bench/quality.py [--quick] [--seed N] [--out bench/results/quality.md]

Variants
--------
single frame
    Median score of up to 15 evenly spaced "good" frames (not the last
    frame: one frame's seeing is too random to be "typical").
seed
    ``preset = "seed"`` with ``buffer_size = 20`` (the origin script).
default
    ``preset = "default"`` with ``buffer_size = 20``: the lucky cut
    (``[quality] best_fraction = 0.25``: the best quarter of the last 50
    frames are registered and buffered), alignment points on; the default.
default, every frame
    The same with ``best_fraction = 1``: every usable frame buffered (the
    pipeline before the lucky cut).
default long
    ``preset = "default"`` with ``buffer_size = 200, keep = 20``.
default, no AP / default long, no AP
    The same with ``[align] alignment_points = false`` (global registration
    only, the pipeline before issue 10).
oracle live
    Mean of the last 20 "good" frames, each moved back by its true shift
    (``scipy.ndimage.shift``, order 3). The ceiling for ``default, every frame``.
oracle lucky
    The 20 truly sharpest good frames of the last 80 (20 / best_fraction),
    at their true shifts. The ceiling for ``default``.
oracle long
    The 20 truly sharpest "good" frames of the last 200, at their true
    shifts. The ceiling for ``default long``.
PSS
    PlanetarySystemStacker (optional; when its executable is on ``PATH``) on
    the last 200 frames of the session, ``-m Planet --stack_number 20``:
    the same frames and the same count as ``default long``.

Every result is the state at the END of the session.

The report ends with the CPU time per frame of ``LiveStacker.add`` on
640x480 frames with a planet of radius 100 px, with and without alignment
points (``time.process_time``, one thread; ``--no-timing`` skips it).
"""

from __future__ import annotations

import os

if __name__ == "__main__":
    # Sessions run in parallel processes: one BLAS thread each (must be set
    # before numpy is imported; not done when a test imports this module).
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import argparse
import dataclasses
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage, optimize

from luckystack.core.crop import CropBox, disc_centroid, extract_box
from luckystack.core.errors import FrameError, RegistrationError
from luckystack.core.frame import normalise_frame
from luckystack.core.pipeline import (
    FrameOutcome,
    LiveStacker,
    PipelineParams,
    apply_sharpening,
)
from luckystack.core.register import estimate_shift
from luckystack.core.simulate import (
    PlanetModel,
    SeeingModel,
    SimulatedSession,
    render_planet_sprite,
    simulate_frame,
    simulate_session,
)
from luckystack.daemon.config import load_settings, pipeline_params

# --------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------

#: Frames stacked by every "best of" variant, and the live window.
KEEP = 20
LIVE_BUFFER = 20
LONG_BUFFER = 200

#: Jupiter-like planet, 120 px across (about 0.35"/px for a 42" Jupiter).
MODEL = PlanetModel(radius_px=60.0)

#: The atmosphere and camera shared by all scenarios (see bench/README.md).
SEEING = SeeingModel(
    jitter_px=2.5,  # RMS tip-tilt per axis, frame to frame
    jitter_correlation=0.5,  # consecutive frames at ~100 fps are correlated
    drift_px_per_frame=(0.02, 0.04),  # imperfect tracking: 8 x 16 px over 400 frames
    sigma_min_px=0.8,  # PSF sigma of the luckiest frames (FWHM 1.9 px)
    sigma_max_px=3.0,  # ... and of the worst (FWHM 7 px)
    lucky_fraction=0.10,  # 10 % of frames within 10 % of the best sigma
    sigma_correlation=0.5,  # seeing comes in bursts
    warp_px=0.7,  # anisoplanatic local distortion, RMS per axis
    photons_at_white=500.0,  # high-gain 8-bit: ~300 e- on the zones, SNR ~ 17 per pixel
    read_noise=3.0,  # e- RMS
    background=0.02,  # sky glow, fraction of white
)


@dataclass(frozen=True)
class Scenario:
    """One kind of simulated session."""

    name: str
    n_frames: int
    bad_frames: dict[str, int]
    bit_depth: int = 8
    shape: tuple[int, int] = (240, 320)
    model: PlanetModel = MODEL
    seeing: SeeingModel = SEEING
    description: str = ""


def scenarios(quick: bool) -> dict[str, Scenario]:
    """The benchmark's scenarios; ``quick`` shortens them."""
    live_n, long_n = (30, 120) if quick else (60, 400)
    return {
        "live": Scenario(
            "live",
            live_n,
            {"black": 2, "clipped": 2, "blurred": 2},
            description=f"{live_n} frames, 8-bit, 2 black + 2 clipped + 2 blurred",
        ),
        "long": Scenario(
            "long",
            long_n,
            {"black": 3, "clipped": 3, "blurred": 3},
            description=f"{long_n} frames, 8-bit, 3 black + 3 clipped + 3 blurred",
        ),
        "live16": Scenario(
            "live16",
            live_n,
            {"black": 2, "clipped": 2, "blurred": 2},
            bit_depth=16,
            seeing=dataclasses.replace(SEEING, photons_at_white=4000.0),
            description="as live but 16-bit at low gain (4000 e- at white, SNR ~ 50 per pixel)",
        ),
        "live0": Scenario(
            "live0",
            live_n,
            {"black": 2, "clipped": 2, "blurred": 2},
            seeing=dataclasses.replace(SEEING, warp_px=0.0),
            description="as live but without local warping (warp_px = 0: nothing for "
            "alignment points to correct)",
        ),
    }


# --------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # 11x11 window, as Wang et al. and scikit-image
SSIM_K1, SSIM_K2 = 0.01, 0.03
WINDOW_MARGIN_PX = 8


def ssim(x: np.ndarray, y: np.ndarray, *, data_range: float) -> float:
    """Mean structural similarity of two same-shape images (Wang et al. 2004).

    Gaussian weighting (sigma 1.5, truncated at 3.5 sigma: an 11x11 window),
    ``K1 = 0.01``, ``K2 = 0.03``, population (not sample) covariances, and the
    mean taken over the pixels whose window lies inside the image (a border
    of 5 px dropped), which is what ``skimage.metrics.structural_similarity(
    x, y, data_range=L, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False)`` computes.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if x.shape != y.shape:
        raise ValueError(f"images must have the same shape, got {x.shape} and {y.shape}")

    def blur(a: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(a, SSIM_SIGMA, truncate=SSIM_TRUNCATE, mode="reflect")

    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    ux, uy = blur(x), blur(y)
    vx = blur(x * x) - ux * ux
    vy = blur(y * y) - uy * uy
    vxy = blur(x * y) - ux * uy
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    pad = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    return float(s[pad:-pad, pad:-pad].mean())


@dataclass(frozen=True)
class Score:
    """Score of one result image against the truth."""

    psnr: float
    ssim: float
    offset_yx: tuple[float, float]  # truth coordinates = result coordinates + offset
    coverage: float  # share of the scoring window inside the result


class TruthScorer:
    """Registers a result to the truth and scores it on a fixed window.

    The window is the truth's disc bounding box plus ``WINDOW_MARGIN_PX``,
    in truth (frame) coordinates; every variant is scored on it. The truth
    at a sub-pixel offset is rendered exactly from the session's planet
    sprite (what the frames were rendered from), so results are never
    resampled for scoring.
    """

    def __init__(self, session: SimulatedSession, model: PlanetModel, seed: int) -> None:
        planet_seed = int(np.random.SeedSequence(seed).spawn(4)[0].generate_state(1)[0])
        self.sprite = render_planet_sprite(model, seed=planet_seed)
        self.truth = np.asarray(session.truth, np.float64)
        self.center_yx = session.center_yx
        rows = np.flatnonzero(self.truth.max(axis=1) > 0)
        cols = np.flatnonzero(self.truth.max(axis=0) > 0)
        m = WINDOW_MARGIN_PX
        self.window = CropBox(
            int(rows[0]) - m, int(cols[0]) - m, int(rows[-1]) + 1 + m, int(cols[-1]) + 1 + m
        )
        reference = self.render((0.0, 0.0))
        self.peak = float(reference.max())
        self.data_range = float(reference.max() - reference.min())
        self.truth_centroid = disc_centroid(self.truth.astype(np.float32))
        rendered = np.abs(reference - extract_box(self.truth, self.window))
        self.render_error = float(rendered.mean())

    def render(self, frac_yx: tuple[float, float]) -> np.ndarray:
        """Truth over the window, its content moved by ``frac_yx`` pixels."""
        w = self.window
        cy, cx = self.center_yx
        return simulate_frame(
            self.sprite,
            (w.height, w.width),
            center_yx=(cy - w.y0, cx - w.x0),
            shift_yx=(float(frac_yx[0]), float(frac_yx[1])),
            sigma_px=0.0,
            seeing=SeeingModel(background=0.0),
        )

    def _pair(self, image: np.ndarray, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """(result window, truth window, coverage) for ``offset`` (truth = result + offset)."""
        w = self.window
        start = np.array([w.y0, w.x0], np.float64) - offset
        r0, c0 = (int(v) for v in np.rint(start))
        frac = start - (r0, c0)
        box = CropBox(r0, c0, r0 + w.height, c0 + w.width)
        inside = box.clipped(image.shape[:2])
        coverage = max(inside.height, 0) * max(inside.width, 0) / (w.height * w.width)
        return extract_box(image, box), self.render((frac[0], frac[1])), coverage

    @staticmethod
    def _fit(result: np.ndarray, truth: np.ndarray) -> np.ndarray:
        """Least-squares ``a * result + b`` against ``truth``."""
        r = result - result.mean()
        var = float((r * r).sum())
        a = float((r * (truth - truth.mean())).sum()) / var if var > 0 else 0.0
        return a * r + truth.mean()

    def _mse(self, image: np.ndarray, offset: np.ndarray) -> float:
        result, truth, _ = self._pair(image, offset)
        return float(np.mean((self._fit(result, truth) - truth) ** 2))

    def register(self, image: np.ndarray) -> np.ndarray:
        """Offset of ``image`` on the truth grid (truth coords = image coords + offset).

        Coarse: brightness-weighted disc centroids. Then :func:`estimate_shift`
        against the truth cut at that integer offset. Then a Nelder-Mead
        search for the offset minimising the mean squared error after the
        linear intensity fit (each variant gets its best placement).
        """
        coarse = np.subtract(self.truth_centroid, disc_centroid(image.astype(np.float32)))
        oy, ox = (int(v) for v in np.rint(coarse))
        h, w = image.shape[:2]
        ref = extract_box(self.truth, CropBox(oy, ox, oy + h, ox + w))
        try:
            est = estimate_shift(ref, image)
            offset = np.array([oy - est.shift_yx[0], ox - est.shift_yx[1]])
        except (FrameError, RegistrationError):
            offset = coarse
        if np.max(np.abs(offset - coarse)) > 10:  # correlation lost: trust the centroid
            offset = coarse
        scale = self._mse(image, offset) or 1.0
        simplex = offset + np.array([[0.0, 0.0], [0.25, 0.0], [0.0, 0.25]])
        best = optimize.minimize(
            lambda o: self._mse(image, o) / scale,
            offset,
            method="Nelder-Mead",
            options={"initial_simplex": simplex, "xatol": 5e-3, "fatol": 1e-5, "maxiter": 200},
        )
        return np.asarray(best.x, np.float64)

    def score(self, image: np.ndarray, *, offset_yx: tuple[float, float] | None = None) -> Score:
        """Register, fit ``a * image + b`` to the truth, then PSNR and SSIM on the window.

        ``offset_yx`` skips the registration (e.g. a sharpened copy of an
        image already registered: sharpening does not move the content).
        """
        image = np.asarray(image, np.float64)
        if image.ndim != 2:
            raise ValueError(f"expected a 2-D image, got shape {image.shape}")
        offset = self.register(image) if offset_yx is None else np.asarray(offset_yx, np.float64)
        result, truth, coverage = self._pair(image, offset)
        fitted = self._fit(result, truth)
        mse = float(np.mean((fitted - truth) ** 2))
        psnr = 10.0 * math.log10(self.peak**2 / mse) if mse > 0 else float("inf")
        return Score(
            psnr=psnr,
            ssim=ssim(fitted, truth, data_range=self.data_range),
            offset_yx=(float(offset[0]), float(offset[1])),
            coverage=coverage,
        )


# --------------------------------------------------------------------------
# Variants
# --------------------------------------------------------------------------


def preset_params(preset: str, **overrides: object) -> PipelineParams:
    """The daemon's exact preset, with fields overridden."""
    params = pipeline_params(load_settings(preset=preset))
    return dataclasses.replace(params, **overrides) if overrides else params


def _sharpen_params() -> object:
    """The daemon's sharpening (one ``[sharpen]`` section serves both presets)."""
    return preset_params("default").sharpen


SHARPEN = _sharpen_params()


@dataclass
class PipelineRun:
    """A pipeline fed the whole session, and what it decided."""

    image: np.ndarray
    outcomes: list[FrameOutcome]
    stacked_frames: list[int] | None  # frame indices in the final stack, if known
    seconds: float


def run_pipeline(frames: list, params: PipelineParams) -> PipelineRun:
    stacker = LiveStacker(params)
    start = time.perf_counter()
    outcomes = [stacker.add(f) for f in frames]
    seconds = time.perf_counter() - start
    image = stacker.stacked()
    if image is None:
        raise RuntimeError("the pipeline accepted no frame")
    accepted = [i for i, o in enumerate(outcomes) if o.accepted]
    return PipelineRun(image, outcomes, _stacked_frames(stacker, accepted), seconds)


def _stacked_frames(stacker: LiveStacker, accepted: list[int]) -> list[int] | None:
    """Frame indices in the final stack (peeks at the stack's bookkeeping)."""
    if stacker.params.method == "seed":
        return accepted[-stacker.params.buffer_size :]
    stack = getattr(stacker, "_stack", None)
    try:
        slots = stack.selected_slots()  # type: ignore[union-attr]
        seqs = stack._seq[slots]  # type: ignore[union-attr]  # push order = acceptance order
        return sorted(accepted[int(s)] for s in seqs)
    except (AttributeError, IndexError, TypeError):
        return None


def stack_at_true_shifts(
    frames: list,
    session: SimulatedSession,
    indices: list[int] | np.ndarray,
    *,
    kernel: str = "spline3",
) -> np.ndarray:
    """Mean of ``frames[indices]`` each moved back by its true shift (full frame)."""
    acc = None
    count = 0
    for i in indices:
        shift = session.shifts_yx[i]
        if not np.all(np.isfinite(shift)):
            continue  # a black frame has no planet to place
        data = frames[i].data
        if kernel == "spline3":
            moved = ndimage.shift(data.astype(np.float64), -shift, order=3, mode="nearest")
        else:  # the pipeline's interpolation (OpenCV bicubic, as extract_shifted)
            m = np.array([[1.0, 0.0, shift[1]], [0.0, 1.0, shift[0]]])
            moved = cv2.warpAffine(
                data,
                m,
                (data.shape[1], data.shape[0]),
                flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                borderMode=cv2.BORDER_REPLICATE,
            ).astype(np.float64)
        acc = moved if acc is None else acc + moved
        count += 1
    if acc is None:
        raise RuntimeError("no frame to stack")
    return acc / count


def good_indices(session: SimulatedSession, lo: int = 0) -> np.ndarray:
    """Indices of the "good" frames from ``lo`` on."""
    kinds = np.asarray(session.kinds)
    return np.flatnonzero((kinds == "good") & (np.arange(kinds.size) >= lo))


def oracle_live(session: SimulatedSession) -> np.ndarray:
    """The last ``LIVE_BUFFER`` good frames."""
    return good_indices(session)[-LIVE_BUFFER:]


def oracle_lucky(session: SimulatedSession, fraction: float) -> np.ndarray:
    """The ``LIVE_BUFFER`` truly sharpest good frames of the last ``LIVE_BUFFER / fraction``."""
    span = int(round(LIVE_BUFFER / fraction))
    good = good_indices(session, lo=max(0, len(session.frames) - span))
    order = np.argsort(session.sigmas_px[good], kind="stable")
    return np.sort(good[order[:LIVE_BUFFER]])


def oracle_long(session: SimulatedSession) -> np.ndarray:
    """The ``KEEP`` truly sharpest good frames of the last ``LONG_BUFFER`` frames."""
    good = good_indices(session, lo=len(session.frames) - LONG_BUFFER)
    order = np.argsort(session.sigmas_px[good], kind="stable")
    return np.sort(good[order[:KEEP]])


def registration_rms(
    run: PipelineRun, session: SimulatedSession, indices: list[int] | None
) -> float | None:
    """RMS (2-D) error of where the pipeline put each frame's content, constant removed.

    For the default method the crop of frame ``i`` holds the truth from
    ``box.y0 + shift_y - true_shift_y`` on; perfect registration makes that
    the same for every frame. The seed method does not register: its
    crop-box centre stands in (its crops are also rescaled, ignored here).
    Only "good" frames count (a clipped frame's true position is off-disc).
    """
    if not indices:
        return None
    errors = []
    for i in indices:
        o = run.outcomes[i]
        if not o.accepted or o.box is None or session.kinds[i] != "good":
            continue
        if o.shift_yx is None:  # seed: no registration
            pos = np.array(o.box.center_yx)
        else:
            pos = np.array([o.box.y0 + o.shift_yx[0], o.box.x0 + o.shift_yx[1]])
        errors.append(pos - session.shifts_yx[i])
    if len(errors) < 2:
        return None
    e = np.array(errors)
    e -= e.mean(axis=0)
    return float(np.sqrt((e**2).sum(axis=1).mean()))


# --------------------------------------------------------------------------
# PlanetarySystemStacker
# --------------------------------------------------------------------------

PSS_EXE = "PlanetarySystemStacker"


def find_pss() -> str | None:
    return shutil.which(PSS_EXE)


def run_pss(frames_uint: list[np.ndarray], exe: str) -> tuple[np.ndarray | None, str, float]:
    """Stack ``frames_uint`` with PSS headless; returns (image or None, note, seconds).

    Frames go to a folder of PNGs; ``PlanetarySystemStacker FOLDER -m Planet
    --stack_number 20 --out_format png`` writes ``FOLDER_pss.png`` beside it.
    HOME points into the temporary folder so the user's PSS configuration is
    neither read nor written; Qt runs with the offscreen platform.
    """
    with tempfile.TemporaryDirectory(prefix="lsbench_pss_") as tmp:
        folder = Path(tmp) / "frames"
        folder.mkdir()
        for i, f in enumerate(frames_uint):
            cv2.imwrite(str(folder / f"frame_{i:05d}.png"), f)
        env = dict(os.environ, QT_QPA_PLATFORM="offscreen", HOME=tmp)
        cmd = [exe, str(folder), "-m", "Planet", "--stack_number", str(KEEP), "--out_format", "png"]
        start = time.perf_counter()
        try:
            proc = subprocess.run(
                cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=900, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            return None, f"PSS failed to run: {err}", time.perf_counter() - start
        seconds = time.perf_counter() - start
        out = Path(tmp) / "frames_pss.png"
        if proc.returncode != 0 or not out.is_file():
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
            return None, f"PSS exit {proc.returncode}, no output: {' | '.join(tail)}", seconds
        image = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
        if image is None:
            return None, "PSS output unreadable", seconds
        if image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        return (
            image.astype(np.float64) / float(np.iinfo(image.dtype).max),
            f"{image.shape}",
            seconds,
        )


# --------------------------------------------------------------------------
# One session
# --------------------------------------------------------------------------

MAIN_VARIANTS = (
    "single frame",
    "seed",
    "default, no AP",
    "default, every frame",
    "default",
    "default long, no AP",
    "default long",
    "oracle live",
    "oracle lucky",
    "oracle long",
    "PSS",
    "PSS, clipped frames removed",
)
#: Columns of the per-session table.
SESSION_VARIANTS = (
    "seed",
    "default, no AP",
    "default, every frame",
    "default",
    "default long, no AP",
    "default long",
    "oracle live",
    "oracle lucky",
    "oracle long",
)
DIAG_VARIANTS = (
    "default: its frames @ true shifts",
    "default long: its frames @ true shifts",
    "oracle live, OpenCV bicubic",
)


@dataclass
class SessionResult:
    scenario: str
    seed: int
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # variant -> metric
    diagnostics: dict[str, dict[str, object]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _record(res: SessionResult, name: str, scorer: TruthScorer, image: np.ndarray) -> None:
    s = scorer.score(image)
    sh = scorer.score(apply_sharpening(image.astype(np.float32), SHARPEN), offset_yx=s.offset_yx)
    res.scores[name] = {
        "psnr": s.psnr,
        "ssim": s.ssim,
        "psnr_sharp": sh.psnr,
        "ssim_sharp": sh.ssim,
        "coverage": s.coverage,
    }
    if s.coverage < 1.0:
        res.notes.append(f"{name}: result covers only {s.coverage:.0%} of the scoring window")


def _frame_stats(session: SimulatedSession, indices: list[int] | None) -> dict[str, object]:
    if indices is None:
        return {}
    kinds = [session.kinds[i] for i in indices]
    sig = session.sigmas_px[[i for i in indices if session.kinds[i] == "good"]]
    return {
        "n_stacked": len(indices),
        "bad_stacked": sum(k != "good" for k in kinds),
        "mean_sigma": float(sig.mean()) if sig.size else float("nan"),
    }


def run_session(
    scenario: Scenario, seed: int, pss_exe: str | None, *, singles: int = 15
) -> SessionResult:
    """Simulate one session and score every variant on it."""
    start = time.perf_counter()
    res = SessionResult(scenario.name, seed)
    session = simulate_session(
        scenario.n_frames,
        shape=scenario.shape,
        model=scenario.model,
        seeing=scenario.seeing,
        bit_depth=scenario.bit_depth,
        bad_frames=scenario.bad_frames,
        seed=seed,
    )
    scorer = TruthScorer(session, scenario.model, seed)
    frames = [normalise_frame(f, white_level=session.white_level) for f in session.frames]
    kinds = np.asarray(session.kinds)

    # single frame: median over up to ``singles`` evenly spaced good frames
    good = good_indices(session)
    picks = np.linspace(0, good.size - 1, min(singles, good.size)).round().astype(int)
    sample = good[np.unique(picks)]
    plain = [scorer.score(frames[i].data) for i in sample]
    sharp = [
        scorer.score(apply_sharpening(frames[i].data, SHARPEN), offset_yx=s.offset_yx)
        for i, s in zip(sample, plain, strict=True)
    ]
    res.scores["single frame"] = {
        "psnr": float(np.median([s.psnr for s in plain])),
        "ssim": float(np.median([s.ssim for s in plain])),
        "psnr_sharp": float(np.median([s.psnr for s in sharp])),
        "ssim_sharp": float(np.median([s.ssim for s in sharp])),
        "coverage": min(s.coverage for s in plain),
    }
    res.diagnostics["single frame"] = {"mean_sigma": float(session.sigmas_px[sample].mean())}

    runs = {
        "seed": run_pipeline(frames, preset_params("seed", buffer_size=LIVE_BUFFER)),
        "default, no AP": run_pipeline(
            frames, preset_params("default", buffer_size=LIVE_BUFFER, alignment_points=False)
        ),
        "default, every frame": run_pipeline(
            frames, preset_params("default", buffer_size=LIVE_BUFFER, best_fraction=1.0)
        ),
        "default": run_pipeline(frames, preset_params("default", buffer_size=LIVE_BUFFER)),
        "default long, no AP": run_pipeline(
            frames,
            preset_params("default", buffer_size=LONG_BUFFER, keep=KEEP, alignment_points=False),
        ),
        "default long": run_pipeline(
            frames, preset_params("default", buffer_size=LONG_BUFFER, keep=KEEP)
        ),
    }
    bad_total = {k: int((kinds == k).sum()) for k in ("black", "clipped", "blurred")}
    for name, run in runs.items():
        _record(res, name, scorer, run.image)
        accepted = np.array([o.accepted for o in run.outcomes])
        diag: dict[str, object] = {
            "accepted": int(accepted.sum()),
            "bad_accepted": {k: int((accepted & (kinds == k)).sum()) for k in bad_total},
            "bad_total": bad_total,
            "reg_rms_all": registration_rms(
                run, session, [i for i in range(len(frames)) if run.outcomes[i].accepted]
            ),
            "reg_rms_stack": registration_rms(run, session, run.stacked_frames),
            "frames_per_s": len(frames) / run.seconds,
            "crop_hw": list(run.image.shape[:2]),
        }
        diag.update(_frame_stats(session, run.stacked_frames))
        res.diagnostics[name] = diag

    live_idx, long_idx = oracle_live(session), oracle_long(session)
    lucky_idx = oracle_lucky(session, preset_params("default").best_fraction)
    _record(res, "oracle live", scorer, stack_at_true_shifts(frames, session, live_idx))
    _record(res, "oracle lucky", scorer, stack_at_true_shifts(frames, session, lucky_idx))
    res.diagnostics["oracle lucky"] = _frame_stats(session, list(lucky_idx))
    _record(res, "oracle long", scorer, stack_at_true_shifts(frames, session, long_idx))
    res.diagnostics["oracle live"] = _frame_stats(session, list(live_idx))
    res.diagnostics["oracle long"] = _frame_stats(session, list(long_idx))

    # diagnostics: the pipeline's own selection, perfectly registered; the kernel
    for name, label in (("default", DIAG_VARIANTS[0]), ("default long", DIAG_VARIANTS[1])):
        chosen = runs[name].stacked_frames
        if chosen:
            _record(res, label, scorer, stack_at_true_shifts(frames, session, chosen))
    _record(
        res,
        DIAG_VARIANTS[2],
        scorer,
        stack_at_true_shifts(frames, session, live_idx, kernel="opencv"),
    )

    if pss_exe is not None:
        first = max(0, len(frames) - LONG_BUFFER)
        subsets = {
            "PSS": list(range(first, len(frames))),
            # PSS has no clipped-planet rejection: one such frame shrinks the
            # intersection of all frames (its output) to a part of the disc.
            "PSS, clipped frames removed": [
                i for i in range(first, len(frames)) if kinds[i] != "clipped"
            ],
        }
        for name, idx in subsets.items():
            image, note, seconds = run_pss([session.frames[i] for i in idx], pss_exe)
            if image is None:
                res.notes.append(f"{name}: {note}")
                continue
            _record(res, name, scorer, image)
            res.diagnostics[name] = {
                "output": note,
                "seconds": seconds,
                "frames_in": len(idx),
                "frames_per_s": len(idx) / seconds,  # includes PSS's start-up
            }
    res.seconds = time.perf_counter() - start
    return res


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def _mean(values: list[float]) -> float:
    vals = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


def _agg(results: list[SessionResult], scen: str, variant: str, metric: str) -> float:
    return _mean(
        [r.scores[variant][metric] for r in results if r.scenario == scen and variant in r.scores]
    )


def _fmt(v: float, metric: str) -> str:
    if not np.isfinite(v):
        return "–"
    return f"{v:.2f}" if metric.startswith("psnr") else f"{v:.4f}"


def _table(
    results: list[SessionResult],
    scens: list[str],
    variants: tuple[str, ...],
    suffix: str,
    *,
    gaps: bool = True,
) -> list[str]:
    head = "| variant | " + " | ".join(f"{s} PSNR dB | {s} SSIM" for s in scens) + " |"
    lines = [head, "|---|" + "---:|" * (2 * len(scens))]
    for v in variants:
        if not any(v in r.scores for r in results):
            continue
        cells = []
        for s in scens:
            for m in ("psnr", "ssim"):
                cells.append(_fmt(_agg(results, s, v, m + suffix), m))
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    if not gaps:
        return lines
    for num, ceiling in (
        ("default, no AP", "oracle lucky"),
        ("default, every frame", "oracle live"),
        ("default", "oracle lucky"),
        ("default long, no AP", "oracle long"),
        ("default long", "oracle long"),
    ):
        cells = []
        for s in scens:
            for m in ("psnr", "ssim"):
                d = _agg(results, s, num, m + suffix)
                b = _agg(results, s, "seed", m + suffix)
                o = _agg(results, s, ceiling, m + suffix)
                gap = (d - b) / (o - b) if abs(o - b) > 1e-12 else float("nan")
                cells.append(f"{gap:.0%}" if np.isfinite(gap) else "–")
        lines.append(
            f"| gap closed: ({num} − seed)/({ceiling} − seed) | " + " | ".join(cells) + " |"
        )
    return lines


def _diag_table(results: list[SessionResult], scen: str) -> list[str]:
    rows = [r for r in results if r.scenario == scen]
    lines = [
        (
            "| variant | bad frames accepted (black/clipped/blurred) | bad in final stack | "
            "reg. error rms px (accepted / final stack) | mean true σ of stacked px | frames/s |"
        ),
        "|---|---|---:|---|---:|---:|",
    ]
    for v in (
        "seed",
        "default, no AP",
        "default, every frame",
        "default",
        "default long, no AP",
        "default long",
        "oracle live",
        "oracle lucky",
        "oracle long",
        "single frame",
        "PSS",
        "PSS, clipped frames removed",
    ):
        ds = [r.diagnostics.get(v, {}) for r in rows]
        if not any(ds):
            continue
        acc = "–"
        if all("bad_accepted" in d for d in ds):
            tot = {
                k: sum(d["bad_accepted"][k] for d in ds) for k in ("black", "clipped", "blurred")
            }
            n = {k: sum(d["bad_total"][k] for d in ds) for k in ("black", "clipped", "blurred")}
            acc = " / ".join(f"{tot[k]}/{n[k]}" for k in ("black", "clipped", "blurred"))
        bad = (
            sum(d.get("bad_stacked", 0) for d in ds)
            if any("bad_stacked" in d for d in ds)
            else None
        )
        r_all = _mean([d.get("reg_rms_all") for d in ds])
        r_stk = _mean([d.get("reg_rms_stack") for d in ds])
        reg = "–" if not np.isfinite(r_all) else f"{r_all:.3f} / {r_stk:.3f}"
        if v == "seed" and reg != "–":
            reg += " (crop centre, no registration)"
        sig = _mean([d.get("mean_sigma") for d in ds])
        fps = _mean([d.get("frames_per_s") for d in ds])
        sig_text = f"{sig:.2f}" if np.isfinite(sig) else "–"
        fps_text = f"{fps:.0f}" if np.isfinite(fps) else "–"
        bad_text = "–" if bad is None else str(bad)
        lines.append(f"| {v} | {acc} | {bad_text} | {reg} | {sig_text} | {fps_text} |")
    return lines


def report(
    results: list[SessionResult],
    scens: dict[str, Scenario],
    args: argparse.Namespace,
    seeds: list[int],
    seconds: float,
    pss_status: str,
    git_state: str,
    timing: dict | None = None,
) -> str:
    names = list(scens)
    command = "bench/quality.py" + (" --quick" if args.quick else "") + f" --seed {args.seed}"
    out = [
        "# luckystack quality benchmark",
        "",
        (
            f"Command: `.venv/bin/python {command}` — seeds {seeds}, {len(seeds)} session(s) "
            f"per scenario, {seconds:.0f} s wall time ({args.jobs} process(es)); "
            f"luckystack at {git_state}."
        ),
        "",
        "Scenarios: " + "; ".join(f"**{s.name}**: {s.description}" for s in scens.values()) + ".",
        f"Seeing: {SEEING}.",
        "",
        "Scores of the final image (end of session) against the noise-free, unblurred truth, "
        "after registration and a linear intensity fit; mean over seeds. See bench/README.md.",
        "",
        "## Stacked image",
        "",
        *_table(results, names, MAIN_VARIANTS, ""),
        "",
        "## Sharpened (the daemon's `[sharpen]` defaults, same for every variant)",
        "",
        *_table(results, names, MAIN_VARIANTS, "_sharp"),
        "",
        "## Diagnostics",
        "",
        "Where the quality goes: the pipeline's final selection re-stacked at the true shifts "
        "(perfect registration, spline interpolation), and the live oracle with OpenCV's "
        "bicubic kernel (the pipeline's interpolation) instead of the order-3 spline.",
        "",
        *_table(results, names, DIAG_VARIANTS, "", gaps=False),
        "",
    ]
    for s in names:
        out += [f"### {s}", "", *_diag_table(results, s), ""]
    out += [
        "Registration error: for each accepted good frame, `box.y0 + shift_y − true_shift_y` "
        "(and x), constant removed, 2-D rms. The true shift is the disc-average displacement; "
        f"with warp_px = {SEEING.warp_px} a method weighting features differently may "
        "legitimately differ by ~warp/2.",
        "",
        f"PlanetarySystemStacker: {pss_status}",
        "",
        "## Per session",
        "",
        "| scenario | seed | "
        + " | ".join(f"{v} PSNR/SSIM" for v in SESSION_VARIANTS)
        + " | s |",
        "|---|---:|" + "---|" * len(SESSION_VARIANTS) + "---:|",
    ]
    for r in results:
        cells = [
            f"{r.scores[v]['psnr']:.2f} / {r.scores[v]['ssim']:.4f}" if v in r.scores else "–"
            for v in SESSION_VARIANTS
        ]
        out.append(f"| {r.scenario} | {r.seed} | " + " | ".join(cells) + f" | {r.seconds:.0f} |")
    notes = [f"- {r.scenario}/{r.seed}: {n}" for r in results for n in r.notes]
    if notes:
        out += ["", "Notes:", "", *notes]
    if timing:
        out += [
            "",
            "## Cost per frame",
            "",
            (
                f"CPU time (`time.process_time`) of `LiveStacker.add` per frame, default preset, "
                f"{timing['frames']} simulated 8-bit frames of {timing['shape'][1]}x"
                f"{timing['shape'][0]} px, planet radius {timing['radius_px']:.0f} px (crop "
                f"{timing['crop_hw'][1]}x{timing['crop_hw'][0]}, {timing['aps']} alignment "
                f"points), one thread (OpenCV, BLAS); mean over frames {TIMING_SKIP}.., best "
                f"of {timing['repeats']} runs; load average {timing['loadavg']:.1f} on "
                f"{os.cpu_count()} CPUs."
            ),
            "",
            "| pipeline | ms per frame |",
            "|---|---:|",
            *(f"| {k} | {v:.1f} |" for k, v in timing["ms"].items()),
        ]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


TIMING_SKIP = 20  # frames before the stack (and the alignment points) are in steady state


def time_per_frame(n_frames: int = 80, repeats: int = 3, seed: int = 1) -> dict:
    """CPU time per frame of ``LiveStacker.add``, 640x480, radius 100, with and without APs.

    One thread (``cv2.setNumThreads(1)``; BLAS threads are set to 1 when the
    benchmark runs as a script): ``time.process_time`` counts every thread of
    the process, and idle BLAS threads spinning on a busy machine would be
    counted as work.
    """
    cv2.setNumThreads(1)
    shape, radius = (480, 640), 100.0
    session = simulate_session(
        n_frames, shape=shape, model=PlanetModel(radius_px=radius), seeing=SEEING, seed=seed
    )
    frames = [normalise_frame(f, white_level=session.white_level) for f in session.frames]
    variants = {
        "every frame, global registration only (`best_fraction = 1, alignment_points = false`)":
            preset_params("default", best_fraction=1.0, alignment_points=False),
        "every frame, with alignment points (`best_fraction = 1`)": preset_params(
            "default", best_fraction=1.0
        ),
        "lucky cut, with alignment points (default)": preset_params("default"),
    }
    ms: dict[str, float] = {}
    crop_hw, aps = (0, 0), 0
    for name, params in variants.items():
        best = math.inf
        for _ in range(repeats):
            stacker = LiveStacker(params)
            times = []
            for f in frames:
                t0 = time.process_time()
                stacker.add(f)
                times.append(time.process_time() - t0)
            # The mean: it carries the AP reference prepared every few frames and,
            # with the lucky cut, the frames registered among those only scored.
            best = min(best, float(np.mean(times[TIMING_SKIP:])))
            crop_hw = stacker.crop_size_hw or crop_hw
            prepared = getattr(stacker, "_ap_ref", None)
            aps = len(prepared[1].grid) if prepared is not None else aps
        ms[name] = best * 1e3
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    return {
        "ms": ms, "frames": n_frames, "shape": shape, "radius_px": radius,
        "crop_hw": list(crop_hw), "aps": aps, "repeats": repeats, "loadavg": load,
    }


def _task(job: tuple[Scenario, int, str | None, int]) -> SessionResult:
    scenario, seed, pss_exe, singles = job
    return run_session(scenario, seed, pss_exe, singles=singles)


def _git_state() -> str:
    """HEAD commit and whether core/ or daemon/ differ from it (read-only git)."""
    repo = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", "core", "daemon"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + (" with uncommitted changes in core/ or daemon/" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="one short session per scenario (< 60 s)"
    )
    parser.add_argument("--seed", type=int, default=1, help="first seed (default 1)")
    parser.add_argument(
        "--seeds", type=int, default=None, help="sessions per scenario (default 3, quick 1)"
    )
    parser.add_argument(
        "--scenarios",
        default=None,
        help="comma-separated subset of live,long,live16,live0 (default: all; quick: live,long)",
    )
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="processes")
    parser.add_argument("--no-pss", action="store_true", help="skip PlanetarySystemStacker")
    parser.add_argument(
        "--no-timing", action="store_true", help="skip the CPU time per frame (640x480, r=100)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "quality.md"
    )
    args = parser.parse_args(argv)

    available = scenarios(args.quick)
    chosen = args.scenarios or ("live,long" if args.quick else "live,long,live16,live0")
    wanted = [s.strip() for s in chosen.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in available]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {list(available)}")
    scens = {s: available[s] for s in wanted}
    n_seeds = args.seeds if args.seeds is not None else (1 if args.quick else 3)
    seeds = [args.seed + k for k in range(n_seeds)]

    pss_exe = None if args.no_pss else find_pss()
    if args.no_pss:
        pss_status = "skipped (--no-pss)."
    elif pss_exe is None:
        pss_status = (
            f"skipped: `{PSS_EXE}` not found on PATH "
            "(Debian: `apt-get install planetary-system-stacker`)."
        )
    else:
        pss_status = (
            f"`{pss_exe}` FOLDER -m Planet --stack_number {KEEP} --out_format png, on the last "
            f"{LONG_BUFFER} frames of each session (the frames default long buffers; compare with "
            "default long / oracle long). Frames written as PNG; PSS's 16-bit PNG output is "
            "scored like the rest."
        )

    singles = 7 if args.quick else 15
    jobs = [
        # quick: PSS (a few seconds of start-up per run) on the long scenario only
        (scens[s], seed, None if args.quick and s != "long" else pss_exe, singles)
        for s in scens
        for seed in seeds
    ]
    jobs.sort(key=lambda j: -j[0].n_frames)  # longest first
    start = time.perf_counter()
    if args.jobs > 1:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            results = list(pool.map(_task, jobs))
    else:
        results = [_task(j) for j in jobs]
    seconds = time.perf_counter() - start
    results.sort(key=lambda r: (wanted.index(r.scenario), r.seed))
    timing = None if args.no_timing else time_per_frame(repeats=2 if args.quick else 3)

    text = report(results, scens, args, seeds, seconds, pss_status, _git_state(), timing)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    raw = {"sessions": [dataclasses.asdict(r) for r in results], "timing": timing}
    args.out.with_suffix(".json").write_text(json.dumps(raw, indent=1, default=str))
    print(
        f"wrote {args.out} and {args.out.with_suffix('.json')} ({seconds:.0f} s)", file=sys.stderr
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
