"""Hostile YAML files stay cheap: the daemon config, bundle.yaml and dataset.yaml go through one
bounded loader (edge.checks.load_yaml), and every error it or a checker raises is short.

Each bomb is a real file fed to the real reader. The tests bound work by counts (nodes the
composer builds) and memory by tracemalloc's peak (or, for the files of nearly 1 MB, which
tracemalloc makes slow to parse, the growth of a child process's maximum RSS), never by time.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
import yaml

from edge.bundle import BUNDLE_FILE, BundleError, load_bundle
from edge.capture import load_source_config
from edge.checks import (
    MAX_YAML_BYTES,
    MAX_YAML_DEPTH,
    MAX_YAML_NODES,
    CheckError,
    UniqueKeyLoader,
    load_yaml,
)
from edge.config import ConfigError, load_config
from edge.data import DatasetError
from edge.data.folder import CONFIG_NAME, read_folder_config

REPO = Path(__file__).resolve().parents[1]
PEAK_BYTES = 50 * 1024 * 1024  # what one bounded load may allocate at its peak
MESSAGE_CHARS = 600            # an error message, file name included


def laughs(levels: int = 9) -> str:
    """Billion laughs: nine aliases of nine aliases ... (9**9 'lol's expanded) in ~500 bytes."""
    parts = ['&a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    parts += [f"&a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "[" + ", ".join(parts) + "]"


def merge_laughs(levels: int = 9) -> str:
    """The same with merge keys: each mapping merges nine copies of the previous one."""
    parts = ["&m0 {k0: lol, k1: lol, k2: lol}"]
    parts += [f"&m{i} {{<<: [" + ", ".join([f"*m{i - 1}"] * 9) + "]}" for i in range(1, levels)]
    return "[" + ", ".join(parts) + "]"


DEEP = "[" * 5000 + "]" * 5000                              # nesting bomb, flow style
DEEP_MAP = "{a: " * 5000 + "1" + "}" * 5000                  # nesting bomb of mappings
DEEP_BY_ALIASES = "[" + ", ".join(                            # each anchor 20 deep inside the previous
    [f"&d0 {'[' * 20}{']' * 20}"] + [f"&d{i} {'[' * 20}*d{i - 1}{']' * 20}" for i in range(1, 6)]) + "]"
TEXT_BOMB = "[&s '" + "x" * 110_000 + "'" + ", *s" * 9 + "]"  # ten 110 kB strings from one
RECURSIVE = "&r [1, *r]"
BASE_60 = "1" + ":59" * 1000                                  # base 60: quadratic in PyYAML
LONG_DIGITS = "7" * 5000                                      # int() refuses 4301+ digits

BOMBS = {
    "billion laughs": (laughs(), "alias bomb"),
    "merge-key laughs": (merge_laughs(), "alias bomb"),
    "nesting bomb": (DEEP, f"nested more than {MAX_YAML_DEPTH} levels"),
    "nested mappings": (DEEP_MAP, f"nested more than {MAX_YAML_DEPTH} levels"),
    "nesting through aliases": (DEEP_BY_ALIASES, f"nested more than {MAX_YAML_DEPTH} levels"),
    "text bomb": (TEXT_BOMB, "characters of text with aliases expanded"),
    "recursive alias": (RECURSIVE, "recursive structure"),
    "base-60 number": (BASE_60, "more than 100 characters"),
    "4301+ digits": (LONG_DIGITS, "more than 100 characters"),
}


class Measured:
    """Counts the nodes the loader composes and tracemalloc's peak while it runs."""

    def __init__(self, monkeypatch):
        self.nodes = 0
        compose = UniqueKeyLoader.compose_node

        def counting(loader, parent, index):
            self.nodes += 1
            return compose(loader, parent, index)

        monkeypatch.setattr(UniqueKeyLoader, "compose_node", counting)
        self.peak = 0

    def __enter__(self):
        tracemalloc.start()
        return self

    def __exit__(self, *exc):
        self.peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return False

    def assert_bounded(self) -> None:
        assert self.nodes <= MAX_YAML_NODES + MAX_YAML_DEPTH + 2
        assert self.peak < PEAK_BYTES, f"peak {self.peak / 1e6:.0f} MB"


def config_text(tmp_path: Path, bomb: str) -> str:
    (tmp_path / "replay").mkdir(exist_ok=True)
    return ("bundle: bundle\nsource: {type: folder, path: replay}\nsinks: {jsonl: {path: r.jsonl}}\n"
            f"device_id: {bomb}\n")


