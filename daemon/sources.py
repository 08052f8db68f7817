"""Where frames come from: single-frame files and frames inside SER videos.

A frame is named by a :class:`FrameRef`: a file, plus the frame's index for a
SER video. Its CSV name (the ``file`` column) is the path relative to the
capture folder, with ``#<index>`` for a SER frame (``jup.ser#17``);
:func:`parse_key` turns that back into a reference, so a resumed session can
load ``jup.ser#17`` again.

:class:`FrameLoader` is the one function from a reference to normalised
working data, used for new frames and for replay alike:

1. decode: PNG/TIFF/JPEG/BMP (:func:`~luckystack.daemon.frames.read_frame`),
   FITS (:func:`~luckystack.daemon.fits.read_fits`), SER
   (:class:`~luckystack.daemon.ser.SerReader`, readers kept open);
2. demosaic a Bayer mosaic (the file's pattern, or the ``[input]`` override)
   with :func:`luckystack.core.bayer.debayer`, still in sensor units;
3. normalise with the reader's white level, so a 12-bit camera (white 4095)
   fills the 16-bit outputs.

Time stamps: the SER trailer, FITS ``DATE-OBS``, else the file's mtime.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePath

import numpy as np
from loguru import logger

from luckystack.core.bayer import debayer
from luckystack.core.errors import FrameError
from luckystack.core.frame import Frame, normalise_frame
from luckystack.core.pipeline import FrameMeasure
from luckystack.daemon.frames import read_frame
from luckystack.daemon.watcher import is_outside_root, name_suffix
from luckystack.daemon.ser import SER_HEADER_SIZE, SerReader

__all__ = [
    "SER_SUFFIXES",
    "FrameRef",
    "LoadedFrame",
    "FrameLoader",
    "is_ser",
    "file_time",
    "frame_key",
    "parse_key",
    "prefetch",
    "Prefetcher",
]

SER_SUFFIXES = frozenset({".ser"})


def _as_path(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path, without parsing it again if it is one already."""
    return path if isinstance(path, Path) else Path(path)


def is_ser(path: str | os.PathLike[str]) -> bool:
    """True for a ``.ser`` name (case-insensitive)."""
    # Path(path).suffix, without building a Path (asked several times per frame)
    name = path.name if isinstance(path, PurePath) else PurePath(path).name
    return name_suffix(name).lower() in SER_SUFFIXES


@dataclass(frozen=True, slots=True)
class FrameRef:
    """One frame: a single-frame file (``index`` None) or frame ``index`` of a SER file."""

    path: Path
    index: int | None = None

    def sort_key(self) -> tuple:
        from luckystack.daemon.watcher import natural_key

        return natural_key(self.path), -1 if self.index is None else self.index


def as_ref(item: FrameRef | str | os.PathLike[str]) -> FrameRef:
    return item if isinstance(item, FrameRef) else FrameRef(_as_path(item))


def frame_key(ref: FrameRef, root: Path) -> str:
    """The CSV name of ``ref``: relative to the resolved ``root`` (else bare), ``#i`` for SER."""
    # The directories are resolved (the capture folder may be reached through
    # a symlink), the file's own name is kept: a followed symlink is listed
    # under its name in the capture folder, not its target's.
    # A file of the (resolved) root itself is named by its name: resolving its
    # folder (an lstat per path component) would give the root back. Asked
    # twice per frame in `watch`.
    parent, name = os.path.split(os.fspath(ref.path))
    if not (name and parent == str(root)):
        path = Path(ref.path)
        try:
            name = (path.parent.resolve() / path.name).relative_to(root).as_posix()
        except (ValueError, OSError, RuntimeError):
            name = path.name
    return name if ref.index is None else f"{name}#{ref.index}"


def parse_key(key: str, root: Path) -> FrameRef:
    """Inverse of :func:`frame_key`: ``jup.ser#17`` -> ``FrameRef(root/jup.ser, 17)``."""
    name, sep, tail = key.rpartition("#")
    if sep and tail.isdigit() and is_ser(name):
        return FrameRef(root / name, int(tail))
    return FrameRef(root / key)


