"""Recording playback at start: how often does an open lose or mispair its first frames?

Opens the tests' 4-frame recording and their 5-frame one with a stale depth re-send
(`tests/test_sources.py`, `make_recording`) N times each, reads each to its end through
`edge.sources` (no alignment) and counts every open whose (colour, depth) frame numbers differ
from what the file holds. `--before DIR` runs the same count on another checkout of the package
in a child process (e.g. `git worktree add /tmp/before 374f47b`, the code before the playback was
held until `pipeline.start()` returned) and puts both rows side by side.

    .venv/bin/python benchmarks/playback_start.py [--opens N] [--before DIR]
"""
from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._report import REPO, command, machine, write_section  # noqa: E402

PLANS = {
    "4 frames": ([(0, 0), (1, 1), (2, 2), (3, 3)], 0),
    "5 frames, depth #1 re-sent": ([(0, 0), (1, 1), (1, 2), (3, 3), (4, 4)], 1),
}
# (colour, depth) numbers a correct source delivers for each plan (the re-sent depth is stale, not lost)
WANT = {"4 frames": [(0, 0), (1, 1), (2, 2), (3, 3)],
        "5 frames, depth #1 re-sent": [(0, 0), (1, 1), (2, 1), (3, 3), (4, 4)]}


def count(code: Path, opens: int) -> dict:
    """{plan: {"opens": N, "wrong": k, "seen": {pattern: times}}} with `edge` imported from `code`."""
    sys.path.insert(0, str(REPO / "tests"))
    sys.path.insert(0, str(code))
    from test_sources import make_recording, read_all  # noqa: E402 - the tests' own recordings

    import edge
    from edge.sources import open_source

    if Path(edge.__file__).resolve().parents[1] != code.resolve():
        raise RuntimeError(f"edge imported from {edge.__file__}, not from {code}")
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (plan, seed) in PLANS.items():
            path = Path(tmp) / f"{len(plan)}.db3"
            make_recording(path, plan, seed=seed)
            seen = collections.Counter()
            for _ in range(opens):
                src = open_source({"type": "recording", "path": str(path), "align_to_color": False})
                try:
                    got = [(f.color_frame_number, f.depth_frame_number) for f in read_all(src)]
                except Exception as e:  # noqa: BLE001 - a failed open is a wrong open, counted by its message
                    got = f"{type(e).__name__}: {e}"
                if got != WANT[name]:
                    seen[str(got)] += 1
            out[name] = {"opens": opens, "wrong": sum(seen.values()), "seen": dict(seen)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--opens", type=int, default=500, help="opens of each recording")
    ap.add_argument("--before", type=Path, help="another checkout of the package to count the same way")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # count with this checkout, print JSON
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(count(a.child, a.opens)))
        return 0
    runs = {}
    if a.before:
        child = subprocess.run([sys.executable, __file__, "--child", str(a.before.resolve()), "--opens", str(a.opens)],
                               check=True, capture_output=True, text=True)
        runs[f"`{a.before}` (before)"] = json.loads(child.stdout.strip().splitlines()[-1])
    runs["this checkout"] = count(REPO, a.opens)
    rows = [f"| {who} | {name} | {r['opens']} | {r['wrong']} | {'; '.join(f'{k} x {v}' for k, v in r['seen'].items()) or '-'} |"
            for who, res in runs.items() for name, r in res.items()]
    body = f"""## Recording playback at start (`playback_start`)

Opens of the tests' recordings read to their end through `edge.sources`; "wrong" counts opens whose
(colour, depth) frame numbers differ from what the file holds.

| code | recording | opens | wrong | what the wrong opens delivered |
|---|---|---|---|---|
{chr(10).join(rows)}

- Machine: {machine()}.
- Command: `{command(__file__, argv)}`
"""
    print(body)
    print(f"written to {write_section('playback_start', body)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
