"""Tools for the fault-injection tests (test_faults.py, test_kill.py).

Test modules get them through the ``kit`` fixture (this module: with
``--import-mode=importlib`` a conftest cannot be imported by name) and the
``capture_folder`` fixture, which checks at teardown that every input file a
test wrote is still there and byte-identical (sha256) and that nothing was
added to the capture folder: "nothing is lost", input side.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import os
import signal
import stat
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from luckystack.daemon.config import load_settings
from luckystack.daemon.outputs import CropRecord

from daemon_helpers import DaemonThread, csv_rows
from daemon_helpers import wait_for as shared_wait_for

LUCKYSTACK = str(Path(sys.executable).with_name("luckystack"))


# ----------------------------------------------------------------- waiting


def wait_for(cond, timeout: float = 30.0, interval: float = 0.02) -> bool:
    return shared_wait_for(cond, timeout, interval)


# ------------------------------------------------------------------ images


def png_bytes(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def encode(img: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _zeros_deflated(row_bytes: int, rows: int, prefix: bytes = b"") -> bytes:
    """zlib stream of ``rows`` rows of ``prefix + row_bytes zeros``, without building it."""
    c = zlib.compressobj(9)
    block = (prefix + bytes(row_bytes)) * 100
    parts = [c.compress(block) for _ in range(rows // 100)]
    parts.append(c.compress((prefix + bytes(row_bytes)) * (rows % 100)))
    parts.append(c.flush())
    return b"".join(parts)


@functools.lru_cache(maxsize=8)
def png_bomb(width: int, height: int, *, complete: bool = True) -> bytes:
    """A PNG declaring ``width`` x ``height`` 8-bit grey pixels.

    ``complete``: a valid image of zeros (about 1/1000 of its decoded size);
    otherwise only a token IDAT (the header alone claims the size).
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = _zeros_deflated(width, height, b"\0") if complete else zlib.compress(b"\0" * 100)
    chunks = _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def tiff_bytes(width: int, height: int, strip: bytes, *, compression: int = 1) -> bytes:
    """A little-endian 8-bit grey TIFF, its directory *before* the one strip
    (as many writers do; OpenCV puts it at the end)."""
    entries = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, compression),
               (262, 3, 1), (273, 4, 0), (277, 3, 1), (278, 4, height), (279, 4, len(strip))]
    data_at = 8 + 2 + 12 * len(entries) + 4
    out = bytearray(b"II*\0" + struct.pack("<I", 8) + struct.pack("<H", len(entries)))
    for tag, typ, val in entries:
        if tag == 273:
            val = data_at
        out += struct.pack("<HHIHH", tag, typ, 1, val, 0) if typ == 3 else struct.pack(
            "<HHII", tag, typ, 1, val)
    out += struct.pack("<I", 0)
    return bytes(out) + strip


@functools.lru_cache(maxsize=8)
def tiff_bomb(width: int, height: int) -> bytes:
    """A valid deflate TIFF of zeros: ~1/1000 of its decoded size."""
    return tiff_bytes(width, height, _zeros_deflated(width, height), compression=8)


def jpeg_header_bomb(width: int = 60000, height: int = 60000) -> bytes:
    """A JPEG whose frame header claims ``width`` x ``height`` (the rest is a token)."""
    sof = struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    sos = struct.pack(">HB", 8, 1) + b"\x01\x00\x00\x3f\x00"
    return b"\xff\xd8" + b"\xff\xc0" + sof + b"\xff\xda" + sos + b"\x00" * 64 + b"\xff\xd9"


def bmp_header_bomb(width: int = 100000, height: int = 100000) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + 64, 0, 0, 14 + 40) + info + bytes(64)


def decodes(path: Path) -> bool:
    """True if ``path`` is a complete image (OpenCV refuses a truncated PNG)."""
    data = Path(path).read_bytes()
    if not data.endswith(b"IEND\xaeB`\x82"):
        return False
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) is not None


# --------------------------------------------------------------------- CSV


rows = csv_rows


