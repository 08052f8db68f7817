"""Watch a capture folder and hand each *complete* frame file to a callback.

Capture software (FireCapture, SharpCap, ...) writes frames into a folder. A
file is not complete when it is created (watchdog #586, #787), so:

* With inotify (the normal case on Linux) a frame is ready on ``closed``
  (``IN_CLOSE_WRITE``, :class:`~watchdog.events.FileClosedEvent`) or when a
  frame name appears through a rename (``moved``, destination path). Everything
  else (``created``, ``modified``, ``opened``, ``closed_no_write``, directory
  events) is ignored.
* In polling mode (network shares, where the local kernel never sees the
  writes), :class:`StabilityTracker` waits until size and mtime stay unchanged
  for ``settle_s`` over at least two observations, with a timeout.
* Growing containers (SER videos, ``growing_suffixes``) are also reported
  while they are written: ``created`` and ``modified`` call
  ``on_growing(path)`` at once (the caller reads the complete frames itself),
  and ``closed`` still calls ``on_frame``.
* Entries that are complete when they appear and are never closed after a
  write: a symlink or a hard link created in the folder (``created``) is a
  candidate at once; a FIFO, socket or device with a frame name is reported
  to ``on_ignored`` ("not a regular file"), and so is a directory with a frame
  name when watching non-recursively ("directory").

Hidden names, ``~`` names, partial/temporary names and unknown suffixes are
filtered here in code (watchdog 7 changed pattern matching to
``PurePath.full_match``). Callbacks run on a watcher thread: they must be
cheap (push the path onto a queue). An exception raised by a callback never
kills the watcher thread: it goes to ``on_error(path, exc)`` or is logged.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import select
import stat as stat_mod
import struct
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from pathlib import Path, PurePath
from types import TracebackType
from typing import Self

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

try:  # only importable on Linux with a usable libc
    from watchdog.observers.inotify import InotifyObserver
except Exception:  # pragma: no cover - non-Linux
    InotifyObserver = None  # type: ignore[assignment,misc]

__all__ = [
    "FRAME_SUFFIXES",
    "GROWING_SUFFIXES",
    "FolderWatcher",
    "FrameEventHandler",
    "StabilityTracker",
    "is_frame_name",
    "is_outside_root",
    "list_existing_frames",
    "list_unusable_entries",
    "name_suffix",
    "natural_key",
]

log = logging.getLogger(__name__)

FRAME_SUFFIXES: frozenset[str] = frozenset(
    {".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".fits", ".fit", ".fts", ".ser"}
)

_PARTIAL_ENDINGS = (".tmp", ".part", ".partial", ".crdownload", "~")

#: True when the native observer reports IN_CLOSE_WRITE (Linux inotify). Elsewhere
#: the native observer is used with the stability tracker instead.
_NATIVE_EMITS_CLOSE = InotifyObserver is not None and Observer is InotifyObserver

OnFrame = Callable[[Path], None]
OnIgnored = Callable[[Path, str], None]
OnError = Callable[[Path, BaseException], None]
OnGrowing = Callable[[Path], None]

#: Containers that grow frame by frame while captured (SER videos).
GROWING_SUFFIXES: frozenset[str] = frozenset({".ser"})

# Reasons passed to ``on_ignored`` (and returned by StabilityTracker.poll).
REASON_VANISHED = "vanished"
REASON_EMPTY = "empty"
REASON_NOT_REGULAR = "not a regular file"
REASON_SYMLINK_OUTSIDE = "symlink outside root"
REASON_DIRECTORY = "directory"
REASON_TIMEOUT_EMPTY = "timeout: still empty"
REASON_TIMEOUT_CHANGING = "timeout: still changing"
REASON_TIMEOUT_UNREADABLE = "timeout: cannot stat"

_MAX_REMEMBERED = 65_536


# --------------------------------------------------------------------------- names


def _normalize_suffixes(suffixes: Collection[str]) -> frozenset[str]:
    return frozenset(s.lower() if s.startswith(".") else "." + s.lower() for s in suffixes)


def name_suffix(name: str) -> str:
    """``PurePath(name).suffix`` of a bare name, without building a path."""
    i = name.rfind(".")
    return name[i:] if 0 < i < len(name) - 1 else ""


def _is_frame_basename(name: str, suffixes: frozenset[str]) -> bool:
    """:func:`is_frame_name` for a bare name and normalised suffixes."""
    if not name or name[0] in ".~":
        return False
    lower = name.lower()
    if lower.endswith(_PARTIAL_ENDINGS):
        return False
    return name_suffix(lower) in suffixes


def is_frame_name(path: Path | str, suffixes: Collection[str] = FRAME_SUFFIXES) -> bool:
    """True if ``path``'s name looks like a finished frame file.

    False for hidden (``.x``) and ``~x`` names, names ending in ``.tmp``,
    ``.part``, ``.partial``, ``.crdownload`` or ``~``, and suffixes not in
    ``suffixes`` (compared case-insensitively; a missing leading dot is added).
    """
    if suffixes is not FRAME_SUFFIXES:
        suffixes = _normalize_suffixes(suffixes)
    return _is_frame_basename(PurePath(os.fsdecode(path)).name, suffixes)  # type: ignore[arg-type]


_CHUNKS = re.compile(r"([0-9]+)")


def _name_key(name: str) -> tuple[str | int, ...]:
    # re.split with one capturing group alternates text, digits, text, ...,
    # always starting and ending with (possibly empty) text. Position i thus
    # has the same type in every key, so keys compare without TypeError.
    parts = _CHUNKS.split(name)
    return tuple(int(p) if i % 2 else p.casefold() for i, p in enumerate(parts))


def natural_key(path_or_name: str | os.PathLike[str]) -> tuple:
    """Sort key for natural order: ``2.png`` < ``10.png``, ``f_2`` < ``f_10``.

    Digit runs compare as integers, text case-insensitively, path components
    one by one (so a relative path sorts by its directories first). Ties (``02``
    vs ``2``, ``A`` vs ``a``) are broken by the plain component strings, so the
    order is total and deterministic. Keys of any two names compare without
    ``TypeError``.
    """
    parts = PurePath(os.fsdecode(path_or_name)).parts
    return tuple(_name_key(p) for p in parts), parts


def _outside_root(path: Path, root_resolved: Path) -> bool:
    """True if ``path`` (e.g. through a symlink) resolves outside ``root_resolved``."""
    try:
        return not path.resolve().is_relative_to(root_resolved)
    except (OSError, RuntimeError):  # symlink loop and the like
        return True


def is_outside_root(path: Path, root: Path) -> bool:
    """True if ``path`` (e.g. through a symlink) resolves outside the folder ``root``."""
    try:
        root_resolved = Path(root).resolve()
    except (OSError, RuntimeError):
        return True
    return _outside_root(Path(path), root_resolved)


def _in_hidden_dir(path: Path, root: Path) -> bool:
    try:
        rel = path.relative_to(root)
    except ValueError:
        return False
    return any(part.startswith(".") for part in rel.parts[:-1])


def list_existing_frames(
    folder: Path,
    *,
    recursive: bool = False,
    suffixes: Collection[str] = FRAME_SUFFIXES,
    follow_symlinks: bool = False,
) -> list[Path]:
    """Frame files already in ``folder``, in natural order.

    Applies the same rules as the watcher: :func:`is_frame_name`, regular files
    only (symlinks are followed for this test), hidden directories skipped when
    ``recursive``, symlinked directories not descended into, and files whose
    symlink target lies outside ``folder`` skipped unless ``follow_symlinks``.
    Recursive results are sorted by their path relative to ``folder``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        if not folder.exists():
            raise FileNotFoundError(errno.ENOENT, "capture folder does not exist", str(folder))
        raise NotADirectoryError(errno.ENOTDIR, "capture folder is not a directory", str(folder))
    suffixes = _normalize_suffixes(suffixes)
    root_resolved = folder.resolve()
    found: list[tuple[tuple, Path]] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        if recursive:
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        else:
            dirnames.clear()
        base = Path(dirpath)
        for name in filenames:
            if not is_frame_name(name, suffixes):
                continue
            path = base / name
            if not path.is_file():
                continue
            if not follow_symlinks and path.is_symlink() and _outside_root(path, root_resolved):
                continue
            found.append((natural_key(path.relative_to(folder)), path))
    found.sort(key=lambda kp: kp[0])
    return [p for _, p in found]


