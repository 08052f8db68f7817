"""Choose ``luckystack.core.sharpen.DEFAULT_CHAIN`` by measurement.

Simulated sessions (``luckystack.core.simulate``) give stacks whose truth is
known: three seeing/camera conditions x ``--seeds`` seeds, and two stacks
per session, built as the pipeline would:

* ``best``: mean of the 20 truly sharpest frames, each moved back by its
  true shift (``scipy.ndimage.shift``, order 3) -- the lucky stack;
* ``random``: the same with 20 random good frames -- a worse stack (and
  what a keep-everything rolling buffer produces).

Every candidate is scored by SSIM (Gaussian window sigma 1.5, K1 0.01,
K2 0.03, data range 1) against the truth after fitting ``a * img + b`` to
the truth by least squares, both over the planet's disc (``truth > 0``).
The disc is where users judge the result; on the empty sky the truth is
exactly 0 and SSIM's luminance term ``C1 / (mu^2 + C1)`` swings by 0.1 for
a 0.3 % sky offset, which would drown the differences in structure. Halos
are measured separately (mean of a 3-6 px ring outside the limb minus the
median sky) and bounded as a constraint. The SSIM over the disc plus a
10 px ring (fitted over that region) is printed too.

Constraints: on every stack the chain must beat no sharpening and both
origin sharpeners (``gaussian_laplacian(sigma 1, amount 1)`` and
``sharpen_kernel``), dig no dark moat (ring at most 0.5 % of the disc level
below the sky) and add no bright halo (ring at most 0.25 % brighter than
in the unsharpened stack, whose blurred limb glows a little).

Search: a grid per family (unsharp, wavelets, Lucy--Richardson), then a
greedy coordinate ascent over "LR followed by wavelets" (LR optional),
started from the best of each family, that climbs the mean disc SSIM minus
penalties for every constraint violated. The chosen chain has the highest
mean disc SSIM over all stacks among those meeting every constraint.

Run::

    .venv/bin/python bench/sharpen_tune.py [--quick] [--seeds 11 12]

(about 4 minutes; ``--quick`` about 40 s).
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

from luckystack.core.sharpen import (
    DEFAULT_CHAIN,
    DeconvolveStep,
    GaussianLaplacianStep,
    UnsharpStep,
    WaveletStep,
    apply_chain,
    gaussian_laplacian,
    sharpen_kernel,
)
from luckystack.core.simulate import PlanetModel, SeeingModel, simulate_session

SEEINGS: dict[str, SeeingModel] = {
    "good": SeeingModel(),  # sigma 0.8-3.0 px, 2000 e- at white, 8 bit
    "noisy": SeeingModel(photons_at_white=500.0, read_noise=3.0),
    "poor": SeeingModel(sigma_min_px=1.3, sigma_max_px=3.5, jitter_px=4.0),
}
HALO_LIMIT = 0.005  # ring - sky, as a fraction of the disc's 99th percentile


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # "best" or "random"
    stack: np.ndarray  # float32 working data
    truth: np.ndarray
    disc: np.ndarray  # bool: truth > 0
    region: np.ndarray  # bool: disc + 10 px ring
    ring: np.ndarray  # bool: 3-6 px outside the limb
    sky: np.ndarray  # bool: > 20 px outside the limb


# --------------------------------------------------------------------------
# Metric
# --------------------------------------------------------------------------


def ssim_map(x: np.ndarray, y: np.ndarray, *, sigma: float = 1.5, data_range: float = 1.0):
    """Gaussian-window SSIM map (Wang et al. 2004, doi:10.1109/TIP.2003.819861)."""
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2

    def g(a: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(a, sigma, truncate=3.5, mode="reflect")

    mx, my = g(x), g(y)
    vx = g(x * x) - mx * mx
    vy = g(y * y) - my * my
    cxy = g(x * y) - mx * my
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))


def fitted(img: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``a * img + b`` least-squares fitted to the truth over ``mask``."""
    a, b = np.polyfit(img[mask].astype(np.float64), truth[mask], 1)
    return a * img.astype(np.float64) + b


