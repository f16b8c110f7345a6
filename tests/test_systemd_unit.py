"""The shipped systemd unit (systemd/rgbd-edge.service): its sandbox, checked by systemd's own tools.

* ``systemd-analyze security --offline=yes`` rates the unit at most 2.0, and every exposure it still
  counts is explained in systemd/INSTALL.md (the table "What each remaining exposure is for").
* The camera (RealSense: libusb usb_device nodes, V4L2), the GPIO chips and the Jetson GPU stay in
  ``DeviceAllow=``; the GPU debugger/profiler nodes and the IMU-only hidraw/iio classes do not.
* The real daemon (``python -m edge.cli run``: ONNX Runtime, OpenCV, the SQLite outbox, paho-mqtt
  against a real mosquitto, JSONL, sd_notify) runs under the unit's own system call filter, built
  from its ``SystemCallFilter=`` lines with the groups ``systemd-analyze syscall-filter`` defines
  and applied with libseccomp, as systemd applies it. CUDA, TensorRT and librealsense are not on
  this machine; INSTALL.md says how to check them on the device.

``systemd-analyze verify`` of the unit is in tests/test_daemon.py (with the daemon contract).
scripts/setup installs systemd (systemd-analyze) and libseccomp comes with it.
"""
from __future__ import annotations

import ctypes.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge.data import SyntheticConfig, make_synthetic_dataset
from mqtt_broker import mqtt_broker  # noqa: F401  (fixture: a real mosquitto)
from test_daemon import make_bundle, read_results, write_config
from test_sinks_mqtt import Subscriber, mqtt_cfg

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "rgbd-edge.service"
INSTALL = REPO / "systemd" / "INSTALL.md"
EXEC = "/opt/rgbd-edge/venv/bin/rgbd-edge"
MAX_EXPOSURE = 2.0
EXPOSURE_TABLE = "What each remaining exposure is for"

CAMERA = ("char-usb_device rw", "char-video4linux rw")
GPIO = ("/dev/gpiochip0 rw", "/dev/gpiochip1 rw", "/dev/gpiochip2 rw")
GPU = ("/dev/nvmap rw", "/dev/nvgpu/igpu0/ctrl rw", "/dev/nvgpu/igpu0/as rw", "/dev/nvgpu/igpu0/channel rw",
       "/dev/nvgpu/igpu0/tsg rw", "/dev/nvhost-ctrl-gpu rw", "/dev/nvhost-as-gpu rw", "/dev/nvhost-gpu rw",
       "/dev/nvhost-tsg-gpu rw", "/dev/host1x-fence rw", "char-nvidia* rw")
NOT_ALLOWED = ("/dev/nvgpu/igpu0/dbg", "/dev/nvgpu/igpu0/prof", "/dev/nvhost-dbg-gpu", "/dev/nvhost-prof-gpu",
               "char-hidraw", "char-iio")


def unit_directives(text: str) -> dict[str, list[str]]:
    """Directive -> its values in file order (comments and section headers skipped)."""
    found: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;[" or "=" not in line:
            continue
        key, value = line.split("=", 1)
        found.setdefault(key.strip(), []).append(value.strip())
    return found


def systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze is missing: scripts/setup installs the systemd package")
    return tool


@pytest.fixture(scope="module")
def unit_copy(tmp_path_factory) -> Path:
    """The unit as shipped, except that ExecStart names an executable that exists here."""
    text = UNIT.read_text()
    assert EXEC in text
    path = tmp_path_factory.mktemp("unit") / "rgbd-edge.service"
    path.write_text(text.replace(EXEC, "/bin/true"))
    return path


def security(tool: str, unit: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool, "security", "--offline=yes", "--no-pager", *extra, str(unit)],
                          capture_output=True, text=True, timeout=120)


# --------------------------------------------------------------------------- the security score


def test_security_exposure_is_at_most_2(unit_copy):
    tool = systemd_analyze()
    # --threshold is on systemd's 0..100 scale: exit status 1 above 20 = 2.0
    proc = security(tool, unit_copy, f"--threshold={int(MAX_EXPOSURE * 10)}")
    m = re.search(r"Overall exposure level for rgbd-edge\.service: (\d+\.\d)", proc.stdout)
    assert m, proc.stdout + proc.stderr
    assert float(m.group(1)) <= MAX_EXPOSURE, proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr


