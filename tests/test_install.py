"""`rgbd-edge install` and `rollback` on tmp dirs: signature before extraction, safe members, read-only
root-owned versioned directories, the atomic `current` / `previous` links.

The archives are real .tar.gz files: made by convert.package.write_archive, then changed the way an
attacker would (a member's bytes after signing, a re-signature with another key, `../` and absolute
paths, a symlink out, a hard link, a device file, a fifo). Every refused install must leave nothing
behind: no file outside the root, no staging directory, no switched link.
"""
from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest
import yaml

from convert.package import seal_bundle, write_archive
from edge.bundle import load_bundle
from edge.cli import main
from edge.install import (CURRENT, EXIT_IO, EXIT_REFUSED, EXIT_USAGE, PREVIOUS, InstallError, install_archive,
                          link_target, rollback)
from edge.signing import load_public_key
from test_bundle import make_bundle, read_doc, write_doc
from test_signing import keys  # noqa: F401 - the key pairs 'line' (trusted) and 'other' (a fixture)


def make_archive(tmp_path: Path, name: str, key: Path | None, version: str = "1") -> Path:
    root = make_bundle(tmp_path / "src" / name)
    doc = read_doc(root)
    doc["model"]["version"] = version
    write_doc(root, doc)
    seal_bundle(root, key=key)
    return write_archive(root)


def members(archive: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    with tarfile.open(archive) as tf:
        return [(m, tf.extractfile(m).read() if m.isfile() else None) for m in tf.getmembers()]


def rewrite(archive: Path, out: Path, change) -> Path:
    """A copy of ``archive`` with ``change(list of (TarInfo, bytes|None))`` applied to its members."""
    items = change(members(archive))
    with tarfile.open(out, "w:gz") as tf:
        for info, data in items:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return out


def replace_member(name: str, fn):
    """A rewrite() change: member ``name``'s bytes replaced by fn(bytes), header otherwise kept."""
    def change(items):
        out = []
        for m, d in items:
            if m.name == name:
                d = fn(d)
                m.size = len(d)
            out.append((m, d))
        return out
    return change


def entry(name: str, data: bytes | None = None, **kw) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    if data is not None:
        info.size = len(data)
    for k, v in kw.items():
        setattr(info, k, v)
    return info, data


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name != ".install.lock") if root.exists() else []


@pytest.fixture
def archive(tmp_path, keys) -> Path:
    return make_archive(tmp_path, "cable", keys["line"])


# --------------------------------------------------------------------------- the archive the workstation writes


def test_archive_members_are_normalised(archive):
    items = members(archive)
    names = [m.name for m, _ in items]
    assert names[:3] == ["cable", "cable/manifest.sha256", "cable/bundle.sig"]  # verifiable before the rest
    for m, _ in items:
        assert (m.uid, m.gid, m.uname, m.gname, m.mtime) == (0, 0, "root", "root", 0)
        assert m.type in (tarfile.REGTYPE, tarfile.DIRTYPE)
        assert m.mode == (0o755 if m.isdir() else 0o644)
    assert archive.read_bytes() == write_archive(archive.parent / "cable", archive.parent / "again.tar.gz").read_bytes()


# --------------------------------------------------------------------------- install


def test_install_verifies_and_installs_read_only_and_switches_current(tmp_path, archive, keys, capsys):
    root = tmp_path / "root"
    assert main(["install", str(archive), "--root", str(root), "--trusted-key", str(keys["line.pub"])]) == 0
    out = capsys.readouterr().out
    b = load_bundle(root / CURRENT, trusted_keys=[keys["line.pub"]])
    target = root / f"rd-1-{b.digest[:12]}"
    assert b.root == target and f"installed {target}" in out and "signed by trusted key" in out
    assert os.readlink(root / CURRENT) == target.name and not (root / PREVIOUS).exists()
    assert leftovers(root) == [CURRENT, target.name]  # no staging directory left
    for p in [target, *target.iterdir()]:
        st = p.lstat()
        assert stat.S_IMODE(st.st_mode) == (0o555 if p.is_dir() else 0o444)
        if os.geteuid() == 0:
            assert (st.st_uid, st.st_gid) == (0, 0)
        assert not p.is_symlink()
    assert sorted(p.name for p in target.iterdir()) == sorted(
        ["bundle.sig", "manifest.sha256", "bundle.yaml", "rgbd.onnx", "rgbd.int8.onnx", "rgb.onnx", "depth.onnx"])