def halo(img: np.ndarray, case: Case) -> float:
    """(ring mean - sky median) / disc 99th percentile."""
    bg = float(np.median(img[case.sky]))
    return (float(img[case.ring].mean()) - bg) / float(np.percentile(img[case.disc], 99))


def score(img: np.ndarray, case: Case) -> tuple[float, float, float, float]:
    """(disc SSIM, disc+ring SSIM, halo); each SSIM after its own linear fit."""
    disc = ssim_map(fitted(img, case.truth, case.disc), case.truth)
    region = ssim_map(fitted(img, case.truth, case.region), case.truth)
    return (
        float(disc[case.disc].mean()),
        float(region[case.region].mean()),
        halo(img, case),
    )


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------


def make_cases(seeds: list[int], n_frames: int = 200, k: int = 20) -> list[Case]:
    cases = []
    for seeing_name, seeing in SEEINGS.items():
        for seed in seeds:
            s = simulate_session(
                n_frames, shape=(240, 320), model=PlanetModel(radius_px=60), seeing=seeing,
                seed=seed,
            )
            frames = [f.astype(np.float64) / s.white_level for f in s.frames]
            rng = np.random.default_rng(1000 + seed)
            good = np.flatnonzero(np.asarray(s.kinds) == "good")
            picks = {"best": s.best_indices(k), "random": rng.choice(good, k, replace=False)}
            disc = s.truth > 0
            outside = cv2.distanceTransform((~disc).astype(np.uint8), cv2.DIST_L2, 5)
            for kind, idx in picks.items():
                stack = np.mean(
                    [ndimage.shift(frames[i], -s.shifts_yx[i], order=3, mode="nearest")
                     for i in idx],
                    axis=0,
                ).astype(np.float32)
                cases.append(
                    Case(
                        name=f"{seeing_name}/{seed}/{kind}", kind=kind, stack=stack,
                        truth=s.truth, disc=disc, region=outside <= 10,
                        ring=(outside >= 3) & (outside <= 6), sky=outside > 20,
                    )
                )
    return cases


# --------------------------------------------------------------------------
# Candidates
# --------------------------------------------------------------------------

Candidate = Callable[[np.ndarray], np.ndarray] | tuple


def short(step: object) -> str:
    """Compact label of a step."""
    if isinstance(step, DeconvolveStep):
        tail = f"it={step.iterations}" if step.stop_tol == 0 else (
            f"tol={step.stop_tol:g}/{step.iterations}")
        reg = f" tv={step.regularisation:g}" if step.regularisation else ""
        return f"LR {step.psf[:5]} s={step.sigma_px:g} {tail}{reg}"
    if isinstance(step, UnsharpStep):
        thr = f" t={step.threshold:g}" if step.threshold else ""
        return f"unsharp r={step.radius_px:g} a={step.amount:g}{thr}"
    if isinstance(step, WaveletStep):
        dn = f" dn={tuple(round(d, 2) for d in step.denoise)}" if step.denoise else ""
        return f"wavelet g={tuple(round(g, 2) for g in step.gains)}{dn}"
    return type(step).__name__


def label(steps: tuple) -> str:
    return " + ".join(short(s) for s in steps) or "none"


