"""Real capture formats end to end: SER (mono, 12-bit, Bayer, growing), FITS, [input]."""

import threading
import time
from datetime import datetime, timedelta, timezone

import cv2
import numpy as np
import pytest
from astropy.io import fits

from luckystack.core.bayer import mosaic
from luckystack.core.simulate import PlanetModel, SeeingModel, simulate_session
from luckystack.daemon.cli import main, run_all, run_batch
from luckystack.daemon.config import ConfigError, load_settings
from luckystack.daemon.ser import SerColor, SerReader, SerWriter, write_ser
from luckystack.daemon.sources import FrameRef, frame_key, parse_key
from daemon_helpers import DaemonThread
from daemon_helpers import csv_rows as _rows
from daemon_helpers import wait_for as _wait_for

T0 = datetime(2024, 9, 14, 2, 31, 7, 250000, tzinfo=timezone.utc)
N = 40


# Every usable frame is stacked: these tests check that each one was read and used.
pytestmark = pytest.mark.usefixtures("every_frame")


def _stamps(n):
    return [T0 + timedelta(milliseconds=20 * i) for i in range(n)]


def _iso(when):
    return when.isoformat(timespec="milliseconds")


def _png16(path):
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None and img.dtype == np.uint16
    return img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


SEEING = SeeingModel(jitter_px=1.0, drift_px_per_frame=(0.02, 0.03))


@pytest.fixture(scope="module")
def mono8():
    return simulate_session(N, shape=(120, 160), model=PlanetModel(radius_px=30.0),
                            seeing=SEEING, bit_depth=8, seed=5)


@pytest.fixture(scope="module")
def mono12():
    return simulate_session(N, shape=(120, 160), model=PlanetModel(radius_px=30.0),
                            seeing=SEEING, bit_depth=12, seed=6)


@pytest.fixture(scope="module")
def red_planet():
    return simulate_session(N, shape=(120, 160),
                            model=PlanetModel(radius_px=30.0, colour=(1.0, 0.3, 0.2)),
                            seeing=SEEING, bit_depth=8, seed=7)


def _ser_frames(kind, mono8, mono12, red_planet):
    if kind == "mono8":
        return [f for f in mono8.frames], SerColor.MONO, None
    if kind == "mono16_12bit":  # 12 significant bits in the low bits, as most cameras send
        return [(f >> 4).astype(np.uint16) for f in mono12.frames], SerColor.MONO, 12
    return [mosaic(f, "RGGB") for f in red_planet.frames], SerColor.BAYER_RGGB, None


# --------------------------------------------------------------------------- keys


def test_frame_keys_round_trip(tmp_path):
    ref = FrameRef(tmp_path / "sub" / "jup.ser", 17)
    assert frame_key(ref, tmp_path) == "sub/jup.ser#17"
    assert parse_key("sub/jup.ser#17", tmp_path) == ref
    assert parse_key("frame#2.png", tmp_path) == FrameRef(tmp_path / "frame#2.png")
    assert parse_key("odd#name.SER#3", tmp_path) == FrameRef(tmp_path / "odd#name.SER", 3)


# -------------------------------------------------------------------- SER batch


@pytest.mark.parametrize("kind", ["mono8", "mono16_12bit", "bayer_rggb"])
def test_run_ser_one_row_per_frame_with_trailer_times(tmp_path, kind, mono8, mono12, red_planet):
    frames, color_id, depth = _ser_frames(kind, mono8, mono12, red_planet)
    ser = write_ser(tmp_path / "jup.ser", frames, color_id=color_id, pixel_depth=depth,
                    timestamps=_stamps(N))
    assert main(["run", str(ser)]) == 0
    out = tmp_path / "jup_luckystack"  # default: beside the file
    rows = _rows(out / "crops.csv")
    assert [r["file"] for r in rows] == [f"jup.ser#{i}" for i in range(N)]
    assert [r["time"] for r in rows] == [_iso(t) for t in _stamps(N)]
    accepted = [r for r in rows if r["outcome"] == "accepted"]
    assert len(accepted) >= N - 4, [r["reason"] for r in rows if r["outcome"] != "accepted"]
    stacked = _png16(out / "stacked.png")
    assert stacked.ndim == (3 if kind == "bayer_rggb" else 2)
    # A rerun finds every frame in the CSV; a resumed session replays `jup.ser#i`.
    again = run_batch(ser, out, load_settings())
    assert again.stats.processed == 0 and again.stats.resumed > 0
    assert len(_rows(out / "crops.csv")) == N