def documented_exposures() -> dict[str, tuple[str, str]]:
    """Setting (first column, in backticks) -> (exposure, what it is for) of INSTALL.md's exposure
    table. A ``|`` inside a cell is written ``\\|`` (Markdown tables)."""
    text = INSTALL.read_text()
    rows: dict[str, tuple[str, str]] = {}
    for line in text[text.index(EXPOSURE_TABLE):].splitlines()[1:]:
        if rows and not line.startswith("|"):
            break
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        if len(cells) == 3 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = (cells[1], cells[2])
    return rows


def test_every_remaining_exposure_is_documented(unit_copy):
    """The settings the report still counts against the unit are exactly the rows of the table in
    INSTALL.md, so a new exposure (or a fixed one) cannot go unexplained."""
    proc = security(systemd_analyze(), unit_copy, "--json=short")
    assert proc.returncode == 0, proc.stderr
    counted = {row["name"]: row["exposure"] for row in json.loads(proc.stdout)
               if not row["set"] and row["exposure"] not in (None, "0.0")}
    documented = documented_exposures()
    assert set(counted) == set(documented), (
        f"counted but not in the table: {sorted(set(counted) - set(documented))}; "
        f"in the table but not counted: {sorted(set(documented) - set(counted))}")
    assert {name: exposure for name, (exposure, _) in documented.items()} == counted
    assert all(len(why) > 20 for _, why in documented.values()), documented


# --------------------------------------------------------------------------- devices and limits


def test_camera_gpio_and_gpu_stay_reachable():
    u = unit_directives(UNIT.read_text())
    assert u["DevicePolicy"] == ["closed"] and "PrivateDevices" not in u
    allow = u["DeviceAllow"]
    for entry in CAMERA + GPIO + GPU:
        assert entry in allow, entry
    assert u["SupplementaryGroups"] == ["video realsense gpio"]  # GPU, camera (udev rule), GPIO


def test_debug_profiler_and_imu_nodes_are_not_allowed():
    allow = unit_directives(UNIT.read_text())["DeviceAllow"]
    for node in NOT_ALLOWED:
        assert not any(a.split()[0] == node for a in allow), node
    assert all("m" not in a.split()[1] for a in allow), "no mknod: the service has no CAP_MKNOD"


def _percent(value: str) -> float:
    assert value.endswith("%"), value
    return float(value[:-1])


def test_memory_tasks_syscalls_and_runtime_directory():
    u = unit_directives(UNIT.read_text())
    assert 0 < _percent(u["MemoryHigh"][0]) < _percent(u["MemoryMax"][0]) < 100
    assert 128 <= int(u["TasksMax"][0]) <= 4096
    assert u["SystemCallFilter"][0] == "@system-service" and "~@privileged" in u["SystemCallFilter"]
    assert u["SystemCallErrorNumber"] == ["EPERM"]
    assert u["RuntimeDirectory"] == ["rgbd-edge"]  # $RUNTIME_DIRECTORY: the single-instance lock
    assert u["CapabilityBoundingSet"] == [""] and u["NoNewPrivileges"] == ["yes"]
    assert "AF_NETLINK" in u["RestrictAddressFamilies"][0].split()  # libusb's hot-plug socket
    assert "SocketBindDeny" not in u  # paho-mqtt binds and listens on 127.0.0.1:0 for its socket pair


# --------------------------------------------------------------------------- the system call filter


def syscall_groups(tool: str) -> dict[str, list[str]]:
    """``@group -> members`` as this systemd defines them (members may be groups)."""
    out = subprocess.run([tool, "syscall-filter", "--no-pager"], capture_output=True, text=True, timeout=60).stdout
    groups: dict[str, list[str]] = {}
    current = None
    for line in out.splitlines():
        item = line.strip()
        if line.startswith("@"):
            current = groups.setdefault(item, [])
        elif not item:
            current = None
        elif current is not None and not item.startswith("#"):
            current.append(item)
    return groups


def expand(names, groups: dict[str, list[str]]) -> set[str]:
    out: set[str] = set()
    for name in names:
        out |= expand(groups[name], groups) if name.startswith("@") else {name}
    return out


def unit_syscall_allow_list(filters: list[str], groups: dict[str, list[str]]) -> set[str]:
    """systemd's rule: the first SystemCallFilter= line makes it an allow list, later lines add to
    it, and lines starting with ``~`` take names out."""
    assert filters and not filters[0].startswith("~"), "the unit is expected to use an allow list"
    allowed: set[str] = set()
    for line in filters:
        names = expand(line.lstrip("~").split(), groups)
        allowed = allowed - names if line.startswith("~") else allowed | names
    return allowed


