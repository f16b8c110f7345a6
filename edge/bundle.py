"""Model bundles: the directory the workstation produces and the Jetson loads.

A bundle is a directory holding ``bundle.yaml`` (schema_version 1, described in
docs/bundle.md), the ONNX graphs it names, ``manifest.sha256`` (the sha256 of every file,
bundle.yaml included: edge/manifest.py) and, when signed, ``bundle.sig`` (edge/signing.py).
``load_bundle`` checks the signature (when trusted keys are given) and the manifest before it
parses bundle.yaml, then reads and checks bundle.yaml completely before the runtime touches a
graph: every problem is a ``BundleError`` whose message names the file, the offending key as a
dotted path (``modes.rgb.threshold.score``) or the offending file.

The writer lives in ``convert/``; this module only reads. It imports the standard library
and yaml only (never torch, onnx or onnxruntime; `cryptography` only when a signature is
verified).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import logging
import os
import re
import sys
import typing
from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

from .checks import CheckError, Checker, describe, join, load_yaml
from .digest import sha256_bytes, sha256_file
from .manifest import (BUNDLE_FILE, MANIFEST_FILE, Integrity, ManifestError, check_listed_bytes, check_sealed_files,
                       legacy_digest, read_integrity, read_limited)
from .modes import MODE_INPUTS, MODES
from .preprocess import PreprocessParams
from .signing import SIGNATURE_FILE, SignatureError, TrustedKey, load_trusted_keys

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())  # a warning reaches the daemon's log, never a bare stderr line

SCHEMA_VERSION = 1

OUTPUTS: tuple[str, ...] = ("anomaly_map", "score")
PRECISIONS = ("fp32", "int8")
LAYOUTS = ("NCHW",)
DTYPES = ("float32",)

_TOP_KEYS = ("schema_version", "model", "input", "preprocess", "modes", "engines", "provenance", "files")
_TOP_REQUIRED = ("schema_version", "model", "input", "preprocess", "modes", "provenance", "files")
_MODEL_KEYS = ("name", "version", "family")
_INPUT_KEYS = ("image_size", "layout", "dtype")
_MODE_KEYS = ("onnx", "onnx_int8", "inputs", "outputs", "threshold", "heatmap")
_THRESHOLD_KEYS = ("score", "pixel", "target_frr", "expected_frr", "n_validation", "precision")
_HEATMAP_KEYS = ("low", "high")
_ENGINES_KEYS = ("dir",)
_PROVENANCE_REQUIRED = ("created", "code_version", "training_data_fingerprint")

_SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")
MAX_BUNDLE_YAML_BYTES = 16 << 20  # read into memory once, hashed and parsed from the same bytes

INTEGRITY = ("signed", "manifest", "legacy")


# --------------------------------------------------------------------------- errors


class BundleError(CheckError):
    """The bundle is unusable. The message names the manifest and the key (dotted path) or file.

    ``key`` (dotted path or None) and ``file`` (a Path or None) carry the same for programs.
    """


# --------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class Threshold:
    score: float         # image score above this -> reject
    pixel: float         # anomaly-map value above this -> marked pixel
    target_frr: float    # false-reject rate asked for, in (0, 1)
    expected_frr: float  # false-reject rate estimated at `score`, in [0, 1]
    n_validation: int    # normal validation samples the threshold came from
    precision: str       # graph the threshold was computed with: fp32 | int8


@dataclass(frozen=True)
class HeatmapNorm:
    low: float   # anomaly-map value shown as "cold"
    high: float  # anomaly-map value shown as "hot" (> low)


@dataclass(frozen=True)
class ModeSpec:
    name: str
    onnx: Path               # absolute path of the fp32 graph
    onnx_int8: Path | None   # absolute path of the INT8 Q/DQ graph, if the bundle has one
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    threshold: Threshold
    heatmap: HeatmapNorm

    @property
    def precisions(self) -> tuple[str, ...]:
        """Graph precisions this mode ships: ('fp32',) or ('fp32', 'int8')."""
        return ("fp32", "int8") if self.onnx_int8 is not None else ("fp32",)

    def graph(self, precision: str) -> Path:
        """The ONNX file for ``precision`` ('fp32' or 'int8')."""
        if precision == "fp32":
            return self.onnx
        if precision == "int8":
            if self.onnx_int8 is None:
                raise BundleError(f"mode '{self.name}' has no INT8 graph (modes.{self.name}.onnx_int8 is not in "
                                  f"the bundle); use precision 'fp32' or run rgbd-calibrate to produce one",
                                  key=f"modes.{self.name}.onnx_int8")
            return self.onnx_int8
        raise BundleError(f"unknown precision {precision!r} for mode '{self.name}': use one of {', '.join(PRECISIONS)}")


@dataclass(frozen=True)
class Bundle:
    root: Path                      # the bundle directory (absolute)
    schema_version: int
    model_name: str
    model_version: str
    image_size: int
    preprocess: PreprocessParams
    modes: dict[str, ModeSpec]      # in bundle.yaml order
    provenance: dict
    files: dict[str, str]           # relative POSIX path -> lowercase sha256 hex
    raw: dict                       # the parsed bundle.yaml, untouched
    model_family: str | None = None
    engines_dir: Path | None = None  # absolute; None when bundle.yaml has no `engines`
    hashes_verified: bool = False   # True when load_bundle checked every listed sha256
    digest: str = ""                # sha256 of the canonical file manifest: names exactly these files
    integrity: str = "legacy"       # signed | manifest | legacy (no manifest.sha256), see docs/bundle.md
    signed_by: TrustedKey | None = None  # the trusted key whose signature verified (integrity "signed")
    warnings: tuple[str, ...] = ()  # what the loader warned about (also logged)

    @property
    def manifest(self) -> Path:
        return self.root / BUNDLE_FILE

    def mode(self, name: str) -> ModeSpec:
        try:
            return self.modes[name]
        except KeyError:
            raise BundleError(f"{self.manifest}: mode '{name}' is not in this bundle "
                              f"(available: {', '.join(self.modes)})", key=f"modes.{name}") from None


# --------------------------------------------------------------------------- hashing


def _short(hexdigest: str) -> str:
    return hexdigest[:12] + "..."


# --------------------------------------------------------------------------- field checks


def _rel_path(chk: Checker, root: Path, value: Any, key: str) -> str:
    """A path inside the bundle, as normalised relative POSIX text ('./a//b.onnx' -> 'a/b.onnx')."""
    text = chk.string(value, key)
    if "\\" in text:
        raise chk.fail(key, f"'{text}': use '/' as the path separator", file=text)
    p = PurePosixPath(text)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise chk.fail(key, f"'{text}' is outside the bundle: paths must be relative to the bundle "
                            f"directory and stay inside it", file=text)
    rel = p.as_posix()
    resolved = (root / rel).resolve()
    if resolved != root and root not in resolved.parents:  # a symlink pointing out of the bundle
        raise chk.fail(key, f"'{text}' resolves to {resolved}, outside the bundle {root}", file=root / rel)
    return rel


# --------------------------------------------------------------------------- preprocess


def _preprocess_types() -> dict[str, Any]:
    try:
        return typing.get_type_hints(PreprocessParams)
    except Exception:  # an annotation this Python cannot evaluate: skip the type checks
        return {}


def _check_preprocess(chk: Checker, value: Any) -> PreprocessParams:
    d = chk.mapping(value, "preprocess")
    hints = _preprocess_types()
    for name in (f.name for f in fields(PreprocessParams)):
        if name in d and name in hints:
            chk.annotated(d[name], f"preprocess.{name}", hints[name])
    try:
        return PreprocessParams.from_dict(dict(d))
    except (ValueError, TypeError) as exc:
        raise chk.fail("preprocess", f"invalid preprocessing parameters: {exc}") from exc


# --------------------------------------------------------------------------- loading


def _check_threshold(chk: Checker, value: Any, key: str) -> Threshold:
    d = chk.mapping(value, key)
    chk.keys(d, key, _THRESHOLD_KEYS, required=_THRESHOLD_KEYS)
    target = chk.number(d["target_frr"], f"{key}.target_frr")
    if not 0 < target < 1:
        raise chk.fail(f"{key}.target_frr", f"must be in (0, 1), got {target}")
    expected = chk.number(d["expected_frr"], f"{key}.expected_frr")
    if not 0 <= expected <= 1:
        raise chk.fail(f"{key}.expected_frr", f"must be in [0, 1], got {expected}")
    return Threshold(
        score=chk.number(d["score"], f"{key}.score"),
        pixel=chk.number(d["pixel"], f"{key}.pixel"),
        target_frr=target,
        expected_frr=expected,
        n_validation=chk.integer(d["n_validation"], f"{key}.n_validation", lo=1),
        precision=chk.choice(d["precision"], f"{key}.precision", PRECISIONS),
    )


def _check_heatmap(chk: Checker, value: Any, key: str) -> HeatmapNorm:
    d = chk.mapping(value, key)
    chk.keys(d, key, _HEATMAP_KEYS, required=_HEATMAP_KEYS)
    low = chk.number(d["low"], f"{key}.low")
    high = chk.number(d["high"], f"{key}.high")
    if not low < high:
        raise chk.fail(key, f"low must be below high, got low={low}, high={high}")
    return HeatmapNorm(low=low, high=high)


def _check_mode(chk: Checker, root: Path, name: Any, value: Any) -> tuple[ModeSpec, dict[str, str]]:
    """The mode, and the files it references: relative path -> dotted key."""
    key = f"modes.{name}"
    if name not in MODE_INPUTS:
        raise chk.fail(key, f"unknown mode '{name}' (known modes: {', '.join(MODES)})")
    d = chk.mapping(value, key)
    chk.keys(d, key, _MODE_KEYS, required=("onnx", "inputs", "threshold", "heatmap"))
    refs: dict[str, str] = {}
    onnx = _rel_path(chk, root, d["onnx"], f"{key}.onnx")
    refs[onnx] = f"{key}.onnx"
    onnx_int8 = None
    if d.get("onnx_int8") is not None:
        onnx_int8 = _rel_path(chk, root, d["onnx_int8"], f"{key}.onnx_int8")
        if onnx_int8 == onnx:
            raise chk.fail(f"{key}.onnx_int8", f"'{onnx_int8}' is the same file as {key}.onnx", file=onnx_int8)
        refs[onnx_int8] = f"{key}.onnx_int8"
    inputs = chk.name_list(d["inputs"], f"{key}.inputs")
    if inputs != MODE_INPUTS[name]:
        raise chk.fail(f"{key}.inputs", f"mode '{name}' takes [{', '.join(MODE_INPUTS[name])}], "
                                        f"got [{', '.join(inputs)}]")
    outputs = OUTPUTS
    if d.get("outputs") is not None:
        outputs = chk.name_list(d["outputs"], f"{key}.outputs")
        if outputs != OUTPUTS:
            raise chk.fail(f"{key}.outputs", f"must be [{', '.join(OUTPUTS)}], got [{', '.join(outputs)}]")
    threshold = _check_threshold(chk, d["threshold"], f"{key}.threshold")
    if threshold.precision == "int8" and onnx_int8 is None:
        raise chk.fail(f"{key}.threshold.precision", f"the threshold was computed with the INT8 graph, but "
                                                     f"mode '{name}' has no {key}.onnx_int8")
    heatmap = _check_heatmap(chk, d["heatmap"], f"{key}.heatmap")
    spec = ModeSpec(name=name, onnx=root / onnx, onnx_int8=root / onnx_int8 if onnx_int8 else None,
                    inputs=inputs, outputs=outputs, threshold=threshold, heatmap=heatmap)
    return spec, refs


def _check_modes(chk: Checker, root: Path, value: Any) -> tuple[dict[str, ModeSpec], dict[str, str]]:
    """The modes in bundle.yaml order, and every file they reference: relative path -> dotted key."""
    modes_doc = chk.mapping(value, "modes")
    if not modes_doc:
        raise chk.fail("modes", f"must name at least one mode ({', '.join(MODES)})")
    modes: dict[str, ModeSpec] = {}
    referenced: dict[str, str] = {}
    for name, entry in modes_doc.items():
        spec, refs = _check_mode(chk, root, name, entry)
        modes[name] = spec
        for rel, key in refs.items():
            referenced.setdefault(rel, key)
    return modes, referenced


def _check_files(chk: Checker, root: Path, value: Any) -> dict[str, str]:
    d = chk.mapping(value, "files", any_keys=True)
    out: dict[str, str] = {}
    for name, digest in d.items():
        key = join("files", name)
        rel = _rel_path(chk, root, name, key)
        if rel in out:
            raise chk.fail(key, f"'{name}' is listed twice (as '{rel}')", file=rel)
        if not isinstance(digest, str) or not _SHA256_RE.match(digest):
            raise chk.fail(key, f"must be a sha256 hex digest (64 hex characters), got {describe(digest)}", file=rel)
        out[rel] = digest.lower()
    return out


def _check_provenance(chk: Checker, value: Any) -> dict:
    d = chk.mapping(value, "provenance", any_keys=True)
    chk.required(d, "provenance", _PROVENANCE_REQUIRED)  # free-form otherwise
    created = d["created"]
    if not isinstance(created, (_dt.date, _dt.datetime)):  # YAML turns unquoted ISO times into datetimes
        chk.string(created, "provenance.created")
    chk.string(d["code_version"], "provenance.code_version")
    fp = d["training_data_fingerprint"]
    if not isinstance(fp, str) or not _SHA256_RE.match(fp):
        raise chk.fail("provenance.training_data_fingerprint",
                       f"must be a sha256 hex digest (64 hex characters), got {describe(fp)}")
    if d.get("metrics") is not None:
        chk.mapping(d["metrics"], "provenance.metrics", any_keys=True)
    return d


def _check_files_present(chk: Checker, root: Path, referenced: dict[str, str], files: dict[str, str],
                         verify_hashes: bool) -> None:
    """Referenced files exist and are listed; every listed file exists; with verify_hashes, every
    listed sha256 matches (each file read once)."""
    for rel, key in referenced.items():
        if not (root / rel).is_file():
            raise chk.fail(key, f"file not found: {root / rel}", file=root / rel)
        if rel not in files:
            raise chk.fail(key, f"'{rel}' is not listed in 'files' (every graph needs its sha256 there)",
                           file=root / rel)
    for rel in files:
        if not (root / rel).is_file():
            raise chk.fail(join("files", rel), f"listed file not found: {root / rel}", file=root / rel)
    if not verify_hashes:
        return
    for rel, want in files.items():
        try:
            have = sha256_file(root / rel)
        except OSError as exc:
            raise chk.fail(join("files", rel), f"cannot read {root / rel}: {exc}", file=root / rel) from exc
        if have != want:
            raise chk.fail(join("files", rel), f"sha256 mismatch for {rel}: bundle.yaml lists {_short(want)}, "
                                               f"the file has {_short(have)} (corrupt or incomplete copy?)",
                           file=root / rel)


def _find_manifest(path: str | os.PathLike) -> tuple[Path, Path]:
    """(bundle root, its bundle.yaml), both absolute."""
    given = Path(path)
    if not given.exists():
        raise BundleError(f"bundle directory not found: {given}", file=given)
    if not given.is_dir():
        raise BundleError(f"not a bundle directory (a bundle is a directory holding {BUNDLE_FILE}): {given}",
                          file=given)
    root = given.resolve()
    manifest = root / BUNDLE_FILE
    if not manifest.is_file():
        raise BundleError(f"{given}: no {BUNDLE_FILE} in this directory; is it a model bundle?", file=manifest)
    return root, manifest


class _ReadOnce(type(Path())):
    """bundle.yaml's path carrying the bytes already read (and hashed): load_yaml parses these,
    never a second read of a file that could have changed since it was hashed."""

    _data: bytes = b""

    def read_bytes(self) -> bytes:
        return self._data

    def read_text(self, encoding: str | None = None, errors: str | None = None) -> str:
        return self._data.decode(encoding or "utf-8", errors or "strict")


def _read_manifest(manifest: Path, data: bytes) -> dict:
    snapshot = _ReadOnce(manifest)
    snapshot._data = data
    doc = load_yaml(snapshot, BundleError)
    if doc is None:
        raise BundleError(f"{manifest}: the file is empty", file=manifest)
    if not isinstance(doc, dict):
        raise BundleError(f"{manifest}: must be a YAML mapping at the top level, got {describe(doc)}", file=manifest)
    return doc


def _check_schema_version(chk: Checker, doc: dict) -> int:
    """Checked first: a newer bundle should say so, not fail on some key this runtime does not know."""
    if doc.get("schema_version") is None:
        raise chk.fail("schema_version", f"missing required key (this runtime reads schema version {SCHEMA_VERSION})")
    version = doc["schema_version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise chk.fail("schema_version", f"must be an integer, got {describe(version)}")
    if version != SCHEMA_VERSION:
        raise chk.fail("schema_version", f"unknown schema version {version}; this runtime reads {SCHEMA_VERSION}")
    return version


def _check_model(chk: Checker, value: Any) -> tuple[str, str, str | None]:
    """(name, version, family or None)."""
    model = chk.mapping(value, "model")
    chk.keys(model, "model", _MODEL_KEYS, required=("name", "version"))
    family = chk.string(model["family"], "model.family") if model.get("family") is not None else None
    return chk.string(model["name"], "model.name"), chk.string(model["version"], "model.version"), family


def _check_input(chk: Checker, value: Any) -> int:
    """The image size the graphs take."""
    inp = chk.mapping(value, "input")
    chk.keys(inp, "input", _INPUT_KEYS, required=("image_size",))
    image_size = chk.integer(inp["image_size"], "input.image_size", lo=32)
    if image_size % 32:
        raise chk.fail("input.image_size", f"must be a multiple of 32, got {image_size}")
    if inp.get("layout") is not None:
        chk.choice(inp["layout"], "input.layout", LAYOUTS)
    if inp.get("dtype") is not None:
        chk.choice(inp["dtype"], "input.dtype", DTYPES)
    return image_size


def _check_engines(chk: Checker, root: Path, value: Any) -> Path | None:
    if value is None:
        return None
    eng = chk.mapping(value, "engines")
    chk.keys(eng, "engines", _ENGINES_KEYS, required=("dir",))
    return root / _rel_path(chk, root, eng["dir"], "engines.dir")


def _check_integrity(root: Path, integrity: Integrity, data: bytes, files: dict[str, str], engines_dir: Path | None,
                     verify: bool) -> tuple[str, tuple[str, ...]]:
    """(the bundle's digest, warnings): every file against the manifest, or the legacy warning."""
    if integrity.entries is None:
        warning = (f"{root}: no {MANIFEST_FILE}: bundle.yaml (thresholds, preprocessing) is not covered by any "
                   f"hash, so an edit to it goes unnoticed; re-make the bundle, or sign it with `rgbd-convert "
                   f"sign {root.name} --key KEY`")
        log.warning("%s", warning)
        return legacy_digest(data, files), (warning,)
    engines_rel = _rel(root, engines_dir) if engines_dir is not None else "engines"
    try:
        check_sealed_files(root, integrity, files, engines_rel, verify, hashed=(BUNDLE_FILE,))
    except ManifestError as exc:
        raise BundleError(str(exc), file=exc.file, problem=exc.problem) from exc
    return integrity.digest or "", ()


def load_bundle(path: str | os.PathLike, verify_hashes: bool = True,
                trusted_keys: Sequence[TrustedKey | str | os.PathLike] | None = None) -> Bundle:
    """Read and check a bundle directory: signature, file manifest, bundle.yaml, the files it names.

    With ``trusted_keys`` (TrustedKey objects or public key files) the bundle must be signed by
    one of them; the signature is checked first, then the manifest, and every file's sha256
    (``verify_hashes`` cannot turn that off: a signature over unchecked files proves nothing).
    Without keys a bundle with manifest.sha256 is checked against it the same way (unsigned), and a
    bundle without one (made before manifests) loads with a warning. bundle.yaml is always
    hashed from the bytes it is parsed from. Always checks the schema, that every referenced file
    exists inside the bundle and is listed, and that no unlisted file is in the bundle directory
    (the engine cache aside). Raises BundleError naming the file and the key at fault.
    """
    root, manifest = _find_manifest(path)
    keys = load_trusted_keys(trusted_keys or ())
    try:  # the signature and the manifest first: bundle.yaml is parsed only once it is known good
        integrity = read_integrity(root, keys)
        data = read_limited(manifest, MAX_BUNDLE_YAML_BYTES)
        check_listed_bytes(integrity, BUNDLE_FILE, data, manifest)
    except ManifestError as exc:
        raise BundleError(str(exc), file=exc.file, problem=exc.problem) from exc
    doc = _read_manifest(manifest, data)
    chk = Checker(where=manifest, error=BundleError)
    version = _check_schema_version(chk, doc)
    chk.keys(doc, "", _TOP_KEYS, required=_TOP_REQUIRED)
    model_name, model_version, family = _check_model(chk, doc["model"])
    image_size = _check_input(chk, doc["input"])
    params = _check_preprocess(chk, doc["preprocess"])
    if params.image_size != image_size:
        raise chk.fail("preprocess.image_size", f"{params.image_size} differs from input.image_size {image_size}: "
                                                f"the graphs were exported for one size")
    modes, referenced = _check_modes(chk, root, doc["modes"])
    engines_dir = _check_engines(chk, root, doc.get("engines"))
    provenance = _check_provenance(chk, doc["provenance"])
    files = _check_files(chk, root, doc["files"])
    verify = verify_hashes or bool(keys)
    _check_files_present(chk, root, referenced, files, verify and integrity.entries is None)
    digest, warnings = _check_integrity(root, integrity, data, files, engines_dir, verify)
    return Bundle(root=root, schema_version=version, model_name=model_name, model_version=model_version,
                  image_size=image_size, preprocess=params, modes=modes, provenance=provenance, files=files,
                  raw=doc, model_family=family, engines_dir=engines_dir, hashes_verified=verify, digest=digest,
                  integrity=integrity.kind, signed_by=integrity.key, warnings=warnings)


# --------------------------------------------------------------------------- summary


def _fmt(v: float) -> str:
    return f"{v:.6g}"


def bundle_summary(bundle: Bundle) -> str:
    """Human-readable, multi-line description of a loaded bundle."""
    b = bundle
    fam = f" (family {b.model_family})" if b.model_family else ""
    prov = b.provenance
    created = prov.get("created")
    if isinstance(created, (_dt.date, _dt.datetime)):
        created = created.isoformat()
    lines = [
        f"bundle {b.root} (schema {b.schema_version})",
        f"model: {b.model_name} {b.model_version}{fam}",
        f"input: {b.image_size}x{b.image_size}, depth encoding {b.preprocess.depth_encoding}",
        f"provenance: created {created}, code {prov.get('code_version')}, "
        f"training data {str(prov.get('training_data_fingerprint'))[:12]}...",
        "modes:",
    ]
    for m in b.modes.values():
        t, hm = m.threshold, m.heatmap
        graphs = [f"{_rel(b.root, m.onnx)} (fp32)"]
        if m.onnx_int8 is not None:
            graphs.append(f"{_rel(b.root, m.onnx_int8)} (int8)")
        lines += [
            f"  {m.name}: inputs [{', '.join(m.inputs)}]",
            f"    files: {', '.join(graphs)}",
            f"    precision available: {', '.join(m.precisions)}",
            f"    threshold ({t.precision}): score > {_fmt(t.score)}, pixel > {_fmt(t.pixel)}; "
            f"target FRR {t.target_frr:.2%}, expected FRR {t.expected_frr:.2%}, n_validation {t.n_validation}",
            f"    heatmap: {_fmt(hm.low)} .. {_fmt(hm.high)}",
        ]
    if b.engines_dir is not None:
        lines.append(f"engines: {_rel(b.root, b.engines_dir)}/")
    state = "sha256 verified" if b.hashes_verified else "sha256 NOT verified"
    lines.append(f"files: {len(b.files)} listed, {state}")
    lines.append(f"digest: {b.digest}")
    lines.append(_integrity_line(b))
    lines += [f"WARNING: {w}" for w in b.warnings]
    return "\n".join(lines)


def _integrity_line(b: Bundle) -> str:
    if b.integrity == "signed" and b.signed_by is not None:
        return f"integrity: signed, verified with trusted key {b.signed_by.key_id[:12]} ({b.signed_by.path})"
    if b.integrity == "manifest":
        sig = "bundle.sig present, not checked" if (b.root / SIGNATURE_FILE).exists() else "not signed"
        return f"integrity: {MANIFEST_FILE} covers every file, bundle.yaml included ({sig}: no trusted key given)"
    return f"integrity: legacy bundle without {MANIFEST_FILE} (bundle.yaml not covered by any hash)"


def _rel(root: Path, p: Path) -> str:
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return str(p)


# --------------------------------------------------------------------------- CLI


PROG = "rgbd-edge check-bundle"


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", metavar="DIR", help=f"model bundle directory (holds {BUNDLE_FILE} and the ONNX files)")
    p.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the bundle's files "
                                                            "(except bundle.yaml's; ignored with --trusted-key)")
    p.add_argument("--trusted-key", action="append", default=[], metavar="PUB",
                   help="public key file (PEM, from rgbd-convert keygen): the bundle must be signed by it, as the "
                        "daemon requires when its config lists trusted_keys; repeatable (any one of them)")


def _cmd_check_bundle(a: argparse.Namespace) -> int:
    try:
        keys = load_trusted_keys(a.trusted_key)
    except SignatureError as exc:
        print(f"{PROG}: error: --trusted-key: {exc}", file=sys.stderr)
        return 2
    try:
        bundle = load_bundle(a.bundle, verify_hashes=not a.no_verify, trusted_keys=keys)
    except BundleError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    print(bundle_summary(bundle))
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `check-bundle DIR [--no-verify] [--trusted-key PUB]` on an argparse subparsers object
    (sets ``func``)."""
    p = subparsers.add_parser("check-bundle", help="check a model bundle and print its summary",
                              description="Load a model bundle as the runtime would, verify its signature (with "
                                          "--trusted-key), its file manifest and file hashes, and print a "
                                          "summary. Exit 0 when usable, 2 otherwise.")
    _add_arguments(p)
    p.set_defaults(func=_cmd_check_bundle)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description="check a model bundle and print its summary")
    _add_arguments(p)
    return _cmd_check_bundle(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
