"""`rgbd-edge capture` (edge.capture): any source -> rgbd-folder dataset, read back with open_dataset."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from edge.capture import CaptureReport, add_parser, capture, load_source_config, main
from edge.data import SyntheticConfig, make_synthetic_dataset, open_dataset, read_folder_config
from edge.frames import Frame, Intrinsics
from edge.sources import EndOfStream, FrameTimeout
from edge.sources.base import BaseSource


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "data"
    return make_synthetic_dataset(root, SyntheticConfig(size=64, n_train=3, n_validation=1, n_test_good=2,
                                                        n_test_per_defect=1))


def test_capture_from_folder_replay_round_trip(synth, tmp_path):
    out = tmp_path / "captured"
    src_cfg = {"type": "folder", "path": str(synth), "split": "test"}
    refs = open_dataset(synth, "test")
    n = capture(src_cfg, out, split="train", defect="good", count=4, progress=False)
    assert n == 4
    back = open_dataset(out, "train")
    assert [r.name for r in back] == [f"train/good/{i:06d}" for i in range(4)]
    cfg = read_folder_config(out)
    assert cfg["depth_scale"] == 0.001 and cfg["depth_units"] == "mm"
    src_intr = read_folder_config(synth)["intrinsics"]
    assert cfg["intrinsics"] == pytest.approx(src_intr)  # recorded from the source's frames
    for ref, orig in zip(back, refs[:4]):
        s, o = ref.load(), orig.load()
        assert s.label == 0 and s.mask is None
        np.testing.assert_array_equal(s.rgb, o.rgb)
        np.testing.assert_allclose(s.depth, o.depth, atol=0.0005 + 1e-7)  # stored in whole millimetres
        np.testing.assert_array_equal(s.depth == 0, o.depth == 0)  # missing depth stays missing

    # a second capture adds to the first (stems continue), every_n keeps every 2nd frame
    rep = CaptureReport(out, "train", "good", 0)
    n2 = capture(src_cfg, out, split="train", count=2, every_n=2, progress=False, report=rep)
    assert n2 == 2 and rep.not_selected == 1 and rep.frames_read == 3
    back = open_dataset(out, "train")
    assert [r.stem for r in back][-2:] == ["000004", "000005"]
    np.testing.assert_array_equal(back[5].load().rgb, refs[2].load().rgb)


def test_capture_stops_at_end_of_a_finite_source(synth, tmp_path):
    rep = CaptureReport(tmp_path, "x", "y", 0)
    n = capture({"type": "folder", "path": str(synth), "split": "train"}, tmp_path / "o", count=50,
                progress=False, report=rep)
    assert n == 3 and rep.ended and "the source ended first" in rep.summary()


class ScriptedSource(BaseSource):
    """A source replaying a list of Frames / exceptions (FrameTimeout), then EndOfStream."""

    def __init__(self, items):
        super().__init__()
        self.name = "scripted"
        self.items = list(items)
        self.closed = False

    def _open(self):
        pass

    def _close(self):
        self.closed = True

    def _read(self, timeout_s):
        if not self.items:
            raise EndOfStream("done")
        item = self.items.pop(0)
        if isinstance(item, Exception):
            raise item
        return item


def _frame(i, rgb=True, depth=True, depth_number=None):
    rng = np.random.default_rng(i)
    return Frame(
        rgb=rng.integers(0, 256, (8, 10, 3), dtype=np.uint8) if rgb else None,
        depth=rng.uniform(0.4, 0.6, (8, 10)).astype(np.float32) if depth else None,
        color_frame_number=i, depth_frame_number=i if depth_number is None else depth_number,
        intrinsics=Intrinsics(10, 8, 9.0, 9.0, 5.0, 4.0),
    )


def test_capture_skips_and_counts_frames_missing_a_stream(tmp_path, caplog):
    frames = [_frame(0), _frame(1, rgb=False), FrameTimeout("slow"), _frame(2, depth=False), _frame(3),
              _frame(4, depth_number=3),  # stale depth: depth #3 again with colour #4
              _frame(5)]
    src = ScriptedSource(frames)
    rep = CaptureReport(tmp_path, "test", "unknown", 0)
    n = capture({}, tmp_path / "out", split="test", defect="unknown", count=10, progress=False, report=rep, source=src)
    assert n == 3
    assert (rep.missing_rgb, rep.missing_depth, rep.stale_depth, rep.timeouts) == (1, 1, 1, 1)
    assert rep.skipped == 3 and rep.frames_read == 6 and src.closed
    assert "skipped 3 with a missing or stale stream" in rep.summary()
    assert any("skipped" in r.getMessage() for r in caplog.records)  # reported, not silent
    back = open_dataset(tmp_path / "out", "test")
    assert len(back) == 3 and all(r.label == -1 for r in back)  # 'unknown' = unlabelled
    np.testing.assert_array_equal(back[1].load().rgb, frames[4].rgb)
    assert read_folder_config(tmp_path / "out")["intrinsics"] == {"fx": 9.0, "fy": 9.0, "cx": 5.0, "cy": 4.0,
                                                                 "width": 10, "height": 8}


def test_capture_from_a_recording(tmp_path):
    from test_sources import DEPTH_UNITS, make_recording  # tests/ is on sys.path (no __init__.py)

    rec = tmp_path / "r.db3"
    depths, colors = make_recording(rec, [(0, 0), (1, 1), (1, 2), (3, 3)],
                                    depth_fn=lambda n, w, h: np.full((h, w), 5000 + 10 * n, np.uint16))
    rep = CaptureReport(tmp_path, "", "", 0)
    n = capture({"type": "recording", "path": str(rec)}, tmp_path / "ds", count=10, progress=False, report=rep)
    assert n == 3 and rep.stale_depth == 1 and rep.ended  # (colour 2, depth 1) is stale: not written
    back = open_dataset(tmp_path / "ds", "train")
    d = back[2].load().depth
    valid = d[d > 0]
    np.testing.assert_allclose(valid, 5030 * DEPTH_UNITS, atol=0.0006)  # depth #3, in metres, mm-rounded
    np.testing.assert_array_equal(back[2].load().rgb, colors[3])
    assert read_folder_config(tmp_path / "ds")["intrinsics"]["fx"] == 32.0


def test_cli_source_json_and_config(synth, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["--source-json", json.dumps({"type": "folder", "path": str(synth), "split": "validation"}),
                 "--out", str(out), "--count", "1", "--defect", "good", "--split", "validation", "--quiet"])
    assert code == 0
    assert "captured 1/1" in capsys.readouterr().err
    assert len(open_dataset(out, "validation")) == 1

    # a daemon config: its `source` section is used, daemon-only keys dropped, paths relative to the file
    cfg_dir = tmp_path / "etc"
    cfg_dir.mkdir()
    (cfg_dir / "config.yaml").write_text(yaml.safe_dump({
        "bundle": "b", "source": {"type": "folder", "path": os.path.relpath(synth, cfg_dir), "split": "train",
                                  "exit_at_end": True, "read_timeout_s": 2}}))
    code = main(["--config", str(cfg_dir / "config.yaml"), "--out", str(out), "--count", "2"])
    assert code == 0
    assert "captured 2/2" in capsys.readouterr().out

    (cfg_dir / "bare.yaml").write_text("type: folder\npath: data\nsplit: train\n")
    (cfg_dir / "data").symlink_to(synth, target_is_directory=True)
    assert load_source_config(str(cfg_dir / "bare.yaml"))["path"] == str(cfg_dir / "data")
    assert main(["--config", str(cfg_dir / "bare.yaml"), "--out", str(out), "--count", "1", "--quiet"]) == 0


def test_cli_errors(tmp_path, capsys):
    assert main(["--source-json", "{not json", "--out", str(tmp_path)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert main(["--source-json", '{"type": "folder", "path": "x", "fsp": 3}', "--out", str(tmp_path)]) == 2
    assert "source.fsp" in capsys.readouterr().err
    assert main(["--source-json", '{"type": "folder", "path": "%s"}' % (tmp_path / "none"), "--out",
                 str(tmp_path / "o")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["--config", str(tmp_path / "missing.yaml"), "--out", str(tmp_path)]) == 2
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path)])  # a source is required
    with pytest.raises(ValueError, match="count"):
        capture({"type": "folder", "path": "x"}, tmp_path, count=0)


def test_add_parser_registers_capture(tmp_path):
    p = argparse.ArgumentParser(prog="rgbd-edge")
    sub = p.add_subparsers(dest="cmd", required=True)
    add_parser(sub)
    a = p.parse_args(["capture", "--source-json", "{}", "--out", str(tmp_path), "--every", "3"])
    assert a.cmd == "capture" and a.every == 3 and a.count == 100 and a.split == "train" and callable(a.func)
    assert a.func(a) == 2  # {} has no source type
