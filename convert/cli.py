"""`rgbd-convert`: train, evaluate, export, lint, bundle, keygen, sign (workstation) and build (Jetson)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edge.modes import MODES

from .models import list_models
from .train import TrainConfig
from .trainers import TRAINERS
from .trainers.common import PRECISIONS


def parse_overrides(items: list[str]) -> dict:
    """["key=value", ...] -> {key: YAML-parsed value}; a malformed item names itself."""
    import yaml

    out = {}
    for it in items:
        key, sep, val = it.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {it!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = yaml.safe_load(val)
        except yaml.YAMLError as e:
            raise ValueError(f"--set {it!r}: value is not valid YAML ({e})") from e
    return out


def parse_roi(text: str) -> tuple[float, float, float, float]:
    """"x0,y0,x1,y1" (fractions of the frame) -> tuple; the range check is PreprocessParams'."""
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != 4:
        raise ValueError(f"--roi {text!r}: expected four fractions x0,y0,x1,y1 (e.g. 0.15,0.15,0.85,0.85)")
    return vals


def _cmd_train(a) -> int:
    from .train import train

    preprocess = {"depth_encoding": a.depth_encoding}
    if a.roi is not None:
        preprocess["roi"] = parse_roi(a.roi)

    cfg = TrainConfig(model=a.model, epochs=a.epochs, image_size=a.image_size, seed=a.seed,
                      batch_size=a.batch_size, lr=a.lr, threads=a.threads, precision=a.precision,
                      rotations=a.rotations, flip=not a.no_flip, minutes=a.minutes, ema=a.ema,
                      preset=a.preset, model_config=parse_overrides(a.overrides),
                      preprocess=preprocess)
    out = train(a.data, a.out, cfg, progress=not a.quiet)
    print(f"run written to {out}")
    return 0


def _cmd_eval(a) -> int:
    from .evaluate import evaluate

    modes = [a.mode] if a.mode else list(MODES)
    results = evaluate(a.run, a.data, modes=modes, out=a.out, figures=not a.no_figures, progress=not a.quiet)
    for r in results:
        fmt = lambda v: "  n/a" if v is None else f"{v:.3f}"  # noqa: E731
        print(f"{r['mode']:>5}  I-AUROC {fmt(r['i_auroc'])}  P-AUROC {fmt(r['p_auroc'])}  "
              f"AUPRO {fmt(r['aupro'])}  {r['ms_per_image']:.1f} ms/img  (n={r['n_images']})")
    if a.out is None:
        print(json.dumps(results, indent=2))
    return 0


def _cmd_export(a) -> int:
    from .export import export_run

    out = a.out or str(Path(a.run) / "export")
    manifest = export_run(a.run, out, dynamic_batch=a.dynamic_batch, check_data=a.check_data, progress=not a.quiet)
    for mode, e in manifest["modes"].items():
        par = e.get("parity")
        extra = "" if par is None else f"  parity vs torch: map {par['max_abs_map']:.1e}, score {par['max_abs_score']:.1e} (n={par['n']})"
        print(f"{mode:>5}: {Path(out) / e['onnx']}{extra}")
    return 0


def _cmd_bundle(a) -> int:
    from .bundle import make_bundle

    out = make_bundle(a.run, a.data, a.out, int8=not a.no_int8, target_frr=a.frr, version=a.version,
                      method=a.method, tar=not a.no_tar, progress=not a.quiet, sign=a.sign)
    from edge.bundle import bundle_summary, load_bundle

    print(bundle_summary(load_bundle(out)))
    print(f"bundle written to {out}" + ("" if a.no_tar else f" and {out.parent / (out.name + '.tar.gz')}"))
    return 0


def _cmd_keygen(a) -> int:
    from .package import generate_key

    priv, pub = generate_key(a.out)
    print(f"private key {priv} (mode 0600: keep it on this workstation, never on a device)")
    print(f"public key  {pub} (copy this one to the devices: /etc/rgbd-edge/keys/, listed in trusted_keys)")
    return 0


def _cmd_sign(a) -> int:
    from edge.bundle import BundleError

    from .package import seal_bundle, write_archive

    try:
        digest = seal_bundle(a.bundle, key=a.key)
    except BundleError as exc:
        raise ValueError(f"not signing {a.bundle}: {exc}") from exc
    print(f"signed {a.bundle}: digest {digest}")
    if not a.no_tar:
        print(f"archive {write_archive(a.bundle)}")
    return 0


def _family_defaults(key: str) -> str:
    """"rd 16, dbrn 44": each trainer's own default, so the help cannot go stale."""
    return ", ".join(f"{name} {cls.defaults[key]}" for name, cls in sorted(TRAINERS.items(), reverse=True))


