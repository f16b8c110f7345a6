"""Shared by the benchmark scripts: where the data is, the reproducing command, the machine
description and RESULTS.md sections.

Paths a benchmark writes into RESULTS.md go through `rel`, so the text names paths relative to
the repository (the commands run from its root), not the machine it ran on.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
REPO = Path(__file__).resolve().parents[1]
DATA_ENV = "RGBD_EDGE_DATA"


def data_root() -> Path:
    """The folder holding mvtec3d/ and realsense/: $RGBD_EDGE_DATA, else <repo>/../shared/data."""
    env = os.environ.get(DATA_ENV)
    return Path(env) if env else REPO.parent / "shared" / "data"


CABLE_GLAND = data_root() / "mvtec3d" / "cable_gland"


def missing_data(path) -> bool:
    """True (after saying so on stderr) when the real cable_gland folder is not at `path`."""
    if Path(path).is_dir():
        return False
    print(f"{path} not found: this benchmark needs the real MVTec 3D-AD cable_gland "
          f"(--data DIR, or ${DATA_ENV} naming the folder that holds mvtec3d/)", file=sys.stderr)
    return True


def module(script: str) -> str:
    """`benchmarks.NAME` of a benchmark script, given its __file__."""
    return f"benchmarks.{Path(script).stem}"


def parser(script: str, doc: str | None) -> argparse.ArgumentParser:
    """The argument parser of a benchmark: its usage names `python -m benchmarks.NAME`, and its
    docstring (with the usage lines in it) is printed as written."""
    return argparse.ArgumentParser(prog=f"python -m {module(script)}", description=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def add_data_option(ap: argparse.ArgumentParser) -> None:
    """--data: the cable_gland folder, by default under `data_root()`."""
    ap.add_argument("--data", default=str(CABLE_GLAND),
                    help=f"MVTec 3D-AD cable_gland folder (default: ${DATA_ENV}/mvtec3d/cable_gland, "
                         "else ../shared/data/mvtec3d/cable_gland)")


def rel(path) -> str:
    """`path` relative to the repository root when it lies inside it, else as given."""
    full = Path(os.path.abspath(path))
    for candidate in (full, full.resolve()):
        try:
            return candidate.relative_to(REPO).as_posix()
        except ValueError:
            pass
    return str(path)


def _rel_arg(arg: str) -> str:
    """One command-line argument with an absolute path inside the repository made relative
    (also the value of `--option=/abs/path`)."""
    if arg.startswith("-") and "=" in arg:
        option, value = arg.split("=", 1)
        return f"{option}={_rel_arg(value)}"
    return rel(arg) if os.path.isabs(arg) else arg


def command(script: str, argv=None, python: str = "python") -> str:
    """The command line that reproduces a benchmark run from the repository root, for its
    RESULTS.md section: `python -m benchmarks.NAME args...`, paths inside the repository relative."""
    args = list(argv if argv is not None else sys.argv[1:])
    return shlex.join([python, "-m", module(script), *(_rel_arg(a) for a in args)])


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, AttributeError):
        pass
    return f"{cpu}, {os.cpu_count()} cores{mem}, no GPU, Python {platform.python_version()}"


def write_section(name: str, body: str) -> Path:
    """Replace (or append) the section between the markers for `name`."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)
    return RESULTS


def median_p99_ms(seconds) -> tuple[float, float]:
    return 1000 * float(np.median(seconds)), 1000 * float(np.percentile(seconds, 99))


def torch_latency(model, inputs, mode: str, runs: int, warmup: int) -> tuple[float, float]:
    """Median / p99 ms of eager torch, model(*inputs, mode), after `warmup` untimed calls."""
    import torch

    t = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(*inputs, mode)
        for _ in range(runs):
            t0 = time.perf_counter()
            model(*inputs, mode)
            t.append(time.perf_counter() - t0)
    return median_p99_ms(t)


def fmt(v, nd: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{nd}f}"


def within_points(deltas, budget: float = 1.0) -> str:
    """INT8 minus FP32 in points, per metric -> the table's verdict. Two-sided: a gain beyond the
    budget is not "within" either (it says the INT8 graph ranks differently, not that it is better)."""
    worst = max(deltas, key=abs)
    if abs(worst) <= budget:
        return "yes"
    return f"**no** ({worst:+.1f})" if worst < 0 else f"no ({worst:+.1f}, a gain)"


def _fp32_groups(patterns) -> str:
    """The KEEP_FP32_OPTIONAL groups an FP32 pattern set holds, by name."""
    from calibrate.int8 import KEEP_FP32_OPTIONAL

    return " + ".join(name for name, group in KEEP_FP32_OPTIONAL.items() if all(p in patterns for p in group))


def optional_fp32(int8_report: dict) -> str:
    """Which of KEEP_FP32_OPTIONAL's groups the chosen INT8 graph keeps in FP32."""
    return _fp32_groups(int8_report["kept_fp32_patterns"]) or "none"


def int8_candidates(int8_report: dict) -> str:
    """The calibration candidates of one mode, by FP32 set: their validation score drift."""
    by_set: dict[str, list[str]] = {}
    for c in int8_report["candidates"]:
        by_set.setdefault(_fp32_groups(c["kept_fp32_patterns"]) or "default set", []).append(
            f"{c['method']} {c['score_max_abs_diff']:.3f}")
    return "; ".join(f"{k}: {', '.join(v)}" for k, v in by_set.items())