def folder_dataset(tmp_path: Path, text: str) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    (root / CONFIG_NAME).write_text(text)
    return root


def bundle_with(tmp_path: Path, text: str) -> Path:
    root = tmp_path / "bundle"
    root.mkdir()
    (root / BUNDLE_FILE).write_text(text)
    return root


def assert_clear(exc: BaseException, file: Path, *words: str) -> None:
    msg = str(exc)
    assert str(file) in msg and len(msg) < MESSAGE_CHARS, msg[:1000]
    for w in words:
        assert w in msg


# --------------------------------------------------------------------------- the shared loader


@pytest.mark.parametrize("name", list(BOMBS))
def test_every_bomb_is_refused_by_the_loader_with_bounded_work(tmp_path, monkeypatch, name):
    bomb, words = BOMBS[name]
    f = tmp_path / "bomb.yaml"
    f.write_text(f"value: {bomb}\n")
    assert f.stat().st_size < MAX_YAML_BYTES
    with Measured(monkeypatch) as m, pytest.raises(CheckError) as info:
        load_yaml(f)
    m.assert_bounded()
    assert_clear(info.value, f, "refused", words)
    assert "line 1" in str(info.value)


def test_a_file_over_the_cap_is_refused_before_it_is_parsed(tmp_path, monkeypatch):
    f = tmp_path / "big.yaml"
    f.write_text("value: '" + "x" * MAX_YAML_BYTES + "'\n")
    with Measured(monkeypatch) as m, pytest.raises(CheckError) as info:
        load_yaml(f)
    assert m.nodes == 0 and m.peak < 2 * MAX_YAML_BYTES + (1 << 20)
    assert_clear(info.value, f, f"larger than {MAX_YAML_BYTES} bytes")


def test_anchors_that_real_files_use_still_load(tmp_path):
    """yaml.safe_dump writes an anchor for a list two keys share (convert/bundle.py's bundle.yaml
    does, for kept_fp32_patterns), and people write `<<: *defaults` merges in configs."""
    shared = ["Conv_0", "Gemm_1"]
    f = tmp_path / "dumped.yaml"
    f.write_text(yaml.safe_dump({"a": {"kept": shared}, "b": {"kept": shared}}, sort_keys=False))
    assert "&id001" in f.read_text()
    assert load_yaml(f) == {"a": {"kept": shared}, "b": {"kept": shared}}
    f.write_text("base: &base {fps: 30, width: 640}\ncam: {<<: *base, fps: 15}\n")
    assert load_yaml(f)["cam"] == {"fps": 15, "width": 640}


def test_limits_leave_room_for_the_largest_real_files(tmp_path):
    """A document at the node limit, as deep as the depth limit, loads."""
    f = tmp_path / "wide.yaml"
    f.write_text("x: [" + ", ".join(["1"] * (MAX_YAML_NODES - 3)) + "]\n")
    assert len(load_yaml(f)["x"]) == MAX_YAML_NODES - 3
    f.write_text("x: " + "[" * (MAX_YAML_DEPTH - 1) + "]" * (MAX_YAML_DEPTH - 1) + "\n")
    value, depth = load_yaml(f)["x"], 1
    while value:
        value, depth = value[0], depth + 1
    assert depth == MAX_YAML_DEPTH - 1


# --------------------------------------------------------------------------- every reader


READERS = {
    "config": (lambda tmp, bomb: (tmp / "edge.yaml", config_text(tmp, bomb)), load_config, ConfigError),
    "bundle": (lambda tmp, bomb: (bundle_with(tmp, f"schema_version: {bomb}\n") / BUNDLE_FILE, None),
               lambda f: load_bundle(f.parent), BundleError),
    "dataset": (lambda tmp, bomb: (folder_dataset(tmp, f"format: {bomb}\n") / CONFIG_NAME, None),
                lambda f: read_folder_config(f.parent), DatasetError),
    "capture": (lambda tmp, bomb: (tmp / "capture.yaml", f"source: {{type: folder, path: replay, fps: {bomb}}}\n"),
                lambda f: load_source_config(config=str(f)), ValueError),
}


def write_for(reader: str, tmp_path: Path, bomb: str) -> Path:
    make, _, _ = READERS[reader]
    tmp_path.mkdir(parents=True, exist_ok=True)
    f, text = make(tmp_path, bomb)
    if text is not None:
        f.write_text(text)
    return f


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize("bomb", ["billion laughs", "nesting bomb", "text bomb"])
def test_each_reader_refuses_bombs_with_bounded_work(tmp_path, monkeypatch, reader, bomb):
    f = write_for(reader, tmp_path, BOMBS[bomb][0])
    _, load, error = READERS[reader]
    with Measured(monkeypatch) as m, pytest.raises(error) as info:
        load(f)
    m.assert_bounded()
    assert_clear(info.value, f, "refused", BOMBS[bomb][1])


