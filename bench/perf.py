#!/usr/bin/env python
"""Speed benchmark: luckystack's throughput, latency and memory (issue 6).

Usage::

    .venv/bin/python bench/perf.py [--quick] [--out bench/results/perf.md] [--no-pss]

Prints a markdown report and writes it to ``--out`` (default
``bench/results/perf.md``, or ``perf_quick.md`` with ``--quick``), the raw
numbers beside it as ``.json`` and a cProfile of ``run_batch`` as
``<out stem>_profile.txt``.

What it measures (640x480 8-bit mono PNG frames from
:func:`luckystack.core.simulate.simulate_session`, radius 100 px, real noise;
``U`` unique frames are simulated once and reused cyclically under new names):

1. floor -- read + ``cv2.imdecode`` of the same files on one thread;
2. ``luckystack run`` -- ``run_batch`` in-process (default and ``seed``
   presets) and the CLI in a subprocess;
3. ``luckystack watch`` -- a subprocess; frames are written to a hidden
   ``.NAME.part`` and ``os.replace``-d into place at a set rate (t0 = the
   replace); the latency of a frame is the first ``stacked.png`` replace
   (inotify ``IN_MOVED_TO`` on the output folder) after its ``crops.csv`` row
   appeared (``IN_MODIFY``), minus t0. Rates are stepped up (100, 200, 300,
   400 frames/s) while they are sustained: every frame in the CSV within 1 s
   of the last write;
4. memory -- peak RSS (``VmHWM`` of the child, sampled every 0.25 s and
   just before it is stopped) of ``luckystack run`` with ``buffer_size`` 20
   and 2000. Not ``ru_maxrss``: Linux carries the parent's high-water mark
   across fork + exec into the child's ``ru_maxrss``, so it reported the
   bench's own ~380 MB;
5. PlanetarySystemStacker on the same folder as (2), wall clock;
6. a cProfile of ``run_batch``;
7. the floor again, to tell whether the machine's speed held during the bench.

Long measurements are capped in time so that ``--quick`` stays under 2
minutes and the full run under 15; a capped measurement says how many frames
it did, and the memory figures it could not reach are extrapolated (and
marked so). Every figure is reported with the 1-minute load average of the
machine while it was taken, and CPU time beside wall time, because other
processes share the 2 cores.
"""

from __future__ import annotations

import os

# The environment as the bench found it, for the children (PlanetarySystemStacker
# must not inherit the single-threaded BLAS setting below).
ORIG_ENV = dict(os.environ)

# Import the daemon package before numpy, as the CLI does: it sets the BLAS
# thread count to 1 at import time, which only works before numpy is loaded.
# Without this, the in-process run_batch figures used multi-threaded BLAS and
# came out 2-3x slower than `luckystack run` on a loaded 2-core machine.
import luckystack.daemon  # noqa: E402,F401  (side effect: BLAS threads)

import argparse
import cProfile
import ctypes
import io
import json
import math
import pstats
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from luckystack.core.simulate import PlanetModel, SeeingModel, simulate_session

REPO = Path(__file__).resolve().parents[1]
LUCKYSTACK_EXE = Path(sys.executable).with_name("luckystack")
PSS_EXE = "PlanetarySystemStacker"

SHAPE = (480, 640)
MODEL = PlanetModel(radius_px=100)
#: Frames at the start of a watch step left out of the steady-state latency: the
#: first 10 of a session are all stacked (the lucky cut needs a history), and the
#: stack, crop size and alignment-point reference are set up.
WARMUP_FRAMES = 50
SEEING = SeeingModel(
    jitter_px=2.5,
    jitter_correlation=0.5,
    drift_px_per_frame=(0.01, 0.02),
    sigma_min_px=0.8,
    sigma_max_px=3.0,
    lucky_fraction=0.15,
    sigma_correlation=0.5,
    photons_at_white=500.0,
    read_noise=3.0,
    background=0.02,
)


# --------------------------------------------------------------------------
# Plan
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    name: str
    unique: int  # simulated frames, reused cyclically
    floor_n: int  # frames read + decoded for the floor
    run_n: int  # frames of the run / PSS folder
    seed_n: int  # frames for the seed preset
    cli_run: bool  # also time the CLI on the run folder
    mem_n: int  # frames of the memory folder
    mem_cap_s: float  # time cap per memory run
    watch_step_s: float  # seconds per watch rate step
    watch_rates: tuple[float, ...]
    drain_cap_s: float  # wait at most this long for the latency step's backlog
    pss_n: int
    profile_n: int
    fallbacks: int  # watch: lower rates tried when the first is not sustained
    budget_s: float  # stop optional parts past this


QUICK = Plan("quick", unique=100, floor_n=300, run_n=150, seed_n=100, cli_run=False,
             mem_n=2000, mem_cap_s=15.0, watch_step_s=4.0, watch_rates=(100, 200, 300, 400),
             drain_cap_s=3.0, pss_n=150, profile_n=80, fallbacks=2, budget_s=100.0)
FULL = Plan("full", unique=500, floor_n=1000, run_n=1000, seed_n=1000, cli_run=True,
            mem_n=20000, mem_cap_s=150.0, watch_step_s=10.0, watch_rates=(100, 200, 300, 400),
            drain_cap_s=10.0, pss_n=1000, profile_n=300, fallbacks=3, budget_s=840.0)


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def load1() -> float:
    with open("/proc/loadavg") as fh:
        return float(fh.read().split()[0])


def load_text(a: float, b: float | None = None) -> str:
    return f"{a:.1f}" if b is None else f"{a:.1f}→{b:.1f}"


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM of a live process, in kB (empty if it is gone)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def count_rows(csv_path: Path) -> int:
    """Data rows of a crops.csv (lines minus the header)."""
    try:
        with open(csv_path, "rb") as fh:
            return max(0, fh.read().count(b"\n") - 1)
    except OSError:
        return 0


