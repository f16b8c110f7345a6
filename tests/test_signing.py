"""Signed bundles: the file manifest (every file, bundle.yaml included), Ed25519 signatures, trusted
keys in the device config, `rgbd-convert keygen` / `sign`, `rgbd-edge check-bundle --trusted-key`,
and the daemon refusing an edited bundle with exit 3.

Every tamper here is real: bytes of a real bundle directory are changed on disk after it was sealed
(or signed), and the real loader, CLI or daemon process is asked to take it.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from convert.package import generate_key, public_key_path, seal_bundle, sign_digest
from edge.bundle import BundleError, bundle_summary, load_bundle
from edge.config import ConfigError, load_config
from edge.manifest import MANIFEST_FILE, ManifestError, build_manifest, format_manifest, parse_manifest
from edge.signing import (PURPOSE, SIGNATURE_FILE, SignatureError, key_id, load_public_key, signature_document,
                          signed_message)
from test_bundle import make_bundle, read_doc, write_doc

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Two key pairs: 'line' (trusted by the device) and 'other' (not trusted)."""
    d = tmp_path_factory.mktemp("keys")
    line, _ = generate_key(d / "line")
    other, _ = generate_key(d / "other")
    return {"line": line, "line.pub": public_key_path(line), "other": other, "other.pub": public_key_path(other)}


@pytest.fixture
def signed(tmp_path, keys) -> Path:
    root = make_bundle(tmp_path / "b")
    seal_bundle(root, key=keys["line"])
    return root


def refused(root: Path, **kw) -> BundleError:
    with pytest.raises(BundleError) as info:
        load_bundle(root, **kw)
    return info.value


def edit_threshold(root: Path, value=1e30) -> None:
    """What an attacker on the device would do: every part passes."""
    os.chmod(root / "bundle.yaml", 0o644)
    doc = read_doc(root)
    for m in doc["modes"].values():
        m["threshold"]["score"] = value
    write_doc(root, doc)


# --------------------------------------------------------------------------- keys


def test_keygen_writes_a_0600_private_key_and_a_public_key_beside_it(tmp_path):
    priv, pub = generate_key(tmp_path / "k" / "line")
    assert pub == tmp_path / "k" / "line.pub"
    assert priv.stat().st_mode & 0o777 == 0o600 and pub.stat().st_mode & 0o777 == 0o644
    assert b"PRIVATE KEY" in priv.read_bytes() and b"PUBLIC KEY" in pub.read_bytes()
    k = load_public_key(pub)
    assert len(k.raw) == 32 and k.key_id == key_id(k.raw) and len(k.key_id) == 64
    with pytest.raises(FileExistsError, match="never overwritten"):
        generate_key(tmp_path / "k" / "line")


def test_a_private_key_or_garbage_is_not_a_trusted_key(tmp_path, keys):
    with pytest.raises(SignatureError, match="PRIVATE key") as info:
        load_public_key(keys["line"])
    assert info.value.reason == "bad-key"
    (tmp_path / "junk.pub").write_text("-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n")
    with pytest.raises(SignatureError, match="not a PEM public key"):
        load_public_key(tmp_path / "junk.pub")
    with pytest.raises(SignatureError, match="cannot read"):
        load_public_key(tmp_path / "absent.pub")
    rsa = subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"],
                         capture_output=True, check=True).stdout
    (tmp_path / "rsa.key").write_bytes(rsa)
    pub = subprocess.run(["openssl", "pkey", "-in", str(tmp_path / "rsa.key"), "-pubout"], capture_output=True,
                         check=True).stdout
    (tmp_path / "rsa.pub").write_bytes(pub)
    with pytest.raises(SignatureError, match="not an Ed25519 public key"):
        load_public_key(tmp_path / "rsa.pub")


# --------------------------------------------------------------------------- manifest