# Runs each reader on the files named in argv[1] in one fresh process and reports how much its
# maximum RSS grew over all of them (imports done first), with each error message.
CHILD = r"""
import json, resource, sys
from pathlib import Path
from edge.bundle import load_bundle
from edge.capture import load_source_config
from edge.checks import load_yaml
from edge.config import load_config
from edge.data.folder import read_folder_config

READ = {"loader": load_yaml, "config": load_config, "bundle": lambda f: load_bundle(f.parent),
        "dataset": lambda f: read_folder_config(f.parent), "capture": lambda f: load_source_config(config=str(f))}
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
errors = []
for reader, file in json.loads(sys.argv[1]):
    try:
        READ[reader](Path(file))
        errors.append(None)
    except ValueError as exc:
        errors.append(str(exc))
grew_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"grew_bytes": grew_kib * 1024, "errors": errors}))
"""


def run_readers(jobs: list[tuple[str, Path]]) -> tuple[int, list[str | None]]:
    run = subprocess.run([sys.executable, "-c", CHILD, json.dumps([(r, str(f)) for r, f in jobs])], cwd=REPO,
                         capture_output=True, text=True, timeout=300, check=True)
    out = json.loads(run.stdout)
    return out["grew_bytes"], out["errors"]


def test_files_of_nearly_1_mb_stay_small_in_a_real_process(tmp_path):
    """A huge string just under the cap, given to every reader where it is a wrong value: each
    error shows ~60 characters of it. A base-60 number of 870 kB (PyYAML's int resolver alone
    would take 40 MB for it) and a file over the cap, for every reader. One process, all of it
    within PEAK_BYTES of extra memory."""
    huge = "'" + "x" * (MAX_YAML_BYTES - 200) + "'"
    over = "'" + "x" * MAX_YAML_BYTES + "'"
    jobs: list[tuple[str, Path]] = []
    for i, reader in enumerate(READERS):
        f = write_for(reader, tmp_path / f"huge{i}", huge)
        if reader == "config":  # device_id may be any string: put the long one where it is wrong
            f.write_text(f.read_text().replace("device_id:", "log_level:"))
        assert MAX_YAML_BYTES - 300 < f.stat().st_size < MAX_YAML_BYTES
        jobs.append((reader, f))
    for i, reader in enumerate(READERS):
        jobs.append((reader, write_for(reader, tmp_path / f"over{i}", over)))
    number = tmp_path / "number.yaml"
    number.write_text("value: 1" + ":59" * 290_000 + "\n")
    jobs.append(("loader", number))

    grew, errors = run_readers(jobs)

    assert grew < PEAK_BYTES, f"max RSS grew {grew / 1e6:.0f} MB"
    n = len(READERS)
    for (reader, f), msg in zip(jobs[:n], errors[:n]):
        assert msg is not None and len(msg) < MESSAGE_CHARS, (reader, (msg or "")[:1000])
        assert "xxxxxxxxxx..." in msg.lower()
        assert str(f) in msg or reader == "capture"  # rgbd-edge capture names the key only
    for (reader, f), msg in zip(jobs[n:2 * n], errors[n:2 * n]):
        assert msg is not None and f"larger than {MAX_YAML_BYTES} bytes" in msg and len(msg) < MESSAGE_CHARS
    assert "refused" in errors[-1] and "more than 100 characters" in errors[-1]


def test_the_daemon_exits_2_on_a_bomb_in_its_config(tmp_path):
    """The real command: before the loader's budget this took 40 s and 6 GB, then exit 2."""
    f = tmp_path / "edge.yaml"
    f.write_text(config_text(tmp_path, laughs()))
    run = subprocess.run([sys.executable, "-m", "edge.cli", "run", "--config", str(f)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert "refused" in run.stderr and "alias bomb" in run.stderr and "exit 2 (configuration error)" in run.stderr
    assert len(run.stderr) < 2000


def test_too_many_values_without_aliases_is_not_called_a_bomb(tmp_path):
    f = tmp_path / "wide.yaml"
    f.write_text("x: [" + ", ".join(["1"] * MAX_YAML_NODES) + "]\n")
    with pytest.raises(CheckError) as info:
        load_yaml(f)
    assert f"refused: more than {MAX_YAML_NODES} values" in str(info.value) and "alias" not in str(info.value)
