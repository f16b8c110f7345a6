"""Shared by the benchmark scripts: machine description and RESULTS.md sections."""
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
CABLE_GLAND = REPO.parent / "shared" / "data" / "mvtec3d" / "cable_gland"


def missing_data(path, what: str = "this benchmark") -> bool:
    """True (after saying so on stderr) when the real cable_gland folder is not at `path`."""
    if Path(path).is_dir():
        return False
    print(f"{path} not found: {what} needs the real MVTec 3D-AD cable_gland", file=sys.stderr)
    return True


def run_probe_parser(doc: str | None, **kw) -> argparse.ArgumentParser:
    """The options every benchmark that looks inside trained runs shares: --run RUN_DIR[=LABEL]
    (repeatable), --data and --threads. Add the script's own options to the parser it returns."""
    ap = argparse.ArgumentParser(description=doc, **kw)
    ap.add_argument("--run", action="append", required=True, metavar="RUN_DIR[=LABEL]", help="repeatable")
    ap.add_argument("--data", default=str(CABLE_GLAND))
    ap.add_argument("--threads", type=int, default=2)
    return ap


def command(script: str, argv=None, python: str = "python") -> str:
    """The command line that reproduces a benchmark run, for its RESULTS.md section."""
    args = list(argv if argv is not None else sys.argv[1:])
    return shlex.join([python, f"benchmarks/{Path(script).name}", *args])


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
