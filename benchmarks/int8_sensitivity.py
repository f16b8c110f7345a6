"""INT8 sensitivity by layer group: quantise one mode's graph with each group of layers left in
FP32 in turn and measure it on cable_gland (test-split accuracy, and the score drift on normal
validation data that `rgbd-calibrate int8` selects on).

    python -m benchmarks.int8_sensitivity [--run RUN_DIR | BUNDLE_DIR] [--data DIR] [--mode rgbd|rgb|depth]
        [--method minmax|entropy|percentile]

Needs an exported run (rgbd-convert export --run RUN_DIR) or a bundle. The model family
(run.yaml / bundle.yaml) picks the groups; family and mode name the section of
benchmarks/RESULTS.md it writes (`int8_sensitivity` for rd's rgbd graph, `int8_sensitivity_dbrn_rgb` ...).
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

from benchmarks._report import REPO, add_data_option, command, machine, parser, rel, write_section
from calibrate.dataset import load_raw, prepare
from calibrate.evaluation import score_split
from calibrate.int8 import KEEP_FP32_OPTIONAL, METHODS, calibration_ranges, quantize_int8
from calibrate.int8_pipeline import validation_split
from calibrate.onnx_eval import run_split, session
from edge.modes import MODES
from edge.preprocess import PreprocessParams

T = "/teacher"
RD_GROUPS = {
    "nothing": (),
    "stem": (f"{T}/_conv_stem",),
    "stem + blocks 0-1 (default)": (f"{T}/_conv_stem", f"{T}/_blocks.0/", f"{T}/_blocks.1/"),
    "blocks 2-3": (f"{T}/_blocks.2/", f"{T}/_blocks.3/"),
    "stem + blocks 0-3": (f"{T}/_conv_stem",) + tuple(f"{T}/_blocks.{i}/" for i in range(4)),
    "whole teacher": (f"{T}/",),
    "students": ("/students",),
}
# DBRN's Swin blocks are MatMul / Gemm, which the Q/DQ pass leaves in FP32 (calibrate/int8.py
# quantises Conv only): what INT8 can touch is the branches' patch embeddings and heads, the ISM
# and the discriminator.
DBRN_GROUPS = {
    "nothing": (),
    "branch patch embeddings + heads": KEEP_FP32_OPTIONAL["branch embeddings and heads"],  # groups calibrate_int8 may keep
    "ISM embeddings": ("/ism/embed",),
    "ISM (embeddings + weights)": ("/ism/",),
    "discriminator": ("/disc/",),
    "discriminator encoder (e1-e3)": ("/disc/e1/", "/disc/e2/", "/disc/e3/"),
    "discriminator decoder (d2, d1, output)": KEEP_FP32_OPTIONAL["discriminator decoder"],
    "discriminator output": ("/disc/out",),
    "branch embeddings + heads, discriminator decoder": (KEEP_FP32_OPTIONAL["branch embeddings and heads"]
                                                         + KEEP_FP32_OPTIONAL["discriminator decoder"]),
    "ISM + discriminator": ("/ism/", "/disc/"),
}
NOTES = {
    "rd": """The damage is in the teacher's first layers (stride 2): per-tensor INT8 of the stem's input
and output is too coarse for features that the student must match to within a small cosine
distance. The default keeps the stem and blocks 0-1 in FP32 (about 10 % of the convolution MACs);
`rgbd-calibrate int8` also tries blocks 2-3 (9 % more) and keeps them where that lowers the validation drift.""",
    "dbrn": """Read the test columns as where the error comes from, not as a setting: `rgbd-calibrate int8`
