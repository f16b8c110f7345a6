"""Dataset readers/writers (edge.data): folder round trip, MVTec 3D-AD reader, synthetic data, errors."""
from __future__ import annotations

import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from edge.data import (
    DatasetError,
    SampleRef,
    SyntheticConfig,
    list_mvtec3d_split,
    load_mvtec3d_split,
    make_sample,
    make_synthetic_dataset,
    open_dataset,
    read_folder_dataset,
    write_folder_sample,
)
from edge.frames import RGBDSample



def _sample(h=24, w=32, seed=0, mask=True, name="") -> RGBDSample:
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    depth = rng.uniform(0.3, 0.9, (h, w)).astype(np.float32)
    depth[rng.random((h, w)) < 0.1] = 0.0
    m = rng.random((h, w)) < 0.2 if mask else None
    return RGBDSample(rgb=rgb, depth=depth, mask=m, label=1, name=name)


# ---------------------------------------------------------------- folder layout


@pytest.mark.parametrize("scale", [0.001, 0.0001])
def test_folder_round_trip(tmp_path, scale):
    a, b, g = _sample(seed=1), _sample(seed=2, mask=False), _sample(seed=3)
    g.mask[:] = False
    intr = {"fx": 30.0, "fy": 30.0, "cx": 15.5, "cy": 11.5, "width": 32, "height": 24}
    write_folder_sample(tmp_path, "test", "scratch", "000", a, depth_scale=scale, intrinsics=intr)
    write_folder_sample(tmp_path, "test", "scratch", "001", b, depth_scale=scale)
    write_folder_sample(tmp_path, "test", "good", "000", g, depth_scale=scale)
    res = write_folder_sample(tmp_path, "train", "good", "000", RGBDSample(rgb=g.rgb, depth=g.depth), depth_scale=scale)
    assert res["mask"] is None and res["clipped"] == 0

    refs = read_folder_dataset(tmp_path, "test")
    assert [r.name for r in refs] == ["test/good/000", "test/scratch/000", "test/scratch/001"]
    assert [r.label for r in refs] == [0, 1, 1]
    got = {r.name: r.load() for r in refs}
    for src, name in ((a, "test/scratch/000"), (b, "test/scratch/001"), (g, "test/good/000")):
        s = got[name]
        assert s.rgb.dtype == np.uint8 and np.array_equal(s.rgb, src.rgb)
        assert s.depth.dtype == np.float32
        assert np.array_equal(s.depth == 0, src.depth == 0)
        assert np.abs(s.depth - src.depth).max() <= scale / 2 + 1e-6
        assert s.meta["depth_scale"] == scale and s.meta["intrinsics"] == intr
    assert np.array_equal(got["test/scratch/000"].mask, a.mask)
    assert got["test/scratch/001"].mask is None  # defective without a mask file: unknown
    assert got["test/good/000"].mask is not None and not got["test/good/000"].mask.any()
    assert got["test/scratch/000"].defect == "scratch"

    # exact to the quantum: writing what was read reproduces the stored counts
    s = got["test/scratch/000"]
    write_folder_sample(tmp_path, "again", "scratch", "000", s, depth_scale=scale)
    again = read_folder_dataset(tmp_path, "again")[0].load()
    assert np.array_equal(again.depth, s.depth)

    train = open_dataset(tmp_path, "train")[0].load()
    assert train.mask is None and train.label == 0 and train.name == "train/good/000"


def test_folder_clipping_and_invalid_depth(tmp_path):
    s = _sample(h=4, w=4, mask=False)
    s.depth[0, 0] = 70.0  # beyond 65.535 m at 1 mm
    s.depth[0, 1] = 0.0002  # rounds to 0 counts: must not become "missing"
    s.depth[0, 2] = np.nan
    s.depth[0, 3] = -1.0
    with pytest.warns(RuntimeWarning, match="clipped"):
        res = write_folder_sample(tmp_path, "test", "good", "x", s)
    assert res["clipped"] == 2
    d = read_folder_dataset(tmp_path, "test")[0].load().depth
    assert d[0, 0] == pytest.approx(65.535) and d[0, 1] == pytest.approx(0.001)
    assert d[0, 2] == 0 and d[0, 3] == 0


def test_folder_write_refuses_other_depth_scale(tmp_path):
    write_folder_sample(tmp_path, "train", "good", "000", _sample(), depth_scale=0.001)
    with pytest.raises(DatasetError, match="depth_scale") as e:
        write_folder_sample(tmp_path, "train", "good", "001", _sample(), depth_scale=0.0001)
    assert str(tmp_path / "dataset.yaml") in str(e.value) and "0.0001" in str(e.value)
    with pytest.raises(DatasetError, match="depth_scale"):
        write_folder_sample(tmp_path / "new", "train", "good", "000", _sample(), depth_scale=0)
    with pytest.raises(DatasetError, match="stem"):
        write_folder_sample(tmp_path, "train", "good", "../x", _sample())


