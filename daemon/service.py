"""``luckystack watch``: the live daemon.

Threads: the watcher (one inotify reader thread, or watchdog's observer for
recursive and polling watches) pushes complete frame paths onto a bounded
queue; two decode threads read, decode and measure the next few frames; the
main thread is the one worker. It drains the queue in natural order, runs
every frame through the :class:`Session` (one CSV row each) and writes
``stacked.png`` at most every ``min_write_interval_s`` (every
``max_write_interval_s`` while it is ``LAG_FRAMES`` behind) and every output
when the queue is empty; skipped writes are counted as coalesced. Signals
only set flags: SIGINT/SIGTERM finish the current frame, flush and exit 0;
SIGHUP reloads the config (an invalid one is reported and the old one kept).

SER videos grow frame by frame while the capture runs. Their events
(``created``, ``modified``, ``closed``) put the SER path on the same queue;
the worker then *follows* the file: every ``ser_poll_s`` (50 ms) it asks the
reader how many complete frames are on disk and processes the new ones in
order, into the SER's own session ``OUTPUT/<stem>/`` (one CSV row per frame,
``jup.ser#17``). After a restart it carries on after the last frame in that
CSV. A SER is no longer followed once its header is final (the capture
program closed it) and nothing came for ``ser_finish_s``, or nothing came
for ``[watch] timeout_s``; its session is then written and closed. Another
write to the file starts following it again.

Faults never stop the worker (see README, *Reliability*): a bad frame is a
CSV row with its reason; entries named like frames that are no usable file
(a directory, a FIFO, a symlink out of the capture folder, a file gone before
it was read) get a row too; an output folder that cannot be opened is waited
for; failed output writes and CSV appends are retried with back-off; an
unexpected error is logged with its traceback, and the capture folder is
listed again so that no frame is left behind.
"""

from __future__ import annotations

import bisect
import dataclasses
import gc
import itertools
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import cv2
from loguru import logger

from luckystack.daemon.config import ConfigError, Settings, load_settings, pipeline_params
from luckystack.daemon.logs import configure_logging
from luckystack.daemon.notify import SystemdNotifier
from luckystack.daemon.preview import PreviewServer, PreviewState, start_preview, stop_preview
from luckystack.core.errors import FrameError
from luckystack.daemon.session import (
    SKIPPED_REASON,
    Session,
    SessionStats,
    recorded_keys,
    ser_output_dir,
)
from luckystack.daemon.sources import (
    FrameLoader,
    FrameRef,
    LoadedFrame,
    Prefetcher,
    is_ser,
    parse_key,
)
from luckystack.daemon.watcher import (
    REASON_DIRECTORY,
    REASON_EMPTY,
    REASON_NOT_REGULAR,
    REASON_SYMLINK_OUTSIDE,
    REASON_VANISHED,
    FolderWatcher,
    list_existing_frames,
    list_unusable_entries,
    natural_key,
)

__all__ = ["Daemon", "run_watch"]

EXIT_OK = 0
EXIT_FAILURE = 1

#: Watcher reasons for which the worker still writes a CSV row (it finds the
#: precise reason itself when it reads the path: the file may have changed).
_RECORDED_IGNORES = frozenset({
    REASON_DIRECTORY, REASON_EMPTY, REASON_NOT_REGULAR, REASON_SYMLINK_OUTSIDE, REASON_VANISHED,
})


@dataclass
class _SerState:
    """A SER video being followed: where it is and what comes next."""

    path: Path
    output_dir: Path
    next_index: int
    last_activity: float
    session: Session | None = None
    retry_at: float = 0.0  # its output folder could not be opened: not before this


def _add_stats(total: SessionStats, s: SessionStats) -> None:
    for f in dataclasses.fields(SessionStats):  # every count (below_cut was once left out)
        setattr(total, f.name, getattr(total, f.name) + getattr(s, f.name))


@dataclass
class _Flags:
    stop: threading.Event = field(default_factory=threading.Event)
    reload: threading.Event = field(default_factory=threading.Event)