chooses between quantising everything, keeping the branch embeddings and heads, the discriminator
decoder, or both in FP32 by the validation score drift alone (calibrate/int8.py, KEEP_FP32_OPTIONAL), with no defects.""",
}


def graph_dir(path: Path) -> tuple[Path, str]:
    """(directory holding rgbd.onnx + preprocess.yaml, model family) of a run or a bundle."""
    if (path / "export" / "rgbd.onnx").is_file():
        return path / "export", yaml.safe_load((path / "run.yaml").read_text())["model"]
    if (path / "bundle.yaml").is_file():
        return path, yaml.safe_load((path / "bundle.yaml").read_text())["model"]["family"]
    raise FileNotFoundError(f"{path}: no export/rgbd.onnx (rgbd-convert export --run {path}) and no bundle.yaml")


def main(argv=None) -> int:
    ap = parser(__file__, __doc__)
    ap.add_argument("--run", default=str(REPO / "runs" / "bench-rd-cable_gland"))
    add_data_option(ap)
    ap.add_argument("--method", choices=METHODS, default="minmax")
    ap.add_argument("--mode", choices=MODES, default="rgbd")
    a = ap.parse_args(argv)
    try:
        ex, family = graph_dir(Path(a.run))
    except FileNotFoundError as e:
        print(e, file=sys.stderr)
        return 2
    groups = DBRN_GROUPS if family == "dbrn" else RD_GROUPS
    params = PreprocessParams.from_dict(yaml.safe_load((ex / "preprocess.yaml").read_text()))
    raw = load_raw(a.data, "train", False)
    calib = prepare([raw[i] for i in np.linspace(0, len(raw) - 1, 64).round().astype(int)], params, False)
    test = prepare(load_raw(a.data, "test", False), params, False)
    val, _ = validation_split(a.data, params, False)
    graph = ex / f"{a.mode}.onnx"
    names = [i.name for i in session(graph).get_inputs()]
    feeds = [calib.feed(i, names) for i in range(len(calib))]
    base = run_split(graph, test, progress=False)
    val_base = run_split(graph, val, progress=False)[1]
    f = score_split(*base, test, a.mode)
    ranges = calibration_ranges(graph, feeds, a.method)  # the same for every FP32 set
    rows = [f"| FP32 reference | - | 0 | {f['i_auroc']:.3f} | {f['p_auroc']:.3f} | {f['aupro']:.3f} | 0 |"]
    with tempfile.TemporaryDirectory() as tmp:
        for name, pats in groups.items():
            r = quantize_int8(graph, Path(tmp) / "q.onnx", ranges, keep_fp32=("/blur", *pats))
            q = run_split(r.path, test, progress=False)
            s = score_split(*q, test, a.mode)
            # What calibrate_int8 selects on: the largest image-score change on normal validation data.
            drift = np.abs(run_split(r.path, val, progress=False)[1] - val_base).max()
            n_fp32 = sum("/blur" not in n for n in r.fp32_nodes)
            rows.append(f"| {name} | {n_fp32} | {drift:.3f} | {s['i_auroc']:.3f} ({100 * (s['i_auroc'] - f['i_auroc']):+.1f}) | "
                        f"{s['p_auroc']:.3f} ({100 * (s['p_auroc'] - f['p_auroc']):+.1f}) | "
                        f"{s['aupro']:.3f} ({100 * (s['aupro'] - f['aupro']):+.1f}) | {np.abs(q[0] - base[0]).max():.2f} |")
            print(rows[-1], flush=True)
    section = "int8_sensitivity" + ("_dbrn" if family == "dbrn" else "") + ("" if a.mode == "rgbd" else f"_{a.mode}")
    body = f"""## INT8 sensitivity{' (DBRN, ' + a.mode + ')' if family == 'dbrn' else ''}: what stays FP32 (`{section}`)

{a.mode} graph of `{rel(a.run)}`, {a.method} calibration on 64 normal training captures, everything
else quantised (symmetric int8, per-channel weights); cable_gland test split. "Validation score
drift" is the largest change of the image score over the {len(val)} normal validation captures: what `rgbd-calibrate int8` can select on without defects.

| left in FP32 | conv nodes in FP32 | validation score drift | I-AUROC | P-AUROC | AUPRO | max map diff |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

{NOTES[family]}

- Machine: {machine()}.
- Command: `{command(__file__, argv)}`
"""
    write_section(section, body)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
