"""``luckystack watch``: the live daemon.

Threads: the watchdog observer pushes complete frame paths onto a bounded
queue; the main thread is the one worker. It drains the queue in natural
order, runs every frame through the :class:`Session` (one CSV row each) and
writes the output images when the queue is empty (or at least every
``max_write_interval_s`` during a long backlog); skipped writes are counted
as coalesced. Signals only set flags: SIGINT/SIGTERM finish the current
frame, flush and exit 0; SIGHUP reloads the config (an invalid one is
reported and the old one kept).
"""

from __future__ import annotations

import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from loguru import logger

from luckystack.daemon.config import ConfigError, Settings, load_settings, pipeline_params
from luckystack.daemon.logs import configure_logging
from luckystack.daemon.notify import SystemdNotifier
from luckystack.daemon.session import Session
from luckystack.daemon.watcher import FolderWatcher, list_existing_frames, natural_key

__all__ = ["Daemon", "run_watch"]

EXIT_OK = 0
EXIT_FAILURE = 1


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
        During a backlog, outputs are still written at least this often.
    """

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
        idle_tick_s: float = 0.25,
    ) -> None:
        self.input_dir = Path(input_dir)
        self.output_dir = Path(output_dir)
        self.settings = settings
        self.config_path = config_path
        self.overrides = dict(overrides or {})
        self.notifier = notifier or SystemdNotifier(address="")
        self.max_write_interval_s = max_write_interval_s
        self.idle_tick_s = idle_tick_s
        self.flags = _Flags()
        self.queue: queue.Queue[Path] = queue.Queue(maxsize=settings.watch.queue_size)
        self.session: Session | None = None
        self.watcher: FolderWatcher | None = None
        self.coalesced = 0
        self._coalesced_logged = 0
        self._last_write = 0.0
        self._last_status = 0.0
        self._last_ping = 0.0
        self._queued: set[str] = set()
        self._queued_lock = threading.Lock()
        self.ready = threading.Event()

    # -- control (thread- and signal-safe) ---------------------------------------
    def request_stop(self) -> None:
        self.flags.stop.set()

    def request_reload(self) -> None:
        self.flags.reload.set()

    # -- watcher side ------------------------------------------------------------
    def _enqueue(self, path: Path) -> None:
        """Called on the observer thread: cheap, blocks only if the queue is full."""
        key = str(path)
        with self._queued_lock:
            if key in self._queued:
                return
            self._queued.add(key)
        while not self.flags.stop.is_set():
            try:
                self.queue.put(path, timeout=0.5)
                return
            except queue.Full:
                continue

    def _on_ignored(self, path: Path, reason: str) -> None:
        logger.bind(frame=path.name).info("ignored: {}", reason)

    def _start_watching(self) -> None:
        w = self.settings.watch
        self.watcher = FolderWatcher(
            self.input_dir,
            self._enqueue,
            recursive=w.recursive,
            polling=w.polling,
            poll_interval_s=w.poll_interval_s,
            settle_s=w.settle_s,
            timeout_s=w.timeout_s,
            suffixes=w.suffixes,
            follow_symlinks=w.follow_symlinks,
            on_ignored=self._on_ignored,
        )
        self.watcher.start()

    def _stop_watching(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None

    def _enqueue_existing(self) -> int:
        assert self.session is not None
        w = self.settings.watch
        frames = list_existing_frames(
            self.input_dir, recursive=w.recursive, suffixes=w.suffixes,
            follow_symlinks=w.follow_symlinks,
        )
        todo = [f for f in frames if not self.session.is_done(f)]
        for f in todo:
            self._enqueue(f)
        return len(todo)

    # -- session -------------------------------------------------------------------
    def _open_session(self) -> None:
        self.session = Session(
            pipeline_params(self.settings), self.input_dir, self.output_dir,
            write_comparison=self.settings.output.write_comparison,
        )
        self.session.open()
        if self.session.dirty:
            self.session.write_outputs()

    def _close_session(self) -> None:
        if self.session is not None:
            self._write(force=True)
            self.session.close()

    # -- main loop -------------------------------------------------------------------
    def run(self) -> int:
        """Watch until stopped; returns the process exit code."""
        self._open_session()
        try:
            self._start_watching()
        except (FileNotFoundError, NotADirectoryError) as err:
            logger.error("cannot watch {}: {}", self.input_dir, err)
            self._close_session()
            return EXIT_FAILURE
        try:
            if self.settings.watch.existing == "all":
                n = self._enqueue_existing()
                if n:
                    logger.info("{} frames already in {} will be processed", n, self.input_dir)
            logger.info("watching {} -> {}", self.input_dir, self.output_dir)
            self.notifier.ready(status=self._status_text())
            self.ready.set()
            return self._loop()
        finally:
            self.notifier.stopping()
            self._stop_watching()
            self._close_session()
            assert self.session is not None
            s = self.session.stats
            logger.info(
                "stopped: {} frames processed ({} accepted, {} rejected), {} writes, "
                "{} coalesced", s.processed, s.accepted, s.rejected, s.writes, self.coalesced,
            )

    def _loop(self) -> int:
        while not self.flags.stop.is_set():
            self._housekeeping()
            if self.flags.reload.is_set():
                self.flags.reload.clear()
                self._reload()
            if self.watcher is not None and not self.watcher.alive():
                code = self._folder_lost()
                if code is not None:
                    return code
                continue
            try:
                first = self.queue.get(timeout=self.idle_tick_s)
            except queue.Empty:
                self._write()
                continue
            batch = [first]
            while True:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            batch.sort(key=natural_key)
            for i, path in enumerate(batch):
                if self.flags.stop.is_set():
                    break  # the rest stays unprocessed (not in the CSV): found again on restart
                self._process(path)
                more_waiting = i + 1 < len(batch) or not self.queue.empty()
                if more_waiting and time.monotonic() - self._last_write < self.max_write_interval_s:
                    self.coalesced += 1
                else:
                    self._write()
                self._housekeeping()
            self._write()
        return EXIT_OK

    def _process(self, path: Path) -> None:
        assert self.session is not None
        with self._queued_lock:
            self._queued.discard(str(path))
        if self.session.is_done(path):
            return
        rec = self.session.process(path)
        logger.bind(frame=rec.file).debug(
            "{} sharpness={} shift=({}, {})", rec.outcome, rec.sharpness, rec.shift_y, rec.shift_x
        )

    def _write(self, force: bool = False) -> None:
        if self.session is None or not (self.session.dirty or force):
            return
        if self.session.write_outputs():
            self._last_write = time.monotonic()
        if self.coalesced > self._coalesced_logged:
            logger.info("{} output writes coalesced while frames were waiting",
                        self.coalesced - self._coalesced_logged)
            self._coalesced_logged = self.coalesced

    def _status_text(self) -> str:
        if self.session is None:
            return "starting"
        s = self.session.stats
        return (f"{s.processed} frames: {s.accepted} accepted, {s.rejected} rejected; "
                f"{self.queue.qsize()} waiting")

    def _housekeeping(self) -> None:
        now = time.monotonic()
        period = self.notifier.watchdog_period()
        if period is not None and now - self._last_ping >= period / 3:
            self.notifier.watchdog_ping()
            self._last_ping = now
        if now - self._last_status >= 2.0:
            self.notifier.status(self._status_text())
            self._last_status = now

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
        if pipeline_params(new) != pipeline_params(old) or new.output != old.output:
            # A new session resumes from the CSV, so the stack carries on.
            self._close_session()
            self._open_session()
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
            logger.error("capture folder {} is gone; exiting", self.input_dir)
            return EXIT_FAILURE
        logger.warning("capture folder {} is gone; waiting for it to return", self.input_dir)
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
