"""Preprocessing time per 640x480 RGB-D frame on one core: the per-frame plane fit against the
site plane, with a per-step breakdown and the largest difference from the reference definition.

Frames: the cable_gland test captures scaled to 640x480 (colour bilinear, depth nearest
neighbour, so holes stay holes) with the parameters training fits on the train split, and the
frames of the real D435 recording with parameters fitted on them. The process is pinned to one
CPU core and OpenCV runs single-threaded (cv2.setNumThreads(1)), so the figures are one core's.
Paths timed:

- reference, per-frame fit: tests/preprocess_reference.py with no site plane, which is the
  preprocessing the project had before the site plane (RANSAC on every frame);
- per-frame fit: edge.preprocess.preprocess with `plane` None;
- site plane: edge.preprocess.preprocess with the fitted site plane (what training now stores).

The breakdown replays preprocess()'s steps one by one (checked to give its exact output).
Writes section `preprocess_speed`.

    python -m benchmarks.preprocess_speed [--data DIR] [--recording BAG] [--size S] [--repeats R] [--cpu N]
"""
from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from benchmarks._report import add_data_option, command, data_root, machine, median_p99_ms, missing_data, parser, \
    write_section
from edge.background_plane import check_plane, fit_plane_inverse_depth, plane_grid
from edge.preprocess import PreprocessParams, crop_roi, fit_depth_normalisation, preprocess
from edge import preprocess_kernels as kernels

RECORDING = data_root() / "realsense" / "single_depth_color_640x480.bag"
STEPS = ("resize", "plane", "height", "fill", "foreground", "encode", "rgb")
TARGET_MS = 3.0


def pin_one_core(cpu: int | None) -> str:
    """Run this process on one CPU core (the first allowed one unless `cpu` is given)."""
    cv2.setNumThreads(1)
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (no sched_setaffinity here); OpenCV single-threaded"
    core = cpu if cpu is not None else min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    return f"pinned to core {core}; OpenCV single-threaded"


def cable_gland_frames(root, size: int):
    """(params fitted on the train split, test frames scaled to 640x480)."""
    from calibrate.dataset import load_raw

    train = load_raw(root, "train", False)
    params = fit_depth_normalisation([s.depth for s in train], PreprocessParams(image_size=size))
    frames = [(cv2.resize(s.rgb, (640, 480), interpolation=cv2.INTER_LINEAR),
               cv2.resize(s.depth, (640, 480), interpolation=cv2.INTER_NEAREST)) for s in load_raw(root, "test", False)]
    return params, frames


def recording_frames(path, size: int):
    """(params fitted on the recording's frames, its frames), or None when it cannot be read."""
    from edge.sources import open_source
    from edge.sources.base import EndOfStream, SourceError

    frames = []
    try:
        with open_source({"type": "recording", "path": str(path)}) as src:
            for _ in range(1000):
                try:
                    f = src.read(5.0)
                except EndOfStream:
                    break
                frames.append((f.rgb, f.depth))
    except SourceError:
        return None
    if not frames:
        return None
    return fit_depth_normalisation([d for _, d in frames], PreprocessParams(image_size=size)), frames


def timed(fn, frames, repeats: int, warmup: int = 3) -> tuple[list[float], list[float]]:
    """(wall seconds, this thread's CPU seconds) per call of fn(rgb, depth) over `repeats` passes
    of the frames, after `warmup` untimed calls."""
    for i in range(warmup):
        fn(*frames[i % len(frames)])
    wall, cpu = [], []
    for _ in range(repeats):
        for rgb, depth in frames:
            t0, c0 = time.perf_counter(), time.thread_time()
            fn(rgb, depth)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
    return wall, cpu


