"""Atomic image outputs and the running crop CSV.

Outputs are never half-written: images are encoded in memory, written to a
hidden temporary file in the same folder, fsynced and moved into place with
``os.replace``; a temporary file left by a kill is removed when the session
is opened again (:func:`remove_stale_temps`). The CSV is appended one row at
a time with one ``write`` each, so a kill loses at most the row being
written; a torn last line is cut off when the file is opened again.

When an append fails (disk full, read-only file system) the row is kept in
memory, in order, and appended with the next row or the next
:meth:`CropLog.flush_pending`; a partly written row is cut off first, so a
row is never lost, torn or written twice while the process lives. Rows still
pending when the process dies are not in the CSV, so their frames are
processed again after a restart: still exactly one row each.
"""

from __future__ import annotations

import csv
import io
import os
import secrets
from dataclasses import dataclass, fields
from collections.abc import Iterable
from glob import escape as glob_escape
from pathlib import Path

import cv2
import numpy as np

from luckystack.core.frame import to_uint16

__all__ = [
    "CropRecord", "CropLog", "atomic_write_bytes", "write_png16", "encode_png16",
    "remove_stale_temps",
]


#: Permissions of new output files before the umask, as the CSV is created with.
OUTPUT_MODE = 0o644


def _new_temp(path: Path) -> tuple[int, str]:
    """Create a hidden temporary file beside ``path`` (``.NAME.XXXXXXXX.tmp``).

    Created as the CSV is, with ``OUTPUT_MODE`` less the umask applied by the
    kernel (mkstemp's 0600 left the images unreadable by the group the
    unit's UMask=0027 shares them with); exclusive, as mkstemp.
    """
    while True:
        tmp = os.path.join(path.parent, f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                           OUTPUT_MODE), tmp
        except FileExistsError:  # pragma: no cover - 1 in 4 billion
            continue


