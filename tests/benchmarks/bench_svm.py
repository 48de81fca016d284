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

from featlab.classical import build_pipeline


def make_embeddings(n: int, dim: int = 2048, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = rng.standard_normal((n, dim), dtype=np.float32)
    direction = rng.standard_normal((64, dim)).astype(np.float32) / np.sqrt(dim)
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


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20000,100000")
    parser.add_argument("--exact-max", type=int, default=20000)
    args = parser.parse_args(argv)
    return run([int(s) for s in args.sizes.split(",")], args.exact_max)


if __name__ == "__main__":
    main()