def stepwise(rgb, depth, params: PreprocessParams, laps: dict):
    """preprocess() one step at a time, appending each step's CPU seconds to `laps`; returns
    (depth input, rgb input, foreground) to check against preprocess()."""
    size, t = params.image_size, time.thread_time()

    def lap(name):
        nonlocal t
        now = time.thread_time()
        laps.setdefault(name, []).append(now - t)
        t = now

    z, valid, valid_f = kernels.resize_depth_scratch(crop_roi(depth, params.roi), size)
    lap("resize")
    if params.plane is not None:
        grid = plane_grid(params.plane, size, params.plane_border_frac)
        check_plane(z, valid, grid, params.plane_inlier_m)
    else:
        plane = fit_plane_inverse_depth(z, valid, params.plane_border_frac, params.plane_inlier_m,
                                        params.ransac_iters, params.ransac_seed)
        grid = plane_grid(plane, size, params.plane_border_frac, cache=False)
    lap("plane")
    height = kernels.height_from_plane(z, valid_f, grid)
    lap("height")
    kernels.fill_in_place(height, valid)
    lap("fill")
    fg = kernels.foreground(height, params.fg_min_height_m)
    lap("foreground")
    hn = np.clip(np.divide(height, params.height_scale_m), -0.25, 1.25)
    depth_in = np.empty((3, size, size), np.float32)
    kernels.encode_into(depth_in, hn, params.depth_encoding, params.normal_gain,
                        kernels.channel_norm(params.rgb_mean, params.rgb_std))
    lap("encode")
    rgb_s = kernels.scratch("rgb_s", (size, size, 3), np.uint8)
    cv2.resize(crop_roi(rgb, params.roi), (size, size), dst=rgb_s, interpolation=cv2.INTER_AREA)
    rgb_in = np.empty((3, size, size), np.float32)
    kernels.rgb_into(rgb_in, rgb_s, params.rgb_mean, params.rgb_std)
    lap("rgb")
    return depth_in, rgb_in, fg


def breakdown(frames, params: PreprocessParams, repeats: int) -> dict[str, float]:
    """Median CPU ms per step over all frames and repeats."""
    for rgb, depth in frames[:3]:
        depth_in, rgb_in, fg = stepwise(rgb, depth, params, {})
        ref = preprocess(rgb, depth, params)
        if not (np.array_equal(depth_in, ref.depth) and np.array_equal(rgb_in, ref.rgb)
                and np.array_equal(fg, ref.foreground)):
            raise AssertionError("the breakdown's steps no longer compute what preprocess() computes")
    laps: dict = {}
    for _ in range(repeats):
        for rgb, depth in frames:
            stepwise(rgb, depth, params, laps)
    return {k: 1000 * float(np.median(laps[k])) for k in STEPS}


def differences(frames, params: PreprocessParams) -> dict[str, float]:
    """Largest |fast - reference| over the frames (rgb, depth, height) and differing mask pixels."""
    from tests.preprocess_reference import max_differences, reference_preprocess

    worst: dict = {}
    for rgb, depth in frames:
        for k, v in max_differences(preprocess(rgb, depth, params), reference_preprocess(rgb, depth, params)).items():
            worst[k] = max(worst.get(k, 0), v)
    return worst


