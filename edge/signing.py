"""Ed25519 signatures over a bundle's digest: trusted public keys and the signature file.

A signed bundle holds ``bundle.sig`` (JSON, format in docs/bundle.md) beside its
``manifest.sha256``. The signature covers one short message that binds three things:

    rgbd-edge bundle manifest v1\\n
    key_id=<sha256 hex of the signer's raw 32-byte public key>\\n
    digest=<sha256 hex of manifest.sha256>\\n

The purpose line keeps a signature made for a bundle from being accepted for anything else
(and the other way round); the key id makes the signer explicit, so a device names the key it
refused. The device trusts the public keys its configuration lists (``trusted_keys``); a
bundle is accepted only when its signature verifies with one of them and covers the digest
of the manifest it ships.

The `cryptography` library is imported inside the functions that parse keys or verify, never
at import time: ``import edge.bundle`` stays light, and a device without trusted keys never
loads it. The signing side (a private key) lives in convert/package.py.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from .digest import sha256_bytes

SIGNATURE_FILE = "bundle.sig"
SIGNATURE_FORMAT = "rgbd-edge-bundle-signature"
SIGNATURE_VERSION = 1
ALGORITHM = "ed25519"
PURPOSE = "rgbd-edge bundle manifest v1"
MAX_KEY_BYTES = 16 * 1024         # a PEM public key is ~110 bytes; anything far bigger is not one
MAX_SIGNATURE_BYTES = 16 * 1024   # bundle.sig is ~400 bytes

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_SIG_KEYS = ("format", "version", "algorithm", "purpose", "key_id", "digest", "signature")


class SignatureError(ValueError):
    """A key or a signature is unusable or does not verify; the message says which and why.

    ``reason`` is a short word for programs and tests: ``unsigned``, ``untrusted-key``,
    ``bad-signature``, ``digest-mismatch``, ``malformed``, ``bad-key``.
    """

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class TrustedKey:
    path: Path      # the file it was read from (for messages)
    key_id: str     # sha256 hex of the raw 32-byte public key
    raw: bytes      # the raw 32-byte Ed25519 public key


def key_id(raw_public_key: bytes) -> str:
    """The id of a public key: sha256 hex of its raw 32 bytes."""
    return sha256_bytes(bytes(raw_public_key))


def signed_message(key_id_hex: str, digest: str) -> bytes:
    """The exact bytes an Ed25519 signature of a bundle covers (module docstring)."""
    return f"{PURPOSE}\nkey_id={key_id_hex}\ndigest={digest}\n".encode("ascii")


def _read_small(path: Path, limit: int, what: str, reason: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise SignatureError(f"{path}: cannot read the {what}: {exc.strerror or exc}", reason) from exc
    if len(data) > limit:
        raise SignatureError(f"{path}: the {what} is larger than {limit} bytes; not a {what}", reason)
    return data


def load_public_key(path: str | os.PathLike) -> TrustedKey:
    """An Ed25519 public key from a PEM file (``rgbd-convert keygen`` writes KEY.pub).

    SignatureError (reason ``bad-key``) when the file is unreadable, not PEM, not Ed25519, or a
    private key (which must never be copied to a device).
    """
    path = Path(path)
    data = _read_small(path, MAX_KEY_BYTES, "public key", "bad-key")
    if b"PRIVATE KEY" in data:
        raise SignatureError(f"{path}: this file holds a PRIVATE key; a device needs only the public key "
                             f"(the .pub file `rgbd-convert keygen` wrote beside it). Keep the private key on "
                             f"the signing workstation", "bad-key")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{path}: not a PEM public key ({exc})", "bad-key") from exc
    except Exception as exc:  # e.g. UnsupportedAlgorithm: any other parse failure is the same problem
        raise SignatureError(f"{path}: not a usable PEM public key ({type(exc).__name__}: {exc})", "bad-key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{path}: not an Ed25519 public key ({type(key).__name__}); bundles are signed "
                             f"with Ed25519 (rgbd-convert keygen)", "bad-key")
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return TrustedKey(path=path, key_id=key_id(raw), raw=raw)


def load_trusted_keys(items: Iterable[TrustedKey | str | os.PathLike]) -> tuple[TrustedKey, ...]:
    """Keys from TrustedKey objects or key files, in order, without duplicates (by key id)."""
    out: dict[str, TrustedKey] = {}
    for it in items:
        k = it if isinstance(it, TrustedKey) else load_public_key(it)
        out.setdefault(k.key_id, k)
    return tuple(out.values())


@dataclass(frozen=True)
class Signature:
    key_id: str
    digest: str
    signature: bytes   # 64 bytes


def signature_document(key_id_hex: str, digest: str, signature: bytes) -> bytes:
    """bundle.sig's content (JSON, one object, keys sorted, newline at the end)."""
    doc = {"format": SIGNATURE_FORMAT, "version": SIGNATURE_VERSION, "algorithm": ALGORITHM, "purpose": PURPOSE,
           "key_id": key_id_hex, "digest": digest, "signature": base64.b64encode(signature).decode("ascii")}
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("ascii")