def grid(quick: bool) -> dict[str, Candidate]:
    c: dict[str, Candidate] = {
        "none": lambda img: img,
        "origin gaussian_laplacian(1,1)": lambda img: gaussian_laplacian(img),
        "origin sharpen_kernel": lambda img: sharpen_kernel(img),
        "origin gaussian_laplacian(1,1) in chain": (GaussianLaplacianStep(),),
    }
    steps: list[tuple] = []
    radii = (1.0, 1.5, 2.0, 3.0) if not quick else (1.0, 2.0)
    amounts = (0.5, 1.0, 1.5, 2.0) if not quick else (1.0,)
    steps += [(UnsharpStep(radius_px=r, amount=a),) for r, a in itertools.product(radii, amounts)]
    steps += [(UnsharpStep(radius_px=r, amount=1.0, threshold=0.003),) for r in radii]
    g1s, g2s, g3s = ((1.5, 2.0, 2.5), (1.0, 1.5, 2.0), (1.0, 1.3, 1.6)) if not quick else (
        (2.0,), (1.5,), (1.0, 1.3))
    for g1, g2, g3, d1 in itertools.product(g1s, g2s, g3s, (0.0, 1.0) if not quick else (0.0,)):
        steps.append((WaveletStep(gains=(g1, g2, g3, 1.2), denoise=(d1,)),))
    sigmas = (0.6, 0.8, 1.0, 1.2) if not quick else (0.8, 1.0)
    for psf, sig in itertools.product(("gaussian", "moffat"), sigmas):
        for it in (5, 10, 20) if not quick else (10,):
            steps.append((DeconvolveStep(psf=psf, sigma_px=sig, iterations=it, stop_tol=0.0),))
        for tol in (1e-3, 3e-4) if not quick else ():
            steps.append((DeconvolveStep(psf=psf, sigma_px=sig, iterations=40, stop_tol=tol),))
        for reg in (0.002, 0.005) if not quick else ():
            steps.append((DeconvolveStep(psf=psf, sigma_px=sig, iterations=20, stop_tol=0.0,
                                         regularisation=reg),))
    c.update({label(s): s for s in steps})
    return c


def run(candidate: Candidate, img: np.ndarray) -> np.ndarray:
    if callable(candidate):
        return candidate(img)
    return apply_chain(img, candidate)