def test_ser_resume_mid_file_matches_an_uninterrupted_run(tmp_path, mono8):
    frames = list(mono8.frames)
    (tmp_path / "full").mkdir()
    full = write_ser(tmp_path / "full" / "a.ser", frames, color_id=SerColor.MONO)
    run_batch(full, tmp_path / "full_out", load_settings())
    # The same capture, stopped after 25 frames (no trailer, FrameCount 0) ...
    part_dir = tmp_path / "part"
    part_dir.mkdir()
    w = SerWriter(part_dir / "a.ser", color_id=SerColor.MONO)
    for f in frames[:25]:
        w.write_frame(f)
    assert run_batch(part_dir / "a.ser", tmp_path / "part_out", load_settings()).stats.processed == 25
    # ... then completed: the rerun does frames 25.. only, on top of the replayed stack.
    for f in frames[25:]:
        w.write_frame(f)
    w.close()
    again = run_batch(part_dir / "a.ser", tmp_path / "part_out", load_settings())
    assert again.stats.processed == N - 25
    rows = _rows(tmp_path / "part_out" / "crops.csv")
    assert [r["file"] for r in rows] == [f"a.ser#{i}" for i in range(N)]
    a = _png16(tmp_path / "full_out" / "stacked.png").astype(int)
    b = _png16(tmp_path / "part_out" / "stacked.png").astype(int)
    # Alignment points: replayed frames still in the stack are de-warped again against the
    # rebuilt anchor (LiveStacker.replay); exact only when 2 x buffer_size frames are replayed.
    d = np.abs(a - b)
    assert d.mean() < 1e-3 * 65535 and np.percentile(d, 99.9) <= 655, (d.mean(), d.max())


def test_twelve_bit_ser_keeps_its_precision(tmp_path, mono12):
    frames = [(f >> 4).astype(np.uint16) for f in mono12.frames]
    raw_top = max(int(f.max()) for f in frames)
    assert raw_top < 4096
    ser = write_ser(tmp_path / "c.ser", frames, color_id=SerColor.MONO, pixel_depth=12)
    with SerReader(ser) as r:
        assert r.white_level == 4095
    run_batch(ser, tmp_path / "out", load_settings())
    stacked = _png16(tmp_path / "out" / "stacked.png")
    # White is 4095, so the stack fills the 16-bit range as the frames filled 12 bits
    # (read as 16-bit data it would top out near raw_top, 1/16 of it).
    assert stacked.max() > 0.7 * raw_top / 4095 * 65535
    assert stacked.max() > 16 * raw_top * 0.7
    # A one-frame "stack" without registration is the last crop: each 12-bit level v
    # is written as v * 65535 / 4095 (to within float32 rounding), no two levels merged.
    s = load_settings()
    one = s.model_copy(update={
        "stack": s.stack.model_copy(update={"buffer_size": 1}),
        "registration": s.registration.model_copy(update={"enabled": False}),
        "quality": s.quality.model_copy(update={"min_ratio": 0.0}),
    })
    run_batch(ser, tmp_path / "one", one)
    last = _rows(tmp_path / "one" / "crops.csv")[-1]
    assert last["outcome"] == "accepted"
    x, y, w, h = (int(last[k]) for k in ("x", "y", "width", "height"))
    crop = frames[-1][y:y + h, x:x + w].astype(np.int64)
    got = _png16(tmp_path / "one" / "stacked.png").astype(np.int64)
    want = (crop * 65535 + 2047) // 4095
    assert np.abs(got - want).max() <= 1, np.abs(got - want).max()
    assert len(np.unique(got)) == len(np.unique(crop))


# ------------------------------------------------------------------ colour / Bayer


def _channel_centroids(rgb):
    """(y, x) centroid of each channel over the disc, background removed."""
    rgb = rgb.astype(np.float64)
    lum = rgb.sum(axis=2)
    mask = lum > 0.25 * lum.max()
    ys, xs = np.nonzero(mask)
    out = []
    for c in range(3):
        ch = rgb[..., c] - np.median(rgb[..., c][~mask])
        w = np.clip(ch[mask], 0, None)
        out.append((float((w * ys).sum() / w.sum()), float((w * xs).sum() / w.sum())))
    return np.array(out)


def _write_fits(path, data, **cards):
    hdu = fits.PrimaryHDU(data)
    for key, value in cards.items():
        hdu.header[key.replace("_", "-")] = value
    hdu.writeto(path)


