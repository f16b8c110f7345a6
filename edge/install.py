"""`rgbd-edge install BUNDLE.tar.gz` and `rgbd-edge rollback`: signed bundles onto the device, safely.

Install (docs/bundle.md, "Installing on a device"):

1. Read every member header first, and refuse the archive unless every member is a regular file
   or a directory under one top-level directory, with a normalised relative path (no absolute
   path, ``..``, backslash or control character), listed once. Links, devices, fifos and sparse
   files are refused; tarfile's ``data`` filter (where this Python has it) is asked too.
2. Read ``manifest.sha256`` and ``bundle.sig`` from the archive and verify the signature with
   the trusted keys, BEFORE anything is written. The archive's files must be exactly the
   manifest's.
3. Extract each file ourselves (never ``extractall``) into a fresh staging directory under the
   install root, hashing the bytes as they are written; a file whose sha256 is not the
   manifest's stops the install. Then check the staged bundle as the daemon will
   (``load_bundle`` with the same keys).
4. Make it read-only (files 0444, directories 0555) and owned by root (when run as root),
   rename it to ``<root>/<name>-<version>-<digest[:12]>`` and switch ``<root>/current`` to it
   atomically (a new symlink renamed over the old one), after pointing ``<root>/previous`` at
   the old target. ``rollback`` swaps the two links back.

An install holds ``<root>/.install.lock`` (flock), so two installs never interleave. Exit codes:
0 done, 2 usage (bad arguments, key or config file, no trusted key, nothing to roll back),
3 refused (signature, manifest, unsafe member, bundle check), 4 could not write (disk, rights;
nothing was switched).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import re
import shutil
import sys
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Sequence

from .bundle import BundleError, load_bundle
from .manifest import MANIFEST_FILE, MAX_MANIFEST_BYTES, Integrity, ManifestError, check_integrity, check_rel_path
from .signing import MAX_SIGNATURE_BYTES, SIGNATURE_FILE, SignatureError, TrustedKey, load_trusted_keys

EXIT_OK, EXIT_USAGE, EXIT_REFUSED, EXIT_IO = 0, 2, 3, 4
DEFAULT_ROOT = Path("/opt/rgbd-edge/bundles")
CURRENT, PREVIOUS = "current", "previous"
LOCK_FILE = ".install.lock"
MAX_MEMBERS = 10_000
MAX_TOTAL_BYTES = 32 << 30
FILE_MODE, DIR_MODE = 0o444, 0o555
_CHUNK = 1 << 20


class InstallError(Exception):
    """The install or rollback did not happen; ``code`` is the exit code (module docstring)."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Installed:
    path: Path                 # the versioned bundle directory
    digest: str                # the bundle's digest
    key: TrustedKey | None     # the trusted key that verified it (None: --allow-unsigned)
    previous: str | None       # what `current` pointed at before (now `previous`)
    reused: bool               # the same bundle was installed already: only the links changed


# --------------------------------------------------------------------------- the archive


@dataclass(frozen=True)
class _Members:
    top: str                              # the one top-level directory
    files: dict[str, tarfile.TarInfo]     # relative path below top -> member
    dirs: set[str]                        # relative directories below top


@dataclass(frozen=True)
class _Verified:
    integrity: Integrity
    manifest: bytes            # the bytes verified: written as they are, never read again
    signature: bytes | None


def _refuse(message: str) -> InstallError:
    return InstallError(message, EXIT_REFUSED)


def _member_problem(m: tarfile.TarInfo) -> str | None:
    """Why a member may not be extracted (type, path, tarfile's data filter), or None."""
    if m.type not in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE):
        kind = ("a symlink" if m.issym() else "a hard link" if m.islnk() else "a fifo" if m.isfifo()
                else "a device file" if m.isdev() else "a sparse or contiguous file" if m.isreg()
                else f"of tar type {m.type!r}")
        return f"is {kind}; a bundle holds only regular files and directories"
    name = m.name.rstrip("/") if m.isdir() else m.name
    problem = check_rel_path(name)
    if problem:
        return f"path {problem}"
    data_filter = getattr(tarfile, "data_filter", None)
    if data_filter is not None:
        try:
            data_filter(m, "/nonexistent-install-root")
        except tarfile.FilterError as exc:
            return f"refused by tarfile's data filter: {exc}"
    return None


