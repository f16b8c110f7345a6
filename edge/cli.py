"""`rgbd-edge`: the Jetson-side command.

This release has `check-bundle` (validate a model bundle as the runtime will).
The daemon (`run`), `capture` and `watch` belong to the next release and are
not here yet.
"""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from .bundle import add_parser as add_check_bundle

    p = argparse.ArgumentParser(prog="rgbd-edge", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    add_check_bundle(sub)
    return p


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())