def list_unusable_entries(
    folder: Path,
    *,
    recursive: bool = False,
    suffixes: Collection[str] = FRAME_SUFFIXES,
    follow_symlinks: bool = False,
) -> list[Path]:
    """Entries of ``folder`` named like frames that are no usable frame file.

    The complement of :func:`list_existing_frames` among frame names:
    directories (only when not ``recursive``: recursively they are folders of
    frames), FIFOs, sockets, devices, broken symlinks and, unless
    ``follow_symlinks``, symlinks resolving outside ``folder``. The daemon
    records each with its reason, so nothing named like a frame goes
    unexplained. SER names are left out (a SER's rows are its frames').
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    suffixes = _normalize_suffixes(suffixes)
    root_resolved = folder.resolve()
    found: list[tuple[tuple, Path]] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        base = Path(dirpath)
        names = list(filenames)
        if recursive:
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        else:
            names += dirnames
            dirnames.clear()
        for name in names:
            if not is_frame_name(name, suffixes):
                continue
            if PurePath(name.lower()).suffix in GROWING_SUFFIXES:
                continue
            path = base / name
            if path.is_file():
                outside = path.is_symlink() and _outside_root(path, root_resolved)
                if follow_symlinks or not outside:
                    continue
            elif recursive and path.is_dir():
                continue
            found.append((natural_key(path.relative_to(folder)), path))
    found.sort(key=lambda kp: kp[0])
    return [p for _, p in found]


# ---------------------------------------------------------------------- callbacks


def _call_on_frame(on_frame: OnFrame, path: Path, on_error: OnError | None) -> None:
    try:
        on_frame(path)
    except Exception as exc:
        if on_error is None:
            log.exception("frame callback failed for %s", path)
            return
        try:
            on_error(path, exc)
        except Exception:
            log.exception("on_error callback failed for %s", path)


def _call_on_ignored(on_ignored: OnIgnored | None, path: Path, reason: str) -> None:
    if on_ignored is None:
        return
    try:
        on_ignored(path, reason)
    except Exception:
        log.exception("on_ignored callback failed for %s (%s)", path, reason)


# ------------------------------------------------------------------ stability


Signature = tuple[int, int, int]  # (size, mtime_ns, inode)


def _signature(st: os.stat_result) -> Signature:
    return st.st_size, st.st_mtime_ns, st.st_ino


@dataclass(slots=True)
class _Pending:
    first_seen: float
    sig: Signature | None = None
    sig_since: float = 0.0
    count: int = 0
    error: str = ""


class StabilityTracker:
    """Decide when files seen by a polling observer have stopped changing.

    Pure logic: no threads of its own, an injectable clock (``now``) and
    ``stat``. Thread-safe (one internal lock), so events may be noted on one
    thread and :meth:`poll` called on another.

    A noted file is *stable* once its (size, mtime_ns, inode) has been the same
    for at least ``settle_s`` seconds over at least two consecutive
    observations, and its size is > 0. A pending file that is not stable
    ``timeout_s`` after it was first noted, or that disappears, is dropped and
    returned with a reason. A reported file is not reported again unless it is
    noted again and its signature has changed (a new version).
    """

    def __init__(
        self,
        *,
        settle_s: float = 1.0,
        timeout_s: float = 30.0,
        now: Callable[[], float] = time.monotonic,
        stat: Callable[[Path], os.stat_result] = os.stat,
        max_remembered: int = _MAX_REMEMBERED,
    ) -> None:
        if settle_s < 0:
            raise ValueError(f"settle_s must be >= 0, got {settle_s!r}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        self.settle_s = settle_s
        self.timeout_s = timeout_s
        self._now = now
        self._stat = stat
        self._max_remembered = max_remembered
        self._lock = threading.Lock()
        self._pending: dict[Path, _Pending] = {}
        self._reported: OrderedDict[Path, Signature] = OrderedDict()

    def __len__(self) -> int:
        """Number of files still waiting to become stable."""
        with self._lock:
            return len(self._pending)

    def note(self, path: Path) -> None:
        """Record that ``path`` was created, modified or seen; observes it now."""
        path = Path(path)
        with self._lock:
            now = self._now()
            entry = self._pending.get(path)
            if entry is None:
                entry = self._pending[path] = _Pending(first_seen=now)
            self._observe(path, entry, now)  # a vanished file is found by poll()

    def forget(self, path: Path) -> None:
        """Stop tracking ``path`` silently (pending and reported state)."""
        path = Path(path)
        with self._lock:
            self._pending.pop(path, None)
            self._reported.pop(path, None)

    def poll(self) -> tuple[list[Path], list[tuple[Path, str]]]:
        """Observe all pending files; return ``(stable, dropped_with_reason)``."""
        stable: list[Path] = []
        dropped: list[tuple[Path, str]] = []
        with self._lock:
            now = self._now()
            for path, entry in list(self._pending.items()):
                outcome = self._observe(path, entry, now)
                if outcome is not None:
                    del self._pending[path]
                    self._reported.pop(path, None)
                    dropped.append((path, outcome))
                    continue
                sig = entry.sig
                if (
                    sig is not None
                    and sig[0] > 0
                    and entry.count >= 2
                    and now - entry.sig_since >= self.settle_s
                ):
                    del self._pending[path]
                    if self._reported.get(path) != sig:
                        stable.append(path)
                    self._remember(path, sig)
                elif now - entry.first_seen >= self.timeout_s:
                    del self._pending[path]
                    if sig is None:
                        reason = f"{REASON_TIMEOUT_UNREADABLE} ({entry.error})"
                    elif sig[0] == 0:
                        reason = REASON_TIMEOUT_EMPTY
                    else:
                        reason = REASON_TIMEOUT_CHANGING
                    dropped.append((path, reason))
        return stable, dropped

    def _observe(self, path: Path, entry: _Pending, now: float) -> str | None:
        """Stat ``path`` into ``entry``; return a drop reason or None."""
        try:
            st = self._stat(path)
        except FileNotFoundError:
            return REASON_VANISHED
        except OSError as exc:  # e.g. a share that is briefly unreachable
            entry.error = f"{type(exc).__name__}: {exc.strerror or exc}"
            return None
        if not stat_mod.S_ISREG(st.st_mode):
            return REASON_NOT_REGULAR
        sig = _signature(st)
        if sig == entry.sig:
            entry.count += 1
        else:
            entry.sig, entry.sig_since, entry.count = sig, now, 1
        return None

    def _remember(self, path: Path, sig: Signature) -> None:
        self._reported[path] = sig
        self._reported.move_to_end(path)
        while len(self._reported) > self._max_remembered:
            self._reported.popitem(last=False)


# -------------------------------------------------------------------- handler


class FrameEventHandler(FileSystemEventHandler):
    """watchdog handler that calls ``on_frame(path)`` once per complete frame.

    Without ``tracker`` (inotify): ``closed`` and ``moved`` (destination) report
    the frame at once. With ``tracker`` (polling): ``created``, ``modified``,
    ``moved`` (destination) and ``closed`` note the file in the tracker and
    :meth:`poll` reports it once it is stable.

    Silently ignored: directory events (unless ``report_directories``), names
    rejected by :func:`is_frame_name`, files inside hidden sub-directories of
    ``root``, an unchanged file closed again. Reported to ``on_ignored(path,
    reason)``: a symlink resolving outside ``root`` (unless
    ``follow_symlinks``), an empty or vanished file at close time, a
    non-regular file, a directory named like a frame (``report_directories``),
    tracker drops (vanished, timeouts).

    Without ``tracker``, ``created`` also reports what is complete when it
    appears and is never closed after a write: a symlink or hard link (as
    a candidate), a FIFO/socket/device (ignored, "not a regular file").

    Unit-testable without an observer: ``handler.dispatch(FileClosedEvent(p))``.
    The same steps are also callable by path (:meth:`closed`, :meth:`moved_in`,
    :meth:`created`, :meth:`modified`): the native inotify reader calls them
    without building event objects.
    """

    def __init__(
        self,
        on_frame: OnFrame,
        *,
        root: Path,
        suffixes: Collection[str] = FRAME_SUFFIXES,
        follow_symlinks: bool = False,
        on_ignored: OnIgnored | None = None,
        on_error: OnError | None = None,
        tracker: StabilityTracker | None = None,
        on_growing: OnGrowing | None = None,
        growing_suffixes: Collection[str] = GROWING_SUFFIXES,
        report_directories: bool = False,
    ) -> None:
        super().__init__()
        self.report_directories = report_directories
        self.on_frame = on_frame
        self.on_growing = on_growing
        self.growing_suffixes = _normalize_suffixes(growing_suffixes)
        self.on_ignored = on_ignored
        self.on_error = on_error
        self.root = Path(os.path.abspath(root))
        self.suffixes = _normalize_suffixes(suffixes)
        self.follow_symlinks = follow_symlinks
        self.tracker = tracker
        self._root_resolved = self.root.resolve()
        self._root_str = str(self.root)
        self._reported: OrderedDict[Path, Signature] = OrderedDict()

    # -- watchdog entry points -------------------------------------------------

    def dispatch(self, event: FileSystemEvent) -> None:
        # Never let anything escape into (and kill) the observer thread.
        try:
            super().dispatch(event)
        except Exception:
            log.exception("error handling %r", event)

    def on_closed(self, event: FileClosedEvent) -> None:
        self.closed(event.src_path, event.is_directory)

    def on_moved(self, event: FileSystemEvent) -> None:
        if event.dest_path:  # "" for a file moved out of the watch (full events)
            self.moved_in(event.dest_path, event.is_directory)

    def on_created(self, event: FileSystemEvent) -> None:
        self.created(event.src_path, event.is_directory)

    def on_modified(self, event: FileSystemEvent) -> None:
        self.modified(event.src_path, event.is_directory)

    # -- the steps, by path ------------------------------------------------------

    def closed(self, raw_path: bytes | str, is_directory: bool = False) -> None:
        """A file written to was closed (``IN_CLOSE_WRITE``)."""
        self._candidate(raw_path, is_directory)

    def moved_in(self, raw_path: bytes | str, is_directory: bool = False) -> None:
        """Something was renamed to ``raw_path`` (from inside or outside the watch)."""
        if is_directory:
            self._directory(raw_path)
        else:
            self._candidate(raw_path, False)

    def created(self, raw_path: bytes | str, is_directory: bool = False) -> None:
        """``raw_path`` was created (a file being written, a link, a directory...)."""
        if is_directory:
            self._directory(raw_path)
            return
        path_str = os.fsdecode(raw_path)
        if not _is_frame_basename(os.path.basename(path_str), self.suffixes):
            return  # what follows would ignore it too: no stat for .part files
        self._growing(path_str, False)
        if self.tracker is not None:
            self._candidate(path_str, False)
            return
        # A symlink, hard link or special file is complete when it appears and
        # never gets a close-after-write; a new regular file is still being written.
        try:
            st = os.lstat(path_str)
        except OSError:
            return
        if (stat_mod.S_ISLNK(st.st_mode) or not stat_mod.S_ISREG(st.st_mode)
                or st.st_nlink > 1):
            self._candidate(path_str, False)

    def modified(self, raw_path: bytes | str, is_directory: bool = False) -> None:
        """``raw_path`` was written to (``IN_MODIFY``)."""
        self._growing(raw_path, is_directory)
        if self.tracker is not None:
            self._candidate(raw_path, is_directory)

    # -- polling mode ----------------------------------------------------------

    def poll(self) -> None:
        """Polling mode: report files the tracker found stable or dropped."""
        if self.tracker is None:
            return
        stable, dropped = self.tracker.poll()
        for path in stable:
            _call_on_frame(self.on_frame, path, self.on_error)
        for path, reason in dropped:
            _call_on_ignored(self.on_ignored, path, reason)

    # -- internals -------------------------------------------------------------

    def _wanted(self, path_str: str) -> bool:
        """Named like a frame and not inside a hidden sub-directory of the root."""
        parent, name = os.path.split(path_str)
        if not _is_frame_basename(name, self.suffixes):
            return False
        return parent == self._root_str or not _in_hidden_dir(Path(path_str), self.root)

    def _lstat_in_root(self, path_str: str) -> os.stat_result | None:
        """``lstat`` of a plain entry of the root folder itself, else None.

        Such an entry (not a symlink, its folder the root) cannot resolve
        outside the root: the resolve() of every other case is skipped
        (the same shortcut as FrameLoader's confinement check). Raises
        FileNotFoundError if it is gone.
        """
        if os.path.dirname(path_str) != self._root_str:
            return None
        try:
            st = os.lstat(path_str)
        except FileNotFoundError:
            raise
        except OSError:
            return None
        return None if stat_mod.S_ISLNK(st.st_mode) else st

    def _directory(self, raw_path: bytes | str) -> None:
        """A directory appeared: report it if it is named like a frame."""
        if not self.report_directories:
            return
        path = Path(os.fsdecode(raw_path))
        if PurePath(path.name.lower()).suffix in self.growing_suffixes:
            return
        if not is_frame_name(path, self.suffixes) or _in_hidden_dir(path, self.root):
            return
        _call_on_ignored(self.on_ignored, path, REASON_DIRECTORY)

    def _growing(self, raw_path: bytes | str, is_directory: bool) -> None:
        """A growing container was created or written to: tell ``on_growing``."""
        if self.on_growing is None or is_directory:
            return
        path_str = os.fsdecode(raw_path)
        if name_suffix(os.path.basename(path_str).lower()) not in self.growing_suffixes:
            return
        if not self._wanted(path_str):
            return
        if not self.follow_symlinks:
            try:
                inside = self._lstat_in_root(path_str) is not None
            except FileNotFoundError:
                inside = True  # resolve() would not leave the root either
            if not inside and _outside_root(Path(path_str), self._root_resolved):
                return
        _call_on_frame(self.on_growing, Path(path_str), self.on_error)

    def _candidate(self, raw_path: bytes | str, is_directory: bool) -> None:
        if is_directory:
            return
        path_str = os.fsdecode(raw_path)
        if not self._wanted(path_str):
            return
        path = Path(path_str)
        st: os.stat_result | None = None
        if self.tracker is None:
            try:
                st = self._lstat_in_root(path_str)  # the common case: one lstat in all
            except FileNotFoundError:
                _call_on_ignored(self.on_ignored, path, REASON_VANISHED)
                return
        # resolve() covers a symlinked file and a symlinked sub-directory alike.
        if (st is None and not self.follow_symlinks
                and _outside_root(path, self._root_resolved)):
            _call_on_ignored(self.on_ignored, path, REASON_SYMLINK_OUTSIDE)
            return
        if self.tracker is not None:
            self.tracker.note(path)
            return
        if st is None:
            try:
                st = os.stat(path_str)
            except FileNotFoundError:
                _call_on_ignored(self.on_ignored, path, REASON_VANISHED)
                return
        if not stat_mod.S_ISREG(st.st_mode):
            _call_on_ignored(self.on_ignored, path, REASON_NOT_REGULAR)
            return
        if st.st_size == 0:
            _call_on_ignored(self.on_ignored, path, REASON_EMPTY)
            return
        sig = _signature(st)
        if self._reported.get(path) == sig:  # closed again without a change
            return
        self._reported[path] = sig
        self._reported.move_to_end(path)
        if len(self._reported) > _MAX_REMEMBERED:
            self._reported.popitem(last=False)
        _call_on_frame(self.on_frame, path, self.on_error)


# ------------------------------------------------------------ native inotify


_IN_MODIFY = 0x00000002
_IN_CLOSE_WRITE = 0x00000008
_IN_MOVED_TO = 0x00000080
_IN_CREATE = 0x00000100
_IN_DELETE_SELF = 0x00000400
_IN_UNMOUNT = 0x00002000
_IN_Q_OVERFLOW = 0x00004000
_IN_IGNORED = 0x00008000
_IN_ISDIR = 0x40000000
_EVENT_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len


def _load_libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        return libc
    except (OSError, AttributeError):  # pragma: no cover - not Linux / no inotify
        return None


_LIBC = _load_libc() if sys.platform.startswith("linux") else None


class _InotifyReader:
    """The folder's inotify events, read on one thread and handed straight to the handler.

    Used instead of watchdog's inotify observer when watching one folder
    (not recursively): watchdog passes every raw event through three threads
    and two queues (reader, move grouper, emitter, dispatcher) and builds
    objects at each step, and a frame written to a temporary name and renamed
    into place makes four events (create, modify, close, rename): 0.9-1 ms of
    CPU per frame with the handler, against 0.25 ms here (bench frames at
    40-100 frames/s, 2 cores). Here each ``read`` of the inotify descriptor is
    parsed in place; hidden and temporary names (``.x``, ``~x``) are dropped
    before any other work, and the handler gets the rest by path
    (:meth:`FrameEventHandler.closed`, ...). The events it acts on, and what
    it does with them, are those of watchdog's observer with
    ``generate_full_events=True`` and the FolderWatcher's event filter:
    ``IN_CLOSE_WRITE`` -> closed, ``IN_MOVED_TO`` -> moved (its destination;
    moved from inside or outside the folder alike), ``IN_CREATE`` -> created,
    ``IN_MODIFY`` -> modified (only with ``modify``: growing SER videos).
    The folder deleted (``IN_DELETE_SELF``), unmounted or its watch removed
    ends the thread (:meth:`alive` turns False), as watchdog's emitter stops.
    An event queue overflow (the kernel dropped events: the reader fell
    ``/proc/sys/fs/inotify/max_queued_events`` behind) is logged and reported
    to ``on_overflow``, which should list the folder again.
    """

    def __init__(self, folder: Path, handler: FrameEventHandler, *, modify: bool,
                 on_overflow: Callable[[], None] | None = None) -> None:
        self.folder = folder
        self.handler = handler
        self.on_overflow = on_overflow
        # No IN_DONT_FOLLOW: it applies to the watched path only, and a capture
        # folder given as a symlink is what the user asked to watch (with it,
        # the link itself was watched and no frame ever arrived). Symlinks
        # *inside* the folder are judged by the handler ([watch] follow_symlinks).
        mask = _IN_CLOSE_WRITE | _IN_MOVED_TO | _IN_CREATE | _IN_DELETE_SELF
        if modify:
            mask |= _IN_MODIFY
        self.mask = mask
        self._fd = -1
        self._wake_r = self._wake_w = -1
        self._fd_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._gone = False

    @staticmethod
    def available() -> bool:
        return _LIBC is not None

    def start(self) -> None:
        assert _LIBC is not None
        fd = _LIBC.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1 failed: {os.strerror(err)}")
        try:
            wd = _LIBC.inotify_add_watch(fd, os.fsencode(self.folder), self.mask)
            if wd < 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), str(self.folder))
            self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._thread = threading.Thread(
            target=self._run, name=f"luckystack-inotify-{self.folder.name}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float | None) -> None:
        thread, self._thread = self._thread, None
        self._stopping = True
        with self._fd_lock:
            if self._wake_w >= 0:
                try:
                    os.write(self._wake_w, b"x")
                except OSError:
                    pass
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():  # e.g. a callback blocked: it closes them when it ends
                log.warning("inotify reader for %s did not stop within %s s", self.folder, timeout)
                return
        self._close()

    def _close(self) -> None:
        with self._fd_lock:  # once, whichever thread comes first
            for name in ("_fd", "_wake_r", "_wake_w"):
                fd = getattr(self, name)
                if fd >= 0:
                    setattr(self, name, -1)
                    try:
                        os.close(fd)
                    except OSError:
                        pass

    def is_alive(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive() and not self._gone

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        root = os.fsencode(self.folder)
        try:
            while True:
                ready = poller.poll()
                if any(fd == self._wake_r for fd, _ in ready):
                    return
                try:
                    data = os.read(self._fd, 256 * 1024)
                except (BlockingIOError, InterruptedError):
                    continue
                if not data:  # pragma: no cover - cannot happen for inotify
                    return
                if not self._events(data, root):
                    return
        except Exception:
            log.exception("inotify reader for %s failed", self.folder)
        finally:
            self._gone = True
            if self._stopping:
                self._close()

    def _events(self, data: bytes, root: bytes) -> bool:
        """Hand the events in ``data`` to the handler; False once the folder is gone."""
        handler = self.handler
        unpack = _EVENT_HEADER.unpack_from
        pos, end = 0, len(data)
        while pos < end:
            _wd, mask, _cookie, length = unpack(data, pos)
            name = data[pos + 16 : pos + 16 + length].rstrip(b"\0")
            pos += 16 + length
            if not name:  # an event of the folder itself
                if mask & (_IN_DELETE_SELF | _IN_IGNORED | _IN_UNMOUNT):
                    return False
                if mask & _IN_Q_OVERFLOW:
                    self._overflowed()
                continue
            if name[:1] in (b".", b"~"):
                continue  # hidden or temporary: never a frame (is_frame_name)
            path = os.fsdecode(os.path.join(root, name))
            is_dir = bool(mask & _IN_ISDIR)
            try:
                if mask & _IN_CLOSE_WRITE:
                    handler.closed(path, is_dir)
                elif mask & _IN_MOVED_TO:
                    handler.moved_in(path, is_dir)
                elif mask & _IN_CREATE:
                    handler.created(path, is_dir)
                elif mask & _IN_MODIFY:
                    handler.modified(path, is_dir)
            except Exception:  # never let anything end the reader
                log.exception("error handling inotify event %#x for %s", mask, path)
        return True

    def _overflowed(self) -> None:
        if self.on_overflow is None:
            log.warning("inotify event queue of %s overflowed: events were lost", self.folder)
            return
        log.warning("inotify event queue of %s overflowed: events were lost; listing the "
                    "folder again", self.folder)
        try:
            self.on_overflow()
        except Exception:  # never let anything end the reader
            log.exception("error handling the inotify queue overflow of %s", self.folder)


class _Rerooted(FileSystemEventHandler):
    """Passes watchdog's events under ``watched`` to ``handler`` as if under ``given``."""

    def __init__(self, handler: FileSystemEventHandler, watched: str, given: str) -> None:
        super().__init__()
        self.handler = handler
        self.watched, self.given = watched, given

    def _path(self, path: bytes | str) -> str:
        path = os.fsdecode(path)
        if path == self.watched or path.startswith(self.watched + os.sep):
            return self.given + path[len(self.watched):]
        return path

    def dispatch(self, event: FileSystemEvent) -> None:
        src = self._path(event.src_path)
        dest = self._path(event.dest_path) if event.dest_path else event.dest_path
        self.handler.dispatch(replace(event, src_path=src, dest_path=dest))


# -------------------------------------------------------------------- watcher


class FolderWatcher:
    """Watch ``folder`` and call ``on_frame(path)`` once per complete frame.

    Uses inotify normally: for one folder a lean reader of its own
    (:class:`_InotifyReader`, one thread), recursively watchdog's inotify
    observer (it adds and moves the watches of sub-directories); or
    ``PollingObserver(timeout=poll_interval_s)`` plus a
    :class:`StabilityTracker` polled every ``settle_s / 2`` when ``polling``.
    ``start()``/``stop()`` or use as a context manager. Files already present
    at start are not reported: use :func:`list_existing_frames` for those
    (start the watcher first, then list, and de-duplicate).

    ``on_overflow()`` is called (on the reader's thread) when the kernel
    dropped events because they were not read in time (an inotify queue
    overflow): frames completed meanwhile were not reported, so list the
    folder again. Only the single-folder reader reports it; watchdog's
    observer (``recursive``) logs it and carries on.
    """

    def __init__(
        self,
        folder: Path,
        on_frame: OnFrame,
        *,
        recursive: bool = False,
        polling: bool = False,
        poll_interval_s: float = 0.5,
        settle_s: float = 1.0,
        timeout_s: float = 30.0,
        suffixes: Collection[str] = FRAME_SUFFIXES,
        follow_symlinks: bool = False,
        on_ignored: OnIgnored | None = None,
        on_error: OnError | None = None,
        on_growing: OnGrowing | None = None,
        growing_suffixes: Collection[str] = GROWING_SUFFIXES,
        on_overflow: Callable[[], None] | None = None,
    ) -> None:
        if poll_interval_s <= 0:
            raise ValueError(f"poll_interval_s must be > 0, got {poll_interval_s!r}")
        if settle_s <= 0:
            raise ValueError(f"settle_s must be > 0, got {settle_s!r}")
        if timeout_s <= settle_s:
            raise ValueError(f"timeout_s must be > settle_s, got {timeout_s!r} <= {settle_s!r}")
        self.folder = Path(os.path.abspath(folder))
        self.on_frame = on_frame
        self.recursive = recursive
        self.polling = polling
        self.poll_interval_s = poll_interval_s
        self.settle_s = settle_s
        self.timeout_s = timeout_s
        self.suffixes = _normalize_suffixes(suffixes)
        self.follow_symlinks = follow_symlinks
        self.on_ignored = on_ignored
        self.on_error = on_error
        self.on_growing = on_growing
        self.growing_suffixes = _normalize_suffixes(growing_suffixes)
        self.on_overflow = on_overflow
        self.handler: FrameEventHandler | None = None
        self._observer: BaseObserver | None = None
        self._reader: _InotifyReader | None = None
        self._poller: threading.Thread | None = None
        self._stop_poller = threading.Event()
        self._lock = threading.Lock()
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the folder

    @property
    def uses_stability_tracker(self) -> bool:
        """True when completeness is decided by size/mtime stability, not close events."""
        return self.polling or not _NATIVE_EMITS_CLOSE

    def start(self) -> None:
        """Start watching. Raises FileNotFoundError / NotADirectoryError for a bad folder."""
        with self._lock:
            if self._observer is not None or self._reader is not None:
                raise RuntimeError(f"watcher for {self.folder} is already running")
            if not self.folder.exists():
                raise FileNotFoundError(
                    errno.ENOENT, "capture folder does not exist", str(self.folder)
                )
            if not self.folder.is_dir():
                raise NotADirectoryError(
                    errno.ENOTDIR, "capture folder is not a directory", str(self.folder)
                )
            tracker = None
            if self.uses_stability_tracker:
                tracker = StabilityTracker(settle_s=self.settle_s, timeout_s=self.timeout_s)
            handler = FrameEventHandler(
                self.on_frame,
                root=self.folder,
                suffixes=self.suffixes,
                follow_symlinks=self.follow_symlinks,
                on_ignored=self.on_ignored,
                on_error=self.on_error,
                tracker=tracker,
                on_growing=self.on_growing,
                growing_suffixes=self.growing_suffixes,
                report_directories=not self.recursive,
            )
            st = os.stat(self.folder)
            identity = (st.st_dev, st.st_ino)
            growing = self.on_growing is not None and bool(self.growing_suffixes & self.suffixes)
            if (not self.polling and _NATIVE_EMITS_CLOSE and not self.recursive
                    and _InotifyReader.available()):
                reader = _InotifyReader(self.folder, handler, modify=growing,
                                        on_overflow=self.on_overflow)
                reader.start()
                self.handler = handler
                self._reader = reader
                self._identity = identity
                return
            observer: BaseObserver
            if self.polling:
                observer = PollingObserver(timeout=self.poll_interval_s)
                event_filter: list[type[FileSystemEvent]] = [
                    FileCreatedEvent, FileModifiedEvent, FileMovedEvent,
                    DirCreatedEvent, DirMovedEvent,
                ]
            elif _NATIVE_EMITS_CLOSE:
                # generate_full_events: a file moved in from outside the watch
                # becomes FileMovedEvent("", dest) instead of a FileCreatedEvent
                # that is indistinguishable from "opened for writing".
                observer = InotifyObserver(generate_full_events=True)
                event_filter = [FileClosedEvent, FileMovedEvent, FileCreatedEvent,
                                DirCreatedEvent, DirMovedEvent]
                if growing:
                    event_filter += [FileModifiedEvent]
            else:  # pragma: no cover - non-Linux native observers
                observer = Observer()
                event_filter = [FileCreatedEvent, FileModifiedEvent, FileMovedEvent]
            # watchdog watches the folder itself without following it: given as a
            # symlink (to the capture drive, say), its target is watched instead and
            # the events are handed on under the path the user gave.
            watched = os.path.realpath(self.folder)
            target: FileSystemEventHandler = handler
            if watched != str(self.folder):
                target = _Rerooted(handler, watched, str(self.folder))
            try:
                observer.schedule(
                    target,
                    watched,
                    recursive=self.recursive,
                    event_filter=event_filter,
                    follow_symlink=self.follow_symlinks,
                )
                observer.start()
            except BaseException:
                _shutdown_observer(observer, timeout=5.0)
                raise
            self.handler = handler
            self._observer = observer
            self._identity = identity
            if tracker is not None:
                self._stop_poller.clear()
                self._poller = threading.Thread(
                    target=self._poll_loop,
                    args=(handler, max(self.settle_s / 2, 0.01)),
                    name=f"luckystack-stability-{self.folder.name}",
                    daemon=True,
                )
                self._poller.start()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop and join the threads. Idempotent; safe before start and in ``finally``."""
        with self._lock:
            observer, self._observer = self._observer, None
            reader, self._reader = self._reader, None
            poller, self._poller = self._poller, None
        self._stop_poller.set()
        if reader is not None:
            reader.stop(timeout)
        if observer is not None:
            _shutdown_observer(observer, timeout=timeout)
        if poller is not None and poller is not threading.current_thread():
            poller.join(timeout)
            if poller.is_alive():
                log.warning("stability poller for %s did not stop in time", self.folder)

    def alive(self) -> bool:
        """True while the threads run and the folder watched is still at its path.

        False once the capture folder was removed or renamed (the emitter stops
        on IN_DELETE_SELF, but the observer thread itself keeps running), or a
        thread died, or another folder now has its path (removed or renamed
        away and re-created: inotify still watches the old one).
        """
        observer, reader, poller = self._observer, self._reader, self._poller
        if reader is not None:
            if not reader.is_alive():
                return False
        else:
            if observer is None or not observer.is_alive():
                return False
            if self.uses_stability_tracker and (poller is None or not poller.is_alive()):
                return False
            try:
                emitters = list(observer.emitters)
            except RuntimeError:  # set changed size during iteration
                emitters = []
            if any(not e.is_alive() for e in emitters):
                return False
        try:
            st = os.stat(self.folder)
        except OSError:
            return False
        return stat_mod.S_ISDIR(st.st_mode) and (st.st_dev, st.st_ino) == self._identity

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        mode = "polling" if self.polling else "native"
        return f"<FolderWatcher {str(self.folder)!r} {mode} alive={self.alive()}>"

    def _poll_loop(self, handler: FrameEventHandler, interval: float) -> None:
        while not self._stop_poller.wait(interval):
            try:
                handler.poll()
            except Exception:
                log.exception("stability poll failed for %s", self.folder)


def _shutdown_observer(observer: BaseObserver, *, timeout: float | None) -> None:
    try:
        observer.stop()
    except Exception:
        log.exception("error stopping the folder observer")
    if observer is threading.current_thread() or not observer.ident:
        return  # stop() called from a callback, or the thread never started
    observer.join(timeout)
    if observer.is_alive():
        log.warning("folder observer did not stop within %s s", timeout)