def test_second_install_keeps_previous_and_rollback_swaps(tmp_path, keys):
    root = tmp_path / "root"
    first = install_archive(make_archive(tmp_path, "a", keys["line"], "1"), root, [keys["line.pub"]])
    second = install_archive(make_archive(tmp_path, "b", keys["line"], "2"), root, [keys["line.pub"]])
    assert second.previous == first.path.name
    assert (link_target(root, CURRENT), link_target(root, PREVIOUS)) == (second.path.name, first.path.name)
    assert main(["rollback", "--root", str(root)]) == 0
    assert (link_target(root, CURRENT), link_target(root, PREVIOUS)) == (first.path.name, second.path.name)
    assert load_bundle(root / CURRENT).model_version == "1"
    assert rollback(root) == (second.path.name, first.path.name)  # and forward again
    again = install_archive(make_archive(tmp_path, "b2", keys["line"], "2"), root, [keys["line.pub"]])
    assert again.reused and again.path == second.path and link_target(root, CURRENT) == second.path.name


def test_rollback_without_previous_is_exit_2(tmp_path, archive, keys, capsys):
    root = tmp_path / "root"
    assert main(["rollback", "--root", str(root)]) == EXIT_USAGE
    install_archive(archive, root, [keys["line.pub"]])
    assert main(["rollback", "--root", str(root)]) == EXIT_USAGE
    assert "nothing to roll back to" in capsys.readouterr().err


def test_tampered_member_after_signing_is_refused(tmp_path, archive, keys, capsys):
    bad = rewrite(archive, tmp_path / "bad.tar.gz", replace_member("cable/rgb.onnx", lambda d: b"a different model"))
    root = tmp_path / "root"
    code = main(["install", str(bad), "--root", str(root), "--trusted-key", str(keys["line.pub"])])
    assert code == EXIT_REFUSED
    err = capsys.readouterr().err
    assert "member 'cable/rgb.onnx': sha256" in err and "changed after the bundle was signed" in err
    assert leftovers(root) == []


def test_edited_threshold_in_the_archive_is_refused(tmp_path, archive, keys):
    def every_part_passes(data: bytes) -> bytes:
        doc = yaml.safe_load(data)
        doc["modes"]["rgb"]["threshold"]["score"] = 1e30
        return yaml.safe_dump(doc).encode()

    bad = rewrite(archive, tmp_path / "bad.tar.gz", replace_member("cable/bundle.yaml", every_part_passes))
    with pytest.raises(InstallError, match="cable/bundle.yaml'?: sha256") as info:
        install_archive(bad, tmp_path / "root", [keys["line.pub"]])
    assert info.value.code == EXIT_REFUSED and leftovers(tmp_path / "root") == []


def test_resigned_with_another_key_is_refused_before_extraction(tmp_path, keys):
    resigned = make_archive(tmp_path, "cable", keys["other"])
    with pytest.raises(InstallError, match="which this device does not trust") as info:
        install_archive(resigned, tmp_path / "root", [keys["line.pub"]])
    assert info.value.code == EXIT_REFUSED and leftovers(tmp_path / "root") == []


def test_unsigned_archive_needs_allow_unsigned(tmp_path, keys, capsys):
    plain = make_archive(tmp_path, "cable", None)
    root = tmp_path / "root"
    assert main(["install", str(plain), "--root", str(root), "--trusted-key", str(keys["line.pub"])]) == EXIT_REFUSED
    assert "not signed" in capsys.readouterr().err
    assert main(["install", str(plain), "--root", str(root)]) == EXIT_USAGE
    assert "no trusted key" in capsys.readouterr().err
    assert main(["install", str(plain), "--root", str(root), "--allow-unsigned"]) == 0
    assert "NOT signature-checked" in capsys.readouterr().out
    assert load_bundle(root / CURRENT).integrity == "manifest"


def test_legacy_archive_without_manifest_is_refused(tmp_path, keys):
    src = make_bundle(tmp_path / "src" / "old")
    with tarfile.open(tmp_path / "old.tar.gz", "w:gz") as tf:
        tf.add(src, arcname="old")
    with pytest.raises(InstallError, match="no old/manifest.sha256") as info:
        install_archive(tmp_path / "old.tar.gz", tmp_path / "root", [keys["line.pub"]])
    assert info.value.code == EXIT_REFUSED


