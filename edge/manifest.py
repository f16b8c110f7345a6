"""A bundle's file manifest (``manifest.sha256``) and the digest that names the bundle.

The manifest lists every file of the bundle directory that can change a result: the graphs,
``bundle.yaml`` (thresholds, preprocessing, model config) and anything else the writer put
there. Two things are left out: the signature file (it signs the manifest, so it cannot be in
it) and the engine cache directory (engines are built on the device and verified by the cache
itself, edge/engines/trt_cache.py).

Format (docs/bundle.md), exactly what ``sha256sum`` prints, so ``sha256sum -c manifest.sha256``
inside the bundle checks it by hand too, with one canonical form:

    <64 lowercase hex>  <relative POSIX path>\\n      one line per file, sorted by path

Paths are normalised (no ``./``, ``..``, ``//``, backslash, control character or leading
``/``); lines are sorted by path with no duplicates; the file ends with a newline. A manifest
that is not in this form is refused, so one set of files has exactly one manifest, and
``Bundle.digest`` (the sha256 of the manifest's bytes) names that set.

The second half checks a bundle against its manifest, for edge.bundle (a directory) and
edge.install (an archive, before extraction): :func:`check_integrity` (the manifest and, with
trusted keys, the signature, edge/signing.py), :func:`check_listed_bytes` (bundle.yaml's bytes
before they are parsed) and :func:`check_sealed_files` (no unlisted file, every hash).

Standard library only; no YAML. Errors are :class:`ManifestError` (a CheckError), which
edge.bundle and edge.install wrap with their own context.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Mapping, Sequence

from .checks import CheckError
from .digest import sha256_bytes, sha256_file
from .signing import MAX_SIGNATURE_BYTES, SIGNATURE_FILE, SignatureError, TrustedKey, verify_signature

MANIFEST_FILE = "manifest.sha256"
BUNDLE_FILE = "bundle.yaml"       # always listed: it holds the thresholds and the preprocessing
MAX_MANIFEST_BYTES = 1 << 20     # ~10,000 lines; a bundle has a handful of files
UNLISTED = (MANIFEST_FILE, SIGNATURE_FILE)  # top-level names a manifest never lists

_LINE = re.compile(r"^([0-9a-f]{64})  (.+)$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class ManifestError(CheckError):
    """The manifest is malformed or does not match the files; the message says which file."""


def check_rel_path(text: str) -> str | None:
    """The problem with ``text`` as a manifest path, or None when it is a normalised relative path."""
    if not text:
        return "empty path"
    if "\\" in text or _CONTROL.search(text):
        return "backslash or control character in the path"
    p = PurePosixPath(text)
    if p.is_absolute() or ".." in p.parts or "." in text.split("/"):
        return "must be relative to the bundle directory and stay inside it"
    if p.as_posix() != text:
        return f"not normalised (write {p.as_posix()!r})"
    return None


def format_manifest(entries: Mapping[str, str]) -> bytes:
    """The canonical manifest for {relative path: sha256 hex} (ValueError on a bad path)."""
    lines = []
    for rel in sorted(entries):
        problem = check_rel_path(rel)
        if problem or rel in UNLISTED:
            raise ValueError(f"{rel!r}: {problem or 'never listed in a manifest'}")
        digest = entries[rel].lower()
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError(f"{rel!r}: not a sha256 hex digest: {digest!r}")
        lines.append(f"{digest}  {rel}\n")
    return "".join(lines).encode("utf-8")


def parse_manifest(data: bytes, where: str | os.PathLike) -> dict[str, str]:
    """{relative path: sha256} from a manifest's bytes; ManifestError when it is not canonical."""
    def bad(problem: str) -> ManifestError:
        return ManifestError(f"{where}: {problem}", file=where, problem=problem)

    if len(data) > MAX_MANIFEST_BYTES:
        raise bad(f"larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad(f"not UTF-8 ({exc})") from exc
    if not text:
        raise bad("empty: a manifest lists at least bundle.yaml")
    if not text.endswith("\n"):
        raise bad("the last line has no newline (truncated?)")
    entries: dict[str, str] = {}
    for n, line in enumerate(text[:-1].split("\n"), start=1):
        m = _LINE.match(line)
        if m is None:
            raise bad(f"line {n}: expected '<64 lowercase hex>  <path>' (sha256sum format), got {line[:80]!r}")
        digest, rel = m.groups()
        problem = check_rel_path(rel) or ("never listed in a manifest" if rel in UNLISTED else None)
        if problem:
            raise bad(f"line {n}: {rel!r}: {problem}")
        if entries and rel <= next(reversed(entries)):
            raise bad(f"line {n}: {rel!r} is out of order or listed twice (lines are sorted by path)")
        entries[rel] = digest
    return entries


def manifest_digest(data: bytes) -> str:
    """The bundle's digest: sha256 hex of the manifest's bytes."""
    return sha256_bytes(data)


def _excluded(rel: str, skip_dirs: Iterable[str]) -> bool:
    return any(rel == d or rel.startswith(d + "/") for d in skip_dirs)


def scan_files(root: Path, skip_dirs: Iterable[str] = ()) -> tuple[list[str], list[str]]:
    """(regular files, other entries) under ``root`` as sorted relative POSIX paths, never following
    symlinks. ``skip_dirs`` (relative paths) are left out with everything below them, and so are the
    top-level manifest and signature. "Other entries" are symlinks, devices, fifos and sockets."""
    skip = tuple(d.strip("/") for d in skip_dirs if d.strip("/") not in ("", "."))
    files, others = [], []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if base == "." else base + "/"
        for d in list(dirnames):
            rel = prefix + d
            if _excluded(rel, skip):
                dirnames.remove(d)
            elif (Path(dirpath) / d).is_symlink():
                others.append(rel)
        for f in filenames:
            rel = prefix + f
            if rel in UNLISTED or _excluded(rel, skip):
                continue
            p = Path(dirpath) / f
            (files if p.is_file() and not p.is_symlink() else others).append(rel)
    return sorted(files), sorted(others)


def build_manifest(root: str | os.PathLike, skip_dirs: Iterable[str] = ()) -> bytes:
    """The manifest of every regular file under ``root`` (the writer's side). ValueError when the
    directory holds a symlink, device or fifo: a bundle is plain files."""
    root = Path(root)
    files, others = scan_files(root, skip_dirs)
    if others:
        raise ValueError(f"{root}: a bundle holds only regular files; remove {', '.join(others[:5])}")
    return format_manifest({rel: sha256_file(root / rel) for rel in files})


# --------------------------------------------------------------------------- a bundle directory


def _short(hexdigest: str) -> str:
    return hexdigest[:12] + "..."


def read_limited(path: Path, limit: int) -> bytes:
    """A file's bytes, at most ``limit`` (one read); ManifestError naming it otherwise."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read: {exc.strerror or exc}", file=path) from exc
    if len(data) > limit:
        raise ManifestError(f"{path}: larger than {limit} bytes; not a bundle file", file=path)
    return data


@dataclass(frozen=True)
class Integrity:
    """What manifest.sha256 and bundle.sig say about a bundle, checked before bundle.yaml is parsed."""
    kind: str                       # signed | manifest | legacy
    entries: dict[str, str] | None  # the manifest (None: a bundle made before manifests)
    digest: str | None              # sha256 of the manifest's bytes (None: legacy)
    key: TrustedKey | None          # the trusted key that verified the signature


def check_integrity(manifest: bytes | None, signature: bytes | None, keys: Sequence[TrustedKey],
                    where: Path) -> Integrity:
    """The manifest's entries and digest and, with trusted keys, the key whose signature covers it.
    ``manifest``/``signature``: the two files' bytes (None when absent); ``where``: the bundle
    directory (or archive) for messages. ManifestError naming the reason otherwise."""
    mfile, sfile = where / MANIFEST_FILE, where / SIGNATURE_FILE
    if manifest is None:
        if keys:
            raise ManifestError(f"{mfile}: not found: this bundle has no file manifest, so it is not signed, and "
                                f"this device trusts only signed bundles ({len(keys)} trusted key(s) configured); "
                                f"sign it with `rgbd-convert sign BUNDLE_DIR --key KEY`", file=mfile,
                                problem="unsigned")
        return Integrity("legacy", None, None, None)
    entries = parse_manifest(manifest, mfile)
    if BUNDLE_FILE not in entries:
        raise ManifestError(f"{mfile}: does not list {BUNDLE_FILE}: the thresholds and preprocessing would not "
                            f"be covered by the bundle's digest", file=mfile)
    digest = manifest_digest(manifest)
    if not keys:
        return Integrity("manifest", entries, digest, None)
    try:
        key = verify_signature(signature, digest, keys, str(sfile))
    except SignatureError as exc:
        raise ManifestError(str(exc), file=sfile, problem=exc.reason) from exc
    return Integrity("signed", entries, digest, key)


def read_integrity(root: Path, keys: Sequence[TrustedKey]) -> Integrity:
    """check_integrity on a bundle directory's manifest.sha256 and bundle.sig."""
    mfile, sfile = root / MANIFEST_FILE, root / SIGNATURE_FILE
    manifest = read_limited(mfile, MAX_MANIFEST_BYTES) if mfile.exists() else None
    signature = read_limited(sfile, MAX_SIGNATURE_BYTES) if keys and sfile.exists() else None
    return check_integrity(manifest, signature, keys, root)


def check_listed_bytes(integrity: Integrity, rel: str, data: bytes, path: Path) -> None:
    """``data`` (already read from ``path``) is what the manifest lists for ``rel``."""
    if integrity.entries is None:
        return
    listed = integrity.entries.get(rel)
    have = sha256_bytes(data)
    if listed is None:
        raise ManifestError(f"{path}: not listed in {MANIFEST_FILE}", file=path)
    if have != listed:
        raise ManifestError(f"{path}: sha256 mismatch: {MANIFEST_FILE} lists {_short(listed)}, the file has "
                            f"{_short(have)} (edited after the bundle was made)", file=path)


def _inside(root: Path, rel: str) -> bool:
    resolved = (root / rel).resolve()
    return resolved == root or root in resolved.parents


def check_sealed_files(root: Path, integrity: Integrity, files: Mapping[str, str], engines_rel: str,
                       verify_hashes: bool, hashed: Iterable[str] = ()) -> None:
    """The manifest agrees with bundle.yaml's ``files``, lists every file of the directory (the
    engine cache ``engines_rel`` aside) and, with ``verify_hashes``, every file's sha256 matches
    (each file read once; ``hashed``: files the caller already checked from the bytes it read)."""
    entries = integrity.entries or {}
    mfile = root / MANIFEST_FILE

    def bad(problem: str, rel: str | None = None) -> ManifestError:
        return ManifestError(f"{mfile}: {problem}", file=root / rel if rel else mfile, problem=problem)

    for rel, digest in files.items():
        if entries.get(rel) != digest:
            listed = _short(entries[rel]) if rel in entries else "nothing"
            raise bad(f"{rel}: bundle.yaml lists {_short(digest)}, {MANIFEST_FILE} lists {listed}", rel)
    present, others = scan_files(root, skip_dirs=(engines_rel,))
    unlisted = [rel for rel in present + others if rel not in entries]
    if unlisted:
        more = f" and {len(unlisted) - 5} more" if len(unlisted) > 5 else ""
        raise bad(f"files not in the manifest: {', '.join(unlisted[:5])}{more}: every file of a bundle is "
                  f"listed (remove them, or re-make the bundle)", unlisted[0])
    for rel, want in entries.items():
        if not _inside(root, rel):
            raise bad(f"{rel}: resolves to {(root / rel).resolve()}, outside the bundle {root}", rel)
        if not (root / rel).is_file():
            raise bad(f"listed file not found: {root / rel}", rel)
        if not verify_hashes or rel in hashed:
            continue
        try:
            have = sha256_file(root / rel)
        except OSError as exc:
            raise bad(f"cannot read {root / rel}: {exc}", rel) from exc
        if have != want:
            raise bad(f"{rel}: sha256 mismatch: the manifest lists {_short(want)}, the file has {_short(have)} "
                      f"(changed after the bundle was made, or an incomplete copy)", rel)


def legacy_digest(bundle_yaml: bytes, files: Mapping[str, str]) -> str:
    """The digest a manifest over bundle.yaml and its ``files`` would have, for bundles made before
    manifest.sha256: it still names what was loaded, in results."""
    return manifest_digest(format_manifest({**files, BUNDLE_FILE: sha256_bytes(bundle_yaml)}))