def row_for(csv_path: Path, name: str) -> dict[str, str] | None:
    found = [r for r in rows(csv_path) if r["file"] == name]
    return found[-1] if found else None


def check_csv(csv_path: Path) -> list[dict[str, str]]:
    """The CSV parses with our header, complete lines, indices 0..n-1 in order."""
    data = Path(csv_path).read_bytes()
    assert data.endswith(b"\n"), "torn last line"
    with open(csv_path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        body = list(reader)
    assert header == CropRecord.header()
    assert all(len(r) == len(header) for r in body), "a row with the wrong number of fields"
    out = rows(csv_path)
    assert [int(r["index"]) for r in out] == list(range(len(out))), "indices not contiguous"
    return out


def check_outputs(out: Path) -> list[Path]:
    """Every PNG in ``out`` decodes completely; no temporary file is left."""
    pngs = sorted(Path(out).rglob("*.png"))
    for p in pngs:
        assert decodes(p), f"{p} does not decode completely"
    leftovers = [p for p in Path(out).rglob("*.tmp")]
    assert not leftovers, f"temporary files left: {leftovers}"
    return pngs


# ---------------------------------------------------------------- capture


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class Capture:
    """A capture folder whose content the test controls and the teardown checks.

    Every entry made through it is remembered (files with their sha256);
    ``check()`` asserts they are all unchanged and that nothing else appeared
    in the folder. Files outside the folder (symlink targets) are tracked too.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.files: dict[Path, str] = {}
        self.others: dict[Path, str] = {}  # path -> "dir" / "fifo" / "symlink"

    def write(self, name: str, data: bytes, *, atomic: bool = False) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if atomic:  # as capture programs do: a hidden temporary name, then a rename
            tmp = path.with_name(f".{path.name}.part")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        else:
            with open(path, "wb") as fh:
                fh.write(data)
        self.files[path] = hashlib.sha256(data).hexdigest()
        return path

    def write_outside(self, path: Path, data: bytes) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.files[path] = hashlib.sha256(data).hexdigest()
        return path

    def mkdir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir()
        self.others[path] = "dir"
        return path

    def mkfifo(self, name: str) -> Path:
        path = self.root / name
        os.mkfifo(path)
        self.others[path] = "fifo"
        return path

    def symlink(self, name: str, target: Path) -> Path:
        path = self.root / name
        path.symlink_to(target)
        self.others[path] = "symlink"
        return path

    def remove(self, name: str) -> None:
        path = self.root / name
        path.unlink()
        self.files.pop(path, None)

    def forget_tree(self, root: Path) -> None:
        for table in (self.files, self.others):
            for p in [p for p in table if p == root or root in p.parents]:
                del table[p]

    def moved_tree(self, old: Path, new: Path) -> None:
        for table in (self.files, self.others):
            for p in [p for p in table if old in p.parents]:
                table[new / p.relative_to(old)] = table.pop(p)

    def check(self) -> None:
        for path, digest in self.files.items():
            assert path.is_file() and not path.is_symlink(), f"input {path} is gone"
            assert _sha(path) == digest, f"input {path} was modified"
        for path, kind in self.others.items():
            mode = os.lstat(path).st_mode
            ok = {"dir": stat.S_ISDIR, "fifo": stat.S_ISFIFO, "symlink": stat.S_ISLNK}[kind](mode)
            assert ok, f"{path} is no longer a {kind}"
        if self.root.is_dir():
            known = set(self.files) | set(self.others)
            known |= {d for p in known for d in p.parents if self.root in d.parents}
            for dirpath, dirnames, filenames in os.walk(self.root):
                for name in filenames + dirnames:
                    p = Path(dirpath) / name
                    assert p in known, f"{p} appeared in the capture folder"


@pytest.fixture
def capture_folder(tmp_path):
    cap = Capture(tmp_path / "capture")
    yield cap
    cap.check()


@pytest.fixture
def kit():
    """This module: the helpers above, for the test modules."""
    return sys.modules[__name__]


# ------------------------------------------------------------------ daemons


def settings(**sections):
    """Default settings with some keys of some sections replaced:
    ``settings(watch={"follow_symlinks": True})``."""
    s = load_settings()
    update = {name: getattr(s, name).model_copy(update=keys) for name, keys in sections.items()}
    return s.model_copy(update=update)


class Running(DaemonThread):
    """:class:`DaemonThread` that yields itself (``.daemon``, ``.alive()``)."""

    def __init__(self, inp, out, cfg=None, **kw):
        super().__init__(inp, out, cfg, **kw)

    def __enter__(self) -> Running:  # type: ignore[override]
        self.start()
        return self


class WatchProcess:
    """``luckystack watch`` as a real process; its log goes to a file."""

    def __init__(self, inp: Path, out: Path, log: Path, *, config: Path | None = None,
                 env: dict[str, str] | None = None):
        args = [LUCKYSTACK, "watch", str(inp), "--output", str(out)]
        if config is not None:
            args += ["--config", str(config)]
        self.log_path = Path(log)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self._log,
                                     env={**os.environ, **(env or {})})

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, timeout: float = 30.0) -> None:
        assert wait_for(lambda: "watching " in self.log() or not self.alive(), timeout), \
            "daemon did not start"
        assert self.alive(), f"daemon died at start:\n{self.log()}"

    def status(self, key: str) -> int:
        """A ``/proc/PID/status`` value in kB (VmRSS, VmHWM)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise KeyError(key)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self, timeout: float = 30.0) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self._log.close()