def _git_state() -> str:
    """HEAD and whether core/ or daemon/ differ from it (read-only, no index refresh)."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(REPO), "status", "--porcelain", "--",
             "core", "daemon"],
            capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + (" + uncommitted changes in core/ or daemon/" if dirty else "")


class Children:
    """Every subprocess the bench starts; all killed in ``kill_all`` (finally)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, cmd: list[str], **kw) -> subprocess.Popen:
        p = subprocess.Popen(cmd, **kw)
        self.procs.append(p)
        return p

    def kill_all(self) -> None:
        for p in self.procs:
            if p.returncode is None:
                try:
                    p.kill()
                except OSError:
                    pass
                reap(p, timeout=5.0)


CHILDREN = Children()


@dataclass
class Reaped:
    code: int | None
    maxrss_kb: int  # ru_maxrss of that child (includes the forking parent's peak: not used)
    cpu_s: float  # user + system


def reap(p: subprocess.Popen, timeout: float | None = None) -> Reaped | None:
    """``os.wait4`` the child (its own rusage); None if still running after ``timeout``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        except ChildProcessError:
            if p.returncode is None:
                p.returncode = -1
            return Reaped(p.returncode, 0, 0.0)
        if pid == p.pid:
            p.returncode = os.waitstatus_to_exitcode(status)
            return Reaped(p.returncode, ru.ru_maxrss, ru.ru_utime + ru.ru_stime)
        if deadline is not None and time.monotonic() >= deadline:
            return None
        time.sleep(0.02)


def stop(p: subprocess.Popen, grace_s: float = 15.0) -> Reaped:
    """SIGINT (finish the frame, flush), then SIGKILL after ``grace_s``."""
    if p.returncode is None:
        try:
            p.send_signal(signal.SIGINT)
        except OSError:
            pass
    r = reap(p, timeout=grace_s)
    if r is None:
        p.kill()
        r = reap(p, timeout=10.0) or Reaped(None, 0, 0.0)
    return r


#: Config overrides of every measurement (--set), as LUCKYSTACK_* variables.
OVERRIDES: dict[str, str] = {}


def override_env(assignment: str) -> tuple[str, str]:
    """``"align.alignment_points=false"`` -> ``("LUCKYSTACK_ALIGN__ALIGNMENT_POINTS", "false")``."""
    key, sep, value = assignment.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected SECTION.KEY=VALUE, got {assignment!r}")
    name = "LUCKYSTACK_" + "__".join(part.strip().upper() for part in key.split("."))
    return name, value.strip()


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in ORIG_ENV.items() if not k.startswith("LUCKYSTACK_")}
    env.update(OVERRIDES)
    env.update(extra)
    return env


# --------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------


def make_frames(n_unique: int, seed: int = 6) -> list[bytes]:
    bad = {"black": 1, "clipped": 1, "blurred": 1}
    session = simulate_session(n_unique, shape=SHAPE, model=MODEL, seeing=SEEING,
                               bad_frames=bad, seed=seed)
    out = []
    for f in session.frames:
        ok, buf = cv2.imencode(".png", f)
        assert ok
        out.append(buf.tobytes())
    return out


def frame_name(i: int) -> str:
    return f"frame_{i:06d}.png"


def fill_folder(folder: Path, cache: Path, n_unique: int, n: int) -> Path:
    """``n`` frames named frame_000000.png... as hard links to the cached unique PNGs.

    Links (same bytes, new names) instead of copies keep 20,000 frames from
    writing 3 GB; every file is in the page cache either way.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        src = cache / frame_name(i % n_unique)
        dst = folder / frame_name(i)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
    return folder


# --------------------------------------------------------------------------
# 1. Floor
# --------------------------------------------------------------------------


def measure_floor(folder: Path, n: int) -> dict:
    paths = sorted(folder.iterdir())[:n]
    l0 = load1()
    c0, t0 = time.process_time(), time.perf_counter()
    for p in paths:
        with open(p, "rb") as fh:
            img = cv2.imdecode(np.frombuffer(fh.read(), np.uint8), cv2.IMREAD_UNCHANGED)
        assert img is not None
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    return {"frames": len(paths), "wall_s": wall, "cpu_s": cpu, "fps": len(paths) / wall,
            "cpu_fps": len(paths) / max(cpu, 1e-9), "load": load_text(l0, load1())}


# --------------------------------------------------------------------------
# 2. run (API and CLI)
# --------------------------------------------------------------------------


def measure_run_api(folder: Path, out: Path, preset: str | None) -> dict:
    from luckystack.daemon.cli import run_batch
    from luckystack.daemon.config import load_settings

    from loguru import logger

    logger.remove()  # rejected frames would log to stderr; not part of the cost we want
    logger.add(io.StringIO(), level="INFO")
    settings = load_settings(**({"preset": preset} if preset else {}))
    l0 = load1()
    c0, t0 = time.process_time(), time.perf_counter()
    session = run_batch(folder, out, settings, stream=io.StringIO())
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    n = session.stats.processed
    return {"preset": preset or "default", "frames": n, "accepted": session.stats.accepted,
            "wall_s": wall, "cpu_s": cpu, "fps": n / wall, "cpu_fps": n / max(cpu, 1e-9),
            "load": load_text(l0, load1())}


@dataclass
class CliRun:
    frames_total: int
    rows: int = 0
    wall_s: float = 0.0
    capped: bool = False
    code: int | None = None
    maxrss_kb: int = 0
    hwm_kb: int = 0
    cpu_s: float = 0.0
    summary_fps: float | None = None  # the CLI's own "processed N frames in X s"
    steady_fps: float | None = None  # from CSV rows over time, after warm-up
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (t, rows, rss_kb)
    load: str = ""