def atomic_write_bytes(path: Path, data: bytes, *, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + os.replace).

    Readers see the old file or the new one, never a mix, whatever happens
    to this process. ``fsync=False`` skips the flush to stable storage (the
    live outputs, rewritten many times a second, are synced once at the end
    with :func:`fsync_files`); only a power cut could then lose the latest
    version.
    """
    path = Path(path)
    fd, tmp = _new_temp(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def fsync_files(paths: Iterable[Path]) -> None:
    """Flush existing files, and their folders, to stable storage."""
    folders = set()
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        folders.add(Path(path).parent)
    for folder in folders:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_stale_temps(folder: Path, names: Iterable[str]) -> list[Path]:
    """Remove temporary files :func:`atomic_write_bytes` left for ``names``
    (a process killed between creating and renaming them); returns them."""
    removed = []
    for name in names:
        for tmp in Path(folder).glob(f".{glob_escape(name)}.*.tmp"):
            try:
                tmp.unlink()
                removed.append(tmp)
            except OSError:  # gone already, or a read-only folder: next time
                pass
    return removed


# Huffman-only, unfiltered: 2.6 ms for a 242 x 264 stack, 3x faster than
# deflate level 1 and ~7 % smaller on noisy images (bench/perf.py).
_PNG_COMPRESSED = [
    cv2.IMWRITE_PNG_COMPRESSION, 1,
    cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY,
    cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE,
]
# Stored (deflate level 0), unfiltered: ~10x faster (0.2 ms for that stack,
# 1.2 ms for its comparison.png), the file ~16 % larger than compressed.
_PNG_STORED = [cv2.IMWRITE_PNG_COMPRESSION, 0, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]


def encode_png16(image: np.ndarray, *, stored: bool = False) -> bytes:
    """Encode working data (1.0 = white, mono or RGB) as a 16-bit PNG.

    ``stored``: without compression (same pixels, a larger file, ~10x faster).
    """
    img = to_uint16(image)
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", img, _PNG_STORED if stored else _PNG_COMPRESSED)
    if not ok:
        raise OSError("PNG encoding failed")
    return buf.tobytes()


def write_png16(path: Path, image: np.ndarray) -> None:
    """Atomically write working data as a 16-bit PNG."""
    atomic_write_bytes(path, encode_png16(image))


@dataclass(frozen=True, slots=True)
class CropRecord:
    """One row of ``crops.csv``: what happened to one frame.

    The crop box is in frame pixels (``x``, ``y`` = top-left corner); the
    centre is the disc's centre of gravity; ``shift_x``/``shift_y`` the
    sub-pixel displacement removed by registration; ``outcome`` is
    ``accepted`` or ``rejected`` with a ``reason``.
    """

    index: int
    file: str
    time: str
    outcome: str
    reason: str
    x: int | None
    y: int | None
    width: int | None
    height: int | None
    center_x: float | None
    center_y: float | None
    disc_x: int | None
    disc_y: int | None
    disc_width: int | None
    disc_height: int | None
    sharpness: float | None
    shift_x: float | None
    shift_y: float | None
    stacked: int

    @classmethod
    def header(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def row(self) -> list[str]:
        # getattr, not dataclasses.asdict: that deep-copies every field (a
        # measurable share of the per-frame time on tiny frames)
        values = (getattr(self, f.name) for f in _FIELDS)
        return ["" if v is None else (repr(v) if isinstance(v, float) else str(v))
                for v in values]

    @classmethod
    def from_row(cls, row: dict[str, str]) -> CropRecord:
        kwargs: dict[str, object] = {}
        for f in fields(cls):
            raw = row.get(f.name, "")
            t = str(f.type)
            if t == "str":
                kwargs[f.name] = raw
            elif raw == "":
                kwargs[f.name] = None if "None" in t else 0
            elif t.startswith("int"):
                kwargs[f.name] = int(raw)
            else:
                kwargs[f.name] = float(raw)
        return cls(**kwargs)  # type: ignore[arg-type]


_FIELDS = fields(CropRecord)


class CropLog:
    """The append-only crop CSV.

    Opening an existing log checks its header, cuts off a torn last line
    (left by a kill mid-write) and returns the records, which tell a
    restarted daemon which frames were already processed. Appended records
    are not kept in memory: a night of frames must not grow the process
    (except rows waiting for a failed append to succeed, see the module).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.rows_written = 0
        self.last_error: OSError | None = None
        self._fd: int | None = None
        self._size = 0  # bytes of complete rows in the file
        self._pending: list[bytes] = []

    @staticmethod
    def _encode(values: list[str]) -> bytes:
        buf = io.StringIO()
        csv.writer(buf).writerow(values)
        return buf.getvalue().encode("utf-8")

    def open(self) -> list[CropRecord]:
        """Open for appending; return the records already in the file.

        Raises OSError if the file cannot be opened or read, ValueError if it
        is not a crop CSV. A header that cannot be written yet (disk full)
        waits in memory like a row.
        """
        header = CropRecord.header()
        records: list[CropRecord] = []
        if self.path.exists() and self.path.stat().st_size > 0:
            self._repair_torn_tail()
        if self.path.exists() and self.path.stat().st_size > 0:
            with self.path.open("r", newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                if reader.fieldnames != header:
                    raise ValueError(
                        f"{self.path} has columns {reader.fieldnames}, expected {header}; "
                        "move it away or choose another output folder"
                    )
                records = [CropRecord.from_row(r) for r in reader]
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        else:  # new, or only a torn header (killed while creating it)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC
                               | os.O_CLOEXEC, OUTPUT_MODE)
            self._pending = [self._encode(header)]
        self._size = os.fstat(self._fd).st_size
        self.flush_pending()
        return records

    def _repair_torn_tail(self) -> None:
        with self.path.open("rb+") as fh:
            data = fh.read()
            if data and not data.endswith(b"\n"):
                cut = data.rfind(b"\n") + 1
                fh.truncate(cut)

    @property
    def pending(self) -> int:
        """Rows (the header included) waiting for a failed append to succeed."""
        return len(self._pending)

    def append(self, record: CropRecord) -> bool:
        """Append one row (after any pending ones); False if it had to wait.

        Never raises OSError: a failed append keeps the row in memory (see
        :attr:`pending`, :attr:`last_error`) and it is written, in order,
        with the next successful append or :meth:`flush_pending`.
        """
        if self._fd is None:
            raise RuntimeError("CropLog is not open")
        self._pending.append(self._encode(record.row()))
        return self.flush_pending()

    def flush_pending(self) -> bool:
        """Append the rows waiting in memory; True when none is left."""
        if self._fd is None or not self._pending:
            return not self._pending
        data = b"".join(self._pending)
        view, done = memoryview(data), 0
        try:
            while done < len(data):
                done += os.write(self._fd, view[done:])
        except OSError as err:
            self.last_error = err
            if done:  # cut the partly written rows off again: no torn or duplicated row
                try:
                    os.ftruncate(self._fd, self._size)
                except OSError:
                    pass
            return False
        self._size += len(data)
        self.rows_written += len(self._pending)
        self._pending.clear()
        self.last_error = None
        return True

    def sync(self) -> None:
        """Append pending rows and fsync; raises OSError if either fails."""
        if self._fd is None:
            return
        if not self.flush_pending():
            assert self.last_error is not None
            raise self.last_error
        os.fsync(self._fd)

    def close(self) -> int:
        """Append what is pending, fsync and close; returns the rows that could not be written."""
        if self._fd is None:
            return 0
        self.flush_pending()
        lost = len(self._pending)
        try:
            os.fsync(self._fd)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None
        self._pending.clear()
        return lost
