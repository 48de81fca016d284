"""SVM benchmark (``make bench``): fit time and test accuracy on synthetic embeddings.

Embeddings of dimension 2048 from two overlapping Gaussian classes whose difference lives in
a 64-d subspace plus a non-linear (radial) component, so that an RBF kernel has something to
win. Pipeline: StandardScaler -> PCA(256) -> {exact RBF SVC, Nystroem + LinearSVC, LinearSVC}.
Exact SVC on 100k is skipped by default (its fit time grows ~n^2; pass --exact-max 100000 to try).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from featlab.detectors.classical import build_pipeline


def make_embeddings(n: int, dim: int = 2048, seed: int = 0, direction_seed: int | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = rng.standard_normal((n, dim), dtype=np.float32)
    direction_rng = rng if direction_seed is None else np.random.default_rng(direction_seed)
    direction = direction_rng.standard_normal((64, dim)).astype(np.float32) / np.sqrt(dim)
    latent = rng.standard_normal((n, 64)).astype(np.float32)
    # fake: shifted mean in the subspace; real: a wider radial spread (non-linear cue)
    latent[y == 1] += 0.25
    latent[y == 0, :8] *= 1.3
    X += 4.0 * latent @ direction
    return X, y


def run(sizes: list[int], exact_max: int, test_n: int = 5000) -> list[dict]:
    rows = []
    for n in sizes:
        X, y = make_embeddings(n + test_n, seed=n)
        Xtr, ytr, Xte, yte = X[:n], y[:n], X[n:], y[n:]
        for solver in ("svc", "nystroem", "linear"):
            if solver == "svc" and n > exact_max:
                rows.append({"n_train": n, "solver": solver, "fit_s": None, "test_accuracy": None,
                             "note": f"skipped (> --exact-max {exact_max})"})
                print(json.dumps(rows[-1]), flush=True)
                continue
            pipe = build_pipeline(pca=256, solver=solver, C=1.0, seed=0,
                                  nystroem_components=1000)
            start = time.perf_counter()
            pipe.fit(Xtr, ytr)
            fit_s = time.perf_counter() - start
            start = time.perf_counter()
            acc = float((pipe.predict(Xte) == yte).mean())
            rows.append({"n_train": n, "solver": solver, "fit_s": round(fit_s, 1), "test_accuracy": round(acc, 4),
                         "predict_img_s": round(len(Xte) / (time.perf_counter() - start))})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def run_streaming(n: int, max_memory: str = "2GB", dim: int = 2048, chunk: int = 20_000) -> dict:
    """``featlab fit-svm --max-memory`` on ``n`` synthetic embeddings written to a cache on disk (never all in
    memory here either): its wall time, peak memory (RSS of the fit process) and test accuracy."""
    import os
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    import pandas as pd

    from featlab.detectors.streaming import parse_memory
    from featlab.features.cache import EmbeddingCache

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "work"
        cache = EmbeddingCache.create(work / "features", "synthetic", {"backbone": f"synthetic-{dim}"}, extra_meta={
            "embed_dim": dim, "weights_info": {"source": "synthetic embeddings", "pretrained": False},
            "data_root": "synthetic"})
        rows = []
        sizes = {"train": n, "valid": 5000, "test": 5000}
        start = time.perf_counter()
        for split, count in sizes.items():
            for first in range(0, count, chunk):
                m = min(chunk, count - first)
                X, y = make_embeddings(m, dim, seed={"train": 1, "valid": 2, "test": 3}[split] * 10**7 + first, direction_seed=0)
                hashes = [f"{split}-{first + i:09d}" for i in range(m)]
                cache.add(hashes, X)
                rows += [{"path": h, "split": split, "label": int(label), "sha256": h, "status": "ok", "reason": ""}
                         for h, label in zip(hashes, y)]
        cache.write_index(pd.DataFrame(rows))
        written = time.perf_counter() - start
        start = time.perf_counter()
        log = Path(tmp) / "fit.log"
        with open(log, "w") as out:
            child = subprocess.Popen([sys.executable, "-m", "featlab", "fit-svm", "--pca", "256", "--C", "1",
                                      "--max-memory", max_memory, "--workdir", str(work), "--name", "streamed"],
                                     stdout=out, stderr=subprocess.STDOUT, text=True)
            _, status, usage = os.wait4(child.pid, 0)  # this child's own peak, not the largest child so far
        seconds = time.perf_counter() - start
        stdout = log.read_text()
        if os.waitstatus_to_exitcode(status):
            raise SystemExit(stdout)
        peak = usage.ru_maxrss / 2**20  # KiB -> GiB
        report = json.loads((work / "reports" / "streamed-test.json").read_text())
        row = {"n_train": n, "dim": dim, "max_memory": max_memory, "write_cache_s": round(written, 1),
               "fit_and_report_s": round(seconds, 1), "peak_rss_gib": round(peak, 2),
               "within_cap": bool(peak * 2**30 <= parse_memory(max_memory)),
               "test_accuracy": round(report["metrics"]["accuracy"], 4),
               "test_roc_auc": round(report["metrics"]["roc_auc"], 4),
               "note": next((line for line in stdout.splitlines() if line.startswith("note: streaming")), "")}
        print(json.dumps(row), flush=True)
        return row


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20000,100000")
    parser.add_argument("--exact-max", type=int, default=20000)
    parser.add_argument("--stream", type=int, default=200_000, help="streaming fit on this many (0: skip)")
    parser.add_argument("--max-memory", default="2GB")
    args = parser.parse_args(argv)
    rows = run([int(s) for s in args.sizes.split(",")], args.exact_max)
    if args.stream:
        rows.append(run_streaming(args.stream, args.max_memory))
    return rows


if __name__ == "__main__":
    main()