def test_folder_bad_yaml(tmp_path):
    write_folder_sample(tmp_path, "train", "good", "000", _sample())
    cfg = tmp_path / "dataset.yaml"
    cfg.write_text("format: rgbd-folder\nversion: 1\ndepth_scale: -1\n")
    with pytest.raises(DatasetError, match="depth_scale") as e:
        read_folder_dataset(tmp_path, "train")
    assert str(cfg) in str(e.value)
    cfg.write_text("format: rgbd-folder\nversion: 1\ndepth_scale: 1\ndepth_units: mm\n")
    with pytest.raises(DatasetError, match="contradicts"):
        read_folder_dataset(tmp_path, "train")
    cfg.write_text("format: rgbd-folder\nversion: 1\ndepth_scale: 1e-3\n")  # YAML 1.1 string
    assert read_folder_dataset(tmp_path, "train")[0].depth_scale == 0.001
    cfg.unlink()
    with pytest.raises(DatasetError) as e:
        read_folder_dataset(tmp_path, "train")
    assert str(cfg) in str(e.value)
    with pytest.raises(DatasetError, match="no dataset.yaml"):
        open_dataset(tmp_path, "train")


def test_folder_missing_split_names_path(tmp_path):
    write_folder_sample(tmp_path, "train", "good", "000", _sample())
    with pytest.raises(DatasetError) as e:
        read_folder_dataset(tmp_path, "validation")
    msg = str(e.value)
    assert str(tmp_path / "validation") in msg and "train" in msg


def test_folder_corrupt_png_names_file(tmp_path):
    res = write_folder_sample(tmp_path, "test", "good", "000", _sample())
    res["color"].write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    ref = read_folder_dataset(tmp_path, "test")[0]
    with pytest.raises(DatasetError) as e:
        ref.load()
    assert str(res["color"]) in str(e.value)


def test_folder_mismatched_sizes_name_files(tmp_path):
    res = write_folder_sample(tmp_path, "test", "good", "000", _sample(h=24, w=32))
    cv2.imwrite(str(res["depth"]), np.full((20, 32), 500, np.uint16))
    with pytest.raises(DatasetError) as e:
        read_folder_dataset(tmp_path, "test")[0].load()
    assert str(res["color"]) in str(e.value) and str(res["depth"]) in str(e.value)
    cv2.imwrite(str(res["depth"]), np.full((24, 32), 50, np.uint8))  # 8-bit depth is refused
    with pytest.raises(DatasetError, match="16-bit"):
        read_folder_dataset(tmp_path, "test")[0].load()


def test_folder_unpaired_stems_named(tmp_path):
    res = write_folder_sample(tmp_path, "test", "good", "007", _sample())
    res["depth"].unlink()
    with pytest.raises(DatasetError, match="007") as e:
        read_folder_dataset(tmp_path, "test")
    assert str(res["color"].parent) in str(e.value)


def test_sample_refs_pickle(tmp_path):
    write_folder_sample(tmp_path, "test", "good", "000", _sample())
    ref = read_folder_dataset(tmp_path, "test")[0]
    assert isinstance(ref, SampleRef)
    back = pickle.loads(pickle.dumps(ref))
    assert back == ref and np.array_equal(back.load().depth, ref.load().depth)


# ---------------------------------------------------------------- MVTec 3D-AD


