"""sd_notify against real AF_UNIX datagram sockets (nothing mocked)."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from luckystack.daemon.notify import SystemdNotifier


def _bind(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    sock.bind(address)
    sock.settimeout(2.0)
    return sock


@pytest.fixture(params=["path", "abstract"])
def listener(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[socket.socket]:
    """A bound datagram socket with NOTIFY_SOCKET pointing at it."""
    if request.param == "path":
        address = str(tmp_path / "notify.sock")
        env_value = address
    else:
        name = f"luckystack-test-{uuid.uuid4().hex}"
        address = "\0" + name
        env_value = "@" + name
    sock = _bind(address)
    monkeypatch.setenv("NOTIFY_SOCKET", env_value)
    with sock:
        yield sock


@pytest.fixture
def notifier(listener: socket.socket) -> SystemdNotifier:
    return SystemdNotifier()


def test_pops_notify_socket(listener: socket.socket) -> None:
    notifier = SystemdNotifier()
    assert "NOTIFY_SOCKET" not in os.environ
    assert notifier.enabled
    # A second notifier built from the (now cleaned) environment is inert.
    assert not SystemdNotifier().enabled


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda n: n.ready(), b"READY=1"),
        (lambda n: n.ready("watching /in"), b"READY=1\nSTATUS=watching /in"),
        (lambda n: n.status("stacked 12/80"), b"STATUS=stacked 12/80"),
        (lambda n: n.status("two\nlines"), b"STATUS=two lines"),
        (lambda n: n.stopping(), b"STOPPING=1"),
        (lambda n: n.watchdog_ping(), b"WATCHDOG=1"),
        (lambda n: n.notify("EXTEND_TIMEOUT_USEC=5000000"), b"EXTEND_TIMEOUT_USEC=5000000"),
        (lambda n: n.notify(status="x", errno=2), b"STATUS=x\nERRNO=2"),
    ],
)
def test_exact_bytes(notifier: SystemdNotifier, listener: socket.socket, call, expected) -> None:
    assert call(notifier) is True
    assert listener.recv(4096) == expected


def test_reloading_sends_monotonic_usec(
    notifier: SystemdNotifier, listener: socket.socket
) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading() is True
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = listener.recv(4096).split(b"\n")
    assert first == b"RELOADING=1"
    key, _, value = second.partition(b"=")
    assert key == b"MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_newline_in_field_is_rejected(notifier: SystemdNotifier) -> None:
    with pytest.raises(ValueError, match="STATUS"):
        notifier.notify(status="a\nREADY=1")


def test_noop_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    notifier = SystemdNotifier()
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.status("x") is False
    assert notifier.stopping() is False
    assert notifier.reloading() is False
    assert notifier.watchdog_ping() is False
    assert notifier.notify(status="x") is False
    assert notifier.watchdog_period() is None


def test_watchdog_period(notifier: SystemdNotifier, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert notifier.watchdog_period() is None

    monkeypatch.setenv("WATCHDOG_USEC", "60000000")
    assert notifier.watchdog_period() == 60.0  # no WATCHDOG_PID: applies to us

    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert notifier.watchdog_period() == 60.0

    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert notifier.watchdog_period() is None  # meant for another process

    monkeypatch.setenv("WATCHDOG_PID", "not-a-pid")
    assert notifier.watchdog_period() is None

    monkeypatch.delenv("WATCHDOG_PID")
    for bad in ("abc", "0", "-5"):
        monkeypatch.setenv("WATCHDOG_USEC", bad)
        assert notifier.watchdog_period() is None


def test_vanished_socket_returns_false(tmp_path: Path) -> None:
    address = str(tmp_path / "gone.sock")
    sock = _bind(address)
    notifier = SystemdNotifier(address)
    assert notifier.ready() is True
    assert sock.recv(4096) == b"READY=1"

    sock.close()  # path still exists, nobody is listening: ECONNREFUSED
    assert notifier.watchdog_ping() is False
    os.unlink(address)  # path gone too: ENOENT
    assert notifier.watchdog_ping() is False
    assert notifier.stopping() is False


def test_explicit_address_leaves_environment_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    notifier = SystemdNotifier(str(tmp_path / "x.sock"))
    assert os.environ["NOTIFY_SOCKET"] == "/run/systemd/notify"
    assert "x.sock" in repr(notifier)
