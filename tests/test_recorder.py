"""edge.sources.recorder: RGB-D frames written into a RealSense recording (.db3) come back through the
recording source as they went in: every frame, colour pixel for pixel, depth to the count, the given
intrinsics, frame rate and depth units, and a dropped depth frame as a stale re-send."""
from __future__ import annotations

import numpy as np
import pytest

from edge.data import open_dataset
from edge.frames import Intrinsics
from edge.sources import EndOfStream, open_source
from edge.sources.recorder import record_dataset, write_recording

W, H = 32, 24
UNITS = 1e-4  # the writer's default depth units, metres per count


def generated(n: int, seed: int = 0, units: float = UNITS) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """n frames: random colour, and depth as whole counts of ``units`` (0.1 to 2 m) in metres, the top
    two rows missing (0). Returns (colours, depth counts)."""
    rng = np.random.default_rng(seed)
    colours = [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(n)]
    counts = [rng.integers(int(0.1 / units), int(2.0 / units), (H, W)).astype(np.uint16) for _ in range(n)]
    for c in counts:
        c[:2] = 0
    return colours, counts


def metres(counts: np.ndarray, units: float = UNITS) -> np.ndarray:
    return (counts.astype(np.float64) * units).astype(np.float32)


def play(path) -> tuple[list, float, dict]:
    """Every frame of the recording (depth not re-aligned), the depth scale it holds, the source's stats."""
    src = open_source({"type": "recording", "path": str(path), "align_to_color": False})
    frames = []
    with src:
        scale = src.session.depth_scale
        for _ in range(100):
            try:
                frames.append(src.read(timeout_s=2.0))
            except EndOfStream:
                return frames, scale, src.stats()
    raise AssertionError("the recording never ended")


def test_frames_come_back_pixel_exact(tmp_path):
    colours, counts = generated(4)
    path = tmp_path / "plain.db3"
    assert write_recording(path, zip(colours, (metres(c) for c in counts))) == 4
    frames, scale, st = play(path)
    assert scale == pytest.approx(UNITS, rel=1e-6)
    assert [(f.color_frame_number, f.depth_frame_number) for f in frames] == [(0, 0), (1, 1), (2, 2), (3, 3)]
    for i, f in enumerate(frames):
        np.testing.assert_array_equal(f.rgb, colours[i])
        assert f.depth.dtype == np.float32 and (f.depth[:2] == 0).all()  # missing depth stays missing
        np.testing.assert_array_equal(f.depth, counts[i].astype(np.float32) * np.float32(scale))
        assert f.depth_timestamp_ms == pytest.approx(i * 1000 / 30, abs=1e-3)
        # default intrinsics: focal length = width, principal point at the centre
        assert f.intrinsics == Intrinsics(width=W, height=H, fx=float(W), fy=float(W), cx=W / 2, cy=H / 2)
    assert st["frames"] == 4 and st["stale_depth"] == 0


def test_a_dropped_depth_frame_is_re_sent_stale(tmp_path):
    colours, counts = generated(5, seed=1)
    path = tmp_path / "stale.db3"
    assert write_recording(path, zip(colours, (metres(c) for c in counts)), stale_depth_at={2}) == 5
    frames, scale, st = play(path)
    # colour 2 comes with depth 1 again: same frame number, pixels and timestamp
    assert [(f.color_frame_number, f.depth_frame_number) for f in frames] == [(0, 0), (1, 1), (2, 1), (3, 3), (4, 4)]
    np.testing.assert_array_equal(frames[2].rgb, colours[2])
    np.testing.assert_array_equal(frames[2].depth, counts[1].astype(np.float32) * np.float32(scale))
    assert frames[2].depth_timestamp_ms == frames[1].depth_timestamp_ms
    assert st["stale_depth"] == 1 and st["frames"] == 5


def test_intrinsics_fps_and_depth_units_are_recorded(tmp_path):
    units = 1e-3
    colours, counts = generated(2, seed=2, units=units)
    depth0 = metres(counts[0], units)
    depth0[2, :3] = np.nan, -0.5, 70.0  # not a number and below zero: missing; past 65535 counts: clipped
    path = tmp_path / "intr.db3"
    write_recording(path, [(colours[0], depth0), (colours[1], metres(counts[1], units))], fps=15,
                    depth_units=units, intrinsics={"fx": 20.0, "fy": 21.0, "cx": 15.5, "cy": 11.5})
    frames, scale, _ = play(path)
    assert scale == pytest.approx(units, rel=1e-6) and len(frames) == 2
    assert frames[0].intrinsics == Intrinsics(width=W, height=H, fx=20.0, fy=21.0, cx=15.5, cy=11.5)
    assert frames[1].depth_timestamp_ms == pytest.approx(1000 / 15, abs=1e-3)
    expected = counts[0].copy()
    expected[2, :3] = 0, 0, np.iinfo(np.uint16).max
    np.testing.assert_array_equal(frames[0].depth, expected.astype(np.float32) * np.float32(scale))


def test_bad_input_is_refused_before_recording(tmp_path):
    colours, counts = generated(1)
    with pytest.raises(ValueError, match=r"\.db3"):
        write_recording(tmp_path / "x.bag", [(colours[0], metres(counts[0]))])
    with pytest.raises(ValueError, match="no frames"):
        write_recording(tmp_path / "empty.db3", [])
    assert not (tmp_path / "x.bag").exists() and not (tmp_path / "empty.db3").exists()


def test_a_frame_of_another_size_is_an_error_naming_it(tmp_path):
    colours, counts = generated(1)
    small = (colours[0][:12, :16], metres(counts[0])[:12, :16])
    with pytest.raises(ValueError, match=r"frame 1: size"):
        write_recording(tmp_path / "sizes.db3", [(colours[0], metres(counts[0])), small])


def test_record_dataset_replays_a_split_in_order(tmp_path, tiny_dataset):
    path = tmp_path / "test.db3"
    assert record_dataset(tiny_dataset, "test", path, limit=4, stale_depth_at=[1]) == 4
    frames, scale, st = play(path)
    samples = [r.load() for r in open_dataset(tiny_dataset, "test")[:4]]
    assert [f.depth_frame_number for f in frames] == [0, 0, 2, 3] and st["stale_depth"] == 1
    for f, i in zip(frames, (0, 1, 2, 3)):
        np.testing.assert_array_equal(f.rgb, samples[i].rgb)
        d = samples[f.depth_frame_number].depth
        np.testing.assert_allclose(f.depth, np.nan_to_num(d), atol=scale / 2 + 1e-6)  # to the count
        assert ((f.depth == 0) == (np.nan_to_num(d) < scale / 2)).all()
