"""`rgbd-edge capture`: record frames from any source into an rgbd-folder dataset.

```
rgbd-edge capture --source-json '{"type": "realsense"}' --out data/line3 --split train --count 200 --every 5
rgbd-edge capture --config /etc/rgbd-edge/config.yaml --out data/line3 --defect unknown
```

Frames are written with :func:`edge.data.write_folder_sample` to
``<out>/<split>/<defect>/{color,depth}/<stem>.png`` (16-bit depth, ``depth_scale`` 0.001 = mm by
default; the source's colour intrinsics go into ``dataset.yaml``). Stems are 6-digit numbers that
continue after the highest one already in the folder, so a second capture adds to the first.

Frames are not written, but counted and reported, when a stream is missing (rgb or depth None)
or when the depth is stale (its frame number did not advance since the previous frame: the
depth would not belong to the colour image). ``every_n`` keeps every n-th frame the source
delivers (counted before the skipping).
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from edge.data import DatasetError, write_folder_sample
from edge.data._base import label_for
from edge.frames import RGBDSample

from .checks import CheckError, load_yaml
from .sources import EndOfStream, FrameTimeout, SourceError, open_source, validate_source_config
from .sources.base import intrinsics_to_dict

log = logging.getLogger("edge.capture")

PROG = "rgbd-edge capture"
#: keys of a daemon config's `source` section that belong to the daemon, not to the source
DAEMON_SOURCE_KEYS = ("exit_at_end", "read_timeout_s", "reopen_attempts")
_STEM = re.compile(r"^\d+$")


@dataclass
class CaptureReport:
    """What a capture did. ``written`` is what :func:`capture` returns."""

    out_dir: Path
    split: str
    defect: str
    requested: int
    written: int = 0
    frames_read: int = 0        # frames the source delivered
    not_selected: int = 0       # left out by every_n
    missing_rgb: int = 0        # skipped: no colour
    missing_depth: int = 0      # skipped: no depth
    stale_depth: int = 0        # skipped: depth frame number did not advance
    timeouts: int = 0           # FrameTimeouts while waiting
    ended: bool = False         # the (finite) source ended before `requested`
    interrupted: bool = False
    first_stem: str | None = None
    last_stem: str | None = None
    source_stats: dict = field(default_factory=dict)

    @property
    def skipped(self) -> int:
        return self.missing_rgb + self.missing_depth + self.stale_depth

    def summary(self) -> str:
        where = self.out_dir / self.split / self.defect
        s = f"captured {self.written}/{self.requested} frame(s) into {where}"
        if self.written:
            s += f" (stems {self.first_stem}..{self.last_stem})"
        s += f"; {self.frames_read} read"
        if self.not_selected:
            s += f", {self.not_selected} left out by --every"
        if self.skipped:
            s += (f"; skipped {self.skipped} with a missing or stale stream (no rgb {self.missing_rgb}, "
                  f"no depth {self.missing_depth}, stale depth {self.stale_depth})")
        if self.timeouts:
            s += f"; {self.timeouts} timeout(s)"
        if self.ended and self.written < self.requested:
            s += "; the source ended first"
        if self.interrupted:
            s += "; interrupted"
        return s


def _next_stem_index(root: Path, split: str, defect: str) -> int:
    color = root / split / defect / "color"
    if not color.is_dir():
        return 0
    nums = [int(p.stem) for p in color.iterdir() if p.suffix.lower() == ".png" and _STEM.match(p.stem)]
    return max(nums) + 1 if nums else 0


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class _FrameSelector:
    """Which delivered frames get written: every n-th, with both streams, its depth not stale.
    The others are counted in the report."""

    def __init__(self, every_n: int, rep: CaptureReport):
        self.every_n, self.rep = every_n, rep
        self.last_depth_number: int | None = None

    def keep(self, frame) -> bool:
        rep = self.rep
        rep.frames_read += 1
        if (rep.frames_read - 1) % self.every_n:
            rep.not_selected += 1
            if frame.depth is not None:
                self.last_depth_number = frame.depth_frame_number
            return False
        if frame.rgb is None or frame.depth is None:
            if frame.rgb is None:
                rep.missing_rgb += 1
            if frame.depth is None:
                rep.missing_depth += 1
            log.warning("frame (colour #%d, depth #%d) skipped: %s missing", frame.color_frame_number,
                        frame.depth_frame_number, "rgb" if frame.rgb is None else "depth")
            if frame.depth is not None:
                self.last_depth_number = frame.depth_frame_number
            return False
        stale = self.last_depth_number is not None and frame.depth_frame_number == self.last_depth_number
        self.last_depth_number = frame.depth_frame_number
        if stale:
            rep.stale_depth += 1
            log.warning("frame (colour #%d) skipped: stale depth (depth frame #%d repeated)",
                        frame.color_frame_number, frame.depth_frame_number)
            return False
        return True


class _SampleWriter:
    """Writes frames as numbered samples of one split and defect folder, stems continuing after
    the highest already there; the source's intrinsics, if they fit the frames, go into
    dataset.yaml."""

    def __init__(self, out_dir: Path, split: str, defect: str, depth_scale: float, source_name: str):
        self.out_dir, self.split, self.defect, self.depth_scale = out_dir, split, defect, depth_scale
        self.source_name = source_name
        self.label = label_for(defect)
        self.next_index = _next_stem_index(out_dir, split, defect)
        self.intrinsics: dict | None = None
        self.intrinsics_checked = False

    def write(self, frame) -> str:
        """Write one frame (both streams present); returns its stem."""
        if frame.depth.shape != frame.rgb.shape[:2]:
            raise ValueError(f"{self.source_name}: depth {frame.depth.shape[1]}x{frame.depth.shape[0]} "
                             f"and colour {frame.rgb.shape[1]}x{frame.rgb.shape[0]} differ; a dataset needs "
                             "registered images: set align_to_color: true")
        if not self.intrinsics_checked:
            self.intrinsics_checked = True
            self.intrinsics = _fitting_intrinsics(frame)
        stem = f"{self.next_index:06d}"
        sample = RGBDSample(rgb=frame.rgb, depth=frame.depth, mask=None, label=self.label, defect=self.defect,
                            name=f"{self.split}/{self.defect}/{stem}")
        write_folder_sample(self.out_dir, self.split, self.defect, stem, sample, depth_scale=self.depth_scale,
                            intrinsics=self.intrinsics)
        self.next_index += 1
        return stem


def _fitting_intrinsics(frame) -> dict | None:
    """The frame's intrinsics as dataset.yaml records them, or None when they are for another size."""
    intr = intrinsics_to_dict(frame.intrinsics)
    h, w = frame.rgb.shape[:2]
    if intr is not None and (intr["width"], intr["height"]) != (w, h):
        log.warning("the source's intrinsics are for %dx%d but frames are %dx%d: not recorded",
                    intr["width"], intr["height"], w, h)
        return None
    return intr