@dataclass(frozen=True, slots=True)
class LoadedFrame:
    """A frame ready for the pipeline, its time stamp and what was done to it."""

    frame: Frame
    time: datetime
    bayer_pattern: str | None  # the pattern demosaiced with, None if not
    #: The stacker's per-frame steps, done where it was decoded (Session.load).
    measure: FrameMeasure | None = None


def file_time(path: Path) -> datetime:
    """A frame file's modification time (UTC); now if it cannot be stat'ed."""
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, tz=timezone.utc)
    except OSError:
        return datetime.now(timezone.utc)


class FrameLoader:
    """Load frames by reference; keeps SER readers open (at most ``max_open``).

    Parameters
    ----------
    bayer_pattern : {"auto", "none", "RGGB", "GRBG", "GBRG", "BGGR"}
        ``"auto"`` demosaics what the file declares as Bayer; ``"none"``
        never demosaics; a pattern demosaics every 2-D frame with it.
    debayer_method : {"bilinear", "ea", "vng"}
        ``"vng"`` supports 8-bit data only; 16-bit data uses ``"ea"``.
    confine_to : Path, optional
        A frame file that resolves outside this folder (a symlink pointing
        out of the capture folder) is refused, not read (``[watch]
        follow_symlinks = false``).
    """

    def __init__(
        self,
        bayer_pattern: str = "auto",
        debayer_method: str = "bilinear",
        *,
        max_open: int = 16,
        confine_to: Path | None = None,
    ) -> None:
        self.bayer_pattern = bayer_pattern
        self.debayer_method = debayer_method
        self.max_open = max_open
        self.confine_to = confine_to
        self._readers: OrderedDict[Path, SerReader] = OrderedDict()
        self._vng_warned = False

    # -- SER readers -----------------------------------------------------------
    def ser_reader(self, path: Path) -> SerReader:
        """The open reader of ``path`` (opened on first use; reopened if replaced).

        Raises FrameError while the file has no complete header yet.
        """
        path = Path(path)
        reader = self._readers.get(path)
        if reader is not None:
            try:
                same = os.stat(path).st_ino == os.fstat(reader._fh.fileno()).st_ino
            except OSError:
                same = False
            if same:
                self._readers.move_to_end(path)
                return reader
            self.forget(path)
        reader = SerReader(path)
        self._readers[path] = reader
        while len(self._readers) > self.max_open:
            _, old = self._readers.popitem(last=False)
            old.close()
        return reader

    def ser_available(self, path: Path) -> int:
        """Complete frames of ``path`` that are safe to read now (0 if none yet).

        While the capture runs (header ``FrameCount`` 0) the file grows by
        whole frames, the last one possibly partial. A capture program ends
        by appending the trailer (8 bytes per frame) and only then fixing
        ``FrameCount``: in between, the trailer would look like a frame. A
        file whose data is exactly ``N`` frames plus ``N`` time stamps is
        therefore taken as finished with ``N`` frames; if it was really a
        partial frame, the rest follows on the next poll.
        """
        try:
            reader = self.ser_reader(path)
            n = reader.frame_count_available()
        except FrameError:
            self.forget(path)
            return 0
        h = reader.header
        if h.frame_count == 0:
            data = max(0, reader._size - SER_HEADER_SIZE)
            if data and data % (h.frame_bytes + 8) == 0:
                n = min(n, data // (h.frame_bytes + 8))
        return n

    def ser_finished(self, path: Path) -> bool:
        """True when the SER header's FrameCount is set and all of its frames are on disk."""
        reader = self._readers.get(Path(path))
        if reader is None:
            return False
        h = reader.header
        return h.frame_count > 0 and reader._complete_frames() >= h.frame_count

    def forget(self, path: Path) -> None:
        """Close the reader of ``path`` (if open)."""
        reader = self._readers.pop(Path(path), None)
        if reader is not None:
            reader.close()

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()

    # -- frames ----------------------------------------------------------------
    def load(self, item: FrameRef | Path) -> LoadedFrame:
        """Decode, demosaic and normalise one frame.

        Raises
        ------
        FrameError
            For a frame that cannot be read or used (the reason says why).
        """
        ref = as_ref(item)
        if ref.index is not None:
            reader = self.ser_reader(ref.path)
            raw = reader.read_frame(ref.index)
            white: int | None = reader.white_level
            declared = reader.bayer_pattern
            when = None
            try:
                when = reader.timestamp(ref.index)
            except FrameError:
                when = None
            if when is None:
                when = file_time(ref.path)
        else:
            if is_ser(ref.path):
                raise FrameError(f"{ref.path.name}: a SER video needs a frame index")
            if self.confine_to is not None:
                self._check_confined(ref.path)
            ff = read_frame(ref.path)
            raw, white, declared, when = ff.image, ff.white_level, ff.bayer_pattern, ff.time
        image, white, pattern = self._demosaic(raw, white, declared)
        return LoadedFrame(normalise_frame(image, white_level=white), when, pattern)

    def _check_confined(self, path: Path) -> None:
        path = Path(path)
        if self.confine_to is None:
            return
        if path.parent == self.confine_to and not os.path.islink(path):
            return  # the common case, one lstat: a plain file in the capture folder itself
        if not is_outside_root(path, self.confine_to):
            return
        try:
            target = os.path.realpath(path)
        except (OSError, ValueError):
            target = "?"
        raise FrameError(
            f"symlink to {target}, outside the capture folder: not followed "
            "([watch] follow_symlinks = false)"
        )

    def _demosaic(
        self, raw: np.ndarray, white: int | None, declared: str | None
    ) -> tuple[np.ndarray, int | None, str | None]:
        choice = self.bayer_pattern
        if choice == "none" or raw.ndim != 2:
            return raw, white, None
        pattern = declared if choice == "auto" else choice
        if pattern is None:
            return raw, white, None
        if raw.dtype.kind == "f":  # e.g. a float FITS mosaic: to 16-bit sensor units
            level = float(white or 1.0)
            raw = (np.clip(np.nan_to_num(raw) / level, 0.0, 1.0) * 65535.0 + 0.5).astype(np.uint16)
            white = 65535
        method = self.debayer_method
        if method == "vng" and raw.dtype != np.uint8:
            if not self._vng_warned:
                logger.warning("debayer_method 'vng' supports 8-bit data only; using 'ea' "
                               "for 16-bit frames")
                self._vng_warned = True
            method = "ea"
        return debayer(raw, pattern, method=method), white, pattern


def prefetch(
    load: Callable[[Path], LoadedFrame],
    items: Iterable[Path],
    *,
    depth: int = 3,
) -> Iterator[tuple[Path, LoadedFrame | Exception]]:
    """Yield ``(item, loaded frame or FrameError)`` in order, decoding ahead.

    Up to ``depth`` frames are read and decoded on background threads
    (a :class:`Prefetcher`) while the caller processes the previous one;
    OpenCV and zlib release the GIL while decoding, so both cores work. Use
    it for frame *files* only: SER frames share one open reader, which must
    stay on one thread. Closing the generator early waits for the load in
    flight. Any exception a load raises (not only FrameError: a MemoryError,
    an OpenCV error) is yielded in place of the frame, never raised here.
    """
    ahead = Prefetcher(load, depth=depth)
    it = iter(items)
    window: deque[Path] = deque()
    try:
        for item in islice(it, depth):
            ahead.hint(item)
            window.append(item)
        while window:
            item = window.popleft()
            result = ahead.take(item)
            nxt = next(it, None)
            if nxt is not None:
                ahead.hint(nxt)
                window.append(nxt)
            yield item, result
    finally:
        ahead.close()


def _signature(path: Path) -> tuple[int, int, int] | None:
    """``(inode, size, mtime_ns)`` of a file, None if it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class Prefetcher:
    """Decode frame files ahead, by path, on background threads (two by default).

    The live daemon hints each frame file as the watcher reports it complete,
    so its decoding runs while the worker still processes the frame before
    (OpenCV and zlib release the GIL: both cores work even when frames come
    one at a time); the worker then :meth:`take`\\ s it in its turn. At most
    ``depth`` frames are held decoded (or in flight): further hints are
    ignored and those frames are decoded when taken. A frame whose file
    changed (inode, size or modification time) after it was read ahead is
    read again when taken, so a rewritten frame is never used stale. Frame
    *files* only: SER frames share one reader on the worker's thread.

    Parameters
    ----------
    load : callable
        ``FrameLoader.load``; any exception it raises is returned by
        :meth:`take` in place of the frame, as :func:`prefetch` does.
    depth : int
        Frames held ahead at most.
    stale_s : float
        A frame held longer than this without being taken (its path was
        dropped without :meth:`discard`) gives its room to a new hint.
    workers : int
        Decoding threads. Decoding and measuring a frame (~5 ms for 640x480)
        costs more than stacking it once the lucky cut skips most frames'
        registration, so with one thread the worker waited on it; two keep
        both cores busy. Frames are still taken in the worker's order.
    """

    def __init__(
        self,
        load: Callable[[Path], LoadedFrame],
        depth: int = 4,
        *,
        stale_s: float = 60.0,
        workers: int = 2,
    ) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self._load = load
        self.depth = depth
        self.stale_s = stale_s
        self._since: dict[str, float] = {}  # when each held path was hinted
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="luckystack-decode")
        self._ahead: OrderedDict[str, Future[tuple[object, LoadedFrame | Exception]]] = (
            OrderedDict()
        )
        self._lock = threading.Lock()
        self._closed = False
        #: Frames taken decoded ahead, and taken but read again (changed since).
        self.hits = 0
        self.rereads = 0

    def _read(self, path: Path) -> tuple[object, LoadedFrame | Exception]:
        sig = _signature(path)  # before reading: a change during the read shows
        try:
            return sig, self._load(path)
        except Exception as err:  # recorded as the frame's rejection reason
            return sig, err

    def hint(self, path: Path) -> bool:
        """Start decoding ``path`` if there is room; True if it is (now) ahead."""
        if is_ser(path):
            return False
        key = str(path)
        with self._lock:
            if self._closed:
                return False
            if key in self._ahead:
                return True
            if len(self._ahead) >= self.depth:
                oldest = next(iter(self._ahead))
                if time.monotonic() - self._since[oldest] < self.stale_s:
                    return False
                self._ahead.pop(oldest).cancel()
                del self._since[oldest]
            self._ahead[key] = self._pool.submit(self._read, _as_path(path))
            self._since[key] = time.monotonic()
        return True

    def discard(self, path: Path) -> None:
        """Forget ``path``'s read-ahead (it will not be taken)."""
        with self._lock:
            fut = self._ahead.pop(str(path), None)
            self._since.pop(str(path), None)
        if fut is not None:
            fut.cancel()

    def take(self, path: Path) -> LoadedFrame | Exception:
        """The decoded frame of ``path`` (or the error decoding it raised)."""
        with self._lock:
            fut = self._ahead.pop(str(path), None)
            self._since.pop(str(path), None)
        if fut is not None:
            # Wait even if its decoding has not started: the decode thread may
            # just be waiting for the GIL this (idle) worker is about to release.
            sig, loaded = fut.result()
            if sig == _signature(path):  # unchanged (or still missing)
                self.hits += 1
                return loaded
            self.rereads += 1
        try:
            return self._load(_as_path(path))
        except Exception as err:
            return err

    def close(self) -> None:
        """Drop what is ahead and stop the thread (waits for a read in flight)."""
        with self._lock:
            self._closed = True
            ahead, self._ahead = self._ahead, OrderedDict()
            self._since.clear()
        for fut in ahead.values():
            fut.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
