"""Running exported graphs with ONNX Runtime over a prepared split."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .dataset import PreparedSplit


def session(path: str | Path, threads: int = 0):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_split(path: str | Path, split: PreparedSplit, threads: int = 0, progress: bool = True, desc: str = "onnx"):
    """(maps N x S x S, scores N) from one exported mode graph, batch 1."""
    sess = session(path, threads)
    names = [i.name for i in sess.get_inputs()]
    maps, scores = [], []
    for i in tqdm(range(len(split)), desc=desc, disable=not progress, leave=False):
        amap, score = sess.run(["anomaly_map", "score"], split.feed(i, names))
        maps.append(amap[0, 0])
        scores.append(float(score[0]))
    return np.stack(maps), np.array(scores)


def latency(path: str | Path, feed: dict, runs: int = 200, threads: int = 2, warmup: int = 10) -> dict:
    sess = session(path, threads)
    names = [i.name for i in sess.get_inputs()]
    feed = {n: feed[n] for n in names}
    for _ in range(warmup):
        sess.run(None, feed)
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feed)
        t.append(time.perf_counter() - t0)
    t = np.array(t) * 1000
    return {"median_ms": float(np.median(t)), "p99_ms": float(np.percentile(t, 99)), "runs": runs, "threads": threads}