def _write_mvtec(root: Path, compression=None, h=12, w=10) -> dict:
    """A tiny MVTec 3D-AD category: train/good (no gt), test/good (zero gt), test/cut (gt = 254)."""
    rng = np.random.default_rng(0)
    truth = {}
    for split, defect, n in (("train", "good", 2), ("test", "good", 1), ("test", "cut", 2)):
        d = root / split / defect
        (d / "rgb").mkdir(parents=True)
        (d / "xyz").mkdir()
        if split == "test":
            (d / "gt").mkdir()
        for i in range(n):
            stem = f"{i:03d}"
            rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            xyz = rng.uniform(-0.05, 0.7, (h, w, 3)).astype(np.float32)
            xyz[0, 0] = 0.0
            xyz[0, 1, 2] = np.nan
            cv2.imwrite(str(d / "rgb" / f"{stem}.png"), rgb[:, :, ::-1])
            tifffile.imwrite(d / "xyz" / f"{stem}.tiff", xyz, photometric="rgb", compression=compression)
            gt = np.zeros((h, w), np.uint8)
            if defect != "good":
                gt[2:5, 3:7] = 254
            if split == "test":
                cv2.imwrite(str(d / "gt" / f"{stem}.png"), gt)
            truth[f"{split}/{defect}/{stem}"] = (rgb, xyz, gt > 0)
    return truth


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_mvtec_reader(tmp_path, compression):
    truth = _write_mvtec(tmp_path, compression)
    refs = open_dataset(tmp_path, "test")
    assert [r.name for r in refs] == ["test/cut/000", "test/cut/001", "test/good/000"]
    for r in refs:
        s = r.load()
        rgb, xyz, gt = truth[s.name]
        assert np.array_equal(s.rgb, rgb)
        z = np.nan_to_num(xyz[..., 2], nan=0.0)
        z[z < 0] = 0.0
        assert s.depth.dtype == np.float32 and np.array_equal(s.depth, z)
        assert s.depth[0, 0] == 0 and s.depth[0, 1] == 0
        assert np.array_equal(s.mask, gt)
        assert s.label == (0 if s.defect == "good" else 1)
        assert s.meta["source"]["xyz"].endswith(f"{s.name.split('/')[-1]}.tiff")
    assert load_mvtec3d_split(tmp_path, "test", defects=["cut"])[0].mask.sum() == 12
    train = list_mvtec3d_split(tmp_path, "train")
    assert len(train) == 2 and all(r.load().mask is None for r in train)


def test_mvtec_grey_and_rgba_png(tmp_path):
    _write_mvtec(tmp_path)
    p = tmp_path / "train" / "good" / "rgb" / "000.png"
    grey = np.arange(120, dtype=np.uint8).reshape(12, 10)
    cv2.imwrite(str(p), grey)
    assert np.array_equal(list_mvtec3d_split(tmp_path, "train")[0].load().rgb, np.dstack([grey] * 3))
    bgra = np.zeros((12, 10, 4), np.uint8)
    bgra[..., 2] = 200  # red in BGRA
    bgra[..., 3] = 255
    cv2.imwrite(str(p), bgra)
    rgb = list_mvtec3d_split(tmp_path, "train")[0].load().rgb
    assert rgb.shape == (12, 10, 3) and (rgb[..., 0] == 200).all() and (rgb[..., 1:] == 0).all()


def test_mvtec_errors(tmp_path):
    _write_mvtec(tmp_path)
    with pytest.raises(DatasetError) as e:
        list_mvtec3d_split(tmp_path, "validation")
    assert str(tmp_path / "validation") in str(e.value) and "test, train" in str(e.value)

    d = tmp_path / "test" / "cut"
    (d / "xyz" / "001.tiff").write_bytes(b"II*\x00garbage")
    ref = list_mvtec3d_split(tmp_path, "test", defects=["cut"])[1]
    with pytest.raises(DatasetError) as e:
        ref.load()
    assert str(d / "xyz" / "001.tiff") in str(e.value)

    tifffile.imwrite(d / "xyz" / "001.tiff", np.ones((12, 11, 3), np.float32), photometric="rgb")
    with pytest.raises(DatasetError) as e:
        ref.load()
    assert str(d / "xyz" / "001.tiff") in str(e.value) and str(d / "rgb" / "001.png") in str(e.value)

    (d / "rgb" / "000.png").write_bytes(b"not a png at all")
    with pytest.raises(DatasetError) as e:
        list_mvtec3d_split(tmp_path, "test", defects=["cut"])[0].load()
    assert str(d / "rgb" / "000.png") in str(e.value)

    (d / "xyz" / "001.tiff").rename(d / "xyz" / "009.tiff")
    with pytest.raises(DatasetError) as e:
        list_mvtec3d_split(tmp_path, "test")
    assert "001" in str(e.value) and "009" in str(e.value)

    with pytest.raises(DatasetError, match="neither"):
        open_dataset(tmp_path / "test", "cut")
    with pytest.raises(DatasetError, match="does not exist"):
        open_dataset(tmp_path / "nope", "test")


# ---------------------------------------------------------------- synthetic


def test_synthetic_deterministic():
    cfg = SyntheticConfig(size=64)
    for defect in ("good", "rgb_only", "depth_only", "both"):
        a = make_sample(np.random.default_rng(7), cfg, defect)
        b = make_sample(np.random.default_rng(7), cfg, defect)
        assert np.array_equal(a.rgb, b.rgb) and np.array_equal(a.depth, b.depth) and np.array_equal(a.mask, b.mask)
    c = make_sample(np.random.default_rng(8), cfg, "good")
    assert not np.array_equal(a.rgb, c.rgb)