def measure(name: str, params: PreprocessParams, frames, repeats: int) -> dict:
    """Timings, breakdowns and differences of one frame set."""
    from tests.preprocess_reference import reference_preprocess

    per_frame = replace(params, plane=None)
    ref_repeats = max(1, repeats // 3)
    return {
        "name": name, "n": len(frames), "repeats": repeats, "site": params.plane is not None,
        "times": {
            "reference, per-frame fit": timed(lambda r, d: reference_preprocess(r, d, per_frame), frames, ref_repeats),
            "per-frame fit": timed(lambda r, d: preprocess(r, d, per_frame), frames, repeats),
            "site plane": timed(lambda r, d: preprocess(r, d, params), frames, repeats),
        },
        "steps": {"per-frame fit": breakdown(frames, per_frame, repeats),
                  "site plane": breakdown(frames, params, repeats)},
        "diff": {"per-frame fit": differences(frames, per_frame), "site plane": differences(frames, params)},
    }


def report(results: list[dict], size: int, pinned: str, argv) -> str:
    rows, steps, diffs = [], [], []
    for r in results:
        for path, (wall, cpu) in r["times"].items():
            med, p99 = median_p99_ms(wall)
            verdict = ("yes" if med <= TARGET_MS else "**no**") if path == "site plane" else ""
            rows.append(f"| {r['name']} | {path} | {len(wall)} | {med:.2f} | {p99:.2f} | {median_p99_ms(cpu)[0]:.2f} "
                        f"| {verdict} |")
        for path, s in r["steps"].items():
            steps.append(f"| {r['name']} | {path} | " + " | ".join(f"{s[k]:.3f}" for k in STEPS)
                         + f" | {sum(s.values()):.2f} |")
        for path, d in r["diff"].items():
            diffs.append(f"| {r['name']} | {path} | {d['rgb']:.1e} | {d['depth']:.1e} | {d['height']:.1e} "
                         f"| {d['foreground_pixels']} |")
    site_note = "" if all(r["site"] for r in results) else \
        "\n- A frame set whose captures share no plane has no site plane: its \"site plane\" row is the per-frame\n" \
        "  fit.\n"
    return f"""## Preprocessing per 640x480 frame, one core (`preprocess_speed`)

Milliseconds per 640x480 RGB-D frame to model inputs at {size} x {size} (`edge.preprocess.preprocess`),
one core ({pinned}). Frames: cable_gland test captures scaled to 640x480, parameters fitted on its train
split; the real D435 recording's frames, parameters fitted on them. Target: site plane at most
{TARGET_MS:g} ms median.

| frames | path | frames timed | median ms | p99 ms | median CPU ms | target met |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

(Wall-clock time per frame; CPU time is this thread's. A wall time well above the CPU time means other
work shared the core while it ran.)

Per step, median CPU ms (the steps of `preprocess()` replayed one by one, checked to give its output:
resize = depth cleaning and the validity-aware area resize; plane = RANSAC fit, or the site plane's
check; encode = normalised height, normals and the depth input; rgb = colour area resize and
normalisation; the sum of medians is not the median of the sum):

| frames | path | {' | '.join(STEPS)} | sum |
|---|---|{'---|' * len(STEPS)}---|
{chr(10).join(steps)}

Largest absolute difference from the reference definition (tests/preprocess_reference.py) over every frame;
the contract is 1e-4 on the model inputs and an identical foreground mask:

| frames | path | rgb | depth | height | foreground pixels differing |
|---|---|---|---|---|---|
{chr(10).join(diffs)}
{site_note}
- "reference, per-frame fit" is the preprocessing before the site plane (the straightforward code, RANSAC on
  every frame); "per-frame fit" the fast code without a site plane (what runs and bundles saved before it
  load as); "site plane" the fast code with the plane training fitted.
- Machine: {machine()}; OpenCV {cv2.__version__}, NumPy {np.__version__}.
- Command: `{command(__file__, argv)}`
"""


def main(argv=None) -> int:
    ap = parser(__file__, __doc__)
    add_data_option(ap)
    ap.add_argument("--recording", default=str(RECORDING), help="the D435 recording (.bag); skipped when absent")
    ap.add_argument("--size", type=int, default=256, help="model input size (rd's default 256)")
    ap.add_argument("--repeats", type=int, default=6, help="timed passes over each frame set")
    ap.add_argument("--cpu", type=int, default=None, help="the core to pin to (default: the first allowed)")
    a = ap.parse_args(argv)
    if missing_data(a.data):
        return 2
    pinned = pin_one_core(a.cpu)
    params, frames = cable_gland_frames(a.data, a.size)
    results = [measure(f"cable_gland test, {len(frames)} captures at 640x480", params, frames, a.repeats)]
    rec = recording_frames(a.recording, a.size)
    if rec is not None:
        rec_params, rec_frames = rec
        reps = max(a.repeats, 300 // len(rec_frames))  # the recording holds few frames: more passes
        results.append(measure(f"D435 recording `{Path(a.recording).name}`, {len(rec_frames)} frames", rec_params,
                               rec_frames, reps))
    print(write_section("preprocess_speed", report(results, a.size, pinned, argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
