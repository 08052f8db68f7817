"""Tests for luckystack.daemon.watcher: names, ordering, handler, tracker, real observers."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from watchdog.events import (
    DirModifiedEvent,
    FileClosedEvent,
    FileClosedNoWriteEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileOpenedEvent,
)

from luckystack.daemon.watcher import (
    FRAME_SUFFIXES,
    FolderWatcher,
    FrameEventHandler,
    StabilityTracker,
    is_frame_name,
    list_existing_frames,
    natural_key,
)

DEADLINE_S = 10.0  # generous: only reached when something is broken


def wait_until(cond: Callable[[], bool], timeout: float = DEADLINE_S, step: float = 0.01) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return cond()


class Recorder:
    """Thread-safe collector of callback calls; records the size at call time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.frames: list[tuple[Path, int]] = []
        self.ignored: list[tuple[Path, str]] = []
        self.errors: list[tuple[Path, BaseException]] = []

    def on_frame(self, path: Path) -> None:
        size = path.stat().st_size
        with self.lock:
            self.frames.append((path, size))

    def on_ignored(self, path: Path, reason: str) -> None:
        with self.lock:
            self.ignored.append((path, reason))

    def on_error(self, path: Path, exc: BaseException) -> None:
        with self.lock:
            self.errors.append((path, exc))

    def names(self) -> list[str]:
        with self.lock:
            return [p.name for p, _ in self.frames]

    def seen(self, name: str) -> bool:
        return name in self.names()


def write(path: Path, data: bytes = b"\x89PNG frame data") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------ names


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.png", True),
        ("A.PNG", True),
        ("frame_0001.tif", True),
        ("x.tiff", True),
        ("x.JPG", True),
        ("x.jpeg", True),
        ("x.bmp", True),
        ("m42.fits", True),
        ("m42.FIT", True),
        ("m42.fts", True),
        ("jupiter.ser", True),
        ("dir/sub/a.png", True),
        (".a.png", False),
        (".x.png.part", False),
        ("~a.png", False),
        ("a.png~", False),
        ("a.png.tmp", False),
        ("a.png.TMP", False),
        ("a.png.part", False),
        ("a.png.partial", False),
        ("a.png.crdownload", False),
        ("a.txt", False),
        ("a.csv", False),
        ("png", False),
        ("a.", False),
        ("", False),
    ],
)
def test_is_frame_name(name: str, expected: bool) -> None:
    assert is_frame_name(Path(name)) is expected


def test_is_frame_name_custom_suffixes() -> None:
    assert is_frame_name(Path("a.png"), {".png"})
    assert not is_frame_name(Path("a.tif"), {".png"})
    assert is_frame_name(Path("a.PNG"), ["PNG"])  # case and missing dot normalised
    assert ".png" in FRAME_SUFFIXES and isinstance(FRAME_SUFFIXES, frozenset)


# ------------------------------------------------------------- ordering


def test_natural_key_orders_numbers_numerically() -> None:
    names = ["10.png", "2.png", "frame_10.png", "frame_2.png", "frame_1.png", "1.png"]
    assert sorted(names, key=natural_key) == [
        "1.png", "2.png", "10.png", "frame_1.png", "frame_2.png", "frame_10.png",
    ]


def test_natural_key_ties_broken_by_plain_name_and_total() -> None:
    assert sorted(["frame_2.png", "frame_02.png"], key=natural_key) == [
        "frame_02.png", "frame_2.png",
    ]
    assert natural_key("A.png") != natural_key("a.png")
    weird = ["", "1", "a", "1a", "a1", "_", "00", "0", "a01b2", "a1b02", "ä9", "x/2", "x/10",
             ".hidden", "9" * 40, "2024-01-01T22_10_05.123.png", "a b 3"]
    # Any mix of text/number chunks compares without TypeError, in both directions.
    keys = [natural_key(n) for n in weird]
    for k1 in keys:
        for k2 in keys:
            assert (k1 < k2) + (k1 > k2) + (k1 == k2) == 1
    assert sorted(weird, key=natural_key)  # no exception
    assert natural_key(Path("x/10.png")) == natural_key("x/10.png")
    assert natural_key("x/2.png") < natural_key("x/10.png") < natural_key("y/1.png")


