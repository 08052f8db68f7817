"""Atomic image outputs and the running crop CSV.

Outputs are never half-written: images are encoded in memory, written to a
hidden temporary file in the same folder, fsynced and moved into place with
``os.replace``. The CSV is appended one row at a time and flushed after each
row, so a kill loses at most the row being written; a torn last line is cut
off when the file is opened again.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
import cv2
import numpy as np

from luckystack.core.frame import to_uint16

__all__ = ["CropRecord", "CropLog", "atomic_write_bytes", "write_png16", "encode_png16"]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + os.replace)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def encode_png16(image: np.ndarray) -> bytes:
    """Encode working data (1.0 = white, mono or RGB) as a 16-bit PNG."""
    img = to_uint16(image)
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 1])
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
        return ["" if v is None else (repr(v) if isinstance(v, float) else str(v))
                for v in asdict(self).values()]

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


class CropLog:
    """The append-only crop CSV.

    Opening an existing log checks its header, cuts off a torn last line
    (left by a kill mid-write) and returns the records, which tell a
    restarted daemon which frames were already processed. Appended records
    are not kept in memory: a night of frames must not grow the process.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.rows_written = 0
        self._fh: io.TextIOWrapper | None = None
        self._writer: csv.writer | None = None  # type: ignore[valid-type]

    def open(self) -> list[CropRecord]:
        """Open for appending; return the records already in the file."""
        header = CropRecord.header()
        if self.path.exists() and self.path.stat().st_size > 0:
            self._repair_torn_tail()
            with self.path.open("r", newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                if reader.fieldnames != header:
                    raise ValueError(
                        f"{self.path} has columns {reader.fieldnames}, expected {header}; "
                        "move it away or choose another output folder"
                    )
                records = [CropRecord.from_row(r) for r in reader]
            self._fh = self.path.open("a", newline="", encoding="utf-8")
            self._writer = csv.writer(self._fh)
        else:
            self._fh = self.path.open("w", newline="", encoding="utf-8")
            self._writer = csv.writer(self._fh)
            self._writer.writerow(header)
            self._fh.flush()
            records = []
        return records

    def _repair_torn_tail(self) -> None:
        with self.path.open("rb+") as fh:
            data = fh.read()
            if data and not data.endswith(b"\n"):
                cut = data.rfind(b"\n") + 1
                fh.truncate(cut)

    def append(self, record: CropRecord) -> None:
        """Append one row and flush it to the OS."""
        if self._writer is None or self._fh is None:
            raise RuntimeError("CropLog is not open")
        self._writer.writerow(record.row())
        self._fh.flush()
        self.rows_written += 1

    def sync(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self.sync()
            self._fh.close()
            self._fh = None
            self._writer = None