class Daemon:
    """The watch loop around one :class:`Session` and one :class:`FolderWatcher`.

    Parameters
    ----------
    input_dir, output_dir : Path
    settings : Settings
    config_path : Path, optional
        Re-read on :meth:`request_reload` (SIGHUP).
    overrides : dict
        Command-line overrides re-applied on reload (e.g. ``preset``).
    notifier : SystemdNotifier, optional
    max_write_interval_s : float
        While the worker is ``LAG_FRAMES`` behind, outputs are written this
        often (at least).
    min_write_interval_s : float
        While frames arrive, ``stacked.png`` is replaced at most this often
        (25 ms; each write costs ~3 ms, and it is written only when the stack
        changed: with the lucky cut a quarter of the frames); the last frame
        before a pause is written once this has passed.
    ser_poll_s : float
        How often a growing SER video is checked for new complete frames.
    ser_finish_s : float
        A SER whose header is final is let go after this long without news.
    ser_chunk : int
        Frames of SER backlog processed before the queue is looked at again.
    open_retry_max_s : float
        An output folder that cannot be opened is tried again after 0.5 s,
        doubling up to this.
    opencv_threads : int or None
        OpenCV's thread count while :meth:`run` runs (restored after; None:
        OpenCV's own, one per core). 1 by default: the worker and the decode
        threads already keep two cores busy, and on crops of a few hundred
        pixels OpenCV's pool costs more than it gives (its thread used
        2.7 ms of CPU per frame at 40 frames/s on 2 cores and saved the
        worker ~0.5 ms; the results are the same with any count).
    """

    #: Frame files decoded ahead at most (~1.2 MB each at 640 x 480 mono).
    PREFETCH_DEPTH = 4

    def __init__(
        self,
        input_dir: Path,
        output_dir: Path,
        settings: Settings,
        *,
        config_path: Path | None = None,
        overrides: dict | None = None,
        notifier: SystemdNotifier | None = None,
        max_write_interval_s: float = 2.0,
        min_write_interval_s: float = 0.025,
        idle_tick_s: float = 0.25,
        ser_poll_s: float = 0.05,
        ser_finish_s: float = 1.0,
        ser_chunk: int = 32,
        open_retry_max_s: float = 5.0,
        opencv_threads: int | None = 1,
    ) -> None:
        self.input_dir = Path(input_dir)
        self.output_dir = Path(output_dir)
        self.settings = settings
        self.config_path = config_path
        self.overrides = dict(overrides or {})
        self.notifier = notifier or SystemdNotifier(address="")
        self.max_write_interval_s = max_write_interval_s
        self.min_write_interval_s = min_write_interval_s
        self.idle_tick_s = idle_tick_s
        self.ser_poll_s = ser_poll_s
        self.ser_finish_s = ser_finish_s
        self.ser_chunk = ser_chunk
        self.open_retry_max_s = open_retry_max_s
        self.opencv_threads = opencv_threads
        self.flags = _Flags()
        self.queue: queue.Queue[Path] = queue.Queue(maxsize=settings.watch.queue_size)
        self.session: Session | None = None
        self.watcher: FolderWatcher | None = None
        self.coalesced = 0
        self._coalesced_logged = 0
        self._last_write = 0.0
        self._last_status = 0.0
        self._last_ping = 0.0
        self._behind_logged = -float("inf")
        self._batch_left = 0  # frames of the worker's current batch not processed yet
        self._behind_mark: tuple[float, int] | None = None  # (time, processed) at the last check
        self._queued: set[str] = set()
        self._queued_lock = threading.Lock()
        self.ready = threading.Event()
        self.loader = self._make_loader(settings)
        #: Decodes frame files as the watcher reports them, while the worker is busy.
        self.prefetcher = Prefetcher(self._load_ahead, depth=self.PREFETCH_DEPTH)
        self.sers: dict[Path, _SerState] = {}
        self._ser_skip: dict[Path, int] = {}
        self._ser_backlog = False
        self._existing_left: list[Path] = []  # listed frames waiting for room in the queue
        #: Set by the watcher's thread when the kernel dropped its events.
        self._overflow = threading.Event()
        self._relist_at: float | None = None  # when to list the folder again (monotonic)
        self._relists_left = 0
        self._watch_started = 0.0  # wall clock: files older are "existing"
        self._skip_logged = -float("inf")
        self._skipped_unlogged = 0
        self._retired = SessionStats()
        self.ser_outputs: list[Path] = []  # every SER session output folder, in order
        self.preview_state = PreviewState(self.output_dir)  # what the [preview] page shows
        self.preview: PreviewServer | None = None

    # -- control (thread- and signal-safe) ---------------------------------------
    def request_stop(self) -> None:
        self.flags.stop.set()

    def request_reload(self) -> None:
        self.flags.reload.set()

    # -- watcher side ------------------------------------------------------------
    def _enqueue(self, path: Path, block: bool = True) -> bool:
        """Called on the observer thread: cheap, blocks only if the queue is full.

        The worker itself passes ``block=False`` (it would wait for itself):
        False is returned when the queue is full.
        """
        key = str(path)
        with self._queued_lock:
            if key in self._queued:
                return True
            self._queued.add(key)
        while not self.flags.stop.is_set():
            try:
                self.queue.put(path, timeout=0.5) if block else self.queue.put_nowait(path)
                return True
            except queue.Full:
                if block:
                    continue
                break
        with self._queued_lock:
            self._queued.discard(key)
        return False

    def _load_ahead(self, path: Path) -> LoadedFrame:
        """The prefetch thread's load: decoded, and measured by the session's stacker."""
        session = self.session
        return session.load(path) if session is not None else self.loader.load(path)

    def _on_frame(self, path: Path) -> None:
        """The watcher's callback for a complete frame file: decode it ahead, queue it.

        Hinted before it is queued: the worker may take it the moment it is.
        Only a frame among the next ``depth`` the worker will take is hinted:
        behind a backlog, a frame read ahead here would hold one of the
        prefetcher's few places for seconds, and the frames the worker needs
        next (it hints them itself, a few ahead, from its batch and the head
        of the queue) would be decoded on the worker's own thread instead (a
        third of them at 100 frames/s).
        """
        hinted = (not is_ser(path) and self._waiting() < self.prefetcher.depth
                  and self.prefetcher.hint(path))
        if not self._enqueue(path) and hinted:
            self.prefetcher.discard(path)

    def _queued_first(self, n: int) -> list[Path]:
        """The first ``n`` paths waiting in the queue (left there), oldest first."""
        q = self.queue
        with q.mutex:  # queue.Queue's own lock and deque
            return list(itertools.islice(q.queue, n))

    def _waiting(self) -> int:
        """Frames the worker will take before one queued now (approximate: any thread)."""
        return self.queue.qsize() + self._batch_left + len(self._existing_left)

    def _on_ignored(self, path: Path, reason: str) -> None:
        if reason in _RECORDED_IGNORES and not is_ser(path):
            # Named like a frame: the worker records it with its reason.
            logger.bind(frame=path.name).debug("watcher: {}; recording it", reason)
            self._enqueue(path)
            return
        logger.bind(frame=path.name).info("ignored: {}", reason)

    def _start_watching(self) -> None:
        w = self.settings.watch
        self._watch_started = time.time()
        self.watcher = FolderWatcher(
            self.input_dir,
            self._on_frame,
            recursive=w.recursive,
            polling=w.polling,
            poll_interval_s=w.poll_interval_s,
            settle_s=w.settle_s,
            timeout_s=w.timeout_s,
            suffixes=w.suffixes,
            follow_symlinks=w.follow_symlinks,
            on_ignored=self._on_ignored,
            on_growing=self._enqueue,
            on_overflow=self._overflow.set,
        )
        self.watcher.start()

    def _stop_watching(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None

    def _enqueue_existing(self) -> int:
        """Queue the frames in the folder that have no row yet; returns how many.

        Runs on the worker: what does not fit in the queue is kept in a list
        and queued once the queue has drained to half (a folder may hold far
        more frames than ``[watch] queue_size``).
        """
        assert self.session is not None
        frames, unusable = self._listing()
        todo = [f for f in frames if is_ser(f) or not self.session.is_done(f)]
        todo += [f for f in unusable if not self.session.is_done(f)]
        self._existing_left = todo
        self._feed_existing()
        return len(todo)

    def _listing(self) -> tuple[list[Path], list[Path]]:
        """The folder's frames and its unusable entries named like frames, as
        :func:`list_existing_frames` and :func:`list_unusable_entries` give them
        (natural order), with absolute paths, as the watcher reports them."""
        w = self.settings.watch
        how = dict(recursive=w.recursive, suffixes=w.suffixes, follow_symlinks=w.follow_symlinks)
        return (
            [self._abs(f) for f in list_existing_frames(self.input_dir, **how)],
            [self._abs(f) for f in list_unusable_entries(self.input_dir, **how)],
        )

    #: After an event overflow, files modified less than this long ago are left
    #: to their own events (they may still be being written) ...
    RELIST_FRESH_S = 1.0
    #: ... and the folder is listed again for them, at most this many times.
    RELIST_TIMES = 10

    def _relist(self) -> None:
        """Queue the frames whose events the kernel dropped (an inotify overflow).

        Like the listing at start (:meth:`_enqueue_existing`): frames with no
        row in the CSV, in natural order behind those already waiting, but
        not those already queued or waiting, and not files modified in the
        last ``RELIST_FRESH_S`` (a frame still being written would be
        rejected as truncated): their close events come after the overflow,
        and if some were skipped the folder is listed again that much later.
        With ``[watch] existing = "none"``, files older than the watch stay
        ignored.
        """
        assert self.session is not None
        frames, unusable = self._listing()
        with self._queued_lock:
            queued = set(self._queued)
        waiting = set(self._existing_left)
        settled_before = time.time() - self.RELIST_FRESH_S
        since = self._watch_started if self.settings.watch.existing == "none" else -float("inf")
        found, fresh = [], 0
        for path in frames + unusable:
            if is_ser(path) or str(path) in queued or path in waiting or self.session.is_done(path):
                continue
            try:
                mtime = os.lstat(path).st_mtime
            except OSError:
                continue  # gone again
            if mtime < since:
                continue
            if mtime > settled_before:
                fresh += 1
                continue
            found.append(path)
        for path in found:
            bisect.insort(self._existing_left, path, key=natural_key)
        self._feed_existing()
        if found:
            logger.warning("{} frames whose events were lost are queued", len(found))
        if fresh and self._relists_left > 0:
            self._relists_left -= 1
            self._relist_at = time.monotonic() + self.RELIST_FRESH_S
        else:
            self._relist_at = None

    def _feed_existing(self) -> None:
        left = self._existing_left
        i = 0
        while i < len(left) and self._enqueue(left[i], block=False):
            i += 1
        self._existing_left = left[i:]

    def _skip_existing_sers(self) -> None:
        """``existing = "none"``: frames already in a SER at start are not processed."""
        for f in self._listing()[0]:
            if is_ser(f):
                self._ser_skip[f] = self.loader.ser_available(f)
                self.loader.forget(f)

    # -- session -------------------------------------------------------------------
    def _make_loader(self, settings: Settings) -> FrameLoader:
        return FrameLoader(
            settings.input.bayer_pattern, settings.input.debayer_method,
            confine_to=None if settings.watch.follow_symlinks else self._abs(self.input_dir),
        )

    @staticmethod
    def _abs(path: Path) -> Path:
        return Path(os.path.abspath(path))

    def _new_session(self, output_dir: Path) -> Session:
        session = Session(
            pipeline_params(self.settings), self.input_dir, output_dir,
            write_comparison=self.settings.output.write_comparison, loader=self.loader,
            sharpened_interval_s=self.settings.output.sharpened_interval_s,
            stored_live_png=not self.settings.output.compress_live,
            render_in_background=True,
        )
        session.open()
        if output_dir == self.output_dir:  # the folder's session: the page counts its CSV
            self.preview_state.seed(session.opened_records)
        session.opened_records = []
        if session.dirty:
            session.write_outputs()
        return session

    def _open_session(self) -> bool:
        """Open the folder's session, waiting while its output folder is unusable.

        A folder that cannot be created or a CSV that cannot be opened (a path
        component is a file, permissions, a read-only or full file system) is
        logged and tried again (0.5 s doubling up to ``open_retry_max_s``).
        Returns False if a stop was requested while waiting.
        """
        failures = 0
        while True:
            try:
                self.session = self._new_session(self.output_dir)
            except OSError as err:
                failures += 1
                if failures == 1:
                    logger.error("cannot open the output folder {}: {}; retrying until it works",
                                 self.output_dir, err)
                    self.notifier.status(f"waiting for the output folder: {err}")
                else:
                    logger.debug("output folder still unusable ({} attempts): {}", failures, err)
                delay = min(self.open_retry_max_s, 0.5 * 2 ** (failures - 1))
                deadline = time.monotonic() + delay
                while time.monotonic() < deadline:
                    if self.flags.stop.is_set():
                        return False
                    self._housekeeping()
                    self.flags.stop.wait(min(0.25, max(0.0, deadline - time.monotonic())))
                continue
            if failures:
                logger.info("output folder {} is usable again", self.output_dir)
            return True

    def _close_session(self) -> None:
        """Write and close every session (the folder's and the SER ones)."""
        self._write(force=True)
        if self.session is not None:
            self.session.close()
            _add_stats(self._retired, self.session.stats)
            self.session = None
        for st in self.sers.values():
            if st.session is not None:
                _add_stats(self._retired, st.session.stats)
                st.session.close()
                st.session = None

    def sessions(self) -> list[Session]:
        """The open sessions: the folder's first, then the followed SER videos'."""
        out = [self.session] if self.session is not None else []
        return out + [st.session for st in self.sers.values() if st.session is not None]

    def totals(self) -> SessionStats:
        """Frame counts over all sessions of this run, SER sessions included."""
        total = SessionStats()
        _add_stats(total, self._retired)
        for session in self.sessions():
            _add_stats(total, session.stats)
        return total

    # -- main loop -------------------------------------------------------------------
    def run(self) -> int:
        """Watch until stopped; returns the process exit code."""
        if self.opencv_threads is None:
            return self._run()
        previous = cv2.getNumThreads()
        cv2.setNumThreads(self.opencv_threads)
        try:
            return self._run()
        finally:
            cv2.setNumThreads(previous)

    def _run(self) -> int:
        if not self._open_session():
            logger.info("stopped before the output folder could be opened")
            return EXIT_OK
        try:
            self._start_watching()
        except (FileNotFoundError, NotADirectoryError) as err:
            logger.error("cannot watch {}: {}", self.input_dir, err)
            self._close_session()
            return EXIT_FAILURE
        try:
            self.preview = start_preview(self.preview_state, self.settings.preview)
            if self.settings.watch.existing == "all":
                n = self._enqueue_existing()
                if n:
                    logger.info("{} frames already in {} will be processed", n, self.input_dir)
            else:
                self._skip_existing_sers()
            logger.info("watching {} -> {}", self.input_dir, self.output_dir)
            self.notifier.ready(status=self._status_text())
            self.ready.set()
            # The modules, settings and session loaded so far live as long as
            # the daemon: out of the garbage collector's sight, its full
            # collections no longer walk them (one took 61 ms in a bench of
            # 3,000 frames, a stall of stacked.png; with the freeze none came).
            gc.freeze()
            return self._loop()
        finally:
            gc.unfreeze()
            self.notifier.stopping()
            stop_preview(self.preview)
            self.preview = None
            self._stop_watching()
            self._close_session()
            self.prefetcher.close()
            self.loader.close()
            s = self.totals()
            logger.info(
                "stopped: {} frames processed ({} accepted, {} rejected{}), {} writes, "
                "{} coalesced", s.processed, s.accepted, s.rejected,
                f", {s.skipped} of them skipped to keep up" if s.skipped else "",
                s.writes, self.coalesced,
            )

    def _loop(self) -> int:
        while not self.flags.stop.is_set():
            try:
                code = self._step()
            except Exception:
                # A bug must not end a night's session: log it, then list the
                # folder again so frames taken off the queue are not left behind.
                logger.exception("unexpected error in the worker; carrying on")
                self.flags.stop.wait(1.0)
                try:
                    if self.session is not None and self.watcher is not None:
                        self._enqueue_existing()
                except Exception:
                    logger.exception("cannot list the capture folder again")
                continue
            if code is not None:
                return code
        return EXIT_OK

    def _step(self) -> int | None:
        """One turn of the worker loop; an exit code to stop with, else None."""
        self._housekeeping()
        if self.flags.reload.is_set():
            self.flags.reload.clear()
            self._reload()
            return None
        if self.session is None:  # stopped while waiting for the output folder
            return None
        if self.watcher is not None and not self.watcher.alive():
            return self._folder_lost()
        if self._existing_left and self.queue.qsize() <= self.queue.maxsize // 2:
            self._feed_existing()
        processed_before = self.totals().processed
        if self._ser_backlog:
            wait = 0.0
        elif self.sers:
            wait = self.ser_poll_s
        else:
            wait = self.idle_tick_s
        # A stack not yet on disk (writes are spaced min_write_interval_s): wake
        # when it is due, unless a frame comes first.
        write_due = None
        if any(s.stack_stale for s in self.sessions()):
            write_due = self._last_write + self.min_write_interval_s
            wait = min(wait, max(0.0, write_due - time.monotonic()))
        try:
            first = self.queue.get(timeout=wait) if wait > 0 else self.queue.get_nowait()
        except queue.Empty:
            first = None
        if first is not None:
            batch = [first]
            while True:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            # Off the queue, not processed yet: the watcher reads ahead only
            # frames that come within the next few (see _on_frame).
            self._batch_left = len(batch)
            files: list[Path] = []
            taken = 0
            try:
                batch.sort(key=natural_key)
                if self._existing_left:
                    batch = self._defer_after_backlog(batch)
                for path in batch:
                    if is_ser(path):
                        self._follow_ser(path)
                files = self._claim([p for p in batch if not is_ser(p)])
                self._batch_left = len(files)
                files = self._keep_up(files)
                self._batch_left = len(files)
                depth = self.prefetcher.depth
                for i, path in enumerate(files):
                    if self.flags.stop.is_set():
                        break  # the rest stays unprocessed (not in the CSV): found on restart
                    ahead = files[i + 1 : i + 1 + depth]
                    if len(ahead) < depth:  # the end of the batch: the next one's first
                        ahead += self._queued_first(depth - len(ahead))
                    for nxt in ahead:
                        self.prefetcher.hint(nxt)
                    loaded = self.prefetcher.take(path)
                    taken = i + 1
                    self._batch_left = len(files) - taken
                    self._log_record(self.session.process(path, loaded))
                    self._after_frame(i + 1 < len(files) or not self.queue.empty())
                    self._housekeeping()
            finally:
                self._batch_left = 0
                for path in files[taken:]:
                    self.prefetcher.discard(path)
        if self.sers and not self.flags.stop.is_set():
            self._ser_backlog = self._poll_sers()
        if not self._ser_backlog and self.queue.empty():
            # Frames came this turn (or their write fell due): stacked.png, the
            # sharpened images when due; a turn without frames (a pause of
            # idle_tick_s) brings them all up to date.
            busy = self.totals().processed != processed_before or (
                write_due is not None and first is None
            )
            if not busy:
                self._write()
            elif time.monotonic() - self._last_write >= self.min_write_interval_s:
                self._write(quick=True)
        return None

    #: The CSV reason of a frame skipped by ``[watch] max_lag_frames``.
    SKIP_REASON = SKIPPED_REASON + ": more than {} frames were waiting ([watch] max_lag_frames)"

    def _keep_up(self, files: list[Path]) -> list[Path]:
        """The frames of ``files`` to process; with ``[watch] max_lag_frames = N``
        the oldest are recorded as skipped, unread, while more than N wait
        (``files`` counted in :meth:`_waiting` as the batch left).

        A camera faster than the worker otherwise makes the live images lag
        further and further behind it (every frame is stacked, in order);
        skipping the oldest keeps them within N frames of the newest.
        """
        lag = self.settings.watch.max_lag_frames
        if lag <= 0 or not files:
            return files
        assert self.session is not None
        n = min(len(files), self._waiting() - lag)
        if n <= 0:
            return files
        reason = self.SKIP_REASON.format(lag)
        for path in files[:n]:
            self.prefetcher.discard(path)
            self._log_record(self.session.skip(path, reason))
        self._skipped_unlogged += n
        now = time.monotonic()
        if now - self._skip_logged >= 60.0:
            logger.warning(
                "{} frames skipped, unread, to keep the live images within {} frames of the "
                "camera ([watch] max_lag_frames); `luckystack run` stacks every frame",
                self._skipped_unlogged, lag)
            self._skip_logged, self._skipped_unlogged = now, 0
        return files[n:]

    def _defer_after_backlog(self, batch: list[Path]) -> list[Path]:
        """While listed frames wait for room in the queue, frames arriving live
        that sort after them wait behind them: natural order, as in ``run``."""
        first = natural_key(self._existing_left[0])
        keep = []
        for path in batch:
            if is_ser(path) or natural_key(path) <= first:
                keep.append(path)
                continue
            with self._queued_lock:
                self._queued.discard(str(path))
            self.prefetcher.discard(path)
            bisect.insort(self._existing_left, path, key=natural_key)
        return keep

    #: Frames waiting beyond which the worker is behind: outputs are then written
    #: only every ``max_write_interval_s``, so that it catches up sooner.
    LAG_FRAMES = 50

    def _after_frame(self, more_waiting: bool) -> None:
        """Write the outputs after a frame, or count the write as coalesced.

        ``stacked.png`` follows the stack at most every ``min_write_interval_s``
        also while frames wait (a write costs ~3 ms, made only when the stack
        changed), so a camera whose rate the worker keeps up with sees each
        stacked frame within that interval. Only when the worker has
        fallen ``LAG_FRAMES`` behind are writes spaced ``max_write_interval_s``.
        """
        since = time.monotonic() - self._last_write
        if since < self.min_write_interval_s:
            return  # written when due (see _step)
        if more_waiting and since < self.max_write_interval_s and (
            self._waiting() >= self.LAG_FRAMES
        ):
            self.coalesced += 1
            return
        self._write(quick=True)

    def _claim(self, paths: list[Path]) -> list[Path]:
        """Take paths off the queued set; return those not yet in the CSV."""
        assert self.session is not None
        with self._queued_lock:
            for path in paths:
                self._queued.discard(str(path))
        todo, seen = [], set()
        for path in paths:
            if not self.session.is_done(path) and path not in seen:
                seen.add(path)
                todo.append(path)
            elif path not in seen:
                self.prefetcher.discard(path)
        return todo

    def _log_record(self, rec) -> None:
        self.preview_state.record(rec)
        logger.bind(frame=rec.file).debug(
            "{} sharpness={} shift=({}, {})", rec.outcome, rec.sharpness, rec.shift_y, rec.shift_x
        )

    # -- SER videos ----------------------------------------------------------------
    def _follow_ser(self, path: Path) -> None:
        """A SER video was created, written to or closed: follow it (again)."""
        with self._queued_lock:
            self._queued.discard(str(path))
        key = self._abs(path)
        now = time.monotonic()
        st = self.sers.get(key)
        if st is not None:
            st.last_activity = now
            return
        out = ser_output_dir(self.output_dir, self.input_dir, key)
        done = -1
        for k in recorded_keys(out / "crops.csv"):
            ref = parse_key(k, self.input_dir)
            if ref.index is not None:
                done = max(done, ref.index)
        start = max(done + 1, self._ser_skip.get(key, 0))
        self.sers[key] = _SerState(path=key, output_dir=out, next_index=start, last_activity=now)
        logger.bind(frame=key.name).debug("following SER video from frame {}", start)

    def _open_ser_session(self, st: _SerState) -> Session:
        session = self._new_session(st.output_dir)
        st.session = session
        st.next_index = max(st.next_index, session.next_index(st.path))
        if st.output_dir not in self.ser_outputs:
            self.ser_outputs.append(st.output_dir)
        logger.info("SER video {} -> {} (from frame {})", st.path.name, st.output_dir,
                    st.next_index)
        return session

    def _poll_sers(self) -> bool:
        """Process the new complete frames of the followed SER videos, in order.

        At most ``ser_chunk`` frames per call; returns True if more are waiting.
        """
        budget = self.ser_chunk
        pending = False
        for key, st in list(self.sers.items()):
            if self.flags.stop.is_set():
                break
            now = time.monotonic()
            n = self.loader.ser_available(key)
            if n > st.next_index:
                st.last_activity = now
                if st.session is None:
                    if now < st.retry_at:
                        continue
                    try:
                        self._open_ser_session(st)
                    except OSError as err:
                        if not st.retry_at:
                            logger.bind(frame=st.path.name).error(
                                "cannot open the output folder {}: {}; retrying until it works",
                                st.output_dir, err)
                        st.retry_at = now + self.open_retry_max_s
                        continue
                    if st.retry_at:
                        logger.info("output folder {} is usable again", st.output_dir)
                        st.retry_at = 0.0
                session = st.session
                assert session is not None
                while st.next_index < n and budget > 0 and not self.flags.stop.is_set():
                    ref = FrameRef(key, st.next_index)
                    st.next_index += 1
                    if session.is_done(ref):
                        continue
                    budget -= 1
                    self._log_record(session.process(ref))
                    self._after_frame(st.next_index < n or not self.queue.empty())
                    self._housekeeping()
                if st.next_index < n:
                    pending = True
                continue
            idle = now - st.last_activity
            finished = self.loader.ser_finished(key)
            if (finished and (st.session is None or idle >= self.ser_finish_s)) or (
                idle >= self.settings.watch.timeout_s
            ):
                self._retire_ser(st, finished)
        return pending

    def _retire_ser(self, st: _SerState, finished: bool) -> None:
        """Stop following a SER video: write and close its session."""
        del self.sers[st.path]
        if st.session is not None:
            if st.session.dirty and st.session.write_outputs():
                self._last_write = time.monotonic()
                self.preview_state.wrote(st.session.output_dir, st.session.last_written)
            s = st.session.stats
            _add_stats(self._retired, s)
            st.session.close()
            how = "finished" if finished else f"no new frame for {self.settings.watch.timeout_s:g} s"
            logger.info("SER video {} {}: {} frames processed here ({} accepted, {} rejected)",
                        st.path.name, how, s.processed, s.accepted, s.rejected)
        elif st.next_index == 0:
            try:
                self.loader.ser_reader(st.path)
            except FrameError as err:
                logger.bind(frame=st.path.name).warning("SER video not readable: {}", err)
        self.loader.forget(st.path)

    def _write(self, force: bool = False, quick: bool = False) -> None:
        wrote = False
        for session in self.sessions():
            if not (session.dirty or force):
                continue
            if session.write_outputs(force=force, quick=quick and not force):
                wrote = True
                self.preview_state.wrote(session.output_dir, session.last_written)
        if wrote:
            self._last_write = time.monotonic()
        if self.coalesced > self._coalesced_logged:
            logger.info("{} output writes coalesced while frames were waiting",
                        self.coalesced - self._coalesced_logged)
            self._coalesced_logged = self.coalesced

    def _status_text(self) -> str:
        if self.session is None:
            return "starting"
        s = self.totals()
        text = (f"{s.processed} frames: {s.accepted} accepted, {s.rejected} rejected; "
                f"{self.queue.qsize()} waiting")
        if self.sers:
            text += f"; following {len(self.sers)} SER video(s)"
        return text

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if self._overflow.is_set():
            self._overflow.clear()
            self._relist_at, self._relists_left = now, self.RELIST_TIMES
        if self._relist_at is not None and now >= self._relist_at and self.session is not None:
            try:
                self._relist()
            except OSError as err:
                logger.error("cannot list {} again: {}; retrying", self.input_dir, err)
                self._relist_at = now + self.RELIST_FRESH_S
        period = self.notifier.watchdog_period()
        if period is not None and now - self._last_ping >= period / 3:
            self.notifier.watchdog_ping()
            self._last_ping = now
        if now - self._last_status >= 2.0:
            self.notifier.status(self._status_text())
            self._last_status = now
        if self._behind_mark is None or now - self._behind_mark[0] >= self.BEHIND_CHECK_S:
            self._check_behind(now)

    #: A backlog of this many frames is reported (at most once a minute) ...
    BEHIND_FRAMES = 200
    #: ... checked this often.
    BEHIND_CHECK_S = 2.0

    def _check_behind(self, now: float) -> None:
        """Warn when frames wait faster than they are stacked (a camera too fast)."""
        processed = self.totals().processed
        mark, self._behind_mark = self._behind_mark, (now, processed)
        waiting = self._waiting()
        if mark is None or waiting < self.BEHIND_FRAMES or now - self._behind_logged < 60.0:
            return
        rate = (processed - mark[1]) / max(now - mark[0], 1e-9)
        self._behind_logged = now
        logger.warning(
            "{} frames waiting, stacking {:.0f} frames/s: every frame is still stacked, in "
            "order, and the outputs catch up when the frames pause. If the camera delivers "
            "frames faster than that, see README, Performance (e.g. [align] alignment_points = "
            "false)", waiting, rate)

    def _reload(self) -> None:
        logger.info("reloading configuration")
        self.notifier.reloading()
        try:
            new = load_settings(self.config_path, **self.overrides)
        except ConfigError as err:
            for problem in err.problems:
                logger.error("new config rejected: {}", problem)
            logger.error("keeping the previous configuration")
            self.notifier.ready(status=self._status_text())
            return
        old = self.settings
        self.settings = new
        if new.logging != old.logging:
            configure_logging(level=new.logging.level, json_file=new.logging.json_file,
                              rotation=new.logging.rotation, retention=new.logging.retention)
        if (pipeline_params(new) != pipeline_params(old) or new.output != old.output
                or new.input != old.input
                or new.watch.follow_symlinks != old.watch.follow_symlinks):
            # A new session resumes from the CSV, so the stack carries on
            # (SER sessions are reopened when their next frame comes).
            self._close_session()
            self.prefetcher.close()
            self.loader.close()
            self.loader = self._make_loader(new)
            self.prefetcher = Prefetcher(self._load_ahead, depth=self.PREFETCH_DEPTH)
            if not self._open_session():
                return
        if new.preview != old.preview:  # restarted with the new address
            stop_preview(self.preview)
            self.preview = start_preview(self.preview_state, new.preview)
        if new.watch != old.watch:
            self._stop_watching()
            self._start_watching()
            if new.watch.existing == "all":
                self._enqueue_existing()
        logger.info("configuration reloaded")
        self.notifier.ready(status=self._status_text())

    def _folder_lost(self) -> int | None:
        """The capture folder vanished or the observer died."""
        self._write(force=True)
        if self.settings.watch.on_folder_lost == "exit":
            logger.error("capture folder {} is gone; exiting ([watch] on_folder_lost = \"exit\")",
                         self.input_dir)
            return EXIT_FAILURE
        logger.warning("capture folder {} is gone; waiting for it to return "
                       "([watch] on_folder_lost = \"wait\")", self.input_dir)
        self._stop_watching()
        while not self.flags.stop.is_set():
            self._housekeeping()
            if self.input_dir.is_dir():
                try:
                    self._start_watching()
                except (FileNotFoundError, NotADirectoryError):
                    continue
                n = self._enqueue_existing()
                logger.info("capture folder is back; {} new frames", n)
                return None
            self.flags.stop.wait(0.5)
        return None


def _install_signals(daemon: Daemon) -> dict[int, object]:
    def on_stop(signum: int, frame: FrameType | None) -> None:
        logger.info("received {}; finishing the current frame", signal.Signals(signum).name)
        daemon.request_stop()

    def on_hup(signum: int, frame: FrameType | None) -> None:
        daemon.request_reload()

    previous = {}
    for sig, handler in ((signal.SIGINT, on_stop), (signal.SIGTERM, on_stop), (signal.SIGHUP, on_hup)):
        previous[sig] = signal.signal(sig, handler)
    return previous


def run_watch(
    input_dir: Path,
    output_dir: Path,
    settings: Settings,
    *,
    config_path: Path | None = None,
    preset: str | None = None,
) -> int:
    """Run the daemon in the foreground until SIGINT/SIGTERM."""
    overrides = {"preset": preset} if preset else {}
    daemon = Daemon(input_dir, output_dir, settings, config_path=config_path,
                    overrides=overrides, notifier=SystemdNotifier())
    previous = _install_signals(daemon)
    try:
        return daemon.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