def test_list_existing_frames_natural_order(tmp_path: Path) -> None:
    for name in ["10.png", "2.png", "1.png", "frame_10.png", "frame_2.png"]:
        write(tmp_path / name)
    write(tmp_path / ".3.png.part")
    write(tmp_path / "4.png.tmp")
    write(tmp_path / "notes.txt")
    (tmp_path / "dir.png").mkdir()  # a directory with a frame-like name
    write(tmp_path / "sub" / "5.png")  # not recursive: not listed
    got = [p.name for p in list_existing_frames(tmp_path)]
    assert got == ["1.png", "2.png", "10.png", "frame_2.png", "frame_10.png"]


def test_list_existing_frames_recursive(tmp_path: Path) -> None:
    write(tmp_path / "b10" / "1.png")
    write(tmp_path / "b2" / "10.png")
    write(tmp_path / "b2" / "9.png")
    write(tmp_path / "3.png")
    write(tmp_path / ".thumbs" / "1.png")  # hidden directory skipped
    got = [p.relative_to(tmp_path).as_posix()
           for p in list_existing_frames(tmp_path, recursive=True)]
    assert got == ["3.png", "b2/9.png", "b2/10.png", "b10/1.png"]


def test_list_existing_frames_symlinks(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    write(outside / "o.png")
    write(root / "a.png")
    (root / "in.png").symlink_to(root / "a.png")
    (root / "out.png").symlink_to(outside / "o.png")
    (root / "dangling.png").symlink_to(root / "missing.png")
    assert [p.name for p in list_existing_frames(root)] == ["a.png", "in.png"]
    assert [p.name for p in list_existing_frames(root, follow_symlinks=True)] == [
        "a.png", "in.png", "out.png",
    ]


def test_list_existing_frames_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        list_existing_frames(tmp_path / "nope")


# ------------------------------------------------------------ handler


def make_handler(root: Path, rec: Recorder, **kw) -> FrameEventHandler:
    return FrameEventHandler(
        rec.on_frame, root=root, on_ignored=rec.on_ignored, on_error=rec.on_error, **kw
    )


def test_handler_closed_event_reports_frame(tmp_path: Path) -> None:
    rec = Recorder()
    h = make_handler(tmp_path, rec)
    p = write(tmp_path / "a.png")
    h.dispatch(FileClosedEvent(str(p)))
    assert rec.frames == [(p, p.stat().st_size)]


def test_handler_ignores_other_events(tmp_path: Path) -> None:
    rec = Recorder()
    h = make_handler(tmp_path, rec)
    p = write(tmp_path / "a.png")
    for event in [
        FileClosedNoWriteEvent(str(p)),
        FileCreatedEvent(str(p)),
        FileModifiedEvent(str(p)),
        FileOpenedEvent(str(p)),
        DirModifiedEvent(str(tmp_path)),
    ]:
        h.dispatch(event)
    assert rec.frames == [] and rec.ignored == []


def test_handler_moved_event_reports_destination(tmp_path: Path) -> None:
    rec = Recorder()
    h = make_handler(tmp_path, rec)
    part = write(tmp_path / ".x.png.part")
    h.dispatch(FileClosedEvent(str(part)))  # partial name: ignored
    dest = tmp_path / "x.png"
    os.replace(part, dest)
    h.dispatch(FileMovedEvent(str(part), str(dest)))
    assert rec.names() == ["x.png"]
    # moved to a non-frame name, or out of the watch (dest ""), is not a frame
    other = tmp_path / "x.png.bak"
    os.replace(dest, other)
    h.dispatch(FileMovedEvent(str(dest), str(other)))
    h.dispatch(FileMovedEvent(str(other), ""))
    assert rec.names() == ["x.png"]


def test_handler_filters_names_and_hidden_dirs(tmp_path: Path) -> None:
    rec = Recorder()
    h = make_handler(tmp_path, rec)
    for name in ["a.png.tmp", ".a.png", "~a.png", "a.txt", ".cache/b.png"]:
        h.dispatch(FileClosedEvent(str(write(tmp_path / name))))
    assert rec.frames == [] and rec.ignored == []
    h.dispatch(FileClosedEvent(str(write(tmp_path / "sub" / "B.PNG"))))
    assert rec.names() == ["B.PNG"]


def test_handler_reports_each_version_once(tmp_path: Path) -> None:
    rec = Recorder()
    h = make_handler(tmp_path, rec)
    p = write(tmp_path / "a.png", b"one")
    h.dispatch(FileClosedEvent(str(p)))
    h.dispatch(FileClosedEvent(str(p)))  # closed again, unchanged
    assert len(rec.frames) == 1
    write(p, b"second version")
    h.dispatch(FileClosedEvent(str(p)))
    assert [s for _, s in rec.frames] == [3, 14]


def test_handler_empty_and_vanished(tmp_path: Path) -> None:
    rec = Recorder()
    h = make_handler(tmp_path, rec)
    empty = write(tmp_path / "e.png", b"")
    h.dispatch(FileClosedEvent(str(empty)))
    h.dispatch(FileClosedEvent(str(tmp_path / "gone.png")))
    assert rec.frames == []
    assert rec.ignored == [(empty, "empty"), (tmp_path / "gone.png", "vanished")]


def test_handler_symlink_outside_root(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    target = write(outside / "t.png")
    link = root / "link.png"
    root.mkdir()
    link.symlink_to(target)
    inside = root / "inside.png"
    inside.symlink_to(write(root / "real.png"))

    rec = Recorder()
    h = make_handler(root, rec)
    h.dispatch(FileClosedEvent(str(link)))
    assert rec.frames == []
    assert rec.ignored == [(link, "symlink outside root")]
    h.dispatch(FileClosedEvent(str(inside)))
    assert rec.names() == ["inside.png"]

    # a symlinked sub-directory pointing outside counts too
    (root / "subdir").symlink_to(outside, target_is_directory=True)
    h.dispatch(FileClosedEvent(str(root / "subdir" / "t.png")))
    assert rec.names() == ["inside.png"]
    assert rec.ignored[-1] == (root / "subdir" / "t.png", "symlink outside root")

    rec2 = Recorder()
    make_handler(root, rec2, follow_symlinks=True).dispatch(FileClosedEvent(str(link)))
    assert rec2.frames == [(link, target.stat().st_size)] and rec2.ignored == []


def test_handler_callback_errors_are_contained(tmp_path: Path, caplog) -> None:
    p = write(tmp_path / "a.png")
    boom = RuntimeError("boom")

    def bad(path: Path) -> None:
        raise boom

    errors: list = []
    FrameEventHandler(bad, root=tmp_path, on_error=lambda q, e: errors.append((q, e))).dispatch(
        FileClosedEvent(str(p))
    )
    assert errors == [(p, boom)]

    with caplog.at_level("ERROR", logger="luckystack.daemon.watcher"):
        FrameEventHandler(bad, root=tmp_path).dispatch(FileClosedEvent(str(p)))  # no raise
    assert any("a.png" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------ tracker


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make_tracker(**kw) -> tuple[StabilityTracker, FakeClock]:
    clock = FakeClock()
    kw.setdefault("settle_s", 1.0)
    kw.setdefault("timeout_s", 5.0)
    return StabilityTracker(now=clock, **kw), clock


def test_tracker_stable_after_settle_not_before(tmp_path: Path) -> None:
    tr, clock = make_tracker()
    p = write(tmp_path / "a.png")
    tr.note(p)
    assert tr.poll() == ([], [])
    clock.t += 0.5
    assert tr.poll() == ([], [])
    clock.t += 0.49
    assert tr.poll() == ([], [])
    clock.t += 0.01
    assert tr.poll() == ([p], [])
    clock.t += 10
    assert tr.poll() == ([], [])  # reported once, then no longer pending
    assert len(tr) == 0


def test_tracker_needs_two_observations(tmp_path: Path) -> None:
    tr, clock = make_tracker()
    p = write(tmp_path / "a.png")
    tr.note(p)  # observation 1
    clock.t += 3.0
    assert tr.poll() == ([p], [])  # observation 2, unchanged for 3 s


def test_tracker_growing_file_not_reported(tmp_path: Path) -> None:
    tr, clock = make_tracker(timeout_s=30.0)
    p = write(tmp_path / "a.png", b"x")
    tr.note(p)
    for i in range(8):
        clock.t += 0.5
        with p.open("ab") as f:
            f.write(b"more" * (i + 1))
        assert tr.poll() == ([], [])
    clock.t += 0.5
    assert tr.poll() == ([], [])  # unchanged for 0.5 s only
    clock.t += 0.5
    assert tr.poll() == ([p], [])


def test_tracker_growing_file_times_out(tmp_path: Path) -> None:
    tr, clock = make_tracker(timeout_s=2.0)
    p = write(tmp_path / "a.png", b"x")
    tr.note(p)
    for _ in range(3):
        clock.t += 0.75
        with p.open("ab") as f:
            f.write(b"more")
        stable, dropped = tr.poll()
    assert stable == []
    assert dropped == [(p, "timeout: still changing")]


def test_tracker_zero_bytes_never_reported_and_times_out(tmp_path: Path) -> None:
    tr, clock = make_tracker()
    p = write(tmp_path / "z.png", b"")
    tr.note(p)
    for _ in range(9):
        clock.t += 0.5
        assert tr.poll() == ([], [])
    clock.t += 0.5  # 5.0 s since first seen
    stable, dropped = tr.poll()
    assert stable == [] and len(dropped) == 1
    assert dropped[0][0] == p and dropped[0][1].startswith("timeout")
    assert len(tr) == 0


def test_tracker_vanished(tmp_path: Path) -> None:
    tr, clock = make_tracker()
    p = write(tmp_path / "a.png")
    tr.note(p)
    p.unlink()
    clock.t += 0.5
    assert tr.poll() == ([], [(p, "vanished")])
    clock.t += 5
    assert tr.poll() == ([], [])
    tr.note(tmp_path / "never.png")  # noted but already gone
    assert tr.poll() == ([], [(tmp_path / "never.png", "vanished")])


def test_tracker_rereports_only_after_change(tmp_path: Path) -> None:
    tr, clock = make_tracker()
    p = write(tmp_path / "a.png", b"v1")

    def settle() -> list[Path]:
        reported: list[Path] = []
        for _ in range(3):
            clock.t += 0.6
            reported += tr.poll()[0]
        return reported

    tr.note(p)
    assert settle() == [p]
    tr.note(p)  # seen again, unchanged (e.g. a spurious event or a rescan)
    assert settle() == []
    write(p, b"version two")
    os.utime(p, ns=(time.time_ns(), time.time_ns() + 10**9))  # mtime surely differs
    tr.note(p)
    assert settle() == [p]


def test_tracker_injectable_stat() -> None:
    clock = FakeClock()
    sizes = {"a.png": 0}

    def fake_stat(path: Path) -> os.stat_result:
        if path.name not in sizes:
            raise FileNotFoundError(path)
        #          mode     ino dev nlink uid gid size           atime mtime ctime
        return os.stat_result((0o100644, 7, 1, 1, 0, 0, sizes[path.name], 0, 0, 0))

    tr = StabilityTracker(settle_s=1.0, timeout_s=5.0, now=clock, stat=fake_stat)
    tr.note(Path("a.png"))
    clock.t += 1
    assert tr.poll() == ([], [])  # empty
    sizes["a.png"] = 10
    clock.t += 1
    assert tr.poll() == ([], [])  # changed now
    clock.t += 1
    assert tr.poll() == ([Path("a.png")], [])


# ------------------------------------------------------- real observers


@pytest.fixture
def capture(tmp_path: Path) -> Path:
    folder = tmp_path / "capture"
    folder.mkdir()
    return folder


def barrier(folder: Path, rec: Recorder, name: str) -> None:
    """Write a sentinel frame and wait for it: events are delivered in order,
    so everything written before it has been handled once it is reported."""
    write(folder / name, b"sentinel")
    assert wait_until(lambda: rec.seen(name)), f"sentinel {name} never reported"


def test_inotify_watcher_reports_complete_files_once(capture: Path) -> None:
    rec = Recorder()
    watcher = FolderWatcher(capture, rec.on_frame, on_ignored=rec.on_ignored,
                            on_error=rec.on_error)
    with watcher:
        assert watcher.alive()
        chunks = [os.urandom(50_000) for _ in range(3)]
        with open(capture / "slow.png", "wb") as f:
            for chunk in chunks:
                f.write(chunk)
                f.flush()
                time.sleep(0.1)
                assert not rec.seen("slow.png")  # not before it is closed
        assert wait_until(lambda: rec.seen("slow.png"))

        part = write(capture / ".x.png.part", b"renamed into place")
        os.replace(part, capture / "x.png")

        write(capture / "y.png.tmp", b"temporary")
        barrier(capture, rec, "zz_sentinel.png")

    assert not watcher.alive()
    with rec.lock:
        frames = list(rec.frames)
    assert frames == [
        (capture / "slow.png", 150_000),
        (capture / "x.png", len(b"renamed into place")),
        (capture / "zz_sentinel.png", len(b"sentinel")),
    ]
    assert rec.errors == []


def test_inotify_watcher_file_moved_in_from_outside(capture: Path, tmp_path: Path) -> None:
    """A rename from outside the watch arrives as IN_MOVED_TO only; watchdog's
    default grouping would call it "created" (no close follows)."""
    rec = Recorder()
    staged = write(tmp_path / "staging" / "m.png", b"moved in")
    with FolderWatcher(capture, rec.on_frame):
        os.replace(staged, capture / "m.png")
        assert wait_until(lambda: rec.seen("m.png"))
        barrier(capture, rec, "zz_sentinel.png")
    assert rec.names() == ["m.png", "zz_sentinel.png"]


def test_capture_folder_given_as_a_symlink_is_watched(capture: Path, tmp_path: Path) -> None:
    link = tmp_path / "capture_link"
    link.symlink_to(capture, target_is_directory=True)
    rec = Recorder()
    with FolderWatcher(link, rec.on_frame, follow_symlinks=False):
        write(capture / "a.png", b"frame")
        assert wait_until(lambda: rec.seen("a.png"))
        barrier(capture, rec, "zz_sentinel.png")
    assert rec.names() == ["a.png", "zz_sentinel.png"]


def test_inotify_watcher_recursive(capture: Path) -> None:
    rec = Recorder()
    (capture / "session1").mkdir()
    with FolderWatcher(capture, rec.on_frame, recursive=True):
        write(capture / "session1" / "f_1.png")
        assert wait_until(lambda: rec.seen("f_1.png"))
    assert rec.frames[0][0] == capture / "session1" / "f_1.png"


def test_callback_exception_does_not_kill_watcher(capture: Path) -> None:
    seen: list[Path] = []
    errors: list[tuple[Path, BaseException]] = []

    def flaky(path: Path) -> None:
        seen.append(path)
        if path.name == "bad.png":
            raise ValueError("cannot decode")

    with FolderWatcher(capture, flaky, on_error=lambda p, e: errors.append((p, e))) as w:
        write(capture / "bad.png")
        write(capture / "good.png")
        assert wait_until(lambda: len(seen) == 2)
        assert w.alive()
    assert [p.name for p in seen] == ["bad.png", "good.png"]
    assert [(p.name, type(e)) for p, e in errors] == [("bad.png", ValueError)]


def test_polling_watcher_reports_slow_file_once_complete(capture: Path) -> None:
    rec = Recorder()
    watcher = FolderWatcher(capture, rec.on_frame, polling=True, poll_interval_s=0.05,
                            settle_s=0.3, timeout_s=10.0, on_ignored=rec.on_ignored)
    with watcher:
        assert watcher.alive()
        with open(capture / "slow.png", "wb") as f:
            for _ in range(4):
                f.write(os.urandom(20_000))
                f.flush()
                time.sleep(0.05)
        write(capture / ".hidden.png.part", b"partial")
        assert wait_until(lambda: rec.seen("slow.png"))
        # a second, later poll cycle must not report it again
        barrier(capture, rec, "zz_sentinel.png")
        time.sleep(0.35)
    assert rec.frames[0] == (capture / "slow.png", 80_000)
    assert rec.names() == ["slow.png", "zz_sentinel.png"]
    assert rec.ignored == []


def test_alive_false_after_folder_removed(capture: Path) -> None:
    with FolderWatcher(capture, lambda p: None) as w:
        assert w.alive()
        shutil.rmtree(capture)
        assert wait_until(lambda: not w.alive())


def test_polling_alive_false_after_folder_removed(capture: Path) -> None:
    with FolderWatcher(capture, lambda p: None, polling=True, poll_interval_s=0.05) as w:
        assert w.alive()
        shutil.rmtree(capture)
        assert wait_until(lambda: not w.alive())


def test_start_on_missing_or_non_directory_raises(tmp_path: Path) -> None:
    w = FolderWatcher(tmp_path / "missing", lambda p: None)
    with pytest.raises(FileNotFoundError, match="missing"):
        w.start()
    assert not w.alive()
    w.stop()  # finally-safe after a failed start
    f = write(tmp_path / "file.png")
    with pytest.raises(NotADirectoryError):
        FolderWatcher(f, lambda p: None).start()


def test_stop_is_idempotent_and_safe_before_start(capture: Path) -> None:
    w = FolderWatcher(capture, lambda p: None)
    w.stop()
    w.start()
    with pytest.raises(RuntimeError):
        w.start()
    w.stop()
    w.stop()
    assert not w.alive()
    w.start()  # can be started again after stop
    assert w.alive()
    w.stop()


def test_native_reader_reports_what_the_watchdog_observer_reports(capture: Path,
                                                                 tmp_path: Path) -> None:
    """One folder is read by the watcher's own inotify thread (no watchdog
    observer); what it reports, and why, is what the handler decides."""
    rec = Recorder()
    growing: list[Path] = []
    before = {t.name for t in threading.enumerate()}
    with FolderWatcher(capture, rec.on_frame, on_ignored=rec.on_ignored,
                       on_error=rec.on_error, on_growing=growing.append) as w:
        started = {t.name for t in threading.enumerate()} - before
        assert started == {f"luckystack-inotify-{capture.name}"}
        assert w.alive()
        part = write(capture / ".a.png.part", b"renamed into place")
        os.replace(part, capture / "a.png")
        write(capture / "~b.png", b"hidden")
        write(capture / "c.png.tmp", b"temporary")
        (capture / "d.png").mkdir()  # a directory named like a frame
        os.mkfifo(capture / "e.png")
        target = write(capture / "real" / "f.png", b"linked")
        (capture / "f.png").symlink_to(target)  # complete when it appears
        outside = write(tmp_path / "elsewhere" / "g.png", b"outside")
        (capture / "g.png").symlink_to(outside)
        with open(capture / "v.ser", "wb") as fh:  # a growing video: created, written
            fh.write(b"x" * 100)
            fh.flush()
            assert wait_until(lambda: len(growing) >= 2)
        barrier(capture, rec, "zz_sentinel.png")
        with rec.lock:
            ignored = sorted((p.name, r) for p, r in rec.ignored)
        assert ignored == [("d.png", "directory"), ("e.png", "not a regular file"),
                           ("g.png", "symlink outside root")]
    assert rec.names() == ["a.png", "f.png", "v.ser", "zz_sentinel.png"]
    assert all(p == capture / "v.ser" for p in growing)
    assert rec.errors == []
    assert not w.alive()


def test_inotify_queue_overflow_is_reported(capture: Path) -> None:
    """The kernel appends one IN_Q_OVERFLOW record (wd -1, no name) when it
    drops events; the reader hands it to on_overflow and carries on."""
    from luckystack.daemon.watcher import _EVENT_HEADER, _IN_Q_OVERFLOW

    rec = Recorder()
    overflows: list[int] = []
    with FolderWatcher(capture, rec.on_frame, on_overflow=lambda: overflows.append(1)) as w:
        record = _EVENT_HEADER.pack(-1, _IN_Q_OVERFLOW, 0, 0)
        assert w._reader is not None
        assert w._reader._events(record, os.fsencode(capture)) is True  # still watching
        assert overflows == [1]
        barrier(capture, rec, "zz_sentinel.png")
        assert w.alive()
    assert rec.names() == ["zz_sentinel.png"]


def test_recursive_watch_of_a_capture_folder_given_as_a_symlink(capture: Path,
                                                                tmp_path: Path) -> None:
    """watchdog's observer watches what it is given without following it: the
    link's target is watched, and frames are reported under the link's path."""
    link = tmp_path / "capture_link"
    link.symlink_to(capture, target_is_directory=True)
    (capture / "session1").mkdir()
    rec = Recorder()
    with FolderWatcher(link, rec.on_frame, recursive=True, follow_symlinks=False):
        write(capture / "session1" / "f_1.png", b"frame")
        write(capture / "top.png", b"frame")
        (capture / "session2").mkdir()
        time.sleep(0.2)  # the new folder's watch
        write(capture / "session2" / "f_2.png", b"frame")
        assert wait_until(lambda: len(rec.names()) >= 3)
    with rec.lock:
        paths = sorted(p for p, _ in rec.frames)
    assert paths == [link / "session1" / "f_1.png", link / "session2" / "f_2.png",
                     link / "top.png"]
