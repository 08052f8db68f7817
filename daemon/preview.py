"""The live preview in the browser (``[preview]``): a small read-only web server.

``watch`` starts it when ``[preview] enabled``. Its one page shows the latest
sharpened (or stacked, or comparison) image, the frame count, the share of
usable frames (stacked or only below the lucky cut), the current quality and a
quality-over-time plot, and updates itself through server-sent events
(``/events``) whenever the daemon writes new images; a phone or tablet at the
telescope is the intended client.

Two halves, joined only by :class:`PreviewState`:

- The daemon's worker calls :meth:`PreviewState.record` after each frame and
  :meth:`PreviewState.wrote` after each successful output write. Each call
  takes one lock for a few assignments and wakes the waiting event streams:
  O(1), it never waits for a client.
- :class:`PreviewServer` is a stdlib ``ThreadingHTTPServer`` on its own
  daemon thread, one thread per connection (at most ``max_clients``; more are
  answered 503). Each event stream waits on the state's condition and sends
  only the newest state, at most every ``SSE_MIN_INTERVAL_S``: a slow client
  misses updates instead of queueing them, and a client that stops reading is
  dropped when a send times out. Nothing a client does reaches the worker.

It is read-only and serves a fixed set of routes, nothing else: ``/`` (the
page, embedded below: no external resource), ``/events``, ``/state.json`` and
``/image/{sharpened,stacked,comparison}.png``. No part of a request is ever
joined to a path: an image is read by its fixed name from the output folder
the daemon last wrote (the files are replaced atomically with ``os.replace``,
so a read gets one complete version). Requests are held to strict limits
(request line, header size and count, a deadline for the whole head, GET and
HEAD only, no body) and refused with 400, 404, 405, 408, 413, 414 or 431.
There is no authentication: it binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import select
import socket
import socketserver
import stat
import threading
import time
from collections import deque
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from loguru import logger

from luckystack.core.pipeline import LUCKY_CUT_REASON
from luckystack.daemon.session import OUTPUT_NAMES, SKIPPED_REASON

__all__ = ["PreviewState", "PreviewServer", "start_preview", "stop_preview"]

#: Longest request line accepted (414 beyond).
MAX_REQUEST_LINE = 2048
#: Largest request head (request line + headers) accepted (431 beyond).
MAX_HEAD_BYTES = 8192
#: Most header lines accepted (431 beyond).
MAX_HEADER_LINES = 48
#: A client has this long to send its whole request head (408 after).
REQUEST_TIMEOUT_S = 10.0
#: One response (an image, one event) must be taken by the client within this.
SEND_TIMEOUT_S = 20.0
#: An event stream sends a comment this often when nothing happens, which
#: also finds clients that went away.
SSE_KEEPALIVE_S = 15.0
#: How often an idle event stream checks whether its client has gone.
SSE_CLIENT_CHECK_S = 1.0
#: An event stream sends at most one event per this interval (the newest).
SSE_MIN_INTERVAL_S = 0.2
#: Kernel send buffer of an event stream, bytes.
SSE_SEND_BUFFER = 64 * 1024
#: Quality points kept (the last N accepted frames) and points sent to the page.
HISTORY_POINTS = 2000
PLOT_POINTS = 300
#: An output image larger than this is not served.
MAX_IMAGE_BYTES = 512 * 1024 * 1024

#: The only image files served, by route: fixed names, never from a request.
IMAGES = ("sharpened", "stacked", "comparison")
IMAGE_ROUTES = {
    f"/image/{OUTPUT_NAMES[k]}": OUTPUT_NAMES[k] for k in IMAGES
}

_REQUEST_LINE = re.compile(rb"([A-Z]{1,16}) ([\x21-\x7e]+) HTTP/1\.[01]\r?\n")
_HEADER_NAME = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class PreviewState:
    """What the page shows, updated by the daemon, read by the server threads.

    Parameters
    ----------
    root : Path
        The daemon's output folder; images are served from it until a write
        names another folder (a SER session's ``OUTPUT/<stem>/``).
    history : int
        Quality points kept (the last ``history`` accepted frames).
    """

    def __init__(self, root: Path, history: int = HISTORY_POINTS) -> None:
        self._cond = threading.Condition(threading.Lock())
        self.root = Path(root).resolve()  # as Session.output_dir is
        self.boot = secrets.token_hex(4)  # tells image URLs of two runs apart
        self._folder = self.root
        self._version = 0
        self._versions: dict[str, int] = {}  # image name -> the write that last replaced it
        self._seq = 0
        self._processed = 0
        self._accepted = 0
        self._below_cut = 0  # rejected only for not being among the sharpest (the lucky cut)
        self._skipped = 0  # not read, to keep up ([watch] max_lag_frames): of unknown quality
        self._quality: float | None = None
        self._stacked = 0
        self._last: tuple[str, str, str] | None = None
        self._updated = time.time()
        self._history: deque[tuple[int, float]] = deque(maxlen=history)
        self._cache_lock = threading.Lock()
        self._cache: tuple[int, bytes] = (-1, b"")

    # -- the daemon's side: cheap, never waits for a client -------------------------
    def record(self, rec: Any) -> None:
        """Count one processed frame (a ``CropRecord``: outcome, sharpness, file, stacked)."""
        with self._cond:
            self._count(rec)
            self._updated = time.time()
            self._seq += 1
            self._cond.notify_all()

    def seed(self, records: list[Any]) -> None:
        """Start from a session's CSV rows (a resumed session): counts, history, last."""
        with self._cond:
            self._processed = self._accepted = self._below_cut = self._skipped = 0
            self._stacked = 0
            self._quality, self._last = None, None
            self._history.clear()
            for rec in records:
                self._count(rec)
            self._updated = time.time()
            self._seq += 1
            self._cond.notify_all()

    def _count(self, rec: Any) -> None:
        self._processed += 1
        self._last = (str(rec.file), str(rec.outcome), str(rec.reason or ""))
        if rec.outcome == "accepted":
            self._accepted += 1
            self._stacked = int(rec.stacked or 0)
            q = rec.sharpness
            if q is not None and math.isfinite(q):
                self._quality = float(q)
                self._history.append((self._processed, float(q)))
        elif str(rec.reason or "").startswith(LUCKY_CUT_REASON):
            self._below_cut += 1
        elif str(rec.reason or "").startswith(SKIPPED_REASON):
            self._skipped += 1

    def wrote(self, folder: Path, names: tuple[str, ...] = IMAGES) -> None:
        """New output images ``names`` were written (atomically) into ``folder``.

        The page fetches an image again only when its own version changed
        (``stacked`` is written after every frame, ``sharpened`` less often).
        """
        with self._cond:
            if Path(folder) != self._folder:
                self._versions = {}  # another session's folder: every image is new
            self._folder = Path(folder)
            self._version += 1
            for name in names:
                self._versions[name] = self._version
            self._updated = time.time()
            self._seq += 1
            self._cond.notify_all()

    # -- the server's side -----------------------------------------------------------
    @property
    def seq(self) -> int:
        with self._cond:
            return self._seq

    def image_folder(self) -> Path:
        with self._cond:
            return self._folder

    def wake(self) -> None:
        """Wake every waiting event stream (the server is stopping)."""
        with self._cond:
            self._cond.notify_all()

    def wait_newer(self, seq: int, timeout: float, stop: threading.Event) -> int:
        """Wait until the state has changed since ``seq`` (or ``timeout``, or ``stop``)."""
        with self._cond:
            self._cond.wait_for(lambda: self._seq != seq or stop.is_set(), timeout)
            return self._seq

    def snapshot(self) -> dict[str, Any]:
        """The state as the page reads it (the quality history downsampled)."""
        with self._cond:
            seq, version, folder = self._seq, self._version, self._folder
            versions = dict(self._versions)
            processed, accepted, quality = self._processed, self._accepted, self._quality
            below_cut, skipped = self._below_cut, self._skipped
            stacked, last, updated = self._stacked, self._last, self._updated
            history = list(self._history)
        try:
            session = folder.relative_to(self.root).as_posix()
        except ValueError:
            session = folder.name
        return {
            "boot": self.boot,
            "seq": seq,
            "version": version,
            "versions": versions,
            "frames": processed,
            "accepted": accepted,
            "rejected": processed - accepted,
            "acceptance": accepted / processed if processed else None,
            # Frames below the lucky cut are good frames, only not the sharpest:
            # "usable" counts them with the accepted ones.
            "below_cut": below_cut,
            "skipped": skipped,  # unread: left out of the usable share
            "usable": (accepted + below_cut) / (processed - skipped)
            if processed > skipped else None,
            "quality": quality,
            "stacked": stacked,
            "last": None if last is None else dict(zip(("file", "outcome", "reason"), last)),
            "session": self.root.name if session == "." else f"{self.root.name}/{session}",
            "updated": datetime.fromtimestamp(updated, timezone.utc).isoformat(timespec="seconds"),
            "history": _downsample(history, PLOT_POINTS),
        }

    def snapshot_json(self) -> tuple[int, bytes]:
        """``(seq, JSON)`` of :meth:`snapshot`, built once per change for all clients."""
        with self._cache_lock:
            seq = self.seq
            if self._cache[0] != seq:
                snap = self.snapshot()
                body = json.dumps(snap, separators=(",", ":"), allow_nan=False).encode()
                self._cache = (snap["seq"], body)
            return self._cache


def _downsample(points: list[tuple[int, float]], n: int) -> list[list[float]]:
    """At most ``n`` points: the mean quality of consecutive runs, at their last frame."""
    if len(points) <= n:
        return [[i, round(q, 6)] for i, q in points]
    out = []
    step = len(points) / n
    for k in range(n):
        chunk = points[int(k * step):int((k + 1) * step)]
        if chunk:
            out.append([chunk[-1][0], round(sum(q for _, q in chunk) / len(chunk), 6)])
    return out


# ------------------------------------------------------------------------------ server


class _Refused(Exception):
    def __init__(self, code: int, why: str, headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(why)
        self.code = code
        self.why = why
        self.headers = headers


class _Handler(BaseHTTPRequestHandler):
    """One connection, one request (HTTP/1.0 semantics: the connection then closes)."""

    server: _Server
    server_version = "luckystack-preview"
    sys_version = ""
    protocol_version = "HTTP/1.0"

    def setup(self) -> None:
        super().setup()
        self.command = ""
        self.path = ""
        self.request_version = "HTTP/1.0"
        self.requestline = ""

    def handle(self) -> None:
        self.close_connection = True
        try:
            try:
                self._handle()
            except _Refused as r:
                logger.debug("preview: {} {} for {!r} from {}", r.code, r.why,
                             self.requestline[:120], self.client_address[0])
                self._send(r.code, "text/plain; charset=utf-8", f"{r.why}\n".encode(),
                           extra=r.headers)
                self._linger()
        except (OSError, ValueError) as err:  # timeouts, resets, broken pipes: drop the client
            logger.debug("preview: client {} dropped: {}", self.client_address[0], err)

    def _linger(self) -> None:
        """After a refusal: read (and drop) what the client still sends, for a
        bounded time, so that closing does not reset the connection before the
        client has read the answer."""
        sock = self.connection
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + 1.0
        total = 0
        while total < (1 << 20) and (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            total += len(chunk)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass

    # -- reading the request --------------------------------------------------------------
    def _read_head(self) -> bytes | None:
        """The request head (up to the blank line), read against one deadline."""
        sock = self.connection
        deadline = time.monotonic() + self.server.request_timeout_s
        buf = bytearray()
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                end = buf.find(b"\n\n")
                end = end + 2 if end >= 0 else -1
            else:
                end += 4
            nl = buf.find(b"\n")
            if (nl < 0 and len(buf) > MAX_REQUEST_LINE) or nl > MAX_REQUEST_LINE:
                raise _Refused(HTTPStatus.REQUEST_URI_TOO_LONG, "request line too long")
            if (end if end >= 0 else len(buf)) > MAX_HEAD_BYTES:
                raise _Refused(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large")
            if end >= 0:
                return bytes(buf[:end])
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Refused(HTTPStatus.REQUEST_TIMEOUT, "request not complete in time")
            sock.settimeout(left)
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                raise _Refused(HTTPStatus.REQUEST_TIMEOUT, "request not complete in time") from None
            if not chunk:
                return None if not buf else self._torn()
            buf += chunk

    @staticmethod
    def _torn() -> None:
        raise _Refused(HTTPStatus.BAD_REQUEST, "incomplete request")

    def _handle(self) -> None:
        head = self._read_head()
        if head is None:
            return  # connected and closed without a word
        first, _, rest = head.partition(b"\n")
        self.requestline = first.rstrip(b"\r").decode("latin-1")
        m = _REQUEST_LINE.fullmatch(first + b"\n")
        if m is None:
            raise _Refused(HTTPStatus.BAD_REQUEST, "malformed request line")
        self.command = m.group(1).decode()
        target = m.group(2).decode()
        headers = self._parse_headers(rest)
        if self.command not in ("GET", "HEAD"):
            raise _Refused(HTTPStatus.METHOD_NOT_ALLOWED, "only GET and HEAD",
                           (("Allow", "GET, HEAD"),))
        length = headers.get("content-length")
        if "transfer-encoding" in headers:
            raise _Refused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "no request body accepted")
        if length is not None:
            if not (length.isascii() and length.isdigit()):
                raise _Refused(HTTPStatus.BAD_REQUEST, "bad Content-Length")
            if int(length) > 0:
                raise _Refused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "no request body accepted")
        if not target.startswith("/"):
            raise _Refused(HTTPStatus.BAD_REQUEST, "only origin-form request targets")
        path = target.split("?", 1)[0]  # the query (?v=N, cache busting) is ignored
        self.path = path
        if path in ("/", "/index.html"):
            self._send(200, "text/html; charset=utf-8", PAGE_HTML, extra=_PAGE_HEADERS)
        elif path == "/state.json":
            self._send(200, "application/json", self.server.state.snapshot_json()[1])
        elif path == "/events":
            self._stream_events()
        elif path in IMAGE_ROUTES:
            self._send_image(IMAGE_ROUTES[path])
        else:
            raise _Refused(HTTPStatus.NOT_FOUND, "not found")

    def _parse_headers(self, block: bytes) -> dict[str, str]:
        headers: dict[str, str] = {}
        lines = [ln.rstrip(b"\r") for ln in block.split(b"\n")]
        lines = [ln for ln in lines if ln]
        if len(lines) > MAX_HEADER_LINES:
            raise _Refused(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "too many header lines")
        for line in lines:
            name, sep, value = line.partition(b":")
            if not sep or not _HEADER_NAME.fullmatch(name):
                raise _Refused(HTTPStatus.BAD_REQUEST, "malformed header line")
            if any(c < 0x20 and c != 0x09 or c == 0x7F for c in value):
                raise _Refused(HTTPStatus.BAD_REQUEST, "control character in a header")
            key = name.decode("ascii").lower()
            if key == "content-length" and key in headers:
                raise _Refused(HTTPStatus.BAD_REQUEST, "repeated Content-Length")
            headers[key] = value.decode("latin-1").strip()
        return headers

    # -- responses ----------------------------------------------------------------------
    def _head_bytes(self, code: int, ctype: str, length: int | None,
                    extra: tuple[tuple[str, str], ...] = ()) -> bytes:
        lines = [
            f"HTTP/1.0 {int(code)} {HTTPStatus(code).phrase}",
            f"Server: {self.server_version}",
            f"Date: {self.date_time_string()}",
            f"Content-Type: {ctype}",
            "Cache-Control: no-store",
            "X-Content-Type-Options: nosniff",
            "Referrer-Policy: no-referrer",
            "Connection: close",
        ]
        if length is not None:
            lines.append(f"Content-Length: {length}")
        lines += [f"{k}: {v}" for k, v in extra]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _send(self, code: int, ctype: str, body: bytes,
              extra: tuple[tuple[str, str], ...] = ()) -> None:
        self.connection.settimeout(self.server.send_timeout_s)
        data = self._head_bytes(code, ctype, len(body), extra)
        if self.command != "HEAD":
            data += body
        self.connection.sendall(data)
        self.log_request(code, len(body))

    def _send_image(self, name: str) -> None:
        # The folder comes from the daemon, the name from IMAGE_ROUTES: never from the request.
        path = self.server.state.image_folder() / name
        try:
            data = _read_regular_file(path, MAX_IMAGE_BYTES)
        except OSError as err:
            raise _Refused(HTTPStatus.NOT_FOUND, f"{name} not available") from err
        self._send(200, "image/png", data)

    def _stream_events(self) -> None:
        state, server = self.server.state, self.server
        sock = self.connection
        # A small send buffer: a client that stops reading is noticed (its
        # send times out) after a few events, not after megabytes of them.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SSE_SEND_BUFFER)
        sock.settimeout(server.send_timeout_s)
        sock.sendall(self._head_bytes(200, "text/event-stream; charset=utf-8", None,
                                      (("X-Accel-Buffering", "no"),)))
        if self.command == "HEAD":
            return
        self.log_request(200)
        sock.sendall(b"retry: 2000\n\n")
        seq = -1
        sent = time.monotonic()
        while not server.stopping.is_set():
            now = state.wait_newer(seq, SSE_CLIENT_CHECK_S, server.stopping)
            if server.stopping.is_set() or _client_gone(sock):
                break
            if now == seq:
                if time.monotonic() - sent >= server.keepalive_s:
                    sock.sendall(b": keep-alive\n\n")
                    sent = time.monotonic()
                continue
            seq, body = state.snapshot_json()
            sock.sendall(b"id: %d\nevent: state\ndata: %s\n\n" % (seq, body))
            sent = time.monotonic()
            server.stopping.wait(server.min_interval_s)  # later changes coalesce meanwhile

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        logger.trace("preview: {} {}", self.client_address[0], format % args)


def _client_gone(sock: socket.socket) -> bool:
    """True if the client closed its end (or the connection broke); never waits."""
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLPRI)
    if not poller.poll(0):
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True


def _read_regular_file(path: Path, limit: int) -> bytes:
    """The whole content of a regular file (no symlink, FIFO or device), at most ``limit``."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{path.name} is not a regular file")
        if st.st_size > limit:
            raise OSError(f"{path.name} is larger than {limit} bytes")
        parts = []
        total = 0
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise OSError(f"{path.name} is larger than {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)
    finally:
        os.close(fd)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() shuts the connections down and joins them itself
    request_queue_size = 32

    def __init__(self, address: tuple[str, int], state: PreviewState, max_clients: int,
                 request_timeout_s: float, send_timeout_s: float) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.state = state
        self.stopping = threading.Event()
        self.request_timeout_s = request_timeout_s
        self.send_timeout_s = send_timeout_s
        self.keepalive_s = SSE_KEEPALIVE_S
        self.min_interval_s = SSE_MIN_INTERVAL_S
        self.max_clients = max_clients
        self._slots = threading.BoundedSemaphore(max_clients)
        self._active: dict[socket.socket, threading.Thread] = {}
        self._active_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host name up (getfqdn): a DNS query
        # that can hang without a network. The name is not needed.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = self.server_address[1]

    def process_request(self, request: Any, client_address: Any) -> None:
        if self.stopping.is_set() or not self._slots.acquire(blocking=False):
            _refuse_busy(request)
            self.shutdown_request(request)
            return
        thread = threading.Thread(target=self.process_request_thread,
                                  args=(request, client_address), daemon=True,
                                  name="luckystack-preview-client")
        with self._active_lock:
            self._active[request] = thread
        try:
            thread.start()
        except BaseException:
            with self._active_lock:
                self._active.pop(request, None)
            self._slots.release()
            self.shutdown_request(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._active_lock:
                self._active.pop(request, None)
            self._slots.release()

    def active_connections(self) -> int:
        with self._active_lock:
            return len(self._active)

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.opt(exception=True).debug("preview: error while serving {}", client_address)

    def close_connections(self, timeout: float) -> None:
        """Shut every open connection down, then wait (bounded) for their threads."""
        with self._active_lock:
            active = list(self._active.items())
        for sock, _ in active:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        for _, thread in active:
            thread.join(max(0.0, deadline - time.monotonic()))


def _refuse_busy(sock: socket.socket) -> None:
    """Too many connections: a short 503, without reading the request."""
    try:
        try:  # take what has arrived, so that closing sends FIN rather than RST
            sock.recv(MAX_HEAD_BYTES, socket.MSG_DONTWAIT)  # (a blocking socket: no wait)
        except (BlockingIOError, InterruptedError):
            pass
        sock.settimeout(1.0)
        body = b"too many connections; try again\n"
        sock.sendall(b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                     b"Retry-After: 2\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body))
    except OSError:
        pass


class PreviewServer:
    """The preview's HTTP server on its own daemon thread.

    Parameters
    ----------
    state : PreviewState
    host : str
        Address to listen on (``127.0.0.1``: this machine only; ``0.0.0.0``:
        every IPv4 interface; ``::``: every interface).
    port : int
        0 picks a free port; :attr:`port` tells which.
    max_clients : int
        Connections served at once (an event stream holds one); more get 503.
    request_timeout_s, send_timeout_s : float
        Deadline for a request's head; for one response (or one event) to be
        taken by the client. A client missing either is dropped.
    """

    def __init__(self, state: PreviewState, host: str = "127.0.0.1", port: int = 8080, *,
                 max_clients: int = 16, request_timeout_s: float = REQUEST_TIMEOUT_S,
                 send_timeout_s: float = SEND_TIMEOUT_S) -> None:
        self.state = state
        self.host = host
        self.requested_port = port
        self.max_clients = max_clients
        self.request_timeout_s = request_timeout_s
        self.send_timeout_s = send_timeout_s
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and serve; raises OSError if the address cannot be bound."""
        self._httpd = _Server((self.host, self.requested_port), self.state, self.max_clients,
                              self.request_timeout_s, self.send_timeout_s)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={
            "poll_interval": 0.25}, daemon=True, name="luckystack-preview")
        self._thread.start()

    @property
    def httpd(self) -> _Server:
        assert self._httpd is not None, "not started"
        return self._httpd

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving: the listening socket closes, event streams end, clients are cut."""
        httpd = self._httpd
        if httpd is None:
            return
        httpd.stopping.set()
        self.state.wake()
        httpd.shutdown()
        httpd.server_close()
        httpd.close_connections(timeout)
        if self._thread is not None:
            self._thread.join(timeout)
        self._httpd = None
        self._thread = None


def start_preview(state: PreviewState, settings: Any) -> PreviewServer | None:
    """Start the preview if ``settings.enabled`` (``[preview]``); never fatal.

    An address that cannot be bound (port in use, no permission, no network
    under systemd's ``RestrictAddressFamilies``) is logged as an error and
    None is returned: the stacking carries on without a preview.
    """
    if not settings.enabled:
        return None
    server = PreviewServer(state, settings.host, settings.port, max_clients=settings.max_clients)
    try:
        server.start()
    except (OSError, OverflowError) as err:
        logger.error("cannot start the preview on {}:{}: {}; stacking carries on without it",
                     settings.host, settings.port, err)
        return None
    if settings.host in ("0.0.0.0", "::", ""):
        logger.info("preview at {} (every interface: http://{}:{}/ from another device; "
                    "no authentication)", server.url, socket.gethostname(), server.port)
    else:
        logger.info("preview at {}", server.url)
    return server


def stop_preview(server: PreviewServer | None) -> None:
    if server is not None:
        server.stop()
        logger.debug("preview stopped")


# -------------------------------------------------------------------------------- page

_PAGE_HEADERS = (
    ("Content-Security-Policy",
     "default-src 'none'; img-src 'self' data:; connect-src 'self'; style-src 'unsafe-inline'; "
     "script-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    ("X-Frame-Options", "DENY"),
)

#: The page's icon (a small red planet), inline: the page loads nothing else.
_FAVICON_PNG_BASE64 = (
    "iVBORw0KGgoAAAANSUhEUgAAACAAAAAgCAYAAABzenr0AAADCklEQVRYw+1XS08TURS+c+fOTDu8yqMFCpTwqCES"
    "kOiGRE10oxtlodGFC6MbFm4Mv8HoxhDixhgTA3Fj1EiMCxNckGBcsMHgA0PAotCUAi2UltJOZ+7MeI8LQ2QKLZ1G"
    "F5ykSZOZe8435/Gd7yJ0aP/Y+IMcEjFyODksVwu8xyeJ7YRDBJkIcZzJ6Sai+fji8nm5hpDaq25Xf7fs7PWKxFdO"
    "eFetQBpXVC24pRvxsKYtTSeVyZfRzcdRSldtA+DAWL7uqbx9w1M1sMyCdcqO49nenUkpU15R8I2sbQw9XYs9UAwj"
    "VRAAGePSqZ4jWwet8YnpubKUYSSzPcd7HXYLpH6iqz1USJO9Z+fBT94ZYDVuftfZ9p3nOFJop+umSc/PBNpDKl3M"
    "KQPVhNSN+H3jdgT/PWrMz7C/eZw1cV1OAC7XVNxsksRWO+e9SRJaLzG/+5YARu3N0ZYvEubcad2wDYCTxyhjmJG+"
    "bz+6do7orhRfqXH1x6nunoglbGe9U65yN/DIw3D0jmUJJMZwHQ7xQjGCg33YTCC/KF4EJrUEICAstjglmSEtCoCT"
    "rjLUJktOkcWxLEEZwRVAr2xuUZ1UhbaosTdR5GjQSaWsB2T2i2jUBXGSqpHYBaCSJ27gdvhfgjEqEbHtWQD/MI5h"
    "lQZ3AYjpNBJWtaUKwvvsnICdk5CgepBNwYplCVjK4z/TCjeXyhRt//tliYM4lk1YL+LTLHhTMQXIfCrT2CDyZywB"
    "BBQ6piA0WkwAaRO9nle0t1mZ0ENIw7OO5k8YcdV2tiB0lI7M9Wuzi8fWKA1lZUJ4+Dy6OTjgdd+z++uHliODO4Nn"
    "XUaj0fhwMKMt2Bk8mFEXXjG/OeuBBqYHxmzUA+eYHljOVQ+AgXg4+zXg29aNghZDkp0HP1bB/wtNuO+9QDNN9cnq"
    "xv20YWx3OB3dC4o66xGIdw9V/FFgZXu0sn73ViDUB+dsvReAXugpdfTWC8KfewHQN6SapXnpcyo9+SJi873gbwPd"
    "AKsbthosFuB2oFcVGapqIOXwwpmP/QLg4EW4pZcWRgAAAABJRU5ErkJggg=="
)

PAGE_HTML = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1, viewport-fit=cover">
<meta name="color-scheme" content="dark">
<meta name="theme-color" content="#000000">
<title>luckystack preview</title>
<link rel="icon" type="image/png" href="data:image/png;base64,%FAVICON%">
<style>
:root { --bg:#000; --panel:#0a0202; --line:#2b0c0c; --fg:#c83a3a; --dim:#7d2a2a; --hi:#ff5a4a; }
* { box-sizing:border-box; }
html, body { margin:0; background:var(--bg); color:var(--fg);
  font:15px/1.35 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  -webkit-text-size-adjust:100%; -webkit-tap-highlight-color:transparent; }
header { display:flex; align-items:center; gap:.6em; padding:.5em .8em;
  border-bottom:1px solid var(--line); }
h1 { font-size:1em; margin:0; font-weight:650; letter-spacing:.05em; color:var(--hi); }
#session { flex:1; min-width:0; color:var(--dim); overflow:hidden; text-overflow:ellipsis;
  white-space:nowrap; }
#status { font-size:.85em; white-space:nowrap; color:var(--dim); }
#status::before { content:""; display:inline-block; width:.55em; height:.55em;
  border-radius:50%; margin-right:.4em; background:currentColor; vertical-align:.05em; }
#status.live { color:var(--fg); }
main { display:grid; grid-template-columns:minmax(0,1fr); gap:.8em; padding:.8em;
  max-width:1600px; margin:0 auto; }
@media (min-width:900px) { main { grid-template-columns:minmax(0,1fr) 360px; align-items:start; } }
#view { position:relative; background:#030000; border:1px solid var(--line); border-radius:8px;
  overflow:hidden; min-height:8em; display:flex; align-items:center; justify-content:center;
  cursor:zoom-in; touch-action:manipulation; }
#view img { display:block; }
#view.fit img { width:100%; height:auto; max-height:74vh; object-fit:contain; }
#view.zoom { display:block; overflow:auto; cursor:zoom-out; -webkit-overflow-scrolling:touch; }
#view.zoom img { max-width:none; max-height:none; height:auto; }
#noimg { color:var(--dim); margin:2em 1em; text-align:center; }
body.red #view img { filter:grayscale(1) sepia(1) saturate(8) hue-rotate(-38deg) brightness(.8); }
#hint { position:absolute; right:.5em; bottom:.4em; font-size:.75em; color:var(--dim);
  pointer-events:none; }
#view.zoom #hint { display:none; }
nav { display:flex; flex-wrap:wrap; gap:.4em; margin-top:.6em; }
button { font:inherit; font-size:.85em; color:var(--fg); background:var(--panel);
  border:1px solid var(--line); border-radius:6px; padding:.5em .85em; min-height:2.5em;
  cursor:pointer; }
button.on { color:var(--hi); background:#240707; border-color:#5c1616; }
#red { margin-left:auto; }
#stats { display:grid; grid-template-columns:repeat(2, minmax(0,1fr)); gap:.45em; }
#stats div { background:var(--panel); border:1px solid var(--line); border-radius:8px;
  padding:.45em .55em; min-width:0; }
#stats b { display:block; font-size:1.5em; font-weight:600; color:var(--hi);
  font-variant-numeric:tabular-nums; overflow:hidden; text-overflow:ellipsis; white-space:nowrap; }
#stats span { font-size:.7em; letter-spacing:.07em; text-transform:uppercase; color:var(--dim); }
h2 { font-size:.72em; font-weight:500; letter-spacing:.07em; text-transform:uppercase;
  color:var(--dim); margin:.9em 0 .35em; }
#plot { display:block; width:100%; height:150px; background:var(--panel);
  border:1px solid var(--line); border-radius:8px; }
#last { font-size:.82em; color:var(--dim); margin:.6em 0 0; overflow-wrap:anywhere; }
#last .rejected { color:var(--fg); }
</style>
</head>
<body>
<header>
  <h1>luckystack</h1>
  <span id="session"></span>
  <span id="status">connecting</span>
</header>
<main>
  <section>
    <div id="view" class="fit" title="tap to zoom">
      <img id="img" alt="the latest stack" hidden>
      <p id="noimg">waiting for the first image&hellip;</p>
      <span id="hint">tap to zoom</span>
    </div>
    <nav id="tabs">
      <button data-img="sharpened" class="on">sharpened</button>
      <button data-img="stacked">stacked</button>
      <button data-img="comparison">comparison</button>
      <button id="red" title="red night-vision tint for the image">red</button>
    </nav>
  </section>
  <section>
    <div id="stats">
      <div><b id="frames">0</b><span>frames</span></div>
      <div><b id="rate">&ndash;</b><span>usable</span></div>
      <div><b id="quality">&ndash;</b><span>quality</span></div>
      <div><b id="stacked">0</b><span>in stack</span></div>
    </div>
    <h2>Quality of accepted frames</h2>
    <canvas id="plot"></canvas>
    <p id="last"></p>
  </section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let state = null, which = "sharpened", shown = "", want = "", failed = "", loading = false;
let zoomWidth = 0, received = 0, es = null;
try { which = localStorage.getItem("luckystack.image") || which; } catch (e) {}
try {
  if (localStorage.getItem("luckystack.red") === "1") document.body.classList.add("red");
} catch (e) {}

function fmtInt(n) { return n == null ? "\u2013" : n.toLocaleString("en-US"); }
function fmtQ(q) {  // the score's scale is arbitrary: 3 significant digits, compact
  if (q == null) return "\u2013";
  const a = Math.abs(q);
  if (a === 0) return "0";
  if (a < 0.01 || a >= 1e5) return q.toExponential(2).replace("e+", "e");
  return a >= 100 ? q.toFixed(0) : q.toPrecision(3);
}

function imageUrl(s) {
  const v = (s.versions && s.versions[which]) || s.version;
  return "/image/" + which + ".png?v=" + s.boot + "-" + v;
}

function showImage() {
  if (!state) return;
  want = imageUrl(state);
  if (want !== shown && want !== failed && !loading) load(want);
}

// Preload, then swap the element: no flicker, and one load at a time (a slow
// connection skips versions instead of queueing them).
function load(url) {
  loading = true;
  const next = new Image();
  next.id = "img";
  next.alt = "the latest " + which + " image";
  next.onload = () => {
    loading = false;
    $("img").replaceWith(next);
    shown = url; failed = "";
    $("noimg").hidden = true;
    applyZoom();
    if (want !== shown) showImage();
  };
  next.onerror = () => {
    loading = false;
    failed = url;
    if (want !== url) { showImage(); return; }
    $("img").hidden = true; shown = "";
    $("noimg").hidden = false;
    $("noimg").textContent = state && state.version ? "no " + which + " image"
                                                    : "waiting for the first image\u2026";
  };
  next.src = url;
}

function render(s) {
  state = s;
  received = Date.now();
  $("session").textContent = s.session;
  $("frames").textContent = fmtInt(s.frames);
  $("rate").textContent = s.usable == null ? "\u2013" : Math.round(100 * s.usable) + "%";
  $("rate").parentNode.title = s.frames ? (fmtInt(s.accepted) + " stacked, " +
    fmtInt(s.below_cut) + " below the lucky cut, " +
    fmtInt(s.rejected - s.below_cut - s.skipped) + " rejected" +
    (s.skipped ? ", " + fmtInt(s.skipped) + " skipped to keep up" : "")) : "";
  $("quality").textContent = fmtQ(s.quality);
  $("quality").title = s.quality == null ? "" : String(s.quality);
  $("stacked").textContent = fmtInt(s.stacked);
  drawPlot();
  tick();
  showImage();
}

function tick() {
  const s = state;
  if (!s) return;
  const el = $("last");
  el.textContent = "";
  if (s.last) {
    el.append("last: " + s.last.file + " ");
    const o = document.createElement("span");
    o.className = s.last.outcome;
    o.textContent = s.last.outcome + (s.last.reason ? " (" + s.last.reason + ")" : "");
    el.append(o);
    el.append(" \u00b7 ");
  }
  const ago = Math.round((Date.now() - received) / 1000);
  el.append(s.frames ? "updated " + (ago < 2 ? "just now" : ago + " s ago") : "no frame yet");
}
setInterval(tick, 1000);

function drawPlot() {
  const c = $("plot"), dpr = window.devicePixelRatio || 1;
  const w = c.clientWidth, h = c.clientHeight;
  if (!w || !h) return;
  if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
    c.width = Math.round(w * dpr); c.height = Math.round(h * dpr);
  }
  const g = c.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  g.font = "11px system-ui, sans-serif";
  const pts = state ? state.history : [];
  if (pts.length < 2) {
    g.fillStyle = "#7d2a2a"; g.textAlign = "center";
    g.fillText("waiting for accepted frames", w / 2, h / 2);
    return;
  }
  let y0 = Infinity, y1 = -Infinity;
  for (const p of pts) { y0 = Math.min(y0, p[1]); y1 = Math.max(y1, p[1]); }
  if (y1 - y0 < 1e-12) { y0 -= 1; y1 += 1; }
  const pad = (y1 - y0) * 0.08; y0 -= pad; y1 += pad;
  const x0 = pts[0][0], x1 = Math.max(pts[pts.length - 1][0], x0 + 1);
  const L = 6, R = w - 6, T = 16, B = h - 16;
  const X = (x) => L + (x - x0) / (x1 - x0) * (R - L);
  const Y = (y) => B - (y - y0) / (y1 - y0) * (B - T);
  g.strokeStyle = "#2b0c0c"; g.lineWidth = 1;
  for (let k = 0; k <= 3; k++) {
    const y = Math.round(T + k * (B - T) / 3) + 0.5;
    g.beginPath(); g.moveTo(L, y); g.lineTo(R, y); g.stroke();
  }
  g.strokeStyle = "#e0453a"; g.lineWidth = 1.5; g.lineJoin = "round";
  g.beginPath();
  pts.forEach((p, i) => i ? g.lineTo(X(p[0]), Y(p[1])) : g.moveTo(X(p[0]), Y(p[1])));
  g.stroke();
  const last = pts[pts.length - 1];
  g.fillStyle = "#ff5a4a";
  g.beginPath(); g.arc(X(last[0]), Y(last[1]), 3, 0, 2 * Math.PI); g.fill();
  g.fillStyle = "#7d2a2a";
  g.textAlign = "left";
  g.fillText(fmtQ(y1 - pad), L + 2, T - 4);
  g.fillText(fmtQ(y0 + pad), L + 2, h - 4);
  g.textAlign = "right";
  g.fillText("frame " + fmtInt(last[0]), R, h - 4);
}
window.addEventListener("resize", () => { drawPlot(); });

// Tap: zoom in on the tapped point (at least 1:1 pixels, at least twice the
// fitted size) and pan by scrolling; tap again: fit.
function applyZoom() {
  const v = $("view"), img = $("img");
  img.hidden = false;
  img.style.width = v.classList.contains("zoom") && zoomWidth ? zoomWidth + "px" : "";
}
$("view").addEventListener("click", (ev) => {
  const v = $("view"), img = $("img");
  if (img.hidden || !img.naturalWidth) return;
  if (v.classList.contains("zoom")) {
    v.classList.replace("zoom", "fit");
    v.style.height = "";
    applyZoom();
    return;
  }
  const r = img.getBoundingClientRect(), nw = img.naturalWidth, nh = img.naturalHeight;
  const k = Math.min(r.width / nw, r.height / nh), cw = nw * k, ch = nh * k;
  const fx = Math.min(1, Math.max(0, (ev.clientX - r.left - (r.width - cw) / 2) / cw));
  const fy = Math.min(1, Math.max(0, (ev.clientY - r.top - (r.height - ch) / 2) / ch));
  v.style.height = v.clientHeight + "px";
  v.classList.replace("fit", "zoom");
  zoomWidth = Math.round(Math.max(nw, 2 * cw));
  applyZoom();
  const zh = zoomWidth * nh / nw;
  v.scrollLeft = fx * zoomWidth - v.clientWidth / 2;
  v.scrollTop = fy * zh - v.clientHeight / 2;
});

document.querySelectorAll("#tabs button[data-img]").forEach((b) => {
  b.classList.toggle("on", b.dataset.img === which);
  b.addEventListener("click", () => {
    which = b.dataset.img;
    try { localStorage.setItem("luckystack.image", which); } catch (e) {}
    document.querySelectorAll("#tabs button[data-img]").forEach(
      (o) => o.classList.toggle("on", o === b));
    failed = "";
    showImage();
  });
});
$("red").classList.toggle("on", document.body.classList.contains("red"));
$("red").addEventListener("click", () => {
  const on = document.body.classList.toggle("red");
  $("red").classList.toggle("on", on);
  try { localStorage.setItem("luckystack.red", on ? "1" : "0"); } catch (e) {}
});

function setStatus(live, text) {
  $("status").className = live ? "live" : "";
  $("status").textContent = text;
}

// The event stream; EventSource reconnects by itself after a dropped
// connection, and a refused one (503) is retried here.
function connect() {
  es = new EventSource("/events");
  es.addEventListener("open", () => setStatus(true, "live"));
  es.addEventListener("state", (ev) => { setStatus(true, "live"); render(JSON.parse(ev.data)); });
  es.addEventListener("error", () => {
    setStatus(false, "reconnecting");
    if (es.readyState === EventSource.CLOSED) { es.close(); setTimeout(connect, 3000); }
  });
}
drawPlot();
connect();
</script>
</body>
</html>
""".replace("%FAVICON%", _FAVICON_PNG_BASE64).encode()