class _Progress:
    """written/count on stderr: rewritten in place on a terminal, else every tenth of the count."""

    def __init__(self, enabled: bool, count: int):
        self.enabled, self.count = enabled, count
        self.tty = enabled and sys.stderr.isatty()
        self.step = max(1, count // 10)

    def update(self, written: int) -> None:
        if self.tty:
            print(f"\r{PROG}: {written}/{self.count}", end="", file=sys.stderr, flush=True)
        elif self.enabled and (written % self.step == 0 or written == self.count):
            print(f"{PROG}: {written}/{self.count}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr)


def capture(source_cfg: dict, out_dir, split: str = "train", defect: str = "good", count: int = 100,
            every_n: int = 1, progress: bool = True, depth_scale: float = 0.001, *,
            report: CaptureReport | None = None, source=None) -> int:
    """Read frames from the source ``source_cfg`` describes and write ``count`` of them into the
    rgbd-folder dataset ``out_dir`` (see the module doc). Returns the number written, which is
    smaller than ``count`` only when a finite source ended first.

    ``report`` (a :class:`CaptureReport`, filled in as it goes) and ``source`` (an already built
    source to use instead of ``source_cfg``) are for callers that want the details.
    """
    _positive_int("count", count)
    _positive_int("every_n", every_n)
    out_dir = Path(out_dir)
    rep = report if report is not None else CaptureReport(out_dir, split, defect, count)
    rep.out_dir, rep.split, rep.defect, rep.requested = out_dir, split, defect, count
    src = source if source is not None else open_source(source_cfg)
    selector = _FrameSelector(every_n, rep)
    writer = _SampleWriter(out_dir, split, defect, depth_scale, getattr(src, "name", "source"))
    shown = _Progress(progress, count)
    try:
        src.open()
        while rep.written < count:
            try:
                frame = src.read(timeout_s=1.0)
            except FrameTimeout as e:
                rep.timeouts += 1
                log.info("%s", e)
                continue
            except EndOfStream:
                rep.ended = True
                break
            if not selector.keep(frame):
                continue
            stem = writer.write(frame)
            rep.written += 1
            rep.first_stem = rep.first_stem or stem
            rep.last_stem = stem
            shown.update(rep.written)
    finally:
        shown.close()
        try:
            rep.source_stats = src.stats()
        finally:
            src.close()
    if rep.skipped:
        log.warning("%s", rep.summary())
    else:
        log.info("%s", rep.summary())
    return rep.written


# ---------------------------------------------------------------------- command line


def load_source_config(config: str | None = None, source_json: str | None = None) -> dict:
    """The source configuration from a YAML file (a daemon config with a ``source`` section, or a
    bare source mapping; relative paths resolve against the file's folder) or a JSON string.
    Raises ValueError naming the problem."""
    if (config is None) == (source_json is None):
        raise ValueError("give exactly one of --config FILE and --source-json JSON")
    if source_json is not None:
        try:
            doc = json.loads(source_json)
        except json.JSONDecodeError as e:
            raise ValueError(f"--source-json: not valid JSON: {e}") from e
        base = Path.cwd()
        where = "--source-json"
    else:
        path = Path(config)
        if not path.exists():
            raise ValueError(f"--config: {path} does not exist")
        try:  # the daemon's loader: duplicate keys, size, alias and nesting limits
            doc = load_yaml(path)
        except CheckError as e:
            raise ValueError(f"--config: cannot read {e}") from e
        base = path.resolve().parent
        where = str(path)
        if isinstance(doc, dict) and isinstance(doc.get("source"), dict):
            doc = {k: v for k, v in doc["source"].items() if k not in DAEMON_SOURCE_KEYS}
    if not isinstance(doc, dict):
        raise ValueError(f"{where}: expected a mapping with a source 'type', got {type(doc).__name__}")
    doc = dict(doc)
    if isinstance(doc.get("path"), str) and not Path(doc["path"]).expanduser().is_absolute():
        doc["path"] = str(base / Path(doc["path"]).expanduser())
    validate_source_config(doc)
    return doc


def _add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--config", metavar="FILE",
                   help="YAML: an rgbd-edge config (its `source` section is used) or a bare source mapping")
    g.add_argument("--source-json", metavar="JSON",
                   help='source configuration as JSON, e.g. \'{"type": "realsense", "serial": "123"}\'')
    p.add_argument("--out", required=True, metavar="DIR", help="rgbd-folder dataset to write into (created if needed)")
    p.add_argument("--split", default="train", help="split folder (default: train)")
    p.add_argument("--defect", default="good",
                   help="defect folder: good (label 0), unknown (unlabelled) or a defect name (default: good)")
    p.add_argument("--count", type=int, default=100, help="frames to write (default: 100)")
    p.add_argument("--every", type=int, default=1, metavar="N", help="keep every N-th frame (default: 1)")
    p.add_argument("--depth-scale", type=float, default=0.001,
                   help="metres per stored depth count (default: 0.001 = millimetres)")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _cmd_capture(a: argparse.Namespace) -> int:
    """Exit codes: 0 every requested frame written (or a finite source ended after at least one);
    1 source failure, or nothing written; 2 bad arguments or configuration; 130 interrupted."""
    if a.count < 1 or a.every < 1:
        print(f"{PROG}: --count and --every must be positive integers", file=sys.stderr)
        return 2
    try:
        cfg = load_source_config(a.config, a.source_json)
    except ValueError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    rep = CaptureReport(Path(a.out), a.split, a.defect, a.count)
    try:
        capture(cfg, a.out, split=a.split, defect=a.defect, count=a.count, every_n=a.every,
                progress=not a.quiet, depth_scale=a.depth_scale, report=rep)
    except KeyboardInterrupt:
        rep.interrupted = True
        print(f"{PROG}: {rep.summary()}", file=sys.stderr)
        return 130
    except (DatasetError, ValueError) as e:  # DatasetError is a ValueError: bad output folder or scale
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    except SourceError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        print(f"{PROG}: {rep.summary()}", file=sys.stderr)
        return 1
    print(rep.summary(), file=sys.stderr if a.quiet else sys.stdout)
    return 0 if rep.written else 1


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `capture` on an argparse subparsers object (sets ``func``)."""
    p = subparsers.add_parser(
        "capture", help="record frames from a camera, recording or dataset into an rgbd-folder dataset",
        description="Record frames from any source into <out>/<split>/<defect>/{color,depth}. Frames "
                    "with a missing or stale stream are skipped and counted. Exit 0 on success, 1 when "
                    "the source fails or nothing was written, 2 on bad arguments.")
    _add_arguments(p)
    p.set_defaults(func=_cmd_capture)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description="record frames into an rgbd-folder dataset")
    _add_arguments(p)
    return _cmd_capture(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