# Runs in the child: load the allow list with libseccomp, then exec the daemon under it. Anything
# outside the list kills the process (SIGSYS), which is stricter than the unit's
# SystemCallErrorNumber=EPERM: a call the daemon would only see fail shows up here.
SECCOMP_EXEC = r"""
import ctypes, os, sys
allow_file, argv = sys.argv[1], sys.argv[2:]
lib = ctypes.CDLL("libseccomp.so.2")
lib.seccomp_init.restype = ctypes.c_void_p
lib.seccomp_init.argtypes = [ctypes.c_uint32]
lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
lib.seccomp_load.argtypes = [ctypes.c_void_p]
ctx = lib.seccomp_init(0x80000000)  # SCMP_ACT_KILL_PROCESS
for name in open(allow_file).read().split():
    nr = lib.seccomp_syscall_resolve_name(name.encode())
    if nr >= 0:  # negative: not a system call of this architecture
        assert lib.seccomp_rule_add(ctx, 0x7FFF0000, nr, 0) == 0, name  # SCMP_ACT_ALLOW
assert lib.seccomp_load(ctx) == 0, "seccomp_load failed"
os.execv(argv[0], argv)
"""


def test_allow_list_is_the_service_set_without_privileged_calls():
    groups = syscall_groups(systemd_analyze())
    allowed = unit_syscall_allow_list(unit_directives(UNIT.read_text())["SystemCallFilter"], groups)
    assert {"ioctl", "mmap", "mprotect", "sched_setaffinity", "socket", "sendmsg", "fdatasync"} <= allowed
    assert not allowed & {"setuid", "mount", "init_module", "reboot", "settimeofday", "ptrace", "bpf"}


def filtered_daemon_run(tmp_path: Path, config: Path, allowed: set[str]) -> subprocess.CompletedProcess:
    """`python -m edge.cli run` exec'd under the allow list, with a bare environment as systemd's."""
    allow_file = tmp_path / "allowed-syscalls.txt"
    allow_file.write_text("\n".join(sorted(allowed)) + "\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO),
           "NOTIFY_SOCKET": str(tmp_path / "notify.sock")}
    argv = [sys.executable, "-c", SECCOMP_EXEC, str(allow_file),
            sys.executable, "-m", "edge.cli", "run", "--config", str(config)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)


def received(sock: socket.socket) -> list[str]:
    sock.setblocking(False)
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


def test_daemon_runs_under_the_units_system_call_filter(tmp_path, mqtt_broker):  # noqa: F811
    """A folder replay through the real `rgbd-edge run` into JSONL and a real broker, with the
    unit's filter loaded: exit 0, READY/STOPPING notified, every result in order in both sinks."""
    if ctypes.util.find_library("seccomp") is None:
        pytest.fail("libseccomp is missing (it comes with the systemd package that scripts/setup installs)")
    allowed = unit_syscall_allow_list(unit_directives(UNIT.read_text())["SystemCallFilter"],
                                      syscall_groups(systemd_analyze()))
    if os.geteuid() == 0:
        # SQLite (the outbox, ONNX Runtime's own store in $HOME) gives a new journal file the owner
        # of its database when it runs as root; as the service user it never calls fchown.
        allowed.add("fchown")
    bundle = make_bundle(tmp_path / "bundle" / "tiny")
    data = make_synthetic_dataset(tmp_path / "data", SyntheticConfig(size=64, seed=5, n_train=1, n_validation=1,
                                                                     n_test_good=3, n_test_per_defect=1))
    cfg = write_config(tmp_path, bundle, data, log_level="INFO",
                       sinks={"jsonl": {"path": str(tmp_path / "results.jsonl")},
                              "mqtt": mqtt_cfg(tmp_path, mqtt_broker.port)})
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    sub = Subscriber(mqtt_broker.port)
    try:
        proc = filtered_daemon_run(tmp_path, cfg, allowed)
        assert proc.returncode == 0, (f"exit {proc.returncode} (-31: SIGSYS, a call outside the unit's set)\n"
                                      + proc.stderr[-4000:])
        jsonl = read_results(tmp_path / "results.jsonl")
        assert [r["seq"] for r in jsonl] == list(range(3 + 3 * 1))
        deadline = time.monotonic() + 30
        while len(sub.results()) < len(jsonl) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [(r["seq"], r["decision"]) for r in sub.results()] == [(r["seq"], r["decision"]) for r in jsonl]
        messages = received(notify)
        assert any(m.startswith("READY=1") for m in messages) and any(m.startswith("STOPPING=1") for m in messages)
    finally:
        sub.close()
        notify.close()