@pytest.fixture
def watch_process():
    """Factory of :class:`WatchProcess`; every one is killed at teardown."""
    started: list[WatchProcess] = []

    def start(*args, **kw) -> WatchProcess:
        p = WatchProcess(*args, **kw)
        started.append(p)
        return p

    yield start
    for p in started:
        p.close()


# ----------------------------------------------------------------- mounts


class Mounts:
    """Mounts made by a test (tmpfs, read-only binds); all undone at teardown."""

    def __init__(self):
        self.points: list[Path] = []

    def _run(self, *args: str) -> None:
        res = subprocess.run(["mount", *args], capture_output=True, text=True)
        if res.returncode != 0:
            raise OSError(res.stderr.strip() or f"mount {' '.join(args)} failed")

    def tmpfs(self, point: Path, size: str) -> Path:
        point.mkdir(parents=True, exist_ok=True)
        try:
            self._run("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(point))
        except (OSError, FileNotFoundError) as err:
            pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {err}")
        self.points.append(point)
        return point

    def read_only_bind(self, point: Path, *, pause_pid: int | None = None) -> None:
        """Make ``point`` read-only by bind-mounting it on itself, read-only.

        ``pause_pid`` is stopped (SIGSTOP) meanwhile: a file it opened for
        writing through the new bind, between the two mount calls, would make
        the read-only remount fail with "busy".
        """
        if pause_pid is not None:
            os.kill(pause_pid, signal.SIGSTOP)
        try:
            try:
                self._run("--bind", str(point), str(point))
            except (OSError, FileNotFoundError) as err:
                pytest.skip(f"cannot bind-mount here (needs root or CAP_SYS_ADMIN): {err}")
            self.points.append(point)
            self._run("-o", "remount,bind,ro", str(point))
        finally:
            if pause_pid is not None:
                os.kill(pause_pid, signal.SIGCONT)

    def umount(self, point: Path) -> None:
        subprocess.run(["umount", str(point)], check=True, capture_output=True)
        self.points.remove(point)

    def cleanup(self) -> None:
        for point in reversed(self.points):
            subprocess.run(["umount", "-l", str(point)], capture_output=True)
        self.points.clear()


@pytest.fixture
def mounts():
    m = Mounts()
    yield m
    m.cleanup()


def fill_up(folder: Path) -> Path:
    """Fill the file system of ``folder`` completely; returns the filler file."""
    filler = Path(folder) / "filler.bin"
    chunk = b"\0" * (64 << 10)
    with open(filler, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(chunk)
        except OSError:
            pass
        try:  # the last partial page
            while True:
                fh.write(b"\0" * 512)
        except OSError:
            pass
    return filler

