"""The browser preview's server (daemon/preview.py): routes, refusals, slow clients.

Requests are raw bytes on sockets, so that malformed and hostile requests
reach the server exactly as written. No assertion is about time: waits are
generous polls, and "does not block" is shown by counting.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from luckystack.daemon.config import ConfigError, load_settings
from luckystack.daemon.preview import (
    HISTORY_POINTS,
    MAX_HEAD_BYTES,
    PLOT_POINTS,
    PreviewServer,
    PreviewState,
)
from luckystack.daemon.ser import SerColor, write_ser

from daemon_helpers import DaemonThread, csv_rows, wait_for, write_frames

TIMEOUT = 30.0


# ------------------------------------------------------------------------ helpers


def rec(n: int, *, accepted: bool = True, quality: float | None = None, stacked: int = 1,
        reason: str = "low quality"):
    """A stand-in for the CropRecord the daemon passes (the fields the preview reads)."""
    return SimpleNamespace(
        file=f"frame_{n}.png", outcome="accepted" if accepted else "rejected",
        reason="" if accepted else reason, sharpness=quality, stacked=stacked,
    )


def exchange(port: int, data: bytes, *, shut: bool = False) -> bytes:
    """Send ``data``, read the whole answer (until the server closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        s.sendall(data)
        if shut:
            s.shutdown(socket.SHUT_WR)
        out = bytearray()
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
    return bytes(out)


def parse(resp: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = resp.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.0 "), resp[:200]
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return int(lines[0].split()[1]), headers, body


def get(port: int, target: str, method: str = "GET", extra: str = "") -> tuple[int, dict, bytes]:
    req = f"{method} {target} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n".encode("latin-1")
    return parse(exchange(port, req))


def state_json(port: int) -> dict:
    code, headers, body = get(port, "/state.json")
    assert code == 200 and headers["content-type"] == "application/json"
    return json.loads(body)


class EventReader:
    """An /events client on a thread, keeping every ``state`` event it reads."""

    def __init__(self, port: int, rcvbuf: int | None = None, read: bool = True):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(b"GET /events HTTP/1.1\r\nHost: localhost\r\n"
                          b"Accept: text/event-stream\r\n\r\n")
        self.events: list[dict] = []
        self.head = b""
        self.closed = threading.Event()
        self.thread = None
        if read:
            self.thread = threading.Thread(target=self._read, daemon=True)
            self.thread.start()

    def _read(self) -> None:
        buf = b""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
                if not self.head and b"\r\n\r\n" in buf:
                    self.head, _, buf = buf.partition(b"\r\n\r\n")
                while self.head and b"\n\n" in buf:
                    block, _, buf = buf.partition(b"\n\n")
                    lines = block.decode().split("\n")
                    if "event: state" in lines:
                        data = "".join(ln[6:] for ln in lines if ln.startswith("data: "))
                        self.events.append(json.loads(data))
        except OSError:
            pass
        finally:
            self.closed.set()

    def latest(self) -> dict | None:
        return self.events[-1] if self.events else None

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the reading thread
        except OSError:
            pass
        self.sock.close()
        if self.thread is not None:
            self.thread.join(TIMEOUT)


@pytest.fixture
def served(tmp_path):
    """A running PreviewServer on a free port, its state and its output folder."""
    out = tmp_path / "out"
    out.mkdir()
    state = PreviewState(out)
    server = PreviewServer(state, "127.0.0.1", 0, max_clients=8, request_timeout_s=2.0,
                           send_timeout_s=2.0)
    server.start()
    yield SimpleNamespace(state=state, server=server, out=out, port=server.port)
    server.stop()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """One server for the refusal tests, its output folder holding files that
    must never be served (and a real image)."""
    out = tmp_path_factory.mktemp("preview") / "out"
    out.mkdir()
    (out / "secret.txt").write_text("top secret")
    (out / "crops.csv").write_text("index,file\n0,secret\n")
    (out / "sharpened.png").write_bytes(_png(7))
    state = PreviewState(out)
    state.wrote(out)
    server = PreviewServer(state, "127.0.0.1", 0, request_timeout_s=2.0, send_timeout_s=2.0)
    server.start()
    yield SimpleNamespace(state=state, server=server, out=out, port=server.port)
    server.stop()


def _png(value: int, shape=(20, 30)) -> bytes:
    ok, buf = cv2.imencode(".png", np.full(shape, value, np.uint16))
    assert ok
    return buf.tobytes()


# --------------------------------------------------------------------------- routes


def test_page_is_served_self_contained(served):
    code, headers, body = get(served.port, "/")
    assert code == 200
    assert headers["content-type"].startswith("text/html")
    assert int(headers["content-length"]) == len(body)
    page = body.decode()
    for needed in ('name="viewport"', "<canvas", "EventSource", "/events", "/image/"):
        assert needed in page
    # no CDN, font or script from elsewhere: the page works without internet
    assert "http://" not in page and "https://" not in page and "//cdn" not in page
    assert "default-src 'none'" in headers["content-security-policy"]
    # HEAD: the same headers, no body
    code, headers, body = get(served.port, "/", method="HEAD")
    assert code == 200 and body == b"" and int(headers["content-length"]) > 1000


def test_each_image_has_the_version_of_the_write_that_replaced_it(served):
    st = served.state
    st.wrote(served.out, ("stacked", "sharpened", "comparison"))
    st.wrote(served.out, ("stacked",))  # a quick write: the sharpened images not due yet
    s = state_json(served.port)
    assert s["version"] == 2
    assert s["versions"] == {"stacked": 2, "sharpened": 1, "comparison": 1}
    st.wrote(served.out, ("sharpened", "comparison"))
    assert state_json(served.port)["versions"] == {"stacked": 2, "sharpened": 3, "comparison": 3}
    sub = served.out / "jup"
    sub.mkdir()
    st.wrote(sub, ("stacked",))  # another session's folder: only what it wrote is there
    assert state_json(served.port)["versions"] == {"stacked": 4}


def test_state_reports_counts_quality_and_writes(served):
    st = served.state
    first = state_json(served.port)
    assert first["frames"] == 0 and first["version"] == 0 and first["acceptance"] is None
    assert first["history"] == [] and first["quality"] is None
    st.record(rec(1, quality=2.0, stacked=1))
    st.record(rec(2, accepted=False, quality=0.3))
    st.record(rec(3, quality=2.5, stacked=2))
    st.record(rec(4, quality=3.0, stacked=3))
    st.wrote(served.out)
    s = state_json(served.port)
    assert (s["frames"], s["accepted"], s["rejected"]) == (4, 3, 1)
    assert s["acceptance"] == pytest.approx(0.75)
    assert s["quality"] == 3.0 and s["stacked"] == 3
    assert s["version"] == 1
    assert s["history"] == [[1, 2.0], [3, 2.5], [4, 3.0]]  # accepted frames only
    assert s["last"] == {"file": "frame_4.png", "outcome": "accepted", "reason": ""}
    assert s["below_cut"] == 0 and s["usable"] == pytest.approx(0.75)


def test_frames_below_the_lucky_cut_count_as_usable_not_as_bad(served):
    from luckystack.core.pipeline import LUCKY_CUT_REASON

    st = served.state
    st.record(rec(1, quality=2.0))
    for n in (2, 3, 4, 5, 6):
        st.record(rec(n, accepted=False, quality=1.0,
                      reason=f"{LUCKY_CUT_REASON}: sharpness 1 < 1.9, the best 25% of the last 6"))
    st.record(rec(7, accepted=False, reason="no planet found: blank frame"))
    st.record(rec(8, quality=2.2, stacked=2))
    s = state_json(served.port)
    assert (s["frames"], s["accepted"], s["rejected"], s["below_cut"]) == (8, 2, 6, 5)
    assert s["acceptance"] == pytest.approx(2 / 8)
    assert s["usable"] == pytest.approx(7 / 8)  # all but the blank frame
    for n in (9, 10):  # skipped unread by [watch] max_lag_frames: no verdict on them
        st.record(rec(n, accepted=False, reason="skipped to keep up: more than 10 frames ..."))
    s = state_json(served.port)
    assert (s["frames"], s["rejected"], s["skipped"]) == (10, 8, 2)
    assert s["usable"] == pytest.approx(7 / 8)  # unchanged
    st.seed([rec(1), rec(2, accepted=False, reason=f"{LUCKY_CUT_REASON}: ...")])  # a resume
    s = state_json(served.port)
    assert (s["frames"], s["below_cut"], s["usable"]) == (2, 1, 1.0)
    assert s["session"] == "out"
    assert s["boot"] == st.boot


def test_quality_history_is_bounded_and_downsampled(served):
    for n in range(1, 5001):
        served.state.record(rec(n, quality=float(n % 97)))
    s = state_json(served.port)
    assert s["frames"] == 5000
    assert 2 <= len(s["history"]) <= PLOT_POINTS
    xs = [x for x, _ in s["history"]]
    assert xs == sorted(xs) and xs[-1] == 5000
    assert xs[0] > 5000 - HISTORY_POINTS  # only the last HISTORY_POINTS frames are kept


def test_images_are_served_from_the_folder_last_written(served):
    out = served.out
    assert get(served.port, "/image/sharpened.png")[0] == 404  # nothing written yet
    files = {name: _png(i * 1000) for i, name in enumerate(
        ("sharpened.png", "stacked.png", "comparison.png"), start=1)}
    for name, data in files.items():
        (out / name).write_bytes(data)
    served.state.wrote(out)
    for name, data in files.items():
        code, headers, body = get(served.port, f"/image/{name}?v=abc-1")  # the query is ignored
        assert code == 200 and headers["content-type"] == "image/png"
        assert body == data
        assert headers["cache-control"] == "no-store"
    # a SER session writes into OUTPUT/<stem>/: the preview follows the latest write
    sub = out / "jup_1"
    sub.mkdir()
    (sub / "sharpened.png").write_bytes(_png(4242))
    served.state.wrote(sub)
    assert get(served.port, "/image/sharpened.png")[2] == _png(4242)
    assert get(served.port, "/image/stacked.png")[0] == 404  # not in that folder (yet)
    assert state_json(served.port)["session"] == "out/jup_1"
    # HEAD of an image: no body
    code, headers, body = get(served.port, "/image/sharpened.png", method="HEAD")
    assert code == 200 and body == b"" and int(headers["content-length"]) == len(_png(4242))


def test_a_symlink_or_fifo_named_like_an_output_is_not_served(served, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    (served.out / "sharpened.png").symlink_to(secret)
    os.mkfifo(served.out / "stacked.png")
    served.state.wrote(served.out)
    for name in ("sharpened.png", "stacked.png"):
        code, _, body = get(served.port, f"/image/{name}")
        assert code == 404 and b"secret" not in body


def test_events_deliver_the_newest_state_after_a_write(served):
    reader = EventReader(served.port)
    try:
        assert wait_for(lambda: reader.events, TIMEOUT)
        assert b"text/event-stream" in reader.head
        assert reader.latest()["version"] == 0
        served.state.record(rec(1, quality=1.5))
        served.state.wrote(served.out)
        assert wait_for(lambda: reader.latest()["version"] == 1, TIMEOUT)
        assert reader.latest()["frames"] == 1
        # a burst of changes: the client gets the newest, not one event per change
        for n in range(2, 502):
            served.state.record(rec(n, quality=1.0))
        served.state.wrote(served.out)
        assert wait_for(lambda: reader.latest()["frames"] == 501, TIMEOUT)
        assert reader.latest()["version"] == 2
        assert len(reader.events) < 100
    finally:
        reader.close()


# ------------------------------------------------------------------------- refusals


TRAVERSALS = [
    "/../../etc/passwd",
    "/image/../../x",
    "/image/../secret.txt",
    "/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/image/%2e%2e/%2e%2e/etc/passwd",
    "/image/..%2fsecret.txt",
    "/image/%2E%2E%2Fsecret.txt",
    "//etc/passwd",
    "/etc/passwd",
    "/image/secret.txt",
    "/image/crops.csv",
    "/image/sharpened.png/../secret.txt",
    "/image\\sharpened.png",
    "/image/..\\..\\secret.txt",
    "/image/sharpened.png%00",
    "/image/sharpened.png%00.txt",
    "/image/",
    "/image",
    "/image//sharpened.png",
    "/state.json/../image/secret.txt",
    "/secret.txt",
    "/crops.csv",
    "/./image/sharpened.png",
    "/IMAGE/SHARPENED.PNG",
    "\\..\\secret.txt",
    "../secret.txt",
    "http://127.0.0.1/image/secret.txt",
    "file:///etc/passwd",
    "*",
]


@pytest.mark.parametrize("target", TRAVERSALS)
def test_paths_outside_the_routes_are_refused(hostile, target):
    assert get(hostile.port, "/image/sharpened.png")[2] == _png(7)
    code, _, body = get(hostile.port, target)
    assert code in (400, 404), (target, code)
    assert b"secret" not in body and b"root:" not in body


@pytest.mark.parametrize("raw", [
    b"GET /image/sharpened.png\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /\x00/etc/passwd HTTP/1.1\r\n\r\n",
    b"GET /image/\xff\xfe HTTP/1.1\r\n\r\n",
])
def test_nul_and_non_ascii_in_the_target_are_refused(hostile, raw):
    code, _, body = parse(exchange(hostile.port, raw))
    assert code == 400


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE",
                                    "CONNECT", "PROPFIND"])
def test_methods_other_than_get_and_head_are_refused(hostile, method):
    code, headers, _ = get(hostile.port, "/", method=method)
    assert code == 405
    assert headers["allow"] == "GET, HEAD"


def test_a_post_with_a_body_is_refused(hostile):
    raw = b"POST /state.json HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world"
    assert parse(exchange(hostile.port, raw))[0] == 405


@pytest.mark.parametrize("extra", [
    "Content-Length: 5\r\n",
    "Content-Length: 100000000000\r\n",
    "Transfer-Encoding: chunked\r\n",
])
def test_request_bodies_are_refused(hostile, extra):
    assert get(hostile.port, "/", extra=extra)[0] == 413


def test_a_zero_content_length_is_fine(hostile):
    assert get(hostile.port, "/state.json", extra="Content-Length: 0\r\n")[0] == 200


def test_an_oversized_request_line_is_refused(hostile):
    assert get(hostile.port, "/" + "a" * 5000)[0] == 414
    assert get(hostile.port, "/state.json?" + "v" * 100_000)[0] == 414
    # one without any line end, sent and then half-closed
    raw = b"GET /" + b"x" * 20_000
    assert parse(exchange(hostile.port, raw, shut=True))[0] == 414


def test_oversized_headers_are_refused(hostile):
    assert get(hostile.port, "/", extra="X-Big: " + "b" * (MAX_HEAD_BYTES + 10) + "\r\n")[0] == 431
    many = "".join(f"X-H{i}: {i}\r\n" for i in range(200))
    assert get(hostile.port, "/", extra=many)[0] == 431
    # a flood of header bytes (far beyond the limit) still gets its answer, not a reset
    flood = "".join(f"X-F{i}: {'f' * 90}\r\n" for i in range(3000))
    assert get(hostile.port, "/", extra=flood)[0] == 431


@pytest.mark.parametrize("raw", [
    b"garbage\r\n\r\n",
    b"GET /\r\n\r\n",  # HTTP/0.9
    b"GET / HTTP/2.0\r\n\r\n",
    b"GET / HTTP/1.1 extra\r\n\r\n",
    b"GET  / HTTP/1.1\r\n\r\n",
    b"get / HTTP/1.1\r\n\r\n",
    b"GET / http/1.1\r\n\r\n",
    b"/ GET HTTP/1.1\r\n\r\n",
    b" GET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
    b"GET / HTTP/1.1\r\n folded: header\r\n\r\n",
    b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    "GET / HTTP/1.1\r\nContent-Length: \u00b2\r\n\r\n".encode("latin-1"),
    b"GET / HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(range(32)) + b"\r\n\r\n",  # TLS
    b"\r\n\r\n",
])
def test_malformed_requests_are_refused(hostile, raw):
    assert parse(exchange(hostile.port, raw))[0] == 400


def test_a_request_cut_short_is_refused_and_a_silent_connection_closed(hostile):
    assert parse(exchange(hostile.port, b"GET / HTTP/1.1\r\nHost: x\r\n", shut=True))[0] == 400
    assert exchange(hostile.port, b"", shut=True) == b""


def test_the_server_survives_all_of_it(hostile):
    """After every kind of refusal above, it still serves."""
    for raw in (b"garbage\r\n\r\n", b"GET /../x HTTP/1.1\r\n\r\n", b"\x00" * 3000,
                b"POST / HTTP/1.1\r\n\r\n", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n"):
        exchange(hostile.port, raw)
    assert get(hostile.port, "/")[0] == 200
    assert state_json(hostile.port)["frames"] == 0


def test_too_many_connections_are_turned_away_then_served_again(tmp_path):
    state = PreviewState(tmp_path)
    server = PreviewServer(state, "127.0.0.1", 0, max_clients=2)
    server.start()
    readers = [EventReader(server.port) for _ in range(2)]
    try:
        assert wait_for(lambda: all(r.events for r in readers), TIMEOUT)
        try:
            resp = exchange(server.port, b"GET /state.json HTTP/1.1\r\nHost: x\r\n\r\n")
        except OSError:  # refused by a reset: also fine
            resp = b""
        assert resp == b"" or parse(resp)[0] == 503
        readers.pop().close()
        assert wait_for(lambda: server.httpd.active_connections() < 2, TIMEOUT)
        assert get(server.port, "/state.json")[0] == 200
    finally:
        for r in readers:
            r.close()
        server.stop()


def test_stalled_clients_block_neither_the_updates_nor_other_clients(served):
    """A client that never reads its event stream and one that sends half a
    request and stalls: the daemon's update calls all return, another client
    gets every change, and the stalled clients are dropped in the end."""
    served.server.httpd.min_interval_s = 0.01  # many events: the stalled stream fills up fast
    stalled = EventReader(served.port, rcvbuf=4096, read=False)
    half = socket.create_connection(("127.0.0.1", served.port), timeout=TIMEOUT)
    half.sendall(b"GET /state.json HTTP/1.1\r\nHost: local")
    healthy = EventReader(served.port)
    try:
        assert wait_for(lambda: healthy.events, TIMEOUT)
        assert wait_for(lambda: served.server.httpd.active_connections() >= 2, TIMEOUT)
        done = []

        def daemon_side(batches: int) -> None:
            for b in range(batches):
                for k in range(200):
                    served.state.record(rec(b * 200 + k + 1, quality=1.0 + k % 7))
                    done.append(1)
                served.state.wrote(served.out)
                done.append(1)

        worker = threading.Thread(target=daemon_side, args=(20,), daemon=True)
        worker.start()
        worker.join(TIMEOUT * 4)
        assert not worker.is_alive() and len(done) == 20 * 201  # every update call returned
        assert wait_for(lambda: healthy.latest()["frames"] == 4000, TIMEOUT)
        assert healthy.latest()["version"] == 20
        assert state_json(served.port)["frames"] == 4000
        # the half request times out with 408
        half.settimeout(TIMEOUT)
        answer = half.recv(4096)
        assert answer.startswith(b"HTTP/1.0 408 ")
        # the stream nobody reads is dropped once its buffers are full
        n = 4000

        def stalled_dropped() -> bool:
            nonlocal n
            n += 1
            served.state.record(rec(n, quality=2.0))  # keep changes coming
            return served.server.httpd.active_connections() <= 1  # the healthy one is left
        assert wait_for(stalled_dropped, TIMEOUT * 2, interval=0.01)
        assert healthy.latest() is not None and not healthy.closed.is_set()
    finally:
        half.close()
        stalled.close()
        healthy.close()


def test_stop_ends_the_event_streams(tmp_path):
    state = PreviewState(tmp_path)
    server = PreviewServer(state, "127.0.0.1", 0)
    server.start()
    port = server.port
    reader = EventReader(port)
    assert wait_for(lambda: reader.events, TIMEOUT)
    server.stop()
    assert reader.closed.wait(TIMEOUT)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    reader.close()


# ----------------------------------------------------------------------- the config


def test_preview_settings_defaults_and_problems(tmp_path):
    s = load_settings()
    assert s.preview.enabled is False
    assert (s.preview.host, s.preview.port) == ("127.0.0.1", 8080)
    bad = tmp_path / "bad.toml"
    bad.write_text('[preview]\nport = 70000\nhost = ""\nenable = true\nmax_clients = 0\n')
    with pytest.raises(ConfigError) as err:
        load_settings(bad)
    text = "\n".join(err.value.problems)
    assert "[preview] port" in text and "[preview] host" in text
    assert "[preview] enable: unknown key" in text and "[preview] max_clients" in text


# ---------------------------------------------------------------- with the watch daemon


def _preview_settings(port: int = 0):
    return load_settings(preview={"enabled": True, "port": port})


def test_watch_daemon_serves_its_state_and_images(tmp_path, small_session, caplog):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    with DaemonThread(inp, out, _preview_settings()) as d:
        assert d.preview is not None
        port = d.preview.port
        assert port > 0
        assert f"preview at http://127.0.0.1:{port}/" in caplog.text
        assert get(port, "/")[0] == 200
        assert state_json(port)["frames"] == 0
        write_frames(inp, small_session.frames[:12])
        assert wait_for(lambda: len(csv_rows(out / "crops.csv")) >= 12)
        assert wait_for(lambda: not d.session.dirty)
        rows = csv_rows(out / "crops.csv")
        s = state_json(port)
        assert s["frames"] == 12
        assert s["accepted"] == sum(r["outcome"] == "accepted" for r in rows)
        assert s["version"] >= 1
        assert s["quality"] == pytest.approx(
            float([r for r in rows if r["outcome"] == "accepted"][-1]["sharpness"]))
        target = f"/image/sharpened.png?v={s['boot']}-{s['version']}"
        assert wait_for(lambda: get(port, target)[2] == (out / "sharpened.png").read_bytes())
        code, _, body = get(port, target)
        assert code == 200
        img = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_UNCHANGED)
        assert img is not None and img.dtype == np.uint16
    # stopped with the daemon
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_a_restarted_daemon_counts_the_session_from_its_csv(tmp_path, small_session):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    with DaemonThread(inp, out, _preview_settings()) as d:
        write_frames(inp, small_session.frames[:8])
        assert wait_for(lambda: len(csv_rows(out / "crops.csv")) >= 8)
        before = state_json(d.preview.port)
    with DaemonThread(inp, out, _preview_settings()) as d:
        s = state_json(d.preview.port)  # nothing new yet: the CSV's 8 rows
        assert s["frames"] == 8 and s["accepted"] == before["accepted"]
        assert s["history"] == before["history"] and s["quality"] == before["quality"]
        write_frames(inp, small_session.frames[8:10], start=9)
        assert wait_for(lambda: state_json(d.preview.port)["frames"] == 10)


def test_watch_daemon_preview_shows_the_latest_ser_session(tmp_path, small_session):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    with DaemonThread(inp, out, _preview_settings(), ser_finish_s=0.2) as d:
        port = d.preview.port
        tmp = write_ser(tmp_path / "jup_1.ser", small_session.frames[:15], color_id=SerColor.MONO)
        os.replace(tmp, inp / "jup_1.ser")
        assert wait_for(lambda: state_json(port)["frames"] == 15)
        assert wait_for(lambda: not d.sers)  # finished, written, closed
        s = state_json(port)
        assert s["session"] == "out/jup_1"
        assert wait_for(lambda: get(port, "/image/sharpened.png")[2]
                        == (out / "jup_1" / "sharpened.png").read_bytes())


def test_a_port_in_use_is_logged_and_stacking_carries_on(tmp_path, small_session, caplog):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        with DaemonThread(inp, out, _preview_settings(port)) as d:
            assert d.preview is None
            write_frames(inp, small_session.frames[:5])
            assert wait_for(lambda: len(csv_rows(out / "crops.csv")) >= 5)
    assert "cannot start the preview on 127.0.0.1" in caplog.text
    assert "stacking carries on without it" in caplog.text


def test_reload_starts_and_stops_the_preview(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    cfg = tmp_path / "c.toml"
    cfg.write_text("[preview]\nenabled = false\nport = 0\n")
    with DaemonThread(inp, out, load_settings(cfg), config_path=cfg) as d:
        assert d.preview is None
        cfg.write_text("[preview]\nenabled = true\nport = 0\n")
        d.request_reload()
        assert wait_for(lambda: d.preview is not None)
        port = d.preview.port
        assert state_json(port)["frames"] == 0
        cfg.write_text("[preview]\nenabled = false\nport = 0\n")
        d.request_reload()
        assert wait_for(lambda: d.preview is None)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