@pytest.mark.parametrize("evil, problem", [
    (lambda t: entry("cable/../../escaped.txt", b"x"), "must be relative"),
    (lambda t: entry(str(t / "escaped.txt"), b"x"), "must be relative"),
    (lambda t: entry("cable/link", type=tarfile.SYMTYPE, linkname=str(t / "escaped.txt")), "is a symlink"),
    (lambda t: entry("cable/hard", type=tarfile.LNKTYPE, linkname="/etc/passwd"), "is a hard link"),
    (lambda t: entry("cable/dev", type=tarfile.CHRTYPE, devmajor=1, devminor=3), "is a device file"),
    (lambda t: entry("cable/fifo", type=tarfile.FIFOTYPE), "is a fifo"),
    (lambda t: entry("cable/sparse", b"x", type=tarfile.GNUTYPE_SPARSE), "sparse or contiguous"),
    (lambda t: entry("elsewhere/x", b"x"), "not inside the one top-level directory"),
    (lambda t: entry("cable/rgb.onnx", b"second copy"), "appears twice"),
    (lambda t: entry("cable/extra.yaml", b"normal_gain: 9\n"), "not in the manifest: extra.yaml"),
])
def test_malicious_members_are_refused_before_anything_is_written(tmp_path, archive, keys, evil, problem):
    outside = tmp_path / "outside"
    outside.mkdir()
    bad = rewrite(archive, tmp_path / "evil.tar.gz", lambda items: items + [evil(outside)])
    root = tmp_path / "root"
    with pytest.raises(InstallError, match=problem) as info:
        install_archive(bad, root, [keys["line.pub"]])
    assert info.value.code == EXIT_REFUSED
    assert leftovers(root) == [] and list(outside.iterdir()) == []
    assert not (tmp_path / "escaped.txt").exists()


def test_damaged_or_missing_archive(tmp_path, archive, keys, capsys):
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(archive.read_bytes()[: len(archive.read_bytes()) // 2])
    assert main(["install", str(cut), "--root", str(tmp_path / "r"), "--trusted-key", str(keys["line.pub"])]) == 3
    assert "damaged" in capsys.readouterr().err
    assert leftovers(tmp_path / "r") == []
    assert main(["install", str(tmp_path / "absent.tar.gz"), "--root", str(tmp_path / "r"),
                 "--trusted-key", str(keys["line.pub"])]) == EXIT_USAGE


def test_trusted_keys_from_the_daemon_config(tmp_path, archive, keys, capsys):
    (tmp_path / "etc" / "keys").mkdir(parents=True)
    (tmp_path / "etc" / "keys" / "line.pub").write_bytes(keys["line.pub"].read_bytes())
    cfg = tmp_path / "etc" / "config.yaml"
    cfg.write_text(yaml.safe_dump({"bundle": "/opt/rgbd-edge/bundles/current", "trusted_keys": ["keys/line.pub"]}))
    assert main(["install", str(archive), "--root", str(tmp_path / "root"), "--config", str(cfg)]) == 0
    cfg.write_text(yaml.safe_dump({"bundle": "x", "trusted_keys": ["keys/missing.pub"]}))
    assert main(["install", str(archive), "--root", str(tmp_path / "root"), "--config", str(cfg)]) == EXIT_USAGE
    assert "trusted_keys.0" in capsys.readouterr().err
    cfg.write_text(yaml.safe_dump({"bundle": "x"}))
    assert main(["install", str(archive), "--root", str(tmp_path / "root"), "--config", str(cfg)]) == EXIT_USAGE
    assert "lists no trusted_keys" in capsys.readouterr().err


def test_current_that_is_not_a_link_is_left_alone(tmp_path, archive, keys):
    root = tmp_path / "root"
    (root / CURRENT).mkdir(parents=True)
    with pytest.raises(InstallError, match="is not a symlink") as info:
        install_archive(archive, root, [keys["line.pub"]])
    assert info.value.code == EXIT_USAGE and leftovers(root) == [CURRENT]


def test_unwritable_root_is_exit_4(tmp_path, archive, keys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(InstallError) as info:
        install_archive(archive, blocker / "root", [load_public_key(keys["line.pub"])])
    assert info.value.code == EXIT_IO