def parse_signature(data: bytes, where: str) -> Signature:
    """Check bundle.sig's content; SignatureError (reason ``malformed``) naming what is wrong."""
    def bad(problem: str) -> SignatureError:
        return SignatureError(f"{where}: {problem}", "malformed")

    if len(data) > MAX_SIGNATURE_BYTES:
        raise bad(f"larger than {MAX_SIGNATURE_BYTES} bytes; not a bundle signature")
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise bad(f"not a JSON signature document ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != SIGNATURE_FORMAT:
        raise bad(f"not a bundle signature (expected a JSON object with format {SIGNATURE_FORMAT!r})")
    unknown = sorted(set(doc) - set(_SIG_KEYS))
    missing = [k for k in _SIG_KEYS if k not in doc]
    problems = ([f"unknown keys: {', '.join(map(str, unknown))}"] if unknown else []) + \
               ([f"missing keys: {', '.join(missing)}"] if missing else [])
    if problems:
        raise bad("; ".join(problems))
    if doc["version"] != SIGNATURE_VERSION or doc["algorithm"] != ALGORITHM:
        raise bad(f"version {doc['version']!r} / algorithm {doc['algorithm']!r}: this runtime reads version "
                  f"{SIGNATURE_VERSION}, {ALGORITHM}")
    if doc["purpose"] != PURPOSE:
        raise bad(f"purpose {doc['purpose']!r} is not {PURPOSE!r}: this signature was made for something else")
    for k in ("key_id", "digest"):
        if not isinstance(doc[k], str) or not _HEX64.match(doc[k]):
            raise bad(f"{k} must be 64 lowercase hex characters")
    try:
        sig = base64.b64decode(str(doc["signature"]), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise bad(f"signature is not base64 ({exc})") from exc
    if len(sig) != 64:
        raise bad(f"signature is {len(sig)} bytes; an Ed25519 signature is 64")
    return Signature(key_id=doc["key_id"], digest=doc["digest"], signature=sig)


def _key_list(keys: Sequence[TrustedKey]) -> str:
    return ", ".join(f"{k.key_id[:12]} ({k.path})" for k in keys)


def verify_signature(data: bytes | None, digest: str, keys: Sequence[TrustedKey], where: str) -> TrustedKey:
    """The trusted key whose signature ``data`` (bundle.sig's bytes; None when absent) covers
    ``digest``. SignatureError naming the reason otherwise."""
    if not keys:
        raise ValueError("verify_signature needs at least one trusted key")
    if data is None:
        raise SignatureError(f"{where}: the bundle is not signed (no {SIGNATURE_FILE}), and this device trusts "
                             f"only bundles signed by {_key_list(keys)}; sign it on the workstation with "
                             f"`rgbd-convert sign BUNDLE_DIR --key KEY`", "unsigned")
    sig = parse_signature(data, where)
    key = next((k for k in keys if k.key_id == sig.key_id), None)
    if key is None:
        raise SignatureError(f"{where}: signed by key {sig.key_id[:12]}, which this device does not trust "
                             f"(trusted: {_key_list(keys)})", "untrusted-key")
    if sig.digest != digest:
        raise SignatureError(f"{where}: the signature covers digest {sig.digest[:12]}..., but the bundle's "
                             f"manifest has digest {digest[:12]}... (files changed after signing)",
                             "digest-mismatch")
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(key.raw).verify(sig.signature, signed_message(key.key_id, digest))
    except InvalidSignature:
        raise SignatureError(f"{where}: the signature does not verify with key {key.key_id[:12]} ({key.path}): "
                             f"the bundle or its signature was altered", "bad-signature") from None
    return key
