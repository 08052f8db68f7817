#!/usr/bin/env python
"""Where one frame's CPU goes, and what that allows on this machine (issue 6).

Usage::

    .venv/bin/python bench/budget.py [--frames 1500] [--out bench/results/budget.md]

The frames of ``bench/perf.py`` (640x480 8-bit mono PNG, 100 unique frames
reused under new names) go through the same objects as ``luckystack run``
(``FrameLoader``, ``Session.load``, ``Session.process``), one at a time on
one thread, and each step's CPU time is taken with ``time.thread_time``:

* read + decode -- ``read_frame`` alone, between the other steps;
* floor -- read + ``cv2.imdecode`` of the same file again at once, as the
  floor loop of ``perf.py`` does it, with its data and the decoder hot in
  the caches as there (faster than ``read_frame`` between the other steps).
  Timed frame by frame beside the others, so that the machine's drift in
  speed (seen here: 25 % within minutes) does not skew the ratio as a
  separate loop before or after would;
* load -- ``Session.load``: read, decode, normalise and the stacker's
  per-frame measure (find the disc, crop, score), what the decode threads do;
* measure -- ``LiveStacker.measure`` of the loaded frame again, alone;
* process -- ``Session.process`` given the loaded frame: the lucky cut, and
  for the frames kept registration, alignment points, de-warping and the
  stack; the CSV row. Split by outcome (stacked / below the cut / other).

Read + decode and measure are timed a second time on their own; they are not
counted twice: the per-frame total is load + process.

The report gives the per-frame CPU of each step and two bounds: the rate if
the total were spread over both cores with no loss (no GIL, no thread
switches: what no threaded CPython program reaches), and the CPU per frame
that 0.8x the floor would leave for everything but read + decode. Run it
with nothing else on the machine; its speed drifts, so the ratios matter
more than the milliseconds.
"""

from __future__ import annotations

import luckystack.daemon  # noqa: F401  (before numpy: one BLAS thread, as the CLI)

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import perf  # noqa: E402  (the same frames, folder layout and git state)

from luckystack.daemon.cli import frame_loader  # noqa: E402
from luckystack.daemon.config import load_settings, pipeline_params  # noqa: E402
from luckystack.daemon.frames import read_frame  # noqa: E402
from luckystack.daemon.session import LUCKY_CUT_REASON, Session  # noqa: E402

CORES = 2
VARIANTS = {
    "default": {},
    "no alignment points": {"align": {"alignment_points": False}},
}


def measure(folder: Path, out: Path, overrides: dict) -> dict:
    """CPU seconds per step over every frame in ``folder``, one thread."""
    from loguru import logger

    logger.remove()
    settings = load_settings(**overrides)
    loader = frame_loader(settings, folder)
    session = Session(pipeline_params(settings), folder, out,
                      write_comparison=settings.output.write_comparison, loader=loader)
    files = sorted(folder.iterdir())
    t = dict.fromkeys(["decode", "floor", "load", "measure", "stacked", "below cut", "other",
                       "outputs"], 0.0)
    counts = dict.fromkeys(["stacked", "below cut", "other"], 0)
    clock = time.thread_time
    with session:
        for path in files:
            c0 = clock()
            read_frame(path)
            t["decode"] += clock() - c0
            c0 = clock()
            # The same file again at once, with everything hot, as perf.py's floor loop.
            with open(path, "rb") as fh:
                cv2.imdecode(np.frombuffer(fh.read(), np.uint8), cv2.IMREAD_UNCHANGED)
            t["floor"] += clock() - c0
            c1 = clock()
            loaded = session.load(path)
            c2 = clock()
            if loaded.measure is not None:
                session.stacker.measure(loaded.frame)
            c3 = clock()
            rec = session.process(path, loaded)
            c4 = clock()
            kind = ("stacked" if rec.outcome == "accepted"
                    else "below cut" if rec.reason.startswith(LUCKY_CUT_REASON) else "other")
            t["load"] += c2 - c1
            t["measure"] += c3 - c2
            t[kind] += c4 - c3
            counts[kind] += 1
        c0 = clock()
        session.write_outputs()
        t["outputs"] += clock() - c0
    loader.close()
    return {"frames": len(files), "cpu_s": t, "counts": counts}


def report(results: dict[str, dict], header: str) -> str:
    lines = [header, ""]
    lines += ["| ms of CPU per frame (mean over all frames) | " + " | ".join(results) + " |",
              "|---|" + "---|" * len(results)]

    def row(label: str, fn) -> None:
        lines.append(f"| {label} | " + " | ".join(fn(r) for r in results.values()) + " |")

    def ms(r: dict, key: str) -> float:
        return 1000 * r["cpu_s"][key] / r["frames"]

    def total(r: dict) -> float:
        return sum(ms(r, k) for k in ("load", "stacked", "below cut", "other", "outputs"))

    row("read + decode (`read_frame`)", lambda r: f"{ms(r, 'decode'):.2f}")
    row("load = read + decode + normalise + measure (decode threads)",
        lambda r: f"{ms(r, 'load'):.2f}")
    row("of which measure (find disc, crop, score)", lambda r: f"{ms(r, 'measure'):.2f}")
    for kind in ("stacked", "below cut", "other"):
        row(f"process, frames {kind}",
            lambda r, k=kind: f"{ms(r, k):.2f} ({r['counts'][k]} frames, "
            f"{1000 * r['cpu_s'][k] / max(r['counts'][k], 1):.2f} each)")
    row("final outputs", lambda r: f"{ms(r, 'outputs'):.2f}")
    row("**total per frame**", lambda r: f"**{total(r):.2f}**")
    row("work besides read + decode", lambda r: f"{total(r) - ms(r, 'decode'):.2f}")
    row("floor: read + decode of the same file again at once (hot caches, as in `perf.py`'s loop)",
        lambda r: f"{ms(r, 'floor'):.2f} ({1000 / ms(r, 'floor'):.0f}/s)")
    row(f"rate with the total spread over {CORES} cores, no loss",
        lambda r: f"{1000 * CORES / total(r):.0f}/s "
        f"({CORES * ms(r, 'floor') / total(r):.2f}x floor)")
    row("work besides read + decode that 0.8x floor allows, no loss",
        lambda r: f"{CORES * ms(r, 'floor') / 0.8 - ms(r, 'decode'):.2f}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=1500)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "budget.md")
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)  # as the daemon
    with tempfile.TemporaryDirectory(prefix="luckystack-budget-") as tmp:
        root = Path(tmp)
        cache = root / "unique"
        cache.mkdir()
        for i, png in enumerate(perf.make_frames(100)):
            (cache / perf.frame_name(i)).write_bytes(png)
        folder = perf.fill_folder(root / "frames", cache, 100, args.frames)
        results = {}
        for name, overrides in VARIANTS.items():
            results[name] = measure(folder, root / f"out-{len(results)}", overrides)
    header = (f"# luckystack CPU budget per frame\n\nluckystack {perf._git_state()}; "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} CPUs; "
              f"{args.frames} frames of `bench/perf.py` (640x480 8-bit mono PNG), one thread, "
              "`time.thread_time` per step.")
    text = report(results, header)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