@pytest.mark.parametrize("container", ["ser", "fits"])
def test_bayer_session_stacks_to_a_red_disc_without_colour_fringes(tmp_path, red_planet, container):
    raws = [mosaic(f, "RGGB") for f in red_planet.frames]
    if container == "ser":
        src = write_ser(tmp_path / "mars.ser", raws, color_id=SerColor.BAYER_RGGB)
    else:
        src = tmp_path / "mars"
        src.mkdir()
        for i, raw in enumerate(raws):
            _write_fits(src / f"mars_{i:04d}.fits", raw.astype(np.uint16) * 257, BAYERPAT="RGGB")
    out = tmp_path / "out"
    run_batch(src, out, load_settings())
    rows = _rows(out / "crops.csv")
    assert len(rows) == N and sum(r["outcome"] == "accepted" for r in rows) >= N - 4
    stacked = _png16(out / "stacked.png")
    assert stacked.ndim == 3
    lum = stacked.astype(float).sum(axis=2)
    disc = lum > 0.5 * lum.max()
    r, g, b = (stacked[..., c][disc].mean() for c in range(3))
    assert r > 2.5 * g and r > 3.5 * b, (r, g, b)
    # Channels aligned: their offsets equal the truth's within 0.3 px (no fringes).
    got = _channel_centroids(stacked)
    want = _channel_centroids(red_planet.truth)
    got_rel, want_rel = got - got[1], want - want[1]
    assert np.abs(got_rel - want_rel).max() < 0.3, (got_rel, want_rel)


def test_input_bayer_pattern_override(tmp_path, red_planet):
    raws = [mosaic(f, "RGGB") for f in red_planet.frames[:12]]
    ser = write_ser(tmp_path / "m.ser", raws, color_id=SerColor.BAYER_RGGB)
    none = load_settings().model_copy(update={"input": load_settings().input.model_copy(
        update={"bayer_pattern": "none"})})
    run_batch(ser, tmp_path / "none", none)
    assert _png16(tmp_path / "none" / "stacked.png").ndim == 2  # mosaic taken as mono
    # A raw mosaic saved as plain PNG: only the override knows it is colour.
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    for i, raw in enumerate(raws):
        cv2.imwrite(str(pngs / f"f_{i}.png"), raw)
    cfg = tmp_path / "c.toml"
    cfg.write_text('[input]\nbayer_pattern = "rggb"\ndebayer_method = "ea"\n')
    assert main(["run", str(pngs), "--config", str(cfg), "--output", str(tmp_path / "png_out")]) == 0
    stacked = _png16(tmp_path / "png_out" / "stacked.png")
    assert stacked.ndim == 3 and stacked[..., 0].mean() > 2 * stacked[..., 2].mean()
    bad = tmp_path / "bad.toml"
    bad.write_text('[input]\nbayer_pattern = "CYYM"\ndebayer = "vng"\n')
    with pytest.raises(ConfigError) as exc:
        load_settings(bad)
    text = "\n".join(exc.value.problems)
    assert "[input] bayer_pattern" in text and "[input] debayer" in text


# ----------------------------------------------------------------------- FITS


def test_fits_session_uint16_bzero_with_date_obs_times(tmp_path):
    sim = simulate_session(N, shape=(120, 160), model=PlanetModel(radius_px=30.0),
                           seeing=SEEING, bit_depth=16, seed=8)
    inp = tmp_path / "night"
    inp.mkdir()
    for i, f in enumerate(sim.frames):
        _write_fits(inp / f"sat_{i + 1}.fit", f, DATE_OBS=_stamps(N)[i].strftime("%Y-%m-%dT%H:%M:%S.%f"))
    assert fits.getheader(inp / "sat_1.fit")["BZERO"] == 32768
    assert main(["run", str(inp)]) == 0
    rows = _rows(tmp_path / "night_luckystack" / "crops.csv")
    assert [r["file"] for r in rows] == [f"sat_{i}.fit" for i in range(1, N + 1)]
    assert [r["time"] for r in rows] == [_iso(t) for t in _stamps(N)]
    assert sum(r["outcome"] == "accepted" for r in rows) >= N - 4
    stacked = _png16(tmp_path / "night_luckystack" / "stacked.png")
    assert stacked.max() > 0.5 * 65535


# ------------------------------------------------------------- growing SER, live


Running = DaemonThread


