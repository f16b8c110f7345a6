"""A real mosquitto broker for tests: generated config in tmp_path, free loopback ports, started
with ``mosquitto -c <conf> -v``, stopped (SIGTERM, then SIGKILL) at teardown.

Listeners (all on 127.0.0.1):
* ``port``       anonymous, plain TCP;
* ``auth_port``  username/password (``mosquitto_passwd -b -c``), when ``users`` is given;
* ``tls_port``   TLS with a CA, a server certificate (SAN 127.0.0.1, localhost) and required client
  certificates, all made by the ``openssl`` CLI (:func:`make_tls_material`), when ``tls`` is given.

Persistence is on (in the work directory), so ``restart()`` keeps retained messages and the
sessions of ``clean_session=False`` subscribers, like a production broker.

Fixtures: ``mqtt_broker`` (plain, one per test), ``tls_material`` (once per module).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class TlsMaterial:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that did not sign the server certificate


def _openssl(*args: str, cwd: Path) -> None:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {r.stderr}")


def make_tls_material(d: Path) -> TlsMaterial:
    """CA, server and client certificates (EC P-256, valid 2 days) made with the openssl CLI."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed")
    d.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.crt", "-days", "2",
                 "-subj", f"/CN=rgbd-edge test {ca}", cwd=d)
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name in ("server", "client"):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=rgbd-edge-{name}",
                 cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=d)
    return TlsMaterial(ca=d / "ca.crt", server_cert=d / "server.crt", server_key=d / "server.key",
                       client_cert=d / "client.crt", client_key=d / "client.key", other_ca=d / "other-ca.crt")


class Broker:
    def __init__(self, workdir: Path, users: dict[str, str] | None = None, tls: TlsMaterial | None = None):
        if MOSQUITTO is None:
            pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = free_port()
        self.auth_port = free_port() if users else None
        self.tls_port = free_port() if tls else None
        self.conf = self.dir / "mosquitto.conf"
        self.log_path = self.dir / "mosquitto.log"
        self.proc: subprocess.Popen | None = None
        lines = ["per_listener_settings true", "persistence true", f"persistence_location {self.dir}/",
                 "autosave_interval 1", "log_type all", "connection_messages true"]
        if os.geteuid() == 0:  # mosquitto drops root privileges to 'mosquitto' unless told otherwise
            lines.append("user root")
        lines += [f"listener {self.port} {self.host}", "allow_anonymous true"]
        if users:
            pw = self.dir / "passwd"
            for i, (u, p) in enumerate(users.items()):
                args = ["mosquitto_passwd", "-b"] + (["-c"] if i == 0 else []) + [str(pw), u, p]
                subprocess.run(args, check=True, capture_output=True, timeout=30)
            lines += [f"listener {self.auth_port} {self.host}", "allow_anonymous false", f"password_file {pw}"]
        if tls:
            lines += [f"listener {self.tls_port} {self.host}", "allow_anonymous true", f"cafile {tls.ca}",
                      f"certfile {tls.server_cert}", f"keyfile {tls.server_key}", "require_certificate true"]
        self.conf.write_text("\n".join(lines) + "\n")

    @property
    def ports(self) -> list[int]:
        return [p for p in (self.port, self.auth_port, self.tls_port) if p]

    def start(self, timeout_s: float = 10.0) -> "Broker":
        assert self.proc is None or self.proc.poll() is not None, "already running"
        logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf), "-v"], stdout=logf, stderr=subprocess.STDOUT,
                                     cwd=self.dir)
        logf.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}:\n{self.log()}")
            if all(port_open(p) for p in self.ports):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not open {self.ports} within {timeout_s} s:\n{self.log()}")

    def stop(self) -> None:
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)  # saves the persistence file
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)

    def restart(self) -> "Broker":
        self.stop()
        return self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


@pytest.fixture
def mqtt_broker(tmp_path):
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def tls_material(tmp_path_factory):
    return make_tls_material(tmp_path_factory.mktemp("tls"))
