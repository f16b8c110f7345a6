"""`rgbd-edge`: the Jetson-side command.

    rgbd-edge run --config FILE [--max-frames N] [--log-level L]   the inspection daemon (systemd service)
    rgbd-edge check-bundle DIR [--no-verify] [--trusted-key PUB]   validate a model bundle (and its signature)
    rgbd-edge install BUNDLE.tar.gz [--root DIR] [--trusted-key PUB | --config FILE]
                                                                   verify and install a signed bundle
    rgbd-edge rollback [--root DIR]                                switch back to the previous bundle
    rgbd-edge capture ...                                          record RGB-D frames (edge.capture)
    rgbd-edge watch ...                                            watch a running device (edge.watch)

`run` exit codes: 0 clean stop, 2 configuration error, 3 bundle error, 4 engine load error,
5 source could not be opened, 6 internal fatal error, 7 another instance runs for this device
(docs/daemon.md). `install`: 0 installed, 2 usage or key error, 3 refused, 4 could not write;
`rollback`: 0, 2 nothing to roll back to, 4 (docs/bundle.md).
"""
from __future__ import annotations

import argparse
import importlib
import sys

# Sub-commands that live in their own (optional) modules: name -> (module, help). Their
# add_parser is imported only when building the parser, and a module that is missing (or broken)
# leaves a stub that explains why instead of breaking every other command.
_OPTIONAL = {
    "capture": ("edge.capture", "record RGB-D frames from a source into a dataset folder"),
    "watch": ("edge.watch", "watch a running device's results and status"),
}


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="run the inspection daemon (what the systemd service starts)",
                       description="Capture RGB-D frames, run the bundle's engines with missing-modality "
                                   "fallback and publish one result per inspected frame. Exit codes: 0 clean "
                                   "stop, 2 config error, 3 bundle error, 4 engine load error, 5 source could "
                                   "not be opened, 6 internal fatal error, 7 another instance runs for "
                                   "this device.")
    p.add_argument("--config", required=True, metavar="FILE", help="YAML configuration (docs/daemon.md)")
    p.add_argument("--max-frames", type=_positive_int, default=None, metavar="N",
                   help="stop after capturing N frames (drain, then exit 0)")
    p.add_argument("--log-level", type=str.upper, default=None,
                   choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
                   help="override the config's log_level")
    p.set_defaults(func=_cmd_run)


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return v


def _cmd_run(a: argparse.Namespace) -> int:
    from .daemon import run

    return run(a.config, max_frames=a.max_frames, log_level=a.log_level)


def _add_optional(sub, name: str, module: str, help_text: str) -> None:
    try:
        mod = importlib.import_module(module)
        add = getattr(mod, "add_parser")
    except Exception as exc:  # ImportError, or a module without add_parser
        reason = f"{type(exc).__name__}: {exc}"
        p = sub.add_parser(name, help=f"{help_text} (unavailable)", add_help=False)

        def _unavailable(_a, _name=name, _module=module, _reason=reason) -> int:
            print(f"rgbd-edge {_name}: error: this command is not available in this installation "
                  f"({_module} could not be loaded: {_reason})", file=sys.stderr)
            return 2

        p.set_defaults(func=_unavailable, _unavailable=True)
        return
    add(sub)


def build_parser() -> argparse.ArgumentParser:
    from .bundle import add_parser as add_check_bundle
    from .install import add_parser as add_install

    p = argparse.ArgumentParser(prog="rgbd-edge", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    _add_run(sub)
    add_check_bundle(sub)
    add_install(sub)
    for name, (module, help_text) in _OPTIONAL.items():
        _add_optional(sub, name, module, help_text)
    return p


def main(argv=None) -> int:
    p = build_parser()
    a, extra = p.parse_known_args(argv)
    if extra and not getattr(a, "_unavailable", False):
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())