def test_manifest_lists_every_file_in_sha256sum_form(signed):
    data = (signed / MANIFEST_FILE).read_bytes()
    entries = parse_manifest(data, MANIFEST_FILE)
    assert set(entries) == {"bundle.yaml", "rgbd.onnx", "rgbd.int8.onnx", "rgb.onnx", "depth.onnx"}
    assert format_manifest(entries) == data  # canonical: one set of files, one manifest
    check = subprocess.run(["sha256sum", "--strict", "-c", MANIFEST_FILE], cwd=signed, capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize("text, problem", [
    ("", "empty"),
    ("0" * 64 + "  bundle.yaml", "no newline"),
    ("0" * 64 + " bundle.yaml\n", "sha256sum format"),
    ("0" * 63 + "A  bundle.yaml\n", "sha256sum format"),
    ("0" * 64 + "  ./bundle.yaml\n", "inside it"),
    ("0" * 64 + "  ../x\n", "inside it"),
    ("0" * 64 + "  /etc/passwd\n", "inside it"),
    ("0" * 64 + "  a//b\n", "not normalised"),
    ("0" * 64 + "  bundle.sig\n", "never listed"),
    ("0" * 64 + "  b\n" + "0" * 64 + "  a\n", "out of order"),
    ("0" * 64 + "  a\n" + "0" * 64 + "  a\n", "listed twice"),
])
def test_a_manifest_that_is_not_canonical_is_refused(text, problem):
    with pytest.raises(ManifestError, match=problem):
        parse_manifest(text.encode(), "m")


def test_bundle_digest_is_the_sha256_of_the_manifest(signed):
    import hashlib

    b = load_bundle(signed)
    assert b.digest == hashlib.sha256((signed / MANIFEST_FILE).read_bytes()).hexdigest()
    assert b.integrity == "manifest" and b.signed_by is None  # no key given: unsigned check
    assert f"digest: {b.digest}" in bundle_summary(b)


def test_builder_refuses_links_in_a_bundle(tmp_path):
    root = make_bundle(tmp_path / "b")
    (root / "link.onnx").symlink_to(root / "rgb.onnx")
    with pytest.raises(ValueError, match="only regular files.*link.onnx"):
        build_manifest(root)


# --------------------------------------------------------------------------- bundle.yaml is covered


def test_threshold_edited_to_1e30_is_refused_signed_or_not(tmp_path, keys, capsys):
    from edge.cli import main

    unsigned = make_bundle(tmp_path / "unsigned")
    seal_bundle(unsigned)
    signed = make_bundle(tmp_path / "signed")
    seal_bundle(signed, key=keys["line"])
    for root in (unsigned, signed):
        edit_threshold(root)
        for kw in ({}, {"verify_hashes": False}):  # bundle.yaml is hashed even without verify_hashes
            exc = refused(root, **kw)
            assert "bundle.yaml: sha256 mismatch" in str(exc) and "edited after the bundle was made" in str(exc)
        assert main(["check-bundle", str(root)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("rgbd-edge check-bundle: error: ") and "bundle.yaml: sha256 mismatch" in err
    exc = refused(signed, trusted_keys=[keys["line.pub"]])
    assert "bundle.yaml: sha256 mismatch" in str(exc)


def test_manifest_without_bundle_yaml_is_refused(signed):
    entries = parse_manifest((signed / MANIFEST_FILE).read_bytes(), "m")
    del entries["bundle.yaml"]
    (signed / MANIFEST_FILE).write_bytes(format_manifest(entries))
    assert "does not list bundle.yaml" in str(refused(signed))


def test_unlisted_extra_files_are_refused_but_the_engine_cache_is_not(signed):
    (signed / "engines").mkdir()
    (signed / "engines" / "rgb-fp32-0123456789abcdef.engine").write_bytes(b"built on the device")
    assert load_bundle(signed).integrity == "manifest"
    (signed / "preprocess.yaml").write_text("normal_gain: 100\n")
    exc = refused(signed)
    assert "files not in the manifest: preprocess.yaml" in str(exc)
    (signed / "preprocess.yaml").unlink()
    (signed / "sub").mkdir()
    (signed / "sub" / "x.onnx").symlink_to(signed / "rgb.onnx")
    assert "files not in the manifest: sub/x.onnx" in str(refused(signed))


def test_listed_graph_changed_is_refused_and_names_both_digests(signed):
    (signed / "rgb.onnx").write_bytes(b"another model")
    msg = str(refused(signed))
    assert "rgb.onnx: sha256 mismatch: the manifest lists" in msg
    load_bundle(signed, verify_hashes=False)  # explicit opt-out (no key) skips the graphs' hashes


def test_files_and_manifest_must_agree(tmp_path):
    root = make_bundle(tmp_path / "b")
    seal_bundle(root)
    doc = read_doc(root)
    doc["files"]["rgb.onnx"] = "0" * 64
    write_doc(root, doc)
    (root / MANIFEST_FILE).unlink()
    (root / MANIFEST_FILE).write_bytes(build_manifest(root, skip_dirs=("engines",)))
    assert "rgb.onnx: bundle.yaml lists 000000000000..., manifest.sha256 lists" in str(refused(root))


def test_legacy_bundle_loads_with_a_warning_only_without_keys(tmp_path, keys, caplog, capsys):
    from edge.cli import main

    root = make_bundle(tmp_path / "old")  # made before manifests: no manifest.sha256
    b = load_bundle(root)
    assert b.integrity == "legacy" and len(b.digest) == 64
    assert "bundle.yaml (thresholds, preprocessing) is not covered by any hash" in caplog.text
    assert b.digest == load_bundle(root).digest  # names what was loaded
    assert main(["check-bundle", str(root)]) == 0
    out = capsys.readouterr().out
    assert "integrity: legacy bundle" in out and "WARNING:" in out
    exc = refused(root, trusted_keys=[keys["line.pub"]])
    assert "not signed" in str(exc) and "rgbd-convert sign" in str(exc)


# --------------------------------------------------------------------------- signatures


def test_signed_bundle_verifies_with_the_trusted_key(signed, keys):
    line = load_public_key(keys["line.pub"])
    b = load_bundle(signed, trusted_keys=[keys["other.pub"], line])  # any one of the trusted keys
    assert b.integrity == "signed" and b.signed_by.key_id == line.key_id and b.hashes_verified
    assert f"signed, verified with trusted key {line.key_id[:12]}" in bundle_summary(b)
    sig = json.loads((signed / SIGNATURE_FILE).read_text())
    assert sig["purpose"] == PURPOSE and sig["key_id"] == line.key_id and sig["digest"] == b.digest


def test_keys_force_the_hash_check(signed, keys):
    (signed / "depth.onnx").write_bytes(b"swapped graph")
    assert "depth.onnx: sha256 mismatch" in str(refused(signed, verify_hashes=False,
                                                        trusted_keys=[keys["line.pub"]]))


def test_unsigned_bundle_is_refused_when_a_key_is_trusted(tmp_path, keys):
    root = make_bundle(tmp_path / "b")
    seal_bundle(root)
    exc = refused(root, trusted_keys=[keys["line.pub"]])
    assert "the bundle is not signed (no bundle.sig)" in str(exc) and exc.problem == "unsigned"


def test_tampered_then_resigned_with_an_untrusted_key_is_refused(signed, keys):
    edit_threshold(signed)
    seal_bundle(signed, key=keys["other"])  # the attacker re-seals with their own key
    assert load_bundle(signed).integrity == "manifest"  # consistent, but...
    other = load_public_key(keys["other.pub"])
    exc = refused(signed, trusted_keys=[keys["line.pub"]])
    assert f"signed by key {other.key_id[:12]}, which this device does not trust" in str(exc)
    assert exc.problem == "untrusted-key"


def test_manifest_regenerated_without_resigning_is_refused(signed, keys):
    edit_threshold(signed)
    (signed / MANIFEST_FILE).write_bytes(build_manifest(signed, skip_dirs=("engines",)))
    exc = refused(signed, trusted_keys=[keys["line.pub"]])
    assert "covers digest" in str(exc) and "files changed after signing" in str(exc)
    assert exc.problem == "digest-mismatch"


def test_forged_signature_over_the_new_digest_is_refused(signed, keys):
    """The attacker edits the bundle, re-makes the manifest and rewrites bundle.sig's digest
    (keeping the trusted key id) with a signature of their own."""
    edit_threshold(signed)
    data = build_manifest(signed, skip_dirs=("engines",))
    (signed / MANIFEST_FILE).write_bytes(data)
    import hashlib

    digest = hashlib.sha256(data).hexdigest()
    forged_sig, _ = sign_digest(keys["other"], digest)
    line = load_public_key(keys["line.pub"])
    doc = json.loads(forged_sig)
    doc["key_id"] = line.key_id
    (signed / SIGNATURE_FILE).write_text(json.dumps(doc))
    exc = refused(signed, trusted_keys=[keys["line.pub"]])
    assert "does not verify with key" in str(exc) and exc.problem == "bad-signature"


def test_a_signature_made_for_another_purpose_is_refused(signed, keys):
    """The key's signature over the same digest but another message (purpose) does not verify."""
    from convert.package import load_private_key

    b = load_bundle(signed)
    line = load_public_key(keys["line.pub"])
    priv = load_private_key(keys["line"])
    other_purpose = priv.sign(signed_message(line.key_id, b.digest).replace(b"bundle manifest", b"firmware image"))
    (signed / SIGNATURE_FILE).write_bytes(signature_document(line.key_id, b.digest, other_purpose))
    assert refused(signed, trusted_keys=[line]).problem == "bad-signature"
    doc = json.loads((signed / SIGNATURE_FILE).read_text())
    doc["purpose"] = "rgbd-edge firmware v1"
    (signed / SIGNATURE_FILE).write_text(json.dumps(doc))
    exc = refused(signed, trusted_keys=[line])
    assert "made for something else" in str(exc) and exc.problem == "malformed"


@pytest.mark.parametrize("content, problem", [
    (b"{not json", "not a JSON signature"),
    (b'{"format": "x"}', "not a bundle signature"),
    (b"x" * 70000, "larger than"),
])
def test_malformed_signature_file_is_refused(signed, keys, content, problem):
    (signed / SIGNATURE_FILE).write_bytes(content)
    assert problem in str(refused(signed, trusted_keys=[keys["line.pub"]]))


def test_truncated_signature_bytes_are_refused(signed, keys):
    doc = json.loads((signed / SIGNATURE_FILE).read_text())
    doc["signature"] = base64.b64encode(base64.b64decode(doc["signature"])[:40]).decode()
    (signed / SIGNATURE_FILE).write_text(json.dumps(doc))
    assert "an Ed25519 signature is 64" in str(refused(signed, trusted_keys=[keys["line.pub"]]))


# --------------------------------------------------------------------------- CLIs


def test_check_bundle_trusted_key(signed, keys, tmp_path, capsys):
    from edge.cli import main

    assert main(["check-bundle", str(signed), "--trusted-key", str(keys["line.pub"])]) == 0
    assert "integrity: signed" in capsys.readouterr().out
    assert main(["check-bundle", str(signed), "--trusted-key", str(keys["other.pub"])]) == 2
    assert "which this device does not trust" in capsys.readouterr().err
    assert main(["check-bundle", str(signed), "--trusted-key", str(keys["line"])]) == 2
    assert "--trusted-key" in capsys.readouterr().err
    unsigned = make_bundle(tmp_path / "u")
    seal_bundle(unsigned)
    assert main(["check-bundle", str(unsigned), "--trusted-key", str(keys["line.pub"])]) == 2
    assert "not signed" in capsys.readouterr().err


def test_convert_keygen_and_sign(tmp_path, capsys):
    from convert.cli import main

    assert main(["keygen", "--out", str(tmp_path / "k" / "site")]) == 0
    assert "never on a device" in capsys.readouterr().out
    assert main(["keygen", "--out", str(tmp_path / "k" / "site")]) == 2  # never overwritten
    root = make_bundle(tmp_path / "b")  # a bundle made before manifests: sign seals it
    assert main(["sign", str(root), "--key", str(tmp_path / "k" / "site")]) == 0
    out = capsys.readouterr().out
    assert "signed" in out and (tmp_path / "b.tar.gz").is_file()
    b = load_bundle(root, trusted_keys=[tmp_path / "k" / "site.pub"])
    assert b.integrity == "signed" and b.digest in out
    before = {n: (root / n).read_bytes() for n in (MANIFEST_FILE, SIGNATURE_FILE)}
    (root / "rgb.onnx").write_bytes(b"changed")
    assert main(["sign", str(root), "--key", str(tmp_path / "k" / "site"), "--no-tar"]) == 2
    assert "not signing" in capsys.readouterr().err  # never signs a graph bundle.yaml does not list
    assert {n: (root / n).read_bytes() for n in before} == before  # the previous seal is put back


# --------------------------------------------------------------------------- device config


def _config(tmp_path: Path, bundle: Path, **extra) -> Path:
    data = tmp_path / "frames"
    data.mkdir(exist_ok=True)
    doc = {"device_id": "cam", "bundle": str(bundle), "engine": {"backend": "onnxruntime", "precision": "fp32"},
           "source": {"type": "folder", "path": str(data)}, "sinks": {"jsonl": {"path": "r.jsonl"}}, **extra}
    path = tmp_path / "rgbd-edge.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_config_trusted_keys_resolve_like_other_paths(tmp_path, keys):
    (tmp_path / "keys").mkdir()
    shutil.copy(keys["line.pub"], tmp_path / "keys" / "line.pub")
    cfg = load_config(_config(tmp_path, tmp_path / "b", trusted_keys=["keys/line.pub", str(keys["other.pub"])]))
    assert [k.path for k in cfg.trusted_keys] == [tmp_path / "keys" / "line.pub", keys["other.pub"]]
    assert load_config(_config(tmp_path, tmp_path / "b")).trusted_keys == ()


@pytest.mark.parametrize("value, problem", [
    ([], "must be a non-empty list"),
    ("keys/line.pub", "must be a non-empty list"),
    (["absent.pub"], "trusted_keys.0: .*cannot read the public key"),
    ([1], "trusted_keys.0: must be a non-empty string"),
])
def test_config_bad_trusted_keys_are_config_errors(tmp_path, value, problem):
    with pytest.raises(ConfigError, match=problem):
        load_config(_config(tmp_path, tmp_path / "b", trusted_keys=value))


def test_config_private_key_as_trusted_key_is_refused(tmp_path, keys):
    with pytest.raises(ConfigError, match=r"trusted_keys\.1: .*PRIVATE key") as info:
        load_config(_config(tmp_path, tmp_path / "b", trusted_keys=[str(keys["line.pub"]), str(keys["line"])]))
    assert info.value.key == "trusted_keys.1"


def _run_daemon(config: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "edge.cli", "run", "--config", str(config)], capture_output=True,
                          text=True, timeout=120, env=env)


def test_daemon_bad_trusted_key_exits_2(tmp_path, keys):
    proc = _run_daemon(_config(tmp_path, make_bundle(tmp_path / "b"), trusted_keys=[str(keys["line"])]))
    assert proc.returncode == 2, proc.stderr
    assert "trusted_keys.0" in proc.stderr and "PRIVATE key" in proc.stderr


def test_daemon_refuses_a_threshold_edited_to_1e30_with_exit_3(tmp_path):
    """The real daemon process: a sealed bundle runs; the same bundle with every threshold at 1e30
    (every part would pass) does not start."""
    from test_daemon import _dataset, make_bundle as runnable_bundle

    root = runnable_bundle(tmp_path / "b")
    seal_bundle(root)
    data = _dataset(tmp_path / "data")
    doc = {"device_id": "cam", "bundle": str(root), "engine": {"backend": "onnxruntime", "precision": "fp32",
                                                                 "threads": 1},
           "source": {"type": "folder", "path": str(data), "split": "test"},
           "sinks": {"jsonl": {"path": "results.jsonl"}}}
    cfg = tmp_path / "rgbd-edge.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    ok = _run_daemon(cfg)
    assert ok.returncode == 0, ok.stderr
    results = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert any(r["decision"] == "reject" for r in results)

    edit_threshold(root)
    proc = _run_daemon(cfg)
    assert proc.returncode == 3, proc.stderr
    assert "bundle.yaml: sha256 mismatch" in proc.stderr and "exit 3 (bundle error)" in proc.stderr
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == len(results)  # nothing inspected


def test_bundle_module_does_not_import_cryptography():
    code = ("import sys, edge.bundle, edge.config, edge.install, edge.manifest, edge.signing, edge.cli; "
            "edge.cli.build_parser(); print('cryptography' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert out.strip() == "False"


def test_daemon_with_a_trusted_key_runs_only_bundles_that_key_signed(tmp_path, keys):
    """The real daemon process with `trusted_keys`: unsigned -> exit 3, re-signed by another key
    -> exit 3, signed by the trusted key -> runs."""
    from test_daemon import _dataset, make_bundle as runnable_bundle

    root = runnable_bundle(tmp_path / "b")
    data = _dataset(tmp_path / "data")
    doc = {"device_id": "cam", "bundle": str(root), "trusted_keys": [str(keys["line.pub"])],
           "engine": {"backend": "onnxruntime", "precision": "fp32", "threads": 1},
           "source": {"type": "folder", "path": str(data), "split": "test"},
           "sinks": {"jsonl": {"path": "results.jsonl"}}}
    cfg = tmp_path / "rgbd-edge.yaml"
    cfg.write_text(yaml.safe_dump(doc))

    seal_bundle(root)
    proc = _run_daemon(cfg)
    assert proc.returncode == 3 and "not signed" in proc.stderr, proc.stderr
    seal_bundle(root, key=keys["other"])
    proc = _run_daemon(cfg)
    assert proc.returncode == 3 and "does not trust" in proc.stderr, proc.stderr
    log = tmp_path / "results.jsonl"
    assert not log.exists() or not log.read_text().strip()  # nothing inspected by an untrusted model
    seal_bundle(root, key=keys["line"])
    proc = _run_daemon(cfg)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "results.jsonl").read_text().strip()