def _read_members(tf: tarfile.TarFile, where: str) -> _Members:
    """Every member header checked before any byte is extracted (module docstring, step 1)."""
    top: str | None = None
    files: dict[str, tarfile.TarInfo] = {}
    dirs: set[str] = set()
    total = 0
    for n, m in enumerate(tf, start=1):
        if n > MAX_MEMBERS:
            raise _refuse(f"{where}: more than {MAX_MEMBERS} members; not a bundle")
        problem = _member_problem(m)
        if problem:
            raise _refuse(f"{where}: member {m.name!r} {problem}; nothing was installed")
        parts = PurePosixPath(m.name).parts
        top = top if top is not None else parts[0]
        if parts[0] != top or (len(parts) == 1 and not m.isdir()):
            raise _refuse(f"{where}: member {m.name!r} is not inside the one top-level directory {top!r}")
        rel = "/".join(parts[1:])
        if rel in files or (rel and rel in dirs):
            raise _refuse(f"{where}: member {m.name!r} appears twice (a later copy would replace the first)")
        total += m.size
        if total > MAX_TOTAL_BYTES:
            raise _refuse(f"{where}: more than {MAX_TOTAL_BYTES >> 30} GiB of files; not a bundle")
        if m.isdir():
            if rel:
                dirs.add(rel)
        else:
            files[rel] = m
    if top is None:
        raise _refuse(f"{where}: the archive is empty")
    return _Members(top, files, dirs)


def _read_member(tf: tarfile.TarFile, m: tarfile.TarInfo, limit: int, where: str) -> bytes:
    if m.size > limit:
        raise _refuse(f"{where}: member {m.name!r} is larger than {limit} bytes")
    f = tf.extractfile(m)
    return f.read(limit + 1) if f is not None else b""


def _verify_archive(tf: tarfile.TarFile, members: _Members, keys: Sequence[TrustedKey], where: str) -> _Verified:
    """Signature and manifest from the archive, and the archive's files against the manifest (step 2)."""
    mm = members.files.get(MANIFEST_FILE)
    if mm is None:
        raise _refuse(f"{where}: no {members.top}/{MANIFEST_FILE}: a bundle made before signed bundles (or not a "
                      f"bundle); re-make it, or seal it with `rgbd-convert sign BUNDLE_DIR --key KEY`")
    manifest = _read_member(tf, mm, MAX_MANIFEST_BYTES, where)
    sm = members.files.get(SIGNATURE_FILE)
    signature = _read_member(tf, sm, MAX_SIGNATURE_BYTES, where) if sm is not None else None
    try:
        integrity = check_integrity(manifest, signature, keys, Path(f"{where}:{members.top}"))
    except ManifestError as exc:
        raise _refuse(f"{exc}; nothing was installed") from exc
    entries = integrity.entries or {}
    extra = sorted(set(members.files) - set(entries) - {MANIFEST_FILE, SIGNATURE_FILE})
    missing = sorted(set(entries) - set(members.files))
    wanted_dirs = {"/".join(PurePosixPath(rel).parts[:i]) for rel in entries
                   for i in range(1, len(PurePosixPath(rel).parts))}
    extra += sorted(members.dirs - wanted_dirs)
    if extra or missing:
        what = "; ".join(p for p in (f"not in the manifest: {', '.join(extra[:5])}" if extra else "",
                                     f"missing: {', '.join(missing[:5])}" if missing else "") if p)
        raise _refuse(f"{where}: the archive's files are not the manifest's ({what}); nothing was installed")
    return _Verified(integrity, manifest, signature if integrity.key is not None else None)


# --------------------------------------------------------------------------- extraction