def measure_run_cli(folder: Path, out: Path, n_total: int, cap_s: float | None,
                    env: dict[str, str], logs: Path, warm_rows: int = 30) -> CliRun:
    """``luckystack run FOLDER --output OUT`` in a subprocess, sampled every 0.25 s.

    Stopped with SIGINT at ``cap_s`` (then counted from the CSV).
    """
    res = CliRun(frames_total=n_total)
    csv_path = out / "crops.csv"
    l0 = load1()
    with open(logs, "w") as log:
        t0 = time.monotonic()
        p = CHILDREN.start([str(LUCKYSTACK_EXE), "run", str(folder), "--output", str(out)],
                           stdout=log, stderr=subprocess.STDOUT, env=env)
        reaped = None
        while True:
            reaped = reap(p, timeout=0.25)
            now = time.monotonic() - t0
            if reaped is not None:
                break
            st = proc_status(p.pid)
            res.hwm_kb = max(res.hwm_kb, st.get("VmHWM", 0))
            res.samples.append((now, count_rows(csv_path), st.get("VmRSS", 0)))
            if cap_s is not None and now > cap_s:
                res.capped = True
                res.hwm_kb = max(res.hwm_kb, proc_status(p.pid).get("VmHWM", 0))
                reaped = stop(p)
                break
        res.wall_s = time.monotonic() - t0
    res.code, res.maxrss_kb, res.cpu_s = reaped.code, reaped.maxrss_kb, reaped.cpu_s
    res.rows = count_rows(csv_path)
    res.load = load_text(l0, load1())
    m = re.search(r"processed (\d+) frames in ([\d.]+) s", logs.read_text(errors="replace"))
    if m and float(m.group(2)) > 0:
        res.summary_fps = int(m.group(1)) / float(m.group(2))
    steady = [(t, r) for t, r, _ in res.samples if r >= warm_rows]
    if len(steady) >= 2 and steady[-1][0] > steady[0][0]:
        res.steady_fps = (steady[-1][1] - steady[0][1]) / (steady[-1][0] - steady[0][0])
    return res