def _capture(path, frames, *, fps=50.0, color_id=SerColor.MONO, close=True, writer=None):
    """Append frames at ``fps`` like a capture program; the trailer on close."""
    w = writer or SerWriter(path, color_id=color_id)
    start = time.monotonic()
    for i, f in enumerate(frames):
        delay = start + i / fps - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        w.write_frame(f, T0 + timedelta(seconds=i / fps))
    if close:
        w.close()
    return w


def test_growing_ser_every_frame_once_in_order_and_a_new_ser_gets_its_own_output(tmp_path, mono8):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    frames = list(mono8.frames) * 2  # 80 frames: 1.6 s of capture at 50 frames/s
    n = len(frames)
    with Running(inp, out) as d:
        seen_growing = []
        t = threading.Thread(target=_capture, args=(inp / "jup_1.ser", frames))
        t.start()
        # Frames are processed while the capture is still running.
        assert _wait_for(lambda: len(_rows(out / "jup_1" / "crops.csv")) >= 5, timeout=30)
        seen_growing.append(t.is_alive())
        t.join()
        assert _wait_for(lambda: len(_rows(out / "jup_1" / "crops.csv")) >= n)
        # The capture ended: the session is written, closed and no longer followed.
        assert _wait_for(lambda: not d.sers, timeout=10)
        # The next capture starts a new session output.
        _capture(inp / "jup_2.ser", frames[:20])
        assert _wait_for(lambda: len(_rows(out / "jup_2" / "crops.csv")) >= 20)
        assert _wait_for(lambda: not d.sers, timeout=10)
        time.sleep(0.2)
        totals = d.totals()
    assert seen_growing == [True]
    rows = _rows(out / "jup_1" / "crops.csv")
    assert [r["file"] for r in rows] == [f"jup_1.ser#{i}" for i in range(n)]
    assert [int(r["index"]) for r in rows] == list(range(n))
    assert sum(r["outcome"] == "accepted" for r in rows) >= n - 8
    rows2 = _rows(out / "jup_2" / "crops.csv")
    assert [r["file"] for r in rows2] == [f"jup_2.ser#{i}" for i in range(20)]
    for sub in ("jup_1", "jup_2"):
        for name in ("stacked.png", "sharpened.png", "comparison.png"):
            assert (out / sub / name).is_file()
    assert _rows(out / "crops.csv") == []  # no single-frame files in the folder
    assert totals.processed == n + 20
    # Live and batch agree frame for frame.
    batch = run_all(inp, tmp_path / "batch", load_settings())
    assert [s.output_dir.name for s in batch] == ["jup_1", "jup_2"]
    a = _png16(out / "jup_1" / "stacked.png").astype(int)
    b = _png16(tmp_path / "batch" / "jup_1" / "stacked.png").astype(int)
    assert np.abs(a - b).max() <= 1


def test_growing_ser_across_a_daemon_restart_exactly_once(tmp_path, mono8):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    frames = list(mono8.frames)
    writer = SerWriter(inp / "sat.ser", color_id=SerColor.MONO)
    with Running(inp, out):
        _capture(None, frames[:15], writer=writer, close=False)
        assert _wait_for(lambda: len(_rows(out / "sat" / "crops.csv")) >= 15, timeout=30)
    # The daemon is down while the capture goes on ...
    _capture(None, frames[15:25], writer=writer, close=False)
    with Running(inp, out) as d:
        # ... and back: it carries on after the last frame in the CSV.
        _capture(None, frames[25:], writer=writer, close=True)
        assert _wait_for(lambda: len(_rows(out / "sat" / "crops.csv")) >= N)
        assert _wait_for(lambda: not d.sers, timeout=10)
        time.sleep(0.3)
    rows = _rows(out / "sat" / "crops.csv")
    assert [r["file"] for r in rows] == [f"sat.ser#{i}" for i in range(N)]
    assert [int(r["index"]) for r in rows] == list(range(N))


def test_existing_none_skips_the_frames_a_ser_had_at_start(tmp_path, mono8):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    frames = list(mono8.frames)
    writer = _capture(inp / "cap.ser", frames[:10], fps=1000, close=False)
    s = load_settings()
    settings = s.model_copy(update={"watch": s.watch.model_copy(update={"existing": "none"})})
    with Running(inp, out, settings) as d:
        _capture(None, frames[10:20], writer=writer, close=True)
        assert _wait_for(lambda: len(_rows(out / "cap" / "crops.csv")) >= 10)
        assert _wait_for(lambda: not d.sers, timeout=10)
    assert [r["file"] for r in _rows(out / "cap" / "crops.csv")] == [
        f"cap.ser#{i}" for i in range(10, 20)
    ]
