"""edge.notify: sd_notify over a real AF_UNIX datagram socket (path and abstract), no systemd needed."""
from __future__ import annotations

import os
import socket
import sys

import pytest

from edge.notify import Notifier

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs AF_UNIX sockets")


@pytest.fixture
def listener(tmp_path):
    """A bound datagram socket standing in for systemd's notification socket."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2.0)
    yield str(path), sock
    sock.close()


def recv(sock) -> str:
    return sock.recv(4096).decode()


def test_messages_arrive_as_datagrams(listener):
    path, sock = listener
    n = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready("loaded") is True
    assert recv(sock) == "READY=1\nSTATUS=loaded"
    assert n.status("inspected=3 pass=3") is True
    assert recv(sock) == "STATUS=inspected=3 pass=3"
    assert n.watchdog() is True
    assert recv(sock) == "WATCHDOG=1"
    assert n.stopping() is True
    assert recv(sock) == "STOPPING=1"
    assert n.sent == 4 and n.errors == 0
    n.close()


def test_status_is_one_line(listener):
    path, sock = listener
    n = Notifier(path)
    n.status("two\nlines")
    assert recv(sock) == "STATUS=two lines"  # a newline would start a new assignment


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract sockets are Linux-only")
def test_abstract_socket():
    name = f"rgbd-edge-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2.0)
    try:
        n = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert n.ready() is True
        assert recv(sock) == "READY=1"
    finally:
        sock.close()


def test_no_op_outside_systemd():
    n = Notifier.from_env({})
    assert not n.enabled
    assert n.ready() is False and n.watchdog() is False and n.stopping() is False
    assert n.watchdog_interval() is None
    assert n.sent == 0 and n.errors == 0


def test_send_failure_is_counted_not_raised(tmp_path):
    n = Notifier(str(tmp_path / "nobody-listens.sock"))
    assert n.ready() is False
    assert n.watchdog() is False
    assert n.errors == 2


def test_watchdog_interval_is_half_of_watchdog_usec():
    n = Notifier.from_env({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000"})
    assert n.watchdog_interval() == pytest.approx(15.0)
    assert Notifier.from_env({"WATCHDOG_USEC": "0"}).watchdog_interval() is None
    assert Notifier.from_env({"WATCHDOG_USEC": "soon"}).watchdog_interval() is None


def test_watchdog_pid_must_be_this_process():
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "4000000"}
    assert Notifier.from_env({**env, "WATCHDOG_PID": str(os.getpid())}).watchdog_interval() == pytest.approx(2.0)
    assert Notifier.from_env({**env, "WATCHDOG_PID": "1"}, pid=1234).watchdog_interval() is None
    assert Notifier.from_env({**env, "WATCHDOG_PID": "1234"}, pid=1234).watchdog_interval() == pytest.approx(2.0)


def test_from_env_reads_os_environ(listener, monkeypatch):
    path, sock = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    n = Notifier.from_env()
    assert n.watchdog_interval() == pytest.approx(5.0)
    n.watchdog()
    assert recv(sock) == "WATCHDOG=1"
