"""``sinks.mqtt``: the typed configuration, its checks (every number bounded, the bound named in
the error) and the credential files.

Credentials (docs/results.md, "Credentials"):

* the password is read from ``password_file``, never from the configuration. The file must be a
  regular file, accessible by its owner only (``mode & 0o077 == 0``, e.g. 0600 or 0400), owned by
  the service user or root (anyone else who owns it could change its mode or content), at most
  ``PASSWORD_MAX_BYTES`` and one line. One exception to the mode: a POSIX ACL whose only extra
  entry grants the service user itself read access (the group bits then show the ACL mask). That
  is how systemd's ``LoadCredential=`` hands a root-owned credential to the service user.
  Anything else is a configuration error naming the key, the path and the mode;
* no error ever shows what a file holds, nor a file-name value that looks like a password typed
  into the key by mistake (:func:`shown_path`): the error names the key and the existing
  directory instead;
* a username over plain TCP to a host other than the loopback is allowed but reported
  (:func:`credentials_in_clear`): the MQTT sink logs a WARNING at start, emits an event and keeps
  a health problem.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checks import Checker, Section, join
from .outbox import DEFAULT_MAX_BYTES

__all__ = ["MqttConfig", "TlsConfig", "parse_mqtt_config", "credentials_in_clear", "shown_path",
           "PASSWORD_MAX_BYTES", "MQTT_KEYS", "OUTBOX_KEYS", "TLS_KEYS"]

DEFAULT_PORT = 1883
DEFAULT_TLS_PORT = 8883
TOPIC_ROOT = "rgbd-edge"
MQTT_KEYS = ("enabled", "host", "port", "client_id", "topic_prefix", "qos", "keepalive", "tls", "username",
             "password_file", "heatmaps", "outbox", "inflight", "reconnect_min_s", "reconnect_max_s")
TLS_KEYS = ("ca_file", "cert_file", "key_file", "insecure")
OUTBOX_KEYS = ("path", "max_messages", "max_bytes", "synchronous", "memory_max_messages", "memory_max_bytes")
PASSWORD_MAX_BYTES = 4096
MIB = 1 << 20
# Upper bounds: far above any sane value, low enough that nothing overflows or allocates absurdly.
MAX_OUTBOX_MESSAGES = 10_000_000
MAX_OUTBOX_BYTES = 64 << 30
MAX_MEMORY_MESSAGES = 100_000
MAX_MEMORY_BYTES = 1 << 30
MAX_STR = {"host": 253, "client_id": 256, "topic_prefix": 1024, "username": 1024, "path": 4096}


@dataclass(frozen=True)
class TlsConfig:
    ca_file: str | None = None    # None: the system CA store
    cert_file: str | None = None  # client certificate (mutual TLS)
    key_file: str | None = None
    insecure: bool = False        # skip the host name check (the chain is still verified)


@dataclass(frozen=True)
class MqttConfig:
    host: str
    port: int = DEFAULT_PORT
    client_id: str = ""
    topic_prefix: str = ""
    qos: int = 1
    keepalive: int = 30
    tls: TlsConfig | None = None
    username: str | None = None
    password_file: str | None = None
    password: str | None = field(default=None, repr=False)  # read from password_file, never from the config
    heatmaps: bool = True
    outbox_path: str = "outbox.sqlite"
    outbox_max_messages: int = 10000
    outbox_max_bytes: int = DEFAULT_MAX_BYTES
    outbox_synchronous: str = "normal"
    memory_max_messages: int = 1000    # last resort while the outbox cannot be written
    memory_max_bytes: int = 16 * MIB
    inflight: int = 20
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0

    @property
    def result_topic(self) -> str:
        return f"{self.topic_prefix}/result"

    @property
    def status_topic(self) -> str:
        return f"{self.topic_prefix}/status"

    def heatmap_topic(self, seq: int) -> str:
        return f"{self.topic_prefix}/heatmap/{seq}"


# --------------------------------------------------------------------------- paths and secrets


def _looks_like_secret(part: str) -> bool:
    """A path component that reads more like a password than a file name: no extension, and upper
    case, symbols or spaces, letters mixed with digits, or 20 characters or more."""
    if "." in part.strip("."):
        return False  # mqtt.pw, password.txt
    odd = any(not (c.islower() or c.isdigit() or c in "-_") for c in part)
    mixed = any(c.isdigit() for c in part) and any(c.isalpha() for c in part)
    return odd or mixed or len(part) >= 20


def shown_path(p: Path) -> str:
    """The path as an error may show it. The part that does not exist is shown only when it reads
    like file names: ``hunter2`` in ``password_file`` (resolved to ``/etc/rgbd-edge/hunter2``)
    is more likely a password typed into the key than a file name, so it is left out."""
    existing, missing = p, []
    while not existing.exists() and existing != existing.parent:
        missing.append(existing.name)
        existing = existing.parent
    if any(_looks_like_secret(m) for m in missing if m):
        n = len(os.sep.join(reversed(missing)))
        return f"{existing}{os.sep}<{n} characters not shown: they look like a password, not a file name>"
    return str(p)


def _path_value(s: Section, name: str) -> Path:
    v = s.d.get(name)
    if not isinstance(v, str) or not v.strip():  # never echo it: it may be a password typed in here
        raise s.fail(name, "must be the path of a file (a non-empty string; the value is not shown)")
    if len(v) > MAX_STR["path"]:
        raise s.fail(name, f"longer than {MAX_STR['path']} characters (the value is not shown)")
    return Path(os.path.expanduser(v))


def _check_file(s: Section, name: str) -> str:
    p = _path_value(s, name)
    if not p.is_file():
        if p.exists():
            raise s.fail(name, f"not a regular file: {p}")
        raise s.fail(name, f"file not found: {shown_path(p)}")
    if not os.access(p, os.R_OK):
        raise s.fail(name, f"file not readable: {p}")
    return str(p)


def _open_private(s: Section, name: str, p: Path) -> int:
    try:  # O_NONBLOCK: a FIFO cannot hang the start-up
        return os.open(p, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise s.fail(name, f"file not found: {shown_path(p)}") from None
    except PermissionError:
        raise s.fail(name, f"file not readable: {p} (permission denied for uid {os.geteuid()})") from None
    except OSError as exc:
        raise s.fail(name, f"cannot open {p}: [Errno {exc.errno}] {exc.strerror}") from None


_ACL_USER, _ACL_GROUP_OBJ, _ACL_GROUP, _ACL_OTHER = 0x02, 0x04, 0x08, 0x20


def _acl_grants_only(fd: int, uid: int) -> bool:
    """Does the file's POSIX ACL give access to nobody but its owner and ``uid``? (False without an
    ACL.) The ``system.posix_acl_access`` value: a version word, then (tag, perm, id) entries."""
    try:
        raw = os.getxattr(fd, "system.posix_acl_access")
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return False
        raise
    if len(raw) < 4 or (len(raw) - 4) % 8:
        return False
    for tag, perm, who in struct.iter_unpack("<HHI", raw[4:]):
        if perm and (tag in (_ACL_GROUP_OBJ, _ACL_GROUP, _ACL_OTHER) or (tag == _ACL_USER and who != uid)):
            return False
    return True


def _check_private(s: Section, name: str, p: Path, st: os.stat_result, fd: int) -> None:
    """A regular file only its owner (and this user) can use, owned by this user or root, small."""
    if not stat.S_ISREG(st.st_mode):
        raise s.fail(name, f"not a regular file: {p}")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077 and not (mode & 0o007 == 0 and _acl_grants_only(fd, os.geteuid())):
        raise s.fail(name, f"{p} is accessible by group or others (mode {mode:04o}): refused, a password must be "
                           f"readable by the service user only (chmod 600, owned by that user; or systemd "
                           f"LoadCredential=)")
    if st.st_uid not in (os.geteuid(), 0):
        raise s.fail(name, f"{p} is owned by uid {st.st_uid}, neither this user (uid {os.geteuid()}) nor root: "
                           f"refused, its owner could change the password or its mode")
    if st.st_size > PASSWORD_MAX_BYTES:
        raise s.fail(name, f"{p} is {st.st_size} bytes: not a password file (at most {PASSWORD_MAX_BYTES}; "
                           f"content not shown)")


def read_password_file(s: Section, name: str = "password_file") -> tuple[str, str]:
    """(path, password) after the checks in the module docstring. Errors name the key and the
    path, never the content."""
    p = _path_value(s, name)
    fd = _open_private(s, name, p)
    try:
        _check_private(s, name, p, os.fstat(fd), fd)  # the opened file, not a second lookup of the name
        data = os.read(fd, PASSWORD_MAX_BYTES + 1)
    except OSError as exc:
        raise s.fail(name, f"cannot read {p}: [Errno {exc.errno}] {exc.strerror}") from None
    finally:
        os.close(fd)
    try:
        text = data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise s.fail(name, f"{p} is not UTF-8 text (content not shown)") from None
    if not text:
        raise s.fail(name, f"{p} is empty")
    if "\n" in text or "\r" in text:
        raise s.fail(name, f"{p} has more than one line: the file must hold the password alone, on one line "
                           f"(content not shown)")
    return str(p), text


def credentials_in_clear(cfg: MqttConfig) -> bool:
    """A username (and password) sent over plain TCP to a host off this machine."""
    if cfg.username is None or cfg.tls is not None:
        return False
    if cfg.host.lower() in ("localhost", "localhost.localdomain"):
        return False
    try:
        return not ipaddress.ip_address(cfg.host.strip("[]")).is_loopback
    except ValueError:
        return True  # a host name: assume the network


# --------------------------------------------------------------------------- parsing


def _bounded_str(s: Section, name: str, default: str | None = None, required: bool = False) -> str | None:
    v = s.str(name, default, required=required)
    if v is not None and len(v) > MAX_STR[name]:
        raise s.fail(name, f"longer than {MAX_STR[name]} characters ({len(v)})")
    return v


def _check_topic(s: Section, name: str, default: str) -> str:
    prefix = _bounded_str(s, name, default)
    if any(c in prefix for c in "+#\0") or prefix.startswith("/") or prefix.endswith("/") or "//" in prefix:
        raise s.fail(name, f"not a valid topic prefix (no wildcards + #, no leading/trailing or double '/'): "
                           f"{prefix!r}")
    return prefix


def _read_password(s: Section, username: str | None) -> tuple[str | None, str | None]:
    """(password_file, password) from ``password_file``; (None, None) without one."""
    if "password_file" not in s.d or s.d["password_file"] is None:
        return None, None
    if username is None:
        raise s.fail("password_file", "given without username")
    return read_password_file(s, "password_file")


def _tls(s: Section, key: str) -> TlsConfig | None:
    if s.d.get("tls") in (None, False):
        return None
    t = Section({} if s.d["tls"] is True else s.d["tls"], f"{key}.tls", TLS_KEYS)
    files = {k: _check_file(t, k) if k in t.d and t.d[k] is not None else None
             for k in ("ca_file", "cert_file", "key_file")}
    if files["key_file"] and not files["cert_file"]:
        raise t.fail("key_file", "given without cert_file")
    return TlsConfig(insecure=t.bool("insecure", False), **files)


def _outbox(s: Section, key: str) -> dict[str, Any]:
    outbox = s.d.get("outbox")
    o = Section({"path": outbox} if isinstance(outbox, str) else outbox, f"{key}.outbox", OUTBOX_KEYS)
    return dict(
        outbox_path=_bounded_str(o, "path", "outbox.sqlite"),
        outbox_max_messages=o.int("max_messages", 1, MAX_OUTBOX_MESSAGES, default=10000),
        outbox_max_bytes=o.int("max_bytes", MIB, MAX_OUTBOX_BYTES, default=DEFAULT_MAX_BYTES),
        outbox_synchronous=o.choice("synchronous", ("normal", "full"), "normal"),
        memory_max_messages=o.int("memory_max_messages", 10, MAX_MEMORY_MESSAGES, default=1000),
        memory_max_bytes=o.int("memory_max_bytes", MIB, MAX_MEMORY_BYTES, default=16 * MIB),
    )


def parse_mqtt_config(d: Any, device_id: str, key: str = "sinks.mqtt") -> MqttConfig:
    """Check ``sinks.mqtt`` and read the password file. A CheckError (a ValueError) names the key (and file)."""
    if isinstance(d, dict) and "password" in d:
        raise Checker().fail(join(key, "password"), "unknown key: the password is never read from the configuration; "
                                                    "put it in a file readable only by the service and name it "
                                                    "in password_file")
    s = Section(d, key, MQTT_KEYS)
    host = _bounded_str(s, "host", required=True)
    tls = _tls(s, key)
    port = s.int("port", 1, 65535, default=DEFAULT_TLS_PORT if tls else DEFAULT_PORT)
    username = _bounded_str(s, "username")
    password_file, password = _read_password(s, username)
    rmin = s.number("reconnect_min_s", 0.0, 3600.0, default=1.0, lo_open=True)
    rmax = s.number("reconnect_max_s", 0.0, 3600.0, default=60.0, lo_open=True)
    if rmax < rmin:
        raise s.fail("reconnect_max_s", f"must be >= reconnect_min_s ({rmin:g}), got {rmax:g}")
    return MqttConfig(
        host=host, port=port,
        client_id=_bounded_str(s, "client_id", device_id),
        topic_prefix=_check_topic(s, "topic_prefix", f"{TOPIC_ROOT}/{device_id}"),
        qos=s.choice("qos", (0, 1, 2), 1),
        keepalive=s.int("keepalive", 5, 3600, default=30),
        tls=tls, username=username, password_file=password_file, password=password,
        heatmaps=s.bool("heatmaps", True),
        inflight=s.int("inflight", 1, 1000, default=20),
        reconnect_min_s=rmin, reconnect_max_s=rmax,
        **_outbox(s, key),
    )
