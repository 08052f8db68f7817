"""A stacking session: frame files in, CSV rows and output images out.

:class:`Session` is the one place where files meet the core pipeline. The
batch command (``run``) and the daemon (``watch``) both feed paths to
:meth:`Session.process` in order and call :meth:`Session.write_outputs`;
identical frames therefore give identical images.
"""

from __future__ import annotations

import dataclasses
import os
import stat as stat_mod
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from loguru import logger

from luckystack.core.crop import CropBox
from luckystack.core.errors import FrameError
from luckystack.core.pipeline import (
    LUCKY_CUT_REASON,
    FrameOutcome,
    LiveStacker,
    PipelineParams,
    compose_panels,
)
from luckystack.daemon.frames import is_transient_reason
from luckystack.daemon.outputs import (
    CropLog,
    CropRecord,
    atomic_write_bytes,
    encode_png16,
    fsync_files,
    remove_stale_temps,
)
from luckystack.daemon.sources import (
    FrameLoader,
    FrameRef,
    LoadedFrame,
    as_ref,
    file_time,
    frame_key,
    parse_key,
)

__all__ = [
    "Session", "SessionStats", "default_output_dir", "ser_output_dir", "recorded_keys",
    "OUTPUT_NAMES", "SKIPPED_REASON",
]

OUTPUT_NAMES = {
    "stacked": "stacked.png",
    "sharpened": "sharpened.png",
    "comparison": "comparison.png",
    "csv": "crops.csv",
}
IMAGE_OUTPUTS = ("stacked", "sharpened", "comparison")


def default_output_dir(input_path: Path) -> Path:
    """``INPUT_luckystack`` beside the input folder (never inside it).

    For a single file (``jup.ser``) it is ``jup_luckystack`` beside the file.
    """
    input_path = Path(input_path).resolve()
    if input_path.is_file():
        return input_path.parent / f"{input_path.stem}_luckystack"
    return input_path.parent / f"{input_path.name}_luckystack"


def ser_output_dir(output_dir: Path, input_root: Path, ser_path: Path) -> Path:
    """Where a SER video found in a capture folder gets its own session.

    ``OUTPUT/<stem>`` (``OUTPUT/sub/<stem>`` for ``INPUT/sub/jup.ser`` when
    watching recursively).
    """
    ser_path = Path(ser_path)
    try:
        rel = ser_path.resolve().relative_to(Path(input_root).resolve())
    except ValueError:
        rel = Path(ser_path.name)
    return Path(output_dir) / rel.with_suffix("")


def recorded_keys(csv_path: Path) -> list[str]:
    """The ``file`` column of an existing crop CSV (cheap; [] if there is none)."""
    import csv

    try:
        with Path(csv_path).open("r", newline="", encoding="utf-8") as fh:
            return [row.get("file", "") for row in csv.DictReader(fh)]
    except (OSError, csv.Error, UnicodeDecodeError):
        return []


#: How the CSV reason of a frame skipped unread (Session.skip) begins.
SKIPPED_REASON = "skipped to keep up"


@dataclass(slots=True)
class SessionStats:
    processed: int = 0
    accepted: int = 0
    rejected: int = 0
    #: Of the rejected: usable frames left out by the lucky cut.
    below_cut: int = 0
    #: Of the rejected: frames not read, to keep up ([watch] max_lag_frames).
    skipped: int = 0
    writes: int = 0
    write_failures: int = 0
    resumed: int = 0


def _record_to_outcome(rec: CropRecord) -> FrameOutcome:
    box = disc = None
    if rec.x is not None and rec.width is not None:
        box = CropBox(rec.y, rec.x, rec.y + rec.height, rec.x + rec.width)  # type: ignore[operator]
    if rec.disc_x is not None and rec.disc_width is not None:
        disc = CropBox(rec.disc_y, rec.disc_x, rec.disc_y + rec.disc_height,  # type: ignore[operator]
                       rec.disc_x + rec.disc_width)
    shift = None
    if rec.shift_y is not None and rec.shift_x is not None:
        shift = (rec.shift_y, rec.shift_x)
    return FrameOutcome(
        accepted=rec.outcome == "accepted",
        reason=rec.reason,
        box=box,
        disc=disc,
        sharpness=rec.sharpness,
        shift_yx=shift,
        stacked=rec.stacked,
    )


