"""Maintained benchmarks; each writes its section of benchmarks/RESULTS.md.

Run one from the repository root with the project's Python, e.g.
``.venv/bin/python -m benchmarks.rd_cable_gland --help``. The real data is looked for in
``$RGBD_EDGE_DATA`` (the folder holding ``mvtec3d/`` and ``realsense/``), else ``../shared/data``.
"""

MAINTAINED: tuple[str, ...] = (
    "rd_cable_gland",
    "int8_cable_gland",
    "int8_sensitivity",
    "dbrn_cable_gland",
    "rd_synthetic",
    "train_step_precision",
    "preprocess_speed",
    "train_memory",
)