def rss_slope_kb_per_row(samples: list[tuple[float, int, int]], from_row: int,
                         latter_half: bool) -> float | None:
    """Least-squares RSS growth per CSV row over the samples with rows >= ``from_row``.

    ``latter_half``: fit only the second half (drift after the buffer filled);
    otherwise the whole range (the buffer filling, which is linear).
    """
    pts = [(r, rss) for _, r, rss in samples if r >= from_row and rss > 0]
    if len(pts) < 4 or pts[-1][0] - pts[0][0] < 20:
        return None
    if latter_half and pts[-1][0] - pts[len(pts) // 2][0] >= 20:
        pts = pts[len(pts) // 2:]
    r = np.array([p[0] for p in pts], float)
    m = np.array([p[1] for p in pts], float)
    return float(np.polyfit(r, m, 1)[0])


# --------------------------------------------------------------------------
# 3. watch
# --------------------------------------------------------------------------

IN_MODIFY, IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE = 0x2, 0x8, 0x80, 0x100


class OutputMonitor(threading.Thread):
    """Follows OUT/crops.csv rows and OUT/stacked.png replaces with inotify.

    ``row_ns[file]`` is when a frame's CSV row was first seen, ``stacked_ns[file]``
    the first ``stacked.png`` replace seen after it (accepted frames only;
    a rejected frame changes no image). Times are ``time.monotonic_ns()``.
    """

    def __init__(self, out: Path) -> None:
        super().__init__(daemon=True)
        self.out = out
        self.csv = out / "crops.csv"
        self.row_ns: dict[str, int] = {}
        self.outcome: dict[str, str] = {}
        self.stacked_ns: dict[str, int] = {}
        self.replaces = 0
        self._pending: list[str] = []
        self._fh = None
        self._buf = b""
        self._header = True
        self._halt = threading.Event()
        self._lock = threading.Lock()
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        wd = libc.inotify_add_watch(self.fd, os.fsencode(out),
                                    IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE)
        if wd < 0:
            raise OSError(ctypes.get_errno(), "inotify_add_watch failed")

    @property
    def rows(self) -> int:
        with self._lock:
            return len(self.row_ns)

    def _read_csv(self, now: int) -> None:
        if self._fh is None:
            try:
                self._fh = open(self.csv, "rb")
            except OSError:
                return
        data = self._fh.read()
        if not data:
            return
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            if self._header:
                self._header = False
                continue
            cols = line.decode("utf-8", "replace").split(",")
            if len(cols) < 4:
                continue
            name, outcome = cols[1], cols[3]
            with self._lock:
                if name not in self.row_ns:
                    self.row_ns[name] = now
                    self.outcome[name] = outcome
                    if outcome == "accepted":
                        self._pending.append(name)

    def _replaced(self, now: int) -> None:
        self.replaces += 1
        with self._lock:
            for name in self._pending:
                self.stacked_ns[name] = now
            self._pending.clear()

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                ready, _, _ = select.select([self.fd], [], [], 0.05)
                if not ready:
                    continue
                now = time.monotonic_ns()
                try:
                    data = os.read(self.fd, 65536)
                except BlockingIOError:
                    continue
                pos = 0
                while pos + 16 <= len(data):
                    _wd, mask, _cookie, length = struct.unpack_from("iIII", data, pos)
                    name = data[pos + 16: pos + 16 + length].rstrip(b"\0").decode(errors="replace")
                    pos += 16 + length
                    if name == "crops.csv" and mask & (IN_MODIFY | IN_CREATE):
                        self._read_csv(now)
                    elif name == "stacked.png" and mask & IN_MOVED_TO:
                        self._read_csv(now)  # rows flushed before this replace
                        self._replaced(now)
        finally:
            if self._fh is not None:
                self._fh.close()
            os.close(self.fd)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=2.0)


@dataclass
class WatchProc:
    proc: subprocess.Popen
    inp: Path
    out: Path
    monitor: OutputMonitor
    log: Path
    hwm_kb: int = 0


def start_watch(root: Path, tag: str, env: dict[str, str]) -> WatchProc:
    inp, out = root / f"watch_in_{tag}", root / f"watch_out_{tag}"
    inp.mkdir()
    out.mkdir()
    monitor = OutputMonitor(out)
    monitor.start()
    log = root / f"watch_{tag}.log"
    with open(log, "w") as fh:
        p = CHILDREN.start([str(LUCKYSTACK_EXE), "watch", str(inp), "--output", str(out)],
                           stdout=fh, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if "watching" in log.read_text(errors="replace"):
            return WatchProc(p, inp, out, monitor, log)
        if p.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"watch did not start: {log.read_text(errors='replace')[-500:]}")


def trickle(w: WatchProc, frames: list[bytes], start: int, rate: float, seconds: float,
            t0_ns: dict[str, int]) -> tuple[int, float]:
    """Write ``rate*seconds`` frames at ``rate``; returns (count, achieved rate)."""
    n = int(round(rate * seconds))
    period = 1e9 / rate
    begin = time.monotonic_ns()
    for k in range(n):
        due = begin + k * period
        delay = (due - time.monotonic_ns()) / 1e9
        if delay > 0:
            time.sleep(delay)
        i = start + k
        name = frame_name(i)
        tmp = w.inp / f".{name}.part"
        with open(tmp, "wb") as fh:
            fh.write(frames[i % len(frames)])
        os.replace(tmp, w.inp / name)
        t0_ns[name] = time.monotonic_ns()
        if k % 50 == 0:
            w.hwm_kb = max(w.hwm_kb, proc_status(w.proc.pid).get("VmHWM", 0))
    elapsed = (time.monotonic_ns() - begin) / 1e9
    return n, n / max(elapsed, 1e-9)


def watch_step(w: WatchProc, frames: list[bytes], start: int, rate: float, seconds: float,
               catchup_s: float = 1.0, drain_s: float = 0.0) -> dict:
    """One rate step: trickle, then check catch-up within ``catchup_s``.

    ``drain_s`` > 0 waits longer (for the latency of every frame), up to that.
    """
    t0_ns: dict[str, int] = {}
    l0 = load1()
    rows0 = w.monitor.rows
    samples = []  # (t since start, written, rows)
    stop_sampling = threading.Event()
    t_begin = time.monotonic()

    def sampler() -> None:
        while not stop_sampling.wait(0.25):
            samples.append((time.monotonic() - t_begin, len(t0_ns), w.monitor.rows - rows0))

    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    n, achieved = trickle(w, frames, start, rate, seconds, t0_ns)
    stop_sampling.set()
    th.join()
    t_end = time.monotonic()
    backlog_end = n - (w.monitor.rows - rows0)
    caught = None
    names = list(t0_ns)
    deadline = t_end + max(catchup_s, drain_s)
    while True:
        now = time.monotonic()
        if caught is None and w.monitor.rows - rows0 >= n:
            caught = now - t_end
        if now >= deadline:
            break
        if caught is None:
            if drain_s <= 0 and now - t_end > catchup_s:
                break
        else:
            pending = [x for x in names if w.monitor.outcome.get(x) == "accepted"
                       and x not in w.monitor.stacked_ns]
            if not pending or (drain_s <= 0 and now - t_end > caught + 0.5):
                break
        time.sleep(0.005)
    rows_done = w.monitor.rows - rows0
    w.hwm_kb = max(w.hwm_kb, proc_status(w.proc.pid).get("VmHWM", 0))
    # saturated processing rate: rows/s over the samples where a backlog existed
    sat = [(t, r) for t, wr, r in samples if wr - r > 5]
    sat_fps = None
    if len(sat) >= 2 and sat[-1][0] > sat[0][0]:
        sat_fps = (sat[-1][1] - sat[0][1]) / (sat[-1][0] - sat[0][0])
    mid_backlog = None
    if samples:
        t_mid, wr_mid, r_mid = samples[len(samples) // 2]
        mid_backlog = wr_mid - r_mid
    lat = []
    steady = []  # after the first WARMUP_FRAMES (the session's start: every frame stacked)
    missing = 0
    rejected = 0
    for i, name in enumerate(names):
        oc = w.monitor.outcome.get(name)
        if oc == "rejected":
            rejected += 1
            continue
        if name in w.monitor.stacked_ns:
            lat.append((w.monitor.stacked_ns[name] - t0_ns[name]) / 1e6)
        else:
            missing += 1
            lat.append(math.inf)
        if i >= WARMUP_FRAMES:
            steady.append(lat[-1])
    lat_arr = np.sort(np.array(lat)) if lat else np.array([math.inf])
    steady_arr = np.sort(np.array(steady)) if steady else np.array([math.inf])

    def pct(q: float, arr: np.ndarray = lat_arr) -> float:
        return float(arr[min(len(arr) - 1, int(math.ceil(q * len(arr))) - 1)])

    sustained = caught is not None and caught <= catchup_s
    return {
        "rate": rate, "written": n, "achieved_rate": achieved, "rows_done": rows_done,
        "backlog_mid": mid_backlog, "backlog_end": backlog_end,
        "caught_up_s": caught, "sustained": sustained, "saturated_fps": sat_fps,
        "p50_ms": pct(0.50), "p95_ms": pct(0.95), "max_ms": float(lat_arr[-1]),
        "steady_p50_ms": pct(0.50, steady_arr), "steady_p95_ms": pct(0.95, steady_arr),
        "steady_n": len(steady),
        "not_reflected": missing, "rejected": rejected,
        "load": load_text(l0, load1()),
    }


def end_watch(w: WatchProc) -> dict:
    w.hwm_kb = max(w.hwm_kb, proc_status(w.proc.pid).get("VmHWM", 0))
    r = stop(w.proc)
    w.monitor.stop()
    return {"code": r.code, "peak_rss_mb": w.hwm_kb / 1024,
            "cpu_s": r.cpu_s}


def measure_watch(root: Path, frames: list[bytes], plan: Plan, env: dict[str, str],
                  time_left) -> dict:
    res: dict = {"steps": [], "processes": []}
    w = start_watch(root, "a", env)
    try:
        index = 0
        first = True
        for rate in plan.watch_rates:
            if not first and time_left() < plan.watch_step_s + 5:
                res["note"] = "ladder cut short by the time budget"
                break
            step = watch_step(w, frames, index, rate, plan.watch_step_s,
                              drain_s=plan.drain_cap_s if first else 0.0)
            index += step["written"]
            step["process"] = "a"
            res["steps"].append(step)
            first = False
            if not step["sustained"]:
                break
    finally:
        res["processes"].append(end_watch(w))
    steps = res["steps"]
    sustained = [s["rate"] for s in steps if s["sustained"]]
    res["max_sustained"] = max(sustained) if sustained else None
    res["max_tried"] = steps[-1]["rate"] if steps else None
    # Not even the first rate: try 80 % of the saturated processing rate seen in
    # the previous step, with a fresh daemon (no backlog), a few times.
    fallback = 0
    while (steps and not any(s["sustained"] for s in steps) and fallback < plan.fallbacks
           and time_left() > plan.watch_step_s + 12):
        sat = min((s["saturated_fps"] for s in steps if s["saturated_fps"]), default=None)
        if not sat or sat <= 1:
            break
        rate = max(1.0, math.floor(0.8 * sat))
        tag = f"b{fallback}"
        w = start_watch(root, tag, env)
        try:
            step = watch_step(w, frames, 0, rate, plan.watch_step_s)
            step["process"] = tag
            steps.append(step)
            if step["sustained"]:
                res["max_sustained"] = rate
        finally:
            res["processes"].append(end_watch(w))
        fallback += 1
    res["peak_rss_mb"] = max(p["peak_rss_mb"] for p in res["processes"])
    return res


# --------------------------------------------------------------------------
# 5. PlanetarySystemStacker
# --------------------------------------------------------------------------


def measure_pss(folder: Path, root: Path) -> dict:
    exe = shutil.which(PSS_EXE)
    if exe is None:
        return {"status": f"not run: `{PSS_EXE}` not on PATH "
                          "(Debian: apt-get install planetary-system-stacker)"}
    home = root / "pss_home"
    home.mkdir(exist_ok=True)
    n = len(list(folder.iterdir()))
    cmd = [exe, str(folder), "-m", "Planet", "-s", "10", "--out_format", "png"]
    env = dict(ORIG_ENV, QT_QPA_PLATFORM="offscreen", HOME=str(home))
    log = root / "pss.log"
    l0 = load1()
    with open(log, "w") as fh:
        t0 = time.monotonic()
        p = CHILDREN.start(cmd, cwd=root, env=env, stdout=fh, stderr=subprocess.STDOUT)
        hwm = 0
        deadline = time.monotonic() + 900
        while (r := reap(p, timeout=0.25)) is None:
            hwm = max(hwm, proc_status(p.pid).get("VmHWM", 0))
            if time.monotonic() > deadline:
                p.kill()
                r = reap(p, timeout=10) or Reaped(None, 0, 0.0)
                break
        wall = time.monotonic() - t0
    text = log.read_text(errors="replace")
    out = folder.parent / f"{folder.name}_pss.png"
    res = {"cmd": "QT_QPA_PLATFORM=offscreen HOME=$TMP " + " ".join(
        [PSS_EXE, "FOLDER", "-m", "Planet", "-s", "10", "--out_format", "png"]),
        "frames": n, "wall_s": wall, "cpu_s": r.cpu_s, "code": r.code,
        "peak_rss_mb": hwm / 1024, "load": load_text(l0, load1())}
    m = re.search(r"Execution over all\s+([\d.]+)", text)
    res["internal_s"] = float(m.group(1)) if m else None
    if r.code != 0 or not out.is_file():
        tail = " | ".join(text.strip().splitlines()[-3:])
        res["status"] = f"failed: exit {r.code}, output {'present' if out.is_file() else 'missing'}: {tail}"
        return res
    res["status"] = "ok"
    res["fps_wall"] = n / wall
    if res["internal_s"]:
        res["fps_internal"] = n / res["internal_s"]
    return res


# --------------------------------------------------------------------------
# 6. Profile
# --------------------------------------------------------------------------


def profile_run(folder: Path, out: Path, path: Path, header: str) -> list[str]:
    from luckystack.daemon.cli import run_batch
    from luckystack.daemon.config import load_settings

    settings = load_settings()
    # cProfile sees one thread; run_batch decodes frames on a prefetch thread,
    # so every thread started while profiling gets its own profiler (merged below).
    thread_profs: list[cProfile.Profile] = []

    def per_thread(frame, event, arg):  # noqa: ANN001 - first event of a new thread
        tp = cProfile.Profile()
        thread_profs.append(tp)
        tp.enable()  # replaces this hook for that thread

    l0 = load1()
    prof = cProfile.Profile()
    threading.setprofile(per_thread)
    try:
        prof.enable()
        run_batch(folder, out, settings, stream=io.StringIO())
        prof.disable()
    finally:
        threading.setprofile(None)
    time.sleep(0.2)  # let finished threads unwind
    l1 = load1()
    text = [header, f"load (1-min avg): {load_text(l0, l1)}",
            f"threads profiled: main + {len(thread_profs)} started during the run (merged)", ""]
    top_tottime: list[str] = []
    for key in ("cumulative", "tottime"):
        s = io.StringIO()
        st = pstats.Stats(prof, stream=s)
        for tp in thread_profs:
            try:
                st.add(tp)
            except (TypeError, ValueError):
                pass
        st.strip_dirs().sort_stats(key).print_stats(25)
        text.append(f"==== sorted by {key} (top 25) ====")
        text.append(s.getvalue())
        if key == "tottime":
            lines = s.getvalue().splitlines()
            start = next(i for i, ln in enumerate(lines) if ln.strip().startswith("ncalls"))
            top_tottime = [ln for ln in lines[start + 1:] if ln.strip()][:10]
    path.write_text("\n".join(text))
    return top_tottime


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**pass**" if ok else "**FAIL**")


def build_report(r: dict, plan: Plan) -> str:
    floor = r["floor"]["fps"]
    rows = []

    def add(what: str, value: str, target: str, ok: bool | None, load: str, note: str = "") -> None:
        rows.append(f"| {what} | {value} | {target} | {verdict(ok)} | {load} | {note} |")

    f = r["floor"]
    add("floor: read + imdecode, 1 thread", f"{f['fps']:.0f} frames/s", "—", None, f["load"],
        f"{f['frames']} files; CPU-bound {f['cpu_fps']:.0f} frames/s")
    fe = r.get("floor_end")
    if fe:
        drift = fe["fps"] / f["fps"] - 1
        add("floor again, at the end of the bench", f"{fe['fps']:.0f} frames/s ({drift:+.0%})",
            "—", None, fe["load"],
            "the machine's speed changed during the bench: ratios and rates are unreliable"
            if abs(drift) > 0.10 else "steady within 10 %: the ratios hold")
    for key in ("run_default", "run_seed"):
        x = r.get(key)
        if not x:
            continue
        ratio = x["fps"] / floor
        add(f"`run` API, preset {x['preset']}", f"{x['fps']:.1f} frames/s ({ratio:.2f}× floor)",
            "≥ 250/s and ≥ 0.8× floor", x["fps"] >= 250 and ratio >= 0.8, x["load"],
            f"{x['frames']} frames in {x['wall_s']:.1f} s; per CPU-second {x['cpu_fps']:.1f} frames")
    c = r.get("run_cli")
    if c:
        fps = c["frames_total"] / c["wall_s"]
        add("`run` CLI subprocess, default", f"{fps:.1f} frames/s wall ({fps / floor:.2f}× floor)",
            "≥ 250/s and ≥ 0.8× floor", fps >= 250 and fps / floor >= 0.8, c["load"],
            f"{c['frames_total']} frames, {c['wall_s']:.1f} s incl. start-up; own summary "
            f"{c['summary_fps'] or float('nan'):.1f}/s; per CPU-second "
            f"{c['frames_total'] / max(c['cpu_s'], 1e-9):.1f}")
    wt = r.get("watch")
    if wt and wt.get("steps"):
        s0 = wt["steps"][0]
        p95 = s0["p95_ms"]
        fmt = lambda v: "> drain cap" if math.isinf(v) else f"{v:.0f} ms"  # noqa: E731
        add(f"`watch` latency at {s0['rate']:.0f} frames/s (p50 / p95 / max)",
            f"{fmt(s0['p50_ms'])} / {fmt(p95)} / {fmt(s0['max_ms'])}", "p95 ≤ 100 ms",
            (not math.isinf(p95)) and p95 <= 100, s0["load"],
            f"{s0['written']} frames over {plan.watch_step_s:.0f} s (writer achieved "
            f"{s0['achieved_rate']:.0f}/s); backlog {s0['backlog_end']} at the end; "
            f"{s0['not_reflected']} accepted frames not in stacked.png within "
            f"{plan.drain_cap_s:.0f} s; {s0['rejected']} rejected; after the first "
            f"{WARMUP_FRAMES} frames (the session's start, when every frame is stacked): "
            f"p50 {fmt(s0['steady_p50_ms'])}, p95 {fmt(s0['steady_p95_ms'])} over "
            f"{s0['steady_n']} accepted frames")
        ms = wt["max_sustained"]
        tried = ", ".join(
            f"{s['rate']:.0f}/s: {'ok' if s['sustained'] else 'no'} (backlog mid {s['backlog_mid']}, "
            f"end {s['backlog_end']}"
            + (f", saturated {s['saturated_fps']:.1f}/s" if s["saturated_fps"] else "") + ")"
            for s in wt["steps"])
        if ms is None:
            value = f"< {min(s['rate'] for s in wt['steps']):.0f} frames/s (no rate tried was sustained)"
        else:
            higher = [s["rate"] for s in wt["steps"] if not s["sustained"] and s["rate"] > ms]
            value = f"≥ {ms:.0f}" + (f", < {min(higher):.0f}" if higher else "") + " frames/s"
        ok = ms is not None and ms >= 250 and ms / floor >= 0.8
        add("`watch` sustained max rate", value + (f" ({ms / floor:.2f}× floor)" if ms else ""),
            "≥ 250/s and ≥ 0.8× floor", ok, " / ".join(s["load"] for s in wt["steps"]),
            f"steps of {plan.watch_step_s:.0f} s: {tried}; sustained = all rows in the CSV ≤ 1 s "
            "after the last write" + (f"; {wt['note']}" if wt.get("note") else ""))
        best = [s for s in wt["steps"] if s["sustained"] and s["rate"] == ms]
        if best and best[0] is not s0:
            b = best[0]
            add(f"`watch` latency at {b['rate']:.0f} frames/s, the max sustained (p50 / p95 / max)",
                f"{fmt(b['p50_ms'])} / {fmt(b['p95_ms'])} / {fmt(b['max_ms'])}", "—", None,
                b["load"], f"{b['written']} frames; {b['rejected']} rejected")
        add("`watch` peak RSS", f"{wt['peak_rss_mb']:.0f} MB", "—", None, "",
            "VmHWM over the watch steps above")
    for key, limit, label in (("mem_20", 300, "buffer 20"), ("mem_2000", 1024, "buffer 2000")):
        m = r.get(key)
        if not m:
            continue
        peak = m["hwm_kb"] / 1024
        est = m.get("peak_estimate_mb")
        value = f"{peak:.0f} MB measured over {m['rows']} frames"
        target_n = m["frames_total"]
        ok: bool | None
        if m["rows"] >= target_n:
            ok = peak <= limit
        elif est is not None:
            value += f"; **≈ {est:.0f} MB extrapolated** to {target_n}"
            ok = est <= limit
        else:
            ok = None
        add(f"peak RSS, `run`, {label}, {target_n} frames", value, f"≤ {limit} MB", ok, m["load"],
            m.get("note", ""))
    m20, m2k = r.get("mem_20"), r.get("mem_2000")
    if m20 and m2k and m20.get("steady_fps") and m2k.get("steady_fps"):
        cost = m20["steady_fps"] / m2k["steady_fps"]
        add("cost per frame, buffer 2000 / buffer 20", f"{cost:.2f}×", "≤ 1.5×", cost <= 1.5,
            f"{m20['load']} / {m2k['load']}",
            f"steady CSV-row rates {m20['steady_fps']:.1f} vs {m2k['steady_fps']:.1f} frames/s; "
            f"buffer 2000 held ≤ {m2k['rows']} frames (it fills after 2000)")
    p = r.get("pss", {})
    if p.get("status") == "ok":
        api = r["run_default"]
        cli = r.get("run_cli_pss")
        parts = [f"PSS {p['fps_wall']:.1f} frames/s wall, "
                 f"{p.get('fps_internal', float('nan')):.1f}/s processing only"]
        proc_ratio = api["fps"] / p["fps_internal"] if p.get("fps_internal") else None
        if proc_ratio is not None:
            parts.append(f"processing only: luckystack run_batch {api['fps']:.1f}/s = "
                         f"{proc_ratio:.2f}× PSS")
        wall_ratio = None
        if cli:
            cli_fps = cli["frames_total"] / cli["wall_s"]
            wall_ratio = cli_fps / p["fps_wall"]
            parts.append(f"wall clock: `luckystack run` {cli_fps:.1f}/s = {wall_ratio:.2f}× PSS")
        else:
            parts.append(f"(run_batch vs PSS wall: {api['fps'] / p['fps_wall']:.2f}×)")
        ratio = wall_ratio if wall_ratio is not None else proc_ratio
        add(f"PlanetarySystemStacker, same {p['frames']} frames", "; ".join(parts),
            "≥ 2× PSS", None if ratio is None else ratio >= 2, p["load"],
            "verdict on " + ("wall clock, both commands incl. start-up" if wall_ratio is not None
                             else "processing only (PSS's 'Execution over all' vs in-process "
                             "run_batch; both without start-up)")
            + f"; `{p['cmd']}`; PSS ranks all frames, stacks the best 10 % once at the end; "
            f"its peak RSS {p['peak_rss_mb']:.0f} MB")
    else:
        add("PlanetarySystemStacker", p.get("status", "not run"), "≥ 2× PSS", None, p.get("load", ""))

    lines = [
        f"# luckystack speed benchmark ({plan.name})",
        "",
        f"luckystack {r['git']}; {r['date']}; {os.cpu_count()} CPUs; "
        f"Python {sys.version.split()[0]}, OpenCV {cv2.__version__}, numpy {np.__version__}; "
        f"bench took {r['seconds']:.0f} s."
        + (" Config overrides: " + ", ".join(f"`{k}={v}`" for k, v in r["overrides"].items())
           + "." if r.get("overrides") else " Default config."),
        "",
        f"Frames: {SHAPE[1]}×{SHAPE[0]} 8-bit mono PNG (~{r['png_kb']:.0f} kB), "
        f"`simulate_session` radius 100 px with noise, {plan.unique} unique frames (1 black, "
        "1 clipped, 1 blurred) reused cyclically under new names. `load` = 1-minute load "
        "average at start→end of the measurement (other jobs share the 2 cores, so wall-clock "
        "rates are pessimistic; CPU-time rates are given beside them).",
        "",
        "| measurement | result | target | verdict | load | notes |",
        "| --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
    ]
    if r.get("skipped"):
        lines += ["Skipped (time budget): " + ", ".join(r["skipped"]), ""]
    if r.get("profile_top"):
        lines += [f"Profile (`run_batch`, {plan.profile_n} frames, cProfile) top 10 by tottime; "
                  f"full listing in `{r['profile_path']}`:", "", "```",
                  *r["profile_top"], "```", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="< 2 minutes: fewer frames, capped runs")
    ap.add_argument("--out", type=Path, default=None,
                    help="report (default bench/results/perf.md, perf_quick.md with --quick)")
    ap.add_argument("--no-pss", action="store_true", help="skip PlanetarySystemStacker")
    ap.add_argument("--set", action="append", default=[], type=override_env,
                    metavar="SECTION.KEY=VALUE",
                    help="config override for every measurement, e.g. "
                    "align.alignment_points=false (repeatable)")
    args = ap.parse_args(argv)
    OVERRIDES.update(dict(args.set))
    for name in [k for k in os.environ if k.startswith("LUCKYSTACK_")]:
        del os.environ[name]  # the in-process runs read the environment too
    os.environ.update(OVERRIDES)
    plan = QUICK if args.quick else FULL
    out_md = args.out or REPO / "bench" / "results" / ("perf_quick.md" if args.quick else "perf.md")
    profile_path = out_md.with_name(out_md.stem + "_profile.txt")
    started = time.monotonic()

    def time_left() -> float:
        return plan.budget_s - (time.monotonic() - started)

    def say(msg: str) -> None:
        print(f"[{time.monotonic() - started:5.1f} s, load {load1():.1f}] {msg}",
              file=sys.stderr, flush=True)

    # SIGTERM/SIGHUP -> KeyboardInterrupt, so the finally below always runs.
    def _interrupt(signum, frame):  # noqa: ANN001
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)

    results: dict = {"plan": asdict(plan), "git": _git_state(), "overrides": dict(OVERRIDES),
                     "date": time.strftime("%Y-%m-%d %H:%M %Z"), "skipped": []}
    tmp = Path(tempfile.mkdtemp(prefix="luckystack_perf_"))
    try:
        say(f"simulating {plan.unique} unique frames in {tmp}")
        frames = make_frames(plan.unique)
        results["png_kb"] = float(np.mean([len(b) for b in frames])) / 1024
        cache = tmp / "cache"
        cache.mkdir()
        for i, b in enumerate(frames):
            (cache / frame_name(i)).write_bytes(b)
        run_in = fill_folder(tmp / "run_in", cache, plan.unique, plan.run_n)
        floor_in = fill_folder(tmp / "floor_in", cache, plan.unique, plan.floor_n)

        say("1. floor")
        results["floor"] = measure_floor(floor_in, plan.floor_n)
        say(f"   {results['floor']['fps']:.0f} frames/s")

        say(f"2. run_batch default on {plan.run_n} frames")
        results["run_default"] = measure_run_api(run_in, tmp / "run_out_default", None)
        say(f"   {results['run_default']['fps']:.1f} frames/s")
        say(f"   run_batch seed on {plan.seed_n} frames")
        seed_in = run_in if plan.seed_n == plan.run_n else fill_folder(
            tmp / "seed_in", cache, plan.unique, plan.seed_n)
        results["run_seed"] = measure_run_api(seed_in, tmp / "run_out_seed", "seed")
        say(f"   {results['run_seed']['fps']:.1f} frames/s")
        env = child_env()
        if plan.cli_run and time_left() > 300:
            say(f"   luckystack run (CLI) on {plan.run_n} frames")
            c = measure_run_cli(run_in, tmp / "run_out_cli", plan.run_n, None, env,
                                tmp / "run_cli.log")
            results["run_cli"] = results["run_cli_pss"] = asdict(c)
            say(f"   {plan.run_n / c.wall_s:.1f} frames/s wall")
        elif plan.cli_run:
            results["skipped"].append("run CLI")

        say("3. watch")
        results["watch"] = measure_watch(tmp, frames, plan, env, time_left)
        say(f"   max sustained {results['watch']['max_sustained']}")

        mem_in = fill_folder(tmp / "mem_in", cache, plan.unique, plan.mem_n)
        for buf in (20, 2000):
            left = time_left()
            cap = min(plan.mem_cap_s, max(5.0, (left - 30) / 2 if buf == 20 else left - 25))
            say(f"4. memory, buffer {buf}: run on {plan.mem_n} frames (cap {cap:.0f} s)")
            c = measure_run_cli(mem_in, tmp / f"mem_out_{buf}", plan.mem_n, cap,
                                child_env(LUCKYSTACK_STACK__BUFFER_SIZE=str(buf)),
                                tmp / f"mem_{buf}.log")
            d = asdict(c)
            peak_kb = c.hwm_kb
            if c.rows < plan.mem_n:
                filling = buf > c.rows
                slope = rss_slope_kb_per_row(
                    [x for x in c.samples if not filling or x[1] <= buf],
                    from_row=(min(buf, 50) if filling else buf) + 10, latter_half=not filling)
                last_rss = c.samples[-1][2] if c.samples else peak_kb
                fill_to = min(plan.mem_n, buf)
                if slope is None:
                    d["note"] = "too few frames to extrapolate"
                else:
                    if filling:
                        grow = max(slope, 0.0) * (fill_to - c.rows)
                        how = (f"RSS grows {slope:.0f} kB/frame while the buffer fills; "
                               f"extrapolated to a full buffer of {fill_to}")
                    else:
                        grow = max(slope, 0.0) * (plan.mem_n - c.rows)
                        how = (f"after the buffer filled RSS drifts {slope:+.1f} kB/frame; "
                               f"extrapolated linearly to {plan.mem_n} frames")
                    est_kb = max(peak_kb, last_rss + grow)
                    d["peak_estimate_mb"] = est_kb / 1024
                    d["note"] = f"capped at {cap:.0f} s; {how}"
            results[f"mem_{buf}"] = d
            say(f"   {c.rows} frames, peak {peak_kb / 1024:.0f} MB, "
                f"steady {c.steady_fps or float('nan'):.1f} frames/s")

        if args.no_pss:
            results["pss"] = {"status": "skipped (--no-pss)"}
        elif time_left() > (20 if args.quick else 90):
            say(f"5. PlanetarySystemStacker on the {plan.run_n} frames of run")
            results["pss"] = measure_pss(run_in, tmp)
            say(f"   {results['pss'].get('status')}")
        else:
            results["pss"] = {"status": "skipped: time budget"}
            results["skipped"].append("PSS")

        if time_left() > (5 if args.quick else 30):
            say(f"6. profile of run_batch on {plan.profile_n} frames")
            prof_in = fill_folder(tmp / "prof_in", cache, plan.unique, plan.profile_n)
            results["profile_path"] = str(profile_path.relative_to(REPO)
                                          if profile_path.is_relative_to(REPO) else profile_path)
            profile_path.parent.mkdir(parents=True, exist_ok=True)
            results["profile_top"] = profile_run(
                prof_in, tmp / "prof_out", profile_path,
                f"cProfile of run_batch, default settings, {plan.profile_n} frames "
                f"{SHAPE[1]}x{SHAPE[0]}; luckystack {results['git']}; {results['date']}")
        else:
            results["skipped"].append("profile")

        # The machine's speed drifts (25 % within minutes on a shared VM): the
        # floor again at the end tells whether the ratios above can be trusted.
        say("7. floor again")
        results["floor_end"] = measure_floor(floor_in, plan.floor_n)
        say(f"   {results['floor_end']['fps']:.0f} frames/s")
    finally:
        CHILDREN.kill_all()
        shutil.rmtree(tmp, ignore_errors=True)

    results["seconds"] = time.monotonic() - started
    text = build_report(results, plan)
    print(text)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(text)
    out_md.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str))
    say(f"wrote {out_md}, {out_md.with_suffix('.json')}"
        + (f", {profile_path}" if results.get("profile_top") else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