def _add_signing(sub) -> None:
    """`keygen` and `sign`: the workstation's half of signed bundles (docs/bundle.md)."""
    k = sub.add_parser("keygen", help="make an Ed25519 key pair for signing bundles",
                       description="Write an Ed25519 private key (PEM, mode 0600) to KEY and its public key to "
                                   "KEY.pub. Keep KEY on the signing workstation; copy only KEY.pub to devices.")
    k.add_argument("--out", required=True, metavar="KEY", help="private key file (KEY.pub is written beside it)")
    k.set_defaults(func=_cmd_keygen)

    s = sub.add_parser("sign", help="(re)write a bundle's manifest and signature, and its archive",
                       description="Write manifest.sha256 over every file of BUNDLE_DIR (bundle.yaml included) and "
                                   "bundle.sig, the Ed25519 signature of its digest with KEY; then BUNDLE_DIR.tar.gz.")
    s.add_argument("bundle", metavar="BUNDLE_DIR")
    s.add_argument("--key", required=True, metavar="KEY", help="Ed25519 private key (rgbd-convert keygen)")
    s.add_argument("--no-tar", action="store_true", help="do not (re)write BUNDLE_DIR.tar.gz")
    s.set_defaults(func=_cmd_sign)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rgbd-convert", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train an anomaly model on normal RGB-D samples")
    t.add_argument("--data", required=True, help="dataset root (MVTec 3D-AD layout or rgbd-folder)")
    t.add_argument("--model", default="rd", choices=list_models())
    t.add_argument("--out", required=True, help="run directory (re-running resumes from its checkpoint)")
    t.add_argument("--preset", help="named model configuration (dbrn: edge (default, CPU-trainable) or published)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="model config override, YAML value (e.g. --set embed_dim=48 --set depths=[1,1,2,1]); repeatable")
    t.add_argument("--epochs", type=int, help=f"default: the model's ({_family_defaults('epochs')})")
    t.add_argument("--minutes", type=float,
                   help="wall-time budget (data loading included): stop at MINUTES or at --epochs, whichever "
                        "comes first; the learning rate decays toward whichever end is nearer. The step count "
                        "then depends on the machine's speed (recorded in run.yaml)")
    t.add_argument("--rotations", type=int, default=TrainConfig.rotations, help="pose augmentation: rotations per capture")
    t.add_argument("--no-flip", action="store_true", help="no mirrored poses")
    t.add_argument("--depth-encoding", choices=["normals_height", "height", "normals"], default="normals_height",
                   help="how depth is shown to the ImageNet encoder (docs/models.md)")
    t.add_argument("--image-size", type=int, help=f"default: the model's ({_family_defaults('image_size')})")
    t.add_argument("--roi", metavar="X0,Y0,X1,Y1",
                   help="crop every frame to this region (fractions of the frame) before resizing: more pixels "
                        "on the part at the same cost. Saved with the run, so evaluation, bundles and the "
                        "daemon crop alike; leave a background border for the depth plane fit")
    t.add_argument("--batch-size", type=int, help=f"default: the model's ({_family_defaults('batch_size')})")
    t.add_argument("--lr", type=float, help=f"default: the model's ({_family_defaults('lr')})")
    t.add_argument("--ema", type=float, metavar="DECAY",
                   help="evaluate and export an exponential moving average of the weights with this decay "
                        "(e.g. 0.999: about the last 1,000 steps); 0 = the last step's weights. "
                        f"default: the model's ({_family_defaults('ema')})")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    t.add_argument("--precision", choices=list(PRECISIONS),
                   help="bf16: bfloat16 forward passes, faster on CPUs with AVX-512 BF16 or AMX (weights stay fp32); "
                        "default: the model's (rd fp32, dbrn bf16 where the CPU runs it natively)")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("eval", help="I-AUROC, P-AUROC, AUPRO on a labelled test split")
    e.add_argument("--run", required=True)
    e.add_argument("--data", required=True)
    e.add_argument("--mode", choices=MODES, help="one mode (default: all three)")
    e.add_argument("--out", help="FILE.json; ROC/PRO plots and heatmap galleries are written beside it")
    e.add_argument("--no-figures", action="store_true")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=_cmd_eval)

    x = sub.add_parser("export", help="one static ONNX graph per mode (opset 17, batch 1)")
    x.add_argument("--run", required=True)
    x.add_argument("--out", help="directory (default RUN_DIR/export)")
    x.add_argument("--dynamic-batch", action="store_true", help="also write <mode>.dynbatch.onnx")
    x.add_argument("--check-data", help="dataset whose real samples check ONNX Runtime vs torch parity")
    x.add_argument("--quiet", action="store_true")
    x.set_defaults(func=_cmd_export)

    b = sub.add_parser("bundle", help="export + INT8 + thresholds + metrics into a deployable bundle")
    b.add_argument("--run", required=True)
    b.add_argument("--data", required=True, help="train (calibration), validation (thresholds), test (report)")
    b.add_argument("--out", required=True, help="BUNDLE_DIR (a BUNDLE_DIR.tar.gz is written beside it)")
    b.add_argument("--no-int8", action="store_true")
    b.add_argument("--method", default="auto", choices=["auto", "minmax", "entropy", "percentile"])
    b.add_argument("--frr", type=float, default=0.01, help="target false-reject rate")
    b.add_argument("--version", help="model version string (default: date + data fingerprint)")
    b.add_argument("--no-tar", action="store_true")
    b.add_argument("--sign", metavar="KEY", help="Ed25519 private key (rgbd-convert keygen): write bundle.sig, "
                                                 "which devices with trusted_keys require")
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(func=_cmd_bundle)

    _add_signing(sub)

    from .check_trt import add_parser as add_check_trt
    from .trt_build import add_parser as add_build

    add_check_trt(sub)
    add_build(sub)
    return p


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    try:
        return a.func(a)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError) as exc:
        print(f"rgbd-convert {a.cmd}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