class Scorer:
    """Scores candidates on every case, with a cache keyed by label."""

    def __init__(self, cases: list[Case]):
        self.cases = cases
        self.results: dict[str, np.ndarray] = {}  # label -> (n_cases, 3)
        self.candidates: dict[str, Candidate] = {}

    def __call__(self, name: str, candidate: Candidate) -> np.ndarray:
        if name not in self.results:
            self.candidates[name] = candidate
            self.results[name] = np.array([score(run(candidate, c.stack), c) for c in self.cases])
        return self.results[name]

    def kind_mean(self, name: str, kind: str, column: int = 0) -> float:
        mask = np.array([c.kind == kind for c in self.cases])
        return float(self.results[name][mask, column].mean())

    def mean(self, name: str, column: int = 0) -> float:
        return float(self.results[name][:, column].mean())

    def _deficits(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Per stack: SSIM shortfall against the best reference, halo excess."""
        r = self.results[name]
        refs = np.max([self.results[n][:, 0] for n in ("none",) + ORIGINS], axis=0)
        short = np.maximum(refs - r[:, 0], 0.0)
        # no dark moat, and the ring no brighter than the unsharpened stack's
        moat = np.maximum(-HALO_LIMIT - r[:, 2], 0.0)
        glow = np.maximum(r[:, 2] - (self.results["none"][:, 2] + HALO_LIMIT / 2), 0.0)
        return short, moat + glow

    def admissible(self, name: str) -> bool:
        """Better than no sharpening and both origin sharpeners on every stack, no halo."""
        short, halo_excess = self._deficits(name)
        refs = np.max([self.results[n][:, 0] for n in ("none",) + ORIGINS], axis=0)
        return bool((self.results[name][:, 0] > refs).all() and not halo_excess.any())

    def objective(self, name: str) -> float:
        """Mean disc SSIM minus penalties (what the coordinate ascent climbs)."""
        short, halo_excess = self._deficits(name)
        return self.mean(name) - 5.0 * short.sum() - 10.0 * halo_excess.sum()


ORIGINS = ("origin gaussian_laplacian(1,1)", "origin sharpen_kernel")

# Coordinate-ascent space: LR (optional) then 4 wavelet layers.
SPACE: dict[str, list] = {
    "psf": ["gaussian", "moffat"],
    "sigma": [0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.4],
    "iterations": [3, 5, 8, 10, 15, 20, 30],
    "tv": [0.0, 0.001, 0.002, 0.004, 0.008],
    **{f"g{i}": [round(x, 2) for x in np.arange(0.5, 3.01, 0.25)] for i in range(1, 5)},
    "d1": [0.0, 0.5, 1.0, 1.5, 2.0, 3.0],
    "d2": [0.0, 0.5, 1.0, 1.5, 2.0],
}


def build(p: dict) -> tuple:
    steps: list = []
    if p["lr"]:
        steps.append(DeconvolveStep(psf=p["psf"], sigma_px=p["sigma"], iterations=p["iterations"],
                                    stop_tol=0.0, regularisation=p["tv"]))
    gains = tuple(p[f"g{i}"] for i in range(1, 5))
    while len(gains) > 1 and gains[-1] == 1.0:
        gains = gains[:-1]
    if gains != (1.0,) or p["d1"] or p["d2"]:
        steps.append(WaveletStep(gains=gains + (1.0,) * (2 - len(gains)),
                                 denoise=(p["d1"], p["d2"])))
    return tuple(steps)


def ascend(scorer: Scorer, p: dict, rounds: int, log: bool = True) -> dict:
    """Greedy coordinate ascent over SPACE on the constrained objective."""

    def value(q: dict) -> float:
        steps = build(q)
        name = label(steps)
        scorer(name, steps)
        return scorer.objective(name)

    best = value(p)
    for r in range(rounds):
        improved = False
        for key, values in SPACE.items():
            if key in ("psf", "sigma", "iterations", "tv") and not p["lr"]:
                continue
            i = values.index(p[key])
            for j in (i - 1, i + 1):
                if 0 <= j < len(values):
                    q = dict(p, **{key: values[j]})
                    v = value(q)
                    if v > best + 1e-5:
                        best, p, improved = v, q, True
        if log:
            print(f"  round {r}: {best:.4f}  {label(build(p))}", flush=True)
        if not improved:
            break
    return p


def nearest(values: list, x: object) -> object:
    if isinstance(x, str):
        return x
    return min(values, key=lambda v: abs(v - x))


def start_from(steps: tuple) -> dict:
    p = {"lr": False, "psf": "gaussian", "sigma": 0.8, "iterations": 10, "tv": 0.0,
         "g1": 1.0, "g2": 1.0, "g3": 1.0, "g4": 1.0, "d1": 0.0, "d2": 0.0}
    for s in steps:
        if isinstance(s, DeconvolveStep):
            p.update(lr=True, psf=s.psf, sigma=s.sigma_px, iterations=s.iterations,
                     tv=s.regularisation)
        if isinstance(s, WaveletStep):
            for i, g in enumerate(s.gains[:4], 1):
                p[f"g{i}"] = g
            for i, d in enumerate(s.denoise[:2], 1):
                p[f"d{i}"] = d
    return {k: (nearest(SPACE[k], v) if k in SPACE else v) for k, v in p.items()}


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def timing(steps: tuple, shape: tuple[int, ...], luminance_only: bool = False) -> float:
    """Milliseconds per apply_chain call on a noisy blurred disc."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    disc = (yy - shape[0] / 2) ** 2 + (xx - shape[1] / 2) ** 2 < 70**2
    img = np.full(shape, 0.01, np.float32)
    img[disc] = 0.6
    img = cv2.GaussianBlur(img, (0, 0), 1.2) + rng.normal(0, 0.003, shape).astype(np.float32)
    apply_chain(img, steps, luminance_only=luminance_only)
    times = []
    for _ in range(20):
        t = time.perf_counter()
        apply_chain(img, steps, luminance_only=luminance_only)
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small grid, one seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[11, 12])
    args = parser.parse_args()
    seeds = args.seeds[:1] if args.quick else args.seeds
    t0 = time.perf_counter()
    cases = make_cases(seeds)
    print(f"{len(cases)} stacks: {', '.join(SEEINGS)} seeing x seeds {seeds} x best/random "
          f"({time.perf_counter() - t0:.0f} s)")
    scorer = Scorer(cases)

    for name, cand in grid(args.quick).items():
        scorer(name, cand)
    print(f"grid: {len(scorer.results)} candidates ({time.perf_counter() - t0:.0f} s)")

    families = {
        "unsharp": [n for n in scorer.results if n.startswith("unsharp")],
        "wavelet": [n for n in scorer.results if n.startswith("wavelet")],
        "LR": [n for n in scorer.results if n.startswith("LR")],
    }
    starts = [max(names, key=scorer.objective) for names in families.values()]
    starts.append(label(scorer.candidates[starts[2]] + (WaveletStep(gains=(1, 1, 1.25, 1.25)),)))
    scorer(starts[-1], scorer.candidates[starts[2]] + (WaveletStep(gains=(1, 1, 1.25, 1.25)),))
    for name in starts[1:]:
        print(f"ascent from {name}")
        ascend(scorer, start_from(scorer.candidates[name]), rounds=2 if args.quick else 5)
    print(f"search done: {len(scorer.results)} candidates ({time.perf_counter() - t0:.0f} s)")

    families["LR+wavelet"] = [n for n in scorer.results if n.startswith("LR") and "+" in n]
    families["wavelet"] = [n for n in scorer.results if n.startswith("wavelet")]
    families["LR"] = [n for n in scorer.results if n.startswith("LR") and "+" not in n]
    head = f"{'candidate':72s} {'best20':>7s} {'rand20':>7s} {'all':>7s} {'halo%':>6s} ok"

    def row(n: str) -> str:
        worst = scorer.results[n][np.abs(scorer.results[n][:, 2]).argmax(), 2]
        return (f"{n[:72]:72s} {scorer.kind_mean(n, 'best'):7.4f} "
                f"{scorer.kind_mean(n, 'random'):7.4f} {scorer.mean(n):7.4f} "
                f"{100 * worst:+6.2f} {'y' if scorer.admissible(n) else '-'}")

    print("\nDisc SSIM after a linear fit (mean over stacks); halo% = worst ring-sky")
    print(head)
    for n in ("none",) + ORIGINS + ("origin gaussian_laplacian(1,1) in chain",):
        print(row(n))
    for fam, names in families.items():
        print(f"-- {fam}: top 4 of {len(names)}")
        for n in sorted(names, key=lambda n: -scorer.objective(n))[:4]:
            print(row(n))

    eligible = [n for n in scorer.results if scorer.admissible(n)]
    chosen = max(eligible, key=scorer.mean)
    steps = scorer.candidates[chosen]
    print(f"\nchosen: {chosen}\nDEFAULT_CHAIN = {steps!r}")
    current = label(DEFAULT_CHAIN)
    scorer(current, DEFAULT_CHAIN)
    print(f"current DEFAULT_CHAIN ({current}): {scorer.mean(current):.4f} "
          f"(chosen {scorer.mean(chosen):.4f})")

    print("\nComparison per stack kind: disc SSIM / disc+10px SSIM")
    for n in ("none",) + ORIGINS + ("origin gaussian_laplacian(1,1) in chain", current):
        cols = "  ".join(
            f"{kind}20 " + "/".join(f"{scorer.kind_mean(n, kind, c):.4f}" for c in range(2))
            for kind in ("best", "random"))
        print(f"  {n[:72]:72s} {cols}")
    print("\nPer stack, disc SSIM: none / origin GL / current default  (halo %)")
    for i, case in enumerate(cases):
        r = scorer.results
        print(f"  {case.name:16s} {r['none'][i, 0]:.4f} / {r[ORIGINS[0]][i, 0]:.4f} / "
              f"{r[current][i, 0]:.4f}  ({100 * r[current][i, 2]:+.2f} %)")
    no_dering = label(DEFAULT_CHAIN) + " (dering off)"
    scorer(no_dering, lambda img: apply_chain(img, DEFAULT_CHAIN, dering=False))
    h = {n: 100 * scorer.results[n][:, 2] for n in ("none", current, no_dering)}
    print("\nHalo, ring 3-6 px outside the limb minus sky median, % of disc p99 (mean, worst):")
    for n, v in h.items():
        print(f"  {n[:60]:60s} {v.mean():+.2f}  {v[np.abs(v).argmax()]:+.2f}")

    print(f"\nTiming of DEFAULT_CHAIN: 200x200 mono {timing(DEFAULT_CHAIN, (200, 200)):.1f} ms, "
          f"200x200x3 {timing(DEFAULT_CHAIN, (200, 200, 3)):.1f} ms, "
          f"200x200x3 luminance_only {timing(DEFAULT_CHAIN, (200, 200, 3), True):.1f} ms")


if __name__ == "__main__":
    main()