@pytest.mark.parametrize("defect", ["rgb_only", "depth_only", "both"])
def test_synthetic_defects_where_masks_say(defect):
    cfg = SyntheticConfig()
    for seed in range(6):
        good = make_sample(np.random.default_rng(seed), cfg, "good")
        bad = make_sample(np.random.default_rng(seed), cfg, defect)
        m = bad.mask
        assert good.label == 0 and not good.mask.any() and bad.label == 1 and bad.defect == defect
        assert 0.002 < m.mean() < 0.06, m.mean()
        d_rgb = (good.rgb != bad.rgb).any(axis=2)
        d_depth = good.depth != bad.depth
        assert not (d_rgb & ~m).any() and not (d_depth & ~m).any()  # nothing changes outside the mask
        valid = good.depth > 0
        if defect in ("rgb_only", "both"):
            assert d_rgb[m].mean() > 0.95
        else:
            assert not d_rgb.any()
        if defect in ("depth_only", "both"):
            assert d_depth[m & valid].mean() > 0.95
            assert np.abs(good.depth - bad.depth)[m & valid & (bad.depth > 0)].max() > 0.002
        else:
            assert not d_depth.any()


def test_synthetic_geometry_is_pinhole_plane():
    cfg = SyntheticConfig(size=96, depth_noise=0.0, hole_fraction=0.0, edge_dropout=0.0)
    s = make_sample(np.random.default_rng(3), cfg, "good")
    z = s.depth.astype(np.float64)
    assert 0.4 < np.median(z[z > 0]) < 0.6
    # 1/z of the background plane is linear in (u, v): fit on the image border rows/cols
    v, u = np.mgrid[0 : cfg.size, 0 : cfg.size]
    border = np.zeros_like(z, bool)
    border[:5], border[-5:], border[:, :5], border[:, -5:] = True, True, True, True
    sel = border & (z > 0)
    A = np.stack([u[sel], v[sel], np.ones(sel.sum())], 1)
    coef, *_ = np.linalg.lstsq(A, 1 / z[sel], rcond=None)
    assert np.abs(A @ coef - 1 / z[sel]).max() < 1e-5
    # the object stands 2 cm proud of the plane
    pred = 1 / (np.stack([u, v, np.ones_like(u)], -1) @ coef)
    top = (z > 0) & (pred - z > 0.01)
    assert 0.05 < top.mean() < 0.4 and np.median((pred - z)[top]) == pytest.approx(0.02, abs=0.003)


def test_synthetic_dataset_written_and_readable(tmp_path):
    cfg = SyntheticConfig(size=48, n_train=3, n_validation=1, n_test_good=2, n_test_per_defect=2, seed=5)
    root = make_synthetic_dataset(tmp_path / "a", cfg)
    make_synthetic_dataset(tmp_path / "b", cfg)
    files_a = sorted(p.relative_to(root) for p in root.rglob("*.png"))
    assert len(files_a) == (3 + 1 + 2 + 6) * 2 + 8  # colour + depth everywhere, masks in test
    for rel in files_a:
        assert (root / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    with pytest.raises(DatasetError, match="not empty"):
        make_synthetic_dataset(root, cfg)
    make_synthetic_dataset(root, cfg, overwrite=True)

    assert len(open_dataset(root, "train")) == 3 and len(open_dataset(root, "validation")) == 1
    test = open_dataset(root, "test")
    assert sorted({r.defect for r in test}) == ["both", "depth_only", "good", "rgb_only"]
    for r in test:
        s = r.load()
        assert s.rgb.shape == (48, 48, 3) and s.meta["intrinsics"]["width"] == 48
        assert s.mask is not None and s.mask.any() == (s.label == 1)
    assert open_dataset(root, "train")[0].load().mask is None


def test_edge_data_imports_stay_light():
    code = "import sys, edge.data; bad = {'torch', 'scipy'} & set(sys.modules); assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


# ---------------------------------------------------------------- real data


@pytest.mark.realdata("mvtec3d/cable_gland")
def test_real_cable_gland(real_data):
    assert len(open_dataset(real_data, "train")) == 80
    assert len(open_dataset(real_data, "validation")) == 23
    test = open_dataset(real_data, "test")
    assert {"good", "bent", "cut", "hole", "thread"} <= {r.defect for r in test}
    train0 = open_dataset(real_data, "train")[0].load()
    assert train0.mask is None and train0.label == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for r in [t for t in test if t.stem in ("000", "001", "002")]:
            s = r.load()
            assert s.rgb.shape == (400, 400, 3) and s.depth.shape == (400, 400)
            z = s.depth[s.depth > 0]
            assert 0.2 < z.min() and z.max() < 1.5  # metres
            assert 0.2 < (s.depth == 0).mean() < 0.7  # many points are missing
            assert s.mask is not None and s.mask.any() == (s.label == 1)