class Session:
    """Process frame files of one capture session into one output folder.

    Parameters
    ----------
    params : PipelineParams
    input_root : Path
        The capture folder; CSV ``file`` entries are relative to it.
    output_dir : Path
        Created if missing. Must not be inside ``input_root``.
    write_comparison : bool
        Also write ``comparison.png``.
    loader : FrameLoader, optional
        Decodes frames (shared by the daemon's sessions); a default one
        (Bayer ``auto``, bilinear) if omitted.
    output_inside_ok : bool
        Allow ``output_dir`` inside ``input_root`` (``run FILE``: the input is
        one file, not a watched folder).
    retry_min_s, retry_max_s : float
        After a failed output write, the next attempt waits ``retry_min_s``,
        doubling up to ``retry_max_s`` (a full disk is not hammered, nor the
        log flooded); the first write after recovery is logged.
    sharpened_interval_s : float
        A *quick* :meth:`write_outputs` (the daemon's, while frames arrive)
        writes ``stacked.png`` every time but ``sharpened.png`` and
        ``comparison.png`` (sharpening costs ~40 ms) at most this often; a
        full write brings every image up to date.
    stored_live_png : bool
        A quick write stores its PNGs uncompressed: the same pixels, ~10x
        less CPU to encode (0.2 instead of 2 ms for a 242 x 264 stack, 1.2
        instead of 7 ms for its comparison), files ~16 % larger. The next
        full write (a pause, the end) writes them compressed again, so the
        files left behind are the usual ones. Off by default.
    render_in_background : bool
        A quick write hands ``sharpened.png`` and ``comparison.png`` (their
        ~40-60 ms of sharpening) to a thread of their own and returns after
        ``stacked.png``, so that the caller (the daemon's worker) does not
        stall while frames arrive. One such render at a time; a full write
        and :meth:`close` wait for it first, so the newest images land
        last. Off by default (``run`` writes once, at the end).
    """

    def __init__(
        self,
        params: PipelineParams,
        input_root: Path,
        output_dir: Path,
        *,
        write_comparison: bool = True,
        loader: FrameLoader | None = None,
        output_inside_ok: bool = False,
        retry_min_s: float = 0.5,
        retry_max_s: float = 5.0,
        sharpened_interval_s: float = 0.0,
        stored_live_png: bool = False,
        render_in_background: bool = False,
    ) -> None:
        self.params = params
        self.input_root = Path(input_root).resolve()
        self.output_dir = Path(output_dir).resolve()
        self.loader = loader if loader is not None else FrameLoader()
        self._own_loader = loader is None
        inside = self.output_dir == self.input_root or self.input_root in self.output_dir.parents
        if inside and not output_inside_ok:
            raise ValueError(
                f"output folder {self.output_dir} is inside the capture folder "
                f"{self.input_root}; choose one outside it"
            )
        self.write_comparison = write_comparison
        self.stacker = LiveStacker(params)
        self.log = CropLog(self.output_dir / OUTPUT_NAMES["csv"])
        self.stats = SessionStats()
        self._done: set[str] = set()
        self._retry: set[str] = set()  # keys whose last row has a transient reason
        self._dirty = False  # stacked.png is stale
        self._slow_dirty = False  # sharpened.png / comparison.png are stale
        self._last_slow = -float("inf")
        #: Names (``OUTPUT_NAMES`` keys) of the images the last successful write replaced.
        self.last_written: tuple[str, ...] = ()
        self.sharpened_interval_s = float(sharpened_interval_s)
        self.stored_live_png = stored_live_png
        self._stored_on_disk: set[str] = set()  # images last written uncompressed
        self.render_in_background = render_in_background
        self._render_pool: ThreadPoolExecutor | None = None
        self._render_job: Future[tuple[str, ...]] | None = None  # sharpened + comparison
        self._render_lock = threading.Lock()  # _stored_on_disk while a render job runs
        self._render_failed = False
        self._unsynced = False
        self._next_index = 0
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self._failures = 0  # consecutive failed output writes
        self._retry_at = 0.0
        self._csv_waiting_logged = False

    # -- life cycle ------------------------------------------------------------
    def open(self) -> None:
        """Create the output folder, open the CSV and resume a previous run."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        stale = remove_stale_temps(self.output_dir, OUTPUT_NAMES.values())
        if stale:
            logger.info("removed {} temporary output file(s) left by an interrupted write",
                        len(stale))
        records = self.log.open()
        #: The rows the CSV held when opened (the daemon shows them in the preview).
        self.opened_records = records
        self._done = {r.file for r in records}
        last_reason = {r.file: r.reason for r in records}
        self._retry = {k for k, reason in last_reason.items() if is_transient_reason(reason)}
        self._next_index = (records[-1].index + 1) if records else 0
        if records:
            self._resume(records)

    def close(self) -> None:
        self._finish_render()
        if self._render_pool is not None:
            self._render_pool.shutdown()
            self._render_pool = None
        if self._unsynced:
            try:
                fsync_files(self.output_dir / OUTPUT_NAMES[k] for k in IMAGE_OUTPUTS)
                self._unsynced = False
            except OSError as err:
                logger.warning("cannot flush the outputs to disk: {}", err)
        lost = self.log.close()
        if lost:
            logger.error(
                "{} crop CSV row(s) could not be written to {} ({}); those frames are not "
                "in the CSV and will be processed again on restart",
                lost, self.log.path, self.log.last_error,
            )
        if self._own_loader:
            self.loader.close()

    def __enter__(self) -> Session:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- frames ----------------------------------------------------------------
    def key(self, item: FrameRef | Path) -> str:
        """The CSV name of a frame: its path relative to the capture folder,
        ``#<index>`` appended for a frame of a SER video."""
        return frame_key(as_ref(item), self.input_root)

    def is_done(self, item: FrameRef | Path) -> bool:
        """True if the frame has its row already (this run or in the CSV).

        A file whose row says it was empty or had vanished counts as done
        only while that is still so: a non-empty version of it is a frame
        that has not been processed yet.
        """
        key = self.key(item)
        if key not in self._done:
            return False
        if key in self._retry:
            ref = as_ref(item)
            try:
                st = os.stat(ref.path)
            except OSError:
                return True
            return not (stat_mod.S_ISREG(st.st_mode) and st.st_size > 0)
        return True

    def next_index(self, ser_path: Path) -> int:
        """The first frame of ``ser_path`` after the last one in the CSV (0 if none)."""
        prefix = self.key(ser_path) + "#"
        last = -1
        for key in self._done:
            if key.startswith(prefix) and key[len(prefix):].isdigit():
                last = max(last, int(key[len(prefix):]))
        return last + 1

    def load(self, item: FrameRef | Path) -> LoadedFrame:
        """Decode a frame and do the stacker's steps that need only the frame.

        For the decode thread (:func:`prefetch`, :class:`Prefetcher`): it
        changes nothing, and :meth:`process` gives the same result with the
        measure as without. Raises FrameError as ``FrameLoader.load``.
        """
        loaded = self.loader.load(item)
        try:
            measure = self.stacker.measure(loaded.frame)
        except Exception:  # process() measures again, and reports what goes wrong
            return loaded
        return dataclasses.replace(loaded, measure=measure)

    def process(
        self, item: FrameRef | Path, loaded: LoadedFrame | Exception | None = None
    ) -> CropRecord:
        """Run one frame (a file, or a frame of a SER video) through the
        pipeline and append its CSV row.

        ``loaded`` is the frame already decoded by :func:`prefetch` (or the
        error its decoding raised); by default the frame is loaded here.
        Never raises for a bad frame, nor for an unexpected error while
        loading or stacking it (logged with its traceback): the frame is
        recorded as rejected with a reason. A row that cannot be appended
        (disk full) waits in memory, see :class:`CropLog`.
        """
        ref = as_ref(item)
        key = self.key(ref)
        when = datetime.now(timezone.utc)
        try:
            if isinstance(loaded, Exception):
                raise loaded
            if loaded is None:
                loaded = self.loader.load(ref)
            when = loaded.time
            outcome = self.stacker.add(loaded.frame, loaded.measure)
        except FrameError as err:
            outcome = FrameOutcome(accepted=False, reason=str(err))
        except Exception as err:  # a bug or resource error: never let one frame stop the session
            logger.bind(frame=key).opt(exception=err).error("unexpected error on this frame")
            outcome = FrameOutcome(accepted=False, reason=f"internal error: "
                                   f"{type(err).__name__}: {err}")
        record = self._commit(key, when, outcome)
        if outcome.accepted:
            self.stats.accepted += 1
            self._dirty = self._slow_dirty = True
        else:
            self.stats.rejected += 1
            if outcome.reason.startswith(LUCKY_CUT_REASON):  # most frames: not a problem
                self.stats.below_cut += 1
                logger.bind(frame=key).debug("frame not stacked: {}", outcome.reason)
            else:
                logger.bind(frame=key).warning("frame rejected: {}", outcome.reason)
        return record

    def skip(self, item: FrameRef | Path, reason: str) -> CropRecord:
        """Record ``item`` as rejected for ``reason`` without reading it (one CSV row).

        The watch daemon's way to keep up (``[watch] max_lag_frames``): the
        frame is final for this session, as any rejected one; ``luckystack
        run`` over the folder into another output processes it.
        """
        ref = as_ref(item)
        key = self.key(ref)
        outcome = FrameOutcome(accepted=False, reason=reason)
        record = self._commit(key, file_time(ref.path), outcome)
        self.stats.rejected += 1
        self.stats.skipped += 1
        logger.bind(frame=key).debug("frame skipped: {}", reason)
        return record

    def _commit(self, key: str, when: datetime, outcome: FrameOutcome) -> CropRecord:
        """Append the CSV row of one frame and count it as processed."""
        record = self._record(key, when, outcome)
        self._append(record)
        self._done.add(key)
        if is_transient_reason(record.reason):
            self._retry.add(key)
        else:
            self._retry.discard(key)
        self.stats.processed += 1
        return record

    def _record(self, key: str, when: datetime, o: FrameOutcome) -> CropRecord:
        index = self._next_index
        self._next_index += 1
        b, d = o.box, o.disc
        return CropRecord(
            index=index,
            file=key,
            time=when.isoformat(timespec="milliseconds"),
            outcome="accepted" if o.accepted else "rejected",
            reason=o.reason,
            x=b.x0 if b else None,
            y=b.y0 if b else None,
            width=b.width if b else None,
            height=b.height if b else None,
            center_x=round(o.center_yx[1], 3) if o.center_yx else None,
            center_y=round(o.center_yx[0], 3) if o.center_yx else None,
            disc_x=d.x0 if d else None,
            disc_y=d.y0 if d else None,
            disc_width=d.width if d else None,
            disc_height=d.height if d else None,
            sharpness=o.sharpness,
            shift_x=o.shift_yx[1] if o.shift_yx else None,
            shift_y=o.shift_yx[0] if o.shift_yx else None,
            stacked=o.stacked,
        )

    def _resume(self, records: list[CropRecord]) -> None:
        """Rebuild the buffer from the CSV: replay the frames still stacked."""
        p = self.params
        accepted = [i for i, r in enumerate(records) if r.outcome == "accepted"]
        if not accepted:
            return
        # The stack's frames and, before them, the frames its alignment
        # reference was built from (see LiveStacker.replay_frames).
        replay = set(accepted[-self.stacker.replay_frames:])
        self.stacker.start_at(len(accepted) - len(replay))
        start = min(min(replay), max(0, len(records) - p.quality_history))
        for i in range(start, len(records)):
            rec = records[i]
            outcome = _record_to_outcome(rec)
            if i in replay:
                try:
                    frame = self.loader.load(parse_key(rec.file, self.input_root)).frame
                    self.stacker.replay(frame, outcome)
                    self.stats.resumed += 1
                except (FrameError, ValueError) as err:
                    logger.bind(frame=rec.file).warning("cannot replay frame on resume: {}", err)
            else:
                self.stacker.note_history(outcome)
        if self.stats.resumed:
            self._dirty = self._slow_dirty = True
            logger.info(
                "resumed session: {} frames already done, {} replayed into the stack",
                len(records), self.stats.resumed,
            )

    # -- outputs ---------------------------------------------------------------
    @property
    def stack_stale(self) -> bool:
        """True while stacked.png is older than the stack."""
        return self._dirty

    @property
    def dirty(self) -> bool:
        """True while something is not on disk yet: new images, or CSV rows waiting
        (or images a quick write left uncompressed, see ``stored_live_png``, or a
        background render to collect, see ``render_in_background``)."""
        return (self._dirty or self._slow_dirty or self.log.pending > 0
                or bool(self._stored_on_disk) or self._render_job is not None)

    def render(self, *, slow: bool = True) -> dict[str, np.ndarray]:
        """The current output images (working data), without writing them.

        ``slow=False``: only ``stacked`` (no sharpening).
        """
        stacked = self.stacker.stacked()
        if stacked is None:
            return {}
        if not slow:
            return {"stacked": stacked}
        best = self.stacker.best_crop() if self.write_comparison else None
        return {"stacked": stacked,
                **self._render_slow(stacked, best, self.stacker.stack_count())}

    def _render_slow(
        self, stacked: np.ndarray, best: np.ndarray | None, count: int
    ) -> dict[str, np.ndarray]:
        """``sharpened`` and, with ``best``, ``comparison`` of a stack (pure)."""
        sharpened = self.stacker.sharpen(stacked)
        out = {"sharpened": sharpened}
        if best is not None:
            out["comparison"] = compose_panels([
                ("best frame", best),
                (f"stack of {count}", stacked),
                ("sharpened", sharpened),
            ])
        return out

    def _write_images(self, images: dict[str, np.ndarray], stored: bool) -> list[str]:
        """Encode and atomically replace ``images``; the names written, in order."""
        written = []
        for name, image in images.items():
            atomic_write_bytes(
                self.output_dir / OUTPUT_NAMES[name], encode_png16(image, stored=stored),
                fsync=False,
            )
            written.append(name)
            self._unsynced = True
            with self._render_lock:
                if stored:
                    self._stored_on_disk.add(name)
                else:
                    self._stored_on_disk.discard(name)
        return written

    def _render_job_run(
        self, stacked: np.ndarray, best: np.ndarray | None, count: int, stored: bool
    ) -> tuple[str, ...]:
        """The background render: sharpen, compose and write (a thread of its own)."""
        return tuple(self._write_images(self._render_slow(stacked, best, count), stored))

    def _finish_render(self) -> tuple[str, ...]:
        """Wait for the background render, if any; the names it wrote.

        A failed render leaves the slow images stale (written again when due)
        and is logged once until one succeeds.
        """
        job, self._render_job = self._render_job, None
        if job is None:
            return ()
        try:
            names = job.result()
        except Exception as err:
            self.stats.write_failures += 1
            self._slow_dirty = True
            if not self._render_failed:
                logger.opt(exception=None if isinstance(err, OSError) else err).error(
                    "cannot write the sharpened images to {}: {}; the previous ones stay, "
                    "retrying when they are next due", self.output_dir, err)
            self._render_failed = True
            return ()
        if self._render_failed:
            logger.info("sharpened images written again")
            self._render_failed = False
        return names

    def _append(self, record: CropRecord) -> None:
        if self.log.append(record):
            if self._csv_waiting_logged:
                logger.info("crop CSV appends work again: every waiting row is written")
                self._csv_waiting_logged = False
        elif not self._csv_waiting_logged:
            logger.error("cannot append to {}: {}; rows wait in memory and are appended, in "
                         "order, once it works again", self.log.path, self.log.last_error)
            self._csv_waiting_logged = True

    def write_outputs(self, *, force: bool = False, quick: bool = False) -> bool:
        """Replace the output images atomically if anything changed.

        ``quick``: ``sharpened.png`` and ``comparison.png`` only if
        ``sharpened_interval_s`` has passed since they were last written
        (``stacked.png`` always); they stay marked stale until then.

        Also appends CSV rows waiting after a failed append. Returns True
        when images were written. An error (disk full, permissions, a
        read-only file system) is logged and counted; the images on disk stay
        the previous complete ones. After a failure the next attempt waits
        (``retry_min_s`` doubling up to ``retry_max_s``) unless ``force``;
        consecutive failures are logged once, the recovery too.
        """
        now = time.monotonic()
        background = quick and self.render_in_background
        if self._render_job is not None and (not background or self._render_job.done()):
            collected = self._finish_render()  # a full write: the newest images land last
        else:
            collected = ()
        if not force and self._failures and now < self._retry_at:
            if collected:
                self.last_written = collected
            return bool(collected)
        if self.log.pending:
            if self.log.flush_pending() and self._csv_waiting_logged:
                logger.info("crop CSV appends work again: every waiting row is written")
                self._csv_waiting_logged = False
        stored = quick and self.stored_live_png
        # A full write replaces the images a quick one left uncompressed.
        with self._render_lock:
            recompress = () if quick else set(self._stored_on_disk)
        stacked_due = self._dirty or "stacked" in recompress
        slow = (self._slow_dirty or any(n != "stacked" for n in recompress)) and (
            not quick or now - self._last_slow >= self.sharpened_interval_s
        )
        if background and slow and self._render_job is not None:
            slow = False  # the render in progress: the next one when it is done
        if not (stacked_due or slow):
            if collected:
                self.last_written = collected
                return True
            return False
        written: list[str] = []
        try:
            if slow and background:
                images = self.render(slow=False)
                if "stacked" in images:
                    best = self.stacker.best_crop() if self.write_comparison else None
                    if self._render_pool is None:
                        self._render_pool = ThreadPoolExecutor(
                            max_workers=1, thread_name_prefix="luckystack-render")
                    self._render_job = self._render_pool.submit(
                        self._render_job_run, images["stacked"], best,
                        self.stacker.stack_count(), stored)
            else:
                images = self.render(slow=slow)
            if not stacked_due:  # only the slow images were due
                images.pop("stacked", None)
            written = self._write_images(images, stored)  # stacked first: the latency users see
            self.log.sync()
        except Exception as err:
            self.stats.write_failures += 1
            self._failures += 1
            delay = min(self.retry_max_s, self.retry_min_s * 2 ** (self._failures - 1))
            self._retry_at = time.monotonic() + delay
            if self._failures == 1:
                logger.opt(exception=None if isinstance(err, OSError) else err).error(
                    "cannot write outputs to {}: {}; the previous images stay, retrying "
                    "(every {:g} s at most)", self.output_dir, err, self.retry_max_s)
            else:
                logger.debug("outputs still not written ({} attempts): {}", self._failures, err)
            return False
        if self._failures:
            logger.info("outputs written again after {} failed attempt(s)", self._failures)
            self._failures = 0
            # a temporary file a failed write could not even remove (read-only file
            # system); not while a background render writes its own
            collected += self._finish_render()
            remove_stale_temps(self.output_dir, OUTPUT_NAMES.values())
        self.last_written = collected + tuple(written)
        self._dirty = False
        if slow:
            self._slow_dirty = False
            self._last_slow = now
        self.stats.writes += 1
        return True