def _extract_file(tf: tarfile.TarFile, m: tarfile.TarInfo, dest: Path, want: str, where: str) -> None:
    """One member's bytes into a new file (never through a link), hashed as written."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    src = tf.extractfile(m)  # a regular member (checked in _read_members): never None
    h = hashlib.sha256()
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "wb") as out:
        for chunk in iter(lambda: src.read(_CHUNK), b""):
            h.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    if h.hexdigest() != want:
        raise _refuse(f"{where}: member {m.name!r}: sha256 {h.hexdigest()[:12]}... is not the manifest's "
                      f"{want[:12]}... (changed after the bundle was signed); nothing was installed")


def _write_new(dest: Path, data: bytes) -> None:
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def _extract(tf: tarfile.TarFile, members: _Members, verified: _Verified, staging: Path, where: str) -> None:
    """The listed files, each hashed as written; the manifest and signature from the bytes verified
    (an unverified signature, with --allow-unsigned, is not installed)."""
    entries = verified.integrity.entries or {}
    for rel in sorted(members.dirs):
        (staging / rel).mkdir(parents=True, exist_ok=True)
    _write_new(staging / MANIFEST_FILE, verified.manifest)
    if verified.signature is not None:
        _write_new(staging / SIGNATURE_FILE, verified.signature)
    for rel, m in members.files.items():
        if rel not in (MANIFEST_FILE, SIGNATURE_FILE):
            _extract_file(tf, m, staging / rel, entries[rel], where)


def _seal_tree(top: Path) -> None:
    """Files 0444, directories 0555, owner root:root when running as root (bottom-up)."""
    as_root = hasattr(os, "geteuid") and os.geteuid() == 0
    for dirpath, dirnames, filenames in os.walk(top, topdown=False):
        for name in filenames:
            p = os.path.join(dirpath, name)
            if as_root:
                os.lchown(p, 0, 0)
            os.chmod(p, FILE_MODE)
        if as_root:
            os.lchown(dirpath, 0, 0)
        os.chmod(dirpath, DIR_MODE)
        _fsync_dir(Path(dirpath))


def _remove_tree(top: Path) -> None:
    """Remove a (possibly read-only) tree this process made."""
    def writable(func, path, _exc):
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(path), 0o700)
            os.chmod(path, 0o700)
        func(path)

    if top.exists():
        shutil.rmtree(top, onerror=writable)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _dir_name(model_name: str, model_version: str, digest: str) -> str:
    clean = [re.sub(r"[^A-Za-z0-9._+-]", "_", s).lstrip(".")[:64] or "_" for s in (model_name, model_version)]
    return f"{clean[0]}-{clean[1]}-{digest[:12]}"


# --------------------------------------------------------------------------- links


def link_target(root: Path, name: str) -> str | None:
    """The directory name ``<root>/<name>`` points at (None: no link). InstallError when it is not a
    symlink to a plain name in ``root`` (a directory copied there by hand, say)."""
    link = root / name
    if not link.is_symlink():
        if link.exists():
            raise InstallError(f"{link} exists and is not a symlink; move it away (it is not an install made by "
                               f"rgbd-edge install)", EXIT_USAGE)
        return None
    target = os.readlink(link)
    if "/" in target or target in ("", ".", ".."):
        raise InstallError(f"{link} -> {target}: not a bundle directory of {root}; remove the link", EXIT_USAGE)
    return target


def _point(root: Path, name: str, target: str) -> None:
    """``<root>/<name>`` -> ``target``, atomically: a new symlink renamed over the old one."""
    tmp = root / f".{name}.tmp-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, root / name)


def _switch(root: Path, new: str) -> str | None:
    """current -> new, previous -> the old current (unless it was new already); the old current."""
    old = link_target(root, CURRENT)
    if old != new:
        if old is not None:
            _point(root, PREVIOUS, old)
        _point(root, CURRENT, new)
        _fsync_dir(root)
    return old


@contextlib.contextmanager
def _locked(root: Path):
    try:
        import fcntl
    except ImportError:  # not Linux
        yield
        return
    with open(root / LOCK_FILE, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _prepare_root(root: Path) -> None:
    try:
        root.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError as exc:
        raise InstallError(f"cannot create the install root {root}: {exc.strerror or exc}", EXIT_IO) from exc
    if not os.access(root, os.W_OK):
        raise InstallError(f"cannot write to {root} (run it with sudo)", EXIT_IO)
    st = root.stat()
    if st.st_mode & 0o022:
        print(f"rgbd-edge install: warning: {root} is writable by group or others, who could then change "
              f"which bundle runs: sudo chmod 0755 {root}", file=sys.stderr)


# --------------------------------------------------------------------------- install and rollback


def _open_archive(archive: Path) -> tarfile.TarFile:
    if not archive.is_file():
        raise InstallError(f"archive not found: {archive}", EXIT_USAGE)
    try:
        return tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise _refuse(f"{archive}: not a readable tar archive ({exc})") from exc


def _stage(tf: tarfile.TarFile, archive: Path, root: Path, keys: tuple[TrustedKey, ...]):
    """(staging dir, checked bundle, integrity): steps 1 to 3 of the module docstring."""
    where = str(archive)
    try:
        members = _read_members(tf, where)
        verified = _verify_archive(tf, members, keys, where)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise _refuse(f"{archive}: the archive is damaged ({exc}); nothing was installed") from exc
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    try:
        _extract(tf, members, verified, staging, where)
        bundle = load_bundle(staging, verify_hashes=True, trusted_keys=keys)
    except BundleError as exc:
        _remove_tree(staging)
        raise _refuse(f"{archive}: the bundle is not usable: {exc}") from exc
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        _remove_tree(staging)
        raise _refuse(f"{archive}: the archive is damaged ({exc}); nothing was installed") from exc
    except BaseException:
        _remove_tree(staging)
        raise
    return staging, bundle, verified.integrity


def install_archive(archive: str | os.PathLike, root: str | os.PathLike = DEFAULT_ROOT,
                    trusted_keys: Sequence[TrustedKey | str | os.PathLike] = (),
                    allow_unsigned: bool = False) -> Installed:
    """Verify, extract, seal and switch to the bundle in ``archive`` (module docstring).
    InstallError with the exit code when it did not happen."""
    archive, root = Path(archive), Path(root)
    keys = load_trusted_keys(trusted_keys)
    if not keys and not allow_unsigned:
        raise InstallError("no trusted key: pass --trusted-key PUB or --config CONFIG (its trusted_keys), or "
                           "--allow-unsigned to install a bundle whose manifest is checked but not its signer",
                           EXIT_USAGE)
    _prepare_root(root)
    with _locked(root), _open_archive(archive) as tf:
        link_target(root, CURRENT)  # a `current` that is not ours: say so before any work
        link_target(root, PREVIOUS)
        try:
            staging, bundle, integrity = _stage(tf, archive, root, keys)
        except OSError as exc:
            raise InstallError(f"cannot write into {root}: {exc}; nothing was switched", EXIT_IO) from exc
        name = _dir_name(bundle.model_name, bundle.model_version, bundle.digest)
        target = root / name
        reused = target.exists()
        try:
            if reused:  # the same bundle again: keep the installed copy once it still checks out
                _remove_tree(staging)
                load_bundle(target, verify_hashes=True, trusted_keys=keys)
            else:
                _seal_tree(staging)
                os.rename(staging, target)
            previous = _switch(root, name)
        except BundleError as exc:
            raise _refuse(f"{target} is installed already but no longer checks out ({exc}); remove it "
                          f"(sudo rm -rf {target}) and install again") from exc
        except OSError as exc:
            _remove_tree(staging)
            raise InstallError(f"cannot install into {root}: {exc}", EXIT_IO) from exc
    return Installed(path=target, digest=bundle.digest, key=integrity.key, previous=previous, reused=reused)


def rollback(root: str | os.PathLike = DEFAULT_ROOT) -> tuple[str, str | None]:
    """Swap ``current`` and ``previous``: (what current points at now, what previous points at now)."""
    root = Path(root)
    if not root.is_dir():
        raise InstallError(f"no install root {root}", EXIT_USAGE)
    with _locked(root):
        cur, prev = link_target(root, CURRENT), link_target(root, PREVIOUS)
        if prev is None or not (root / prev).is_dir():
            raise InstallError(f"nothing to roll back to: {root / PREVIOUS} "
                               f"{'points at a missing ' + prev if prev else 'does not exist'}", EXIT_USAGE)
        try:
            _point(root, CURRENT, prev)
            if cur is not None:
                _point(root, PREVIOUS, cur)
            _fsync_dir(root)
        except OSError as exc:
            raise InstallError(f"cannot switch the links in {root}: {exc}", EXIT_IO) from exc
    return prev, cur


# --------------------------------------------------------------------------- CLI


def _keys_from_args(a: argparse.Namespace) -> tuple[TrustedKey, ...]:
    keys = list(load_trusted_keys(a.trusted_key))
    if a.config is not None:
        from .checks import Checker, load_yaml
        from .config import ConfigError, parse_trusted_keys

        cfg = Path(a.config)
        doc = load_yaml(cfg, ConfigError) if cfg.is_file() else None
        if not isinstance(doc, dict):
            raise ConfigError(f"{cfg}: not a configuration file (a YAML mapping)", file=cfg)
        found = parse_trusted_keys(Checker(where=cfg, file=cfg, error=ConfigError), doc.get("trusted_keys"),
                                   cfg.resolve().parent)
        if not found and not a.allow_unsigned:
            raise ConfigError(f"{cfg}: lists no trusted_keys, so it cannot say which bundles to trust", file=cfg)
        keys += found
    return load_trusted_keys(keys)


def _cmd_install(a: argparse.Namespace) -> int:
    try:
        keys = _keys_from_args(a)
        done = install_archive(a.archive, a.root, keys, allow_unsigned=a.allow_unsigned)
    except InstallError as exc:
        print(f"rgbd-edge install: error: {exc}", file=sys.stderr)
        return exc.code
    except (SignatureError, ValueError) as exc:  # a key or config file (ConfigError is a ValueError)
        print(f"rgbd-edge install: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    signer = (f"signed by trusted key {done.key.key_id[:12]} ({done.key.path})" if done.key is not None
              else "NOT signature-checked (--allow-unsigned)")
    print(f"{'already installed' if done.reused else 'installed'} {done.path}")
    print(f"digest {done.digest}, {signer}")
    print(f"{Path(a.root) / CURRENT} -> {done.path.name}" + (f"; {PREVIOUS} -> {done.previous}"
                                                           if done.previous and done.previous != done.path.name
                                                           else ""))
    print("the daemon uses it after its next start (sudo systemctl restart rgbd-edge) or bundle reload")
    return EXIT_OK


def _cmd_rollback(a: argparse.Namespace) -> int:
    try:
        now, before = rollback(a.root)
    except InstallError as exc:
        print(f"rgbd-edge rollback: error: {exc}", file=sys.stderr)
        return exc.code
    print(f"{Path(a.root) / CURRENT} -> {now}" + (f"; {PREVIOUS} -> {before}" if before else ""))
    return EXIT_OK


def add_parser(subparsers) -> None:
    """Register `install` and `rollback` on an argparse subparsers object (each sets ``func``)."""
    p = subparsers.add_parser("install", help="verify and install a signed bundle archive",
                              description="Verify BUNDLE.tar.gz's signature before extracting anything, extract it "
                                          "safely and read-only into ROOT/<name>-<version>-<digest>, and switch "
                                          "ROOT/current to it (ROOT/previous keeps the one before). Exit codes: "
                                          "0 installed, 2 usage or key error, 3 refused, 4 could not write.")
    p.add_argument("archive", metavar="BUNDLE.tar.gz")
    p.add_argument("--root", default=str(DEFAULT_ROOT), help=f"install root (default {DEFAULT_ROOT})")
    p.add_argument("--trusted-key", action="append", default=[], metavar="PUB",
                   help="public key file the bundle must be signed by (repeatable)")
    p.add_argument("--config", metavar="CONFIG", help="take the trusted keys from this daemon config's trusted_keys")
    p.add_argument("--allow-unsigned", action="store_true",
                   help="install without a trusted key: the manifest is checked, the signer is not")
    p.set_defaults(func=_cmd_install)
    r = subparsers.add_parser("rollback", help="switch ROOT/current back to ROOT/previous",
                              description="Swap ROOT/current and ROOT/previous atomically. Exit 0 done, 2 nothing "
                                          "to roll back to, 4 could not write.")
    r.add_argument("--root", default=str(DEFAULT_ROOT), help=f"install root (default {DEFAULT_ROOT})")
    r.set_defaults(func=_cmd_rollback)
