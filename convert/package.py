"""Seal a bundle for the device: file manifest, Ed25519 signature, normalised archive; key pairs.

Workstation side of edge/manifest.py and edge/signing.py (docs/bundle.md):

- :func:`generate_key` writes an Ed25519 key pair: the private key as PEM (PKCS#8, mode 0600,
  never overwritten) and the public key beside it as ``KEY.pub`` (the only file a device gets).
- :func:`seal_bundle` writes ``manifest.sha256`` over every file of a bundle directory (the
  engine cache and the signature aside) and, given a private key, ``bundle.sig``.
- :func:`write_archive` packs a bundle as ``BUNDLE.tar.gz`` with normalised members (owner
  root:root, uid/gid 0, files 0644, directories 0755, a fixed mtime, no links), the manifest and
  signature first, so the installer can verify before it reads any other member.

Needs `cryptography` for keys and signatures; no torch (``rgbd-convert sign`` and ``keygen`` run
without the training stack).
"""
from __future__ import annotations

import gzip
import os
import tarfile
from pathlib import Path, PurePosixPath

from edge.bundle import BUNDLE_FILE, BundleError, load_bundle
from edge.checks import load_yaml
from edge.manifest import MANIFEST_FILE, build_manifest, manifest_digest, scan_files
from edge.signing import SIGNATURE_FILE, TrustedKey, key_id, signature_document, signed_message

ARCHIVE_MTIME = 0        # members' mtime: the archive of one bundle is byte-for-byte reproducible
FILE_MODE, DIR_MODE = 0o644, 0o755


def public_key_path(private_key: str | os.PathLike) -> Path:
    """KEY -> KEY.pub (beside the private key)."""
    p = Path(private_key)
    return p.with_name(p.name + ".pub")


def generate_key(out: str | os.PathLike) -> tuple[Path, Path]:
    """A new Ed25519 key pair: (private key file ``out``, 0600; public key ``out``.pub, 0644).
    FileExistsError when either exists: a signing key is never replaced by accident."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    priv_path, pub_path = Path(out), public_key_path(out)
    for p in (priv_path, pub_path):
        if p.exists() or p.is_symlink():
            raise FileExistsError(f"{p} already exists; choose another --out (a key is never overwritten)")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    priv_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.chmod(priv_path, 0o600)  # whatever the umask
    fd = os.open(pub_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(pub)
    os.chmod(pub_path, 0o644)
    return priv_path, pub_path


def load_private_key(path: str | os.PathLike):
    """The Ed25519 private key in a PEM file (ValueError naming the file otherwise)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the signing key: {exc.strerror or exc}") from exc
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: not an unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key (make one with rgbd-convert keygen)")
    return key


def _engines_rel(bundle_dir: Path) -> str:
    """bundle.yaml's engines.dir (default ``engines``): the device's engine cache, never sealed."""
    doc = load_yaml(bundle_dir / BUNDLE_FILE, BundleError)
    engines = doc.get("engines") if isinstance(doc, dict) else None
    rel = engines.get("dir") if isinstance(engines, dict) else None
    return PurePosixPath(rel).as_posix() if isinstance(rel, str) and rel.strip() else "engines"


def seal_bundle(bundle_dir: str | os.PathLike, key: str | os.PathLike | None = None) -> str:
    """Write manifest.sha256 (and, with ``key``, bundle.sig) into a bundle; return its digest.

    The manifest is made from the files as they are now, and the bundle is then checked as the
    device will check it: bundle.yaml's own ``files`` digests must equal the manifest's, so a
    bundle is never sealed over a graph that differs from what bundle.yaml lists (BundleError;
    the previous manifest and signature, if any, are put back). Otherwise they are replaced;
    without ``key`` a previous signature is removed (it would not match the new manifest)."""
    root = Path(bundle_dir)
    if key is not None:
        load_private_key(key)  # a bad key fails before any change
    data = build_manifest(root, skip_dirs=(_engines_rel(root),))
    digest = manifest_digest(data)
    old = {name: (root / name).read_bytes() for name in (MANIFEST_FILE, SIGNATURE_FILE) if (root / name).is_file()}
    (root / SIGNATURE_FILE).unlink(missing_ok=True)
    (root / MANIFEST_FILE).write_bytes(data)
    trusted = None
    if key is not None:
        blob, public = sign_digest(key, digest)
        (root / SIGNATURE_FILE).write_bytes(blob)
        trusted = [public]
    try:
        load_bundle(root, trusted_keys=trusted)  # what the device will check, checked here first
    except BundleError:
        for name in (MANIFEST_FILE, SIGNATURE_FILE):
            (root / name).unlink(missing_ok=True)
            if name in old:
                (root / name).write_bytes(old[name])
        raise
    return digest


def sign_digest(key: str | os.PathLike, digest: str) -> tuple[bytes, TrustedKey]:
    """(bundle.sig's bytes, the signer's public key): the Ed25519 signature of ``digest`` with the
    private key file ``key``."""
    from cryptography.hazmat.primitives import serialization

    priv = load_private_key(key)
    raw = priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    kid = key_id(raw)
    return signature_document(kid, digest, priv.sign(signed_message(kid, digest))), TrustedKey(Path(key), kid, raw)


def _add(tf: tarfile.TarFile, name: str, path: Path | None) -> None:
    """One member, owner root, fixed mode and mtime: a directory (``path`` None) or a file's bytes."""
    info = tarfile.TarInfo(name)
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = ARCHIVE_MTIME
    if path is None:
        info.type, info.mode = tarfile.DIRTYPE, DIR_MODE
        tf.addfile(info)
        return
    with open(path, "rb") as f:
        info.type, info.mode, info.size = tarfile.REGTYPE, FILE_MODE, os.fstat(f.fileno()).st_size
        tf.addfile(info, f)


def write_archive(bundle_dir: str | os.PathLike, archive: str | os.PathLike | None = None) -> Path:
    """BUNDLE_DIR.tar.gz (or ``archive``) holding the bundle's files under ``<name>/``: regular files
    and directories only (the engine cache left out), owner root, modes 0644/0755, mtime 0, the
    manifest and signature first. ValueError when the bundle holds a link or special file."""
    root = Path(bundle_dir)
    archive = Path(archive) if archive is not None else root.parent / f"{root.name}.tar.gz"
    engines = _engines_rel(root)
    files, others = scan_files(root, skip_dirs=(engines,))
    if others:
        raise ValueError(f"{root}: a bundle holds only regular files; remove {', '.join(others[:5])}")
    first = [n for n in (MANIFEST_FILE, SIGNATURE_FILE) if (root / n).is_file()]
    dirs = sorted({p for rel in files for p in _parents(rel)})
    tmp = archive.with_name(f".{archive.name}.tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=ARCHIVE_MTIME) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tf:
        _add(tf, root.name, None)
        for rel in first:
            _add(tf, f"{root.name}/{rel}", root / rel)
        for rel in dirs:
            _add(tf, f"{root.name}/{rel}", None)
        for rel in files:
            _add(tf, f"{root.name}/{rel}", root / rel)
    os.replace(tmp, archive)
    return archive


def _parents(rel: str) -> list[str]:
    parts = rel.split("/")[:-1]
    return ["/".join(parts[:i + 1]) for i in range(len(parts))]

