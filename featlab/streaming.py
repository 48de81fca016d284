"""Fit the classical detector on more embeddings than fit in memory, chunk by chunk.

``StandardScaler`` -> ``PCA`` (both from one pass of float64 sums and ``X^T X``: the exact PCA of the
standardised data) -> ``Nystroem`` (RBF map fitted on a seeded
sample) -> ``SGDClassifier`` (hinge loss: a linear SVM in the Nystroem space, ``alpha = 1 / (C n)``),
each step fed chunk by chunk from the cache's memory-mapped shards. Chunks are sized so the working
set stays under ``max_memory`` bytes (the chunks and their temporaries; the process's fixed footprint -
libraries, the index, two d x d float64 matrices - comes on top). All candidate C values are trained in the same passes (each chunk
is transformed once) and the one with the best balanced accuracy on the valid split is kept.
The result is an ordinary scikit-learn ``Pipeline`` that every featlab command reads.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA
from sklearn.kernel_approximation import Nystroem
from sklearn.linear_model import SGDClassifier
from sklearn.metrics import balanced_accuracy_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from featlab.classical import FitResult
from featlab.errors import FeatlabError

#: Bytes of memory per float32 embedding value in a chunk, measured: the rows gathered from the shards and
#: their copy, the float64 copy, the scaled and centred temporaries of the transforms, plus a margin for the
#: process's fixed footprint (a 24-byte estimate peaked at 3.3 GiB under a 2 GB cap on 200k x 2048).
BYTES_PER_VALUE = 48


def chunk_rows(n_features: int, max_memory: int, minimum: int) -> int:
    """Rows per chunk that keep the working set under ``max_memory`` bytes (at least ``minimum``)."""
    rows = int(max_memory // (n_features * BYTES_PER_VALUE))
    if rows < minimum:
        raise FeatlabError(f"max memory {max_memory / 2**20:.0f} MB is too small for chunks of {minimum} rows of "
                           f"{n_features} values; raise it or lower --pca")
    return rows


def parse_memory(text: str | int | None) -> int | None:
    """``"2GB"``, ``"512MB"``, ``"1.5G"`` or bytes -> bytes (None stays None)."""
    if text in (None, "", 0):
        return None
    if isinstance(text, int):
        return text
    units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    value = str(text).strip().lower().removesuffix("b").removesuffix("i")
    try:
        return int(float(value[:-1]) * units[value[-1]]) if value and value[-1] in units else int(float(value))
    except ValueError:
        raise FeatlabError(f"memory {text!r}: expected a size such as 2GB or 512MB") from None


def _chunks(n: int, rows: int, rng: np.random.Generator | None = None) -> list[np.ndarray]:
    order = rng.permutation(n) if rng is not None else np.arange(n)
    return [np.sort(order[i:i + rows]) for i in range(0, n, rows)]


def _scaler_and_pca(read, n: int, n_features: int, rows: int, components: int, seed: int):
    """StandardScaler and PCA fitted in one pass: sums, sums of squares and X^T X accumulated in float64.

    The PCA is exact (eigenvectors of the standardised covariance), unlike IncrementalPCA's
    chunk-wise SVD, and costs one matrix product per chunk instead of an SVD.
    """
    total = np.zeros(n_features)
    gram = np.zeros((n_features, n_features))
    for idx in _chunks(n, rows):
        block = read(idx).astype(np.float64)
        total += block.sum(axis=0)
        gram += block.T @ block
        del block
    mean = total / n
    variance = np.clip(np.diag(gram) / n - mean**2, 0, None)
    # the scaler StandardScaler.fit would give, set from the same sums (no second pass, no copies)
    scaler = StandardScaler()
    scaler.n_features_in_, scaler.n_samples_seen_ = n_features, n
    scaler.mean_, scaler.var_ = mean, variance
    scaler.scale_ = np.where(variance > 0, np.sqrt(variance), 1.0)
    covariance = (gram - n * np.outer(mean, mean)) / max(n - 1, 1)
    std = scaler.scale_
    covariance = covariance / np.outer(std, std)  # of the standardised data
    values, vectors = np.linalg.eigh(covariance)
    order = np.argsort(values)[::-1]
    values, vectors = np.clip(values[order], 0, None), vectors[:, order]
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(n_features)])
    vectors *= np.where(signs == 0, 1, signs)  # deterministic signs: each vector's largest entry positive
    reducer = PCA(n_components=components, random_state=seed)
    # the attributes PCA.transform / inverse_transform and featlab's reports read
    reducer.n_features_in_ = n_features
    reducer.n_samples_ = n
    reducer.n_components_ = components
    reducer.mean_ = np.zeros(n_features)  # standardised data has mean 0
    reducer.components_ = vectors[:, :components].T.copy()
    reducer.explained_variance_ = values[:components]
    reducer.explained_variance_ratio_ = values[:components] / values.sum()
    reducer.singular_values_ = np.sqrt(values[:components] * max(n - 1, 1))
    reducer.noise_variance_ = float(values[components:].mean()) if components < n_features else 0.0
    return scaler, reducer


def fit_streaming(
    read_train: Callable[[np.ndarray], np.ndarray], y_train: np.ndarray, n_features: int,
    read_valid: Callable[[np.ndarray], np.ndarray] | None = None, y_valid: np.ndarray | None = None,
    pca: int = 256, C: list[float] | None = None, nystroem_components: int = 1000, epochs: int = 5,
    max_memory: int = 2 * 2**30, seed: int = 0,
) -> FitResult:
    """Fit the streaming pipeline (module docstring) reading rows by index; see :class:`featlab.classical.FitResult`."""
    y_train = np.asarray(y_train)
    n = len(y_train)
    if len(np.unique(y_train)) < 2:
        raise FeatlabError("the train split needs both real and fake images")
    if not pca:
        raise FeatlabError("streaming fit needs a PCA size (--pca N)")
    pca = int(min(pca, n_features, n))
    C = C or [1.0]
    rows = chunk_rows(n_features, max_memory, pca + 1)
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    scaler, reducer = _scaler_and_pca(read_train, n, n_features, rows, pca, seed)
    sample = np.sort(rng.choice(n, size=min(n, max(nystroem_components, 2000)), replace=False))
    reduced_sample = reducer.transform(scaler.transform(read_train(sample)))
    gamma = 1.0 / (reduced_sample.shape[1] * reduced_sample.var())  # sklearn's "scale"
    kmap = Nystroem(gamma=gamma, n_components=min(nystroem_components, len(sample)), random_state=seed)
    kmap.fit(reduced_sample)
    cap = f"{max_memory / 2**20:.0f} MB" if max_memory >= 2**20 else f"{max_memory / 2**10:.0f} KB"
    notes = [f"streaming fit: {len(_chunks(n, rows))} chunks of up to {rows} rows (max memory {cap}); "
             f"PCA {pca} (exact, from X^T X), Nystroem {kmap.n_components}, SGD hinge, {epochs} epochs"]

    def features(read, idx, block: int = 2048):
        # transform in sub-blocks: the float64 temporaries of scaling, projecting and the kernel map stay small
        X = read(idx)
        return np.vstack([kmap.transform(reducer.transform(scaler.transform(X[i:i + block])))
                          for i in range(0, len(X), block)])

    models = {c: SGDClassifier(loss="hinge", alpha=1.0 / (c * n), random_state=seed) for c in C}
    for _ in range(epochs):
        for idx in _chunks(n, rows, rng):
            X = features(read_train, idx)
            for model in models.values():
                model.partial_fit(X, y_train[idx], classes=np.array([0, 1]))
    fit_seconds = time.perf_counter() - started
    search, selection, best = [], "single candidate (no search)", C[0]
    start = time.perf_counter()
    if read_valid is not None and y_valid is not None and len(models) > 1:
        selection = "valid split"
        predictions = {c: [] for c in C}
        for idx in _chunks(len(y_valid), rows):
            X = features(read_valid, idx)
            for c, model in models.items():
                predictions[c].append(model.predict(X))
        for c in C:
            search.append({"clf__C": c, "score": balanced_accuracy_score(y_valid, np.concatenate(predictions[c]))})
        best = max(search, key=lambda r: r["score"])["clf__C"]
    pipeline = Pipeline([("scale", scaler), ("pca", reducer), ("kmap", kmap), ("clf", models[best])])
    chosen = next((r["score"] for r in search if r["clf__C"] == best), float("nan"))
    return FitResult(pipeline=pipeline, best_params={"clf__C": float(best), "kmap__gamma": float(gamma)},
                     search=pd.DataFrame(search or [{"clf__C": best, "score": np.nan}]), selection=selection,
                     selection_score=float(chosen), fit_seconds=fit_seconds,
                     search_seconds=time.perf_counter() - start, notes=notes)
