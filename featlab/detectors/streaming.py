"""Fit the classical detector on more embeddings than fit in memory, chunk by chunk.

``StandardScaler`` -> ``PCA`` (both from one pass of float64 sums and ``X^T X``: the exact PCA of the
standardised data) -> ``Nystroem`` (RBF map fitted on a seeded
sample) -> ``SGDClassifier`` (averaged, hinge loss: a linear SVM in the Nystroem space, ``alpha = 1 / (C n)``),
each step fed chunk by chunk from the cache's shards (rows read with ``pread``, never memory-mapped).
``max_memory`` is a ceiling on the whole process: chunks are sized from what is left once the memory
the process already holds (libraries, the index) and the fixed d x d matrices are counted. All
candidate C values are trained in the same passes (each chunk is transformed once) and the one with
the best balanced accuracy on the valid split is kept.
The result is an ordinary scikit-learn ``Pipeline`` that every featlab command reads.
"""

from __future__ import annotations

import os
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

from featlab.core.errors import FeatlabError
from featlab.detectors.classical import FitResult

#: Bytes per float32 embedding value that an in-memory fit needs (the matrix, its float64 and scaled copies,
#: PCA's SVD): above ``max_memory`` the streaming fit takes over.
BYTES_PER_VALUE = 48

#: Allocator slack on the per-row estimate of :func:`bytes_per_row` (freed blocks are not returned at once).
ROW_MARGIN = 1.5

#: Rows per sub-block when a chunk goes through scaler -> PCA -> kernel map (bounds their float64 temporaries).
SUB_BLOCK = 2048


def resident_bytes() -> int:
    """This process's resident memory now (``/proc/self/statm``; elsewhere its peak so far, an upper bound)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)


def bytes_per_row(n_features: int, kernel_components: int) -> int:
    """Memory one chunk row holds: the first pass keeps the float32 row and its float64 copy; the
    training passes keep the float32 row and its float64 kernel features."""
    return int(ROW_MARGIN * max(12 * n_features, 4 * n_features + 8 * kernel_components))


def transform_bytes_per_row(n_features: int, kernel_components: int) -> int:
    """Memory of the temporaries for one row of a sub-block in transit (scaled, projected, kernel)."""
    return int(ROW_MARGIN * 8 * (n_features + 2 * kernel_components))


def fixed_bytes(n_features: int, components: int, kernel_components: int) -> int:
    """Memory the fit needs whatever the chunk size: the d x d float64 sums, covariance and
    eigenvectors (with eigh's workspace) and the fitted kernel map."""
    return 8 * (6 * n_features**2 + kernel_components * (components + kernel_components))


def chunk_rows(n_features: int, max_memory: int, minimum: int, kernel_components: int = 1000,
               components: int = 256, footprint: int = 0) -> int:
    """Rows per chunk that keep the process under ``max_memory`` bytes, given the ``footprint`` it
    already holds (at least ``minimum`` rows, else a :class:`FeatlabError` that says what is needed).

    A chunk of ``r`` rows costs ``r * bytes_per_row`` plus the transform temporaries of
    ``min(r, SUB_BLOCK)`` rows, on top of :func:`fixed_bytes`.
    """
    fixed = fixed_bytes(n_features, components, kernel_components)
    per_row = bytes_per_row(n_features, kernel_components)
    in_transit = transform_bytes_per_row(n_features, kernel_components)
    budget = max_memory - footprint - fixed
    rows = int(budget // (per_row + in_transit))
    if rows > SUB_BLOCK:
        rows = int((budget - SUB_BLOCK * in_transit) // per_row)
    if rows < minimum:
        need = footprint + fixed + minimum * (per_row + in_transit)
        raise FeatlabError(f"max memory {_size(max_memory)} is too small: the process already holds "
                           f"{_size(footprint)} and the fit needs {_size(fixed)} for its fixed matrices and "
                           f"{_size(need - footprint - fixed)} for chunks of {minimum} rows of {n_features} values; "
                           f"give at least {_size(need)} or lower --pca")
    return rows


def _size(count: int) -> str:
    return f"{count / 2**20:.0f} MB" if count >= 2**20 else f"{count / 2**10:.0f} KB"


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
    max_memory: int = 2 * 2**30, seed: int = 0, footprint: int | None = None,
) -> FitResult:
    """Fit the streaming pipeline (module docstring) reading rows by index; see :class:`featlab.detectors.classical.FitResult`.

    ``max_memory`` caps the whole process's resident memory: chunks get what is left after
    ``footprint`` (what the process holds already; None measures it now) and the fixed matrices.
    """
    y_train = np.asarray(y_train)
    n = len(y_train)
    if len(np.unique(y_train)) < 2:
        raise FeatlabError("the train split needs both real and fake images")
    if not pca:
        raise FeatlabError("streaming fit needs a PCA size (--pca N)")
    pca = int(min(pca, n_features, n))
    C = C or [1.0]
    kernel_components = min(nystroem_components, n)
    footprint = resident_bytes() if footprint is None else footprint
    rows = chunk_rows(n_features, max_memory, pca + 1, kernel_components, pca, footprint)
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    scaler, reducer = _scaler_and_pca(read_train, n, n_features, rows, pca, seed)
    sample = np.sort(rng.choice(n, size=min(n, max(nystroem_components, 2000)), replace=False))
    reduced_sample = reducer.transform(scaler.transform(read_train(sample)))
    gamma = 1.0 / (reduced_sample.shape[1] * reduced_sample.var())  # sklearn's "scale"
    kmap = Nystroem(gamma=gamma, n_components=kernel_components, random_state=seed)
    kmap.fit(reduced_sample)
    del reduced_sample
    notes = [f"streaming fit: {len(_chunks(n, rows))} chunks of up to {rows} rows (max memory {_size(max_memory)}, "
             f"{_size(footprint)} already in use); PCA {pca} (exact, from X^T X), Nystroem {kmap.n_components}, "
             f"averaged SGD hinge, {epochs} epochs"]

    def features(read, idx):
        # transform in sub-blocks straight into the result: the float64 temporaries stay one block big
        X = read(idx)
        out = np.empty((len(X), kmap.n_components), dtype=np.float64)
        for i in range(0, len(X), SUB_BLOCK):
            out[i:i + SUB_BLOCK] = kmap.transform(reducer.transform(scaler.transform(X[i:i + SUB_BLOCK])))
        return out

    models = {c: SGDClassifier(loss="hinge", alpha=1.0 / (c * n), average=True, random_state=seed) for c in C}
    for _ in range(epochs):
        for idx in _chunks(n, rows, rng):
            X = features(read_train, idx)
            for model in models.values():
                model.partial_fit(X, y_train[idx], classes=np.array([0, 1]))
            del X  # before the next chunk is read, not after
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
            del X
        for c in C:
            search.append({"clf__C": c, "score": balanced_accuracy_score(y_valid, np.concatenate(predictions[c]))})
        best = max(search, key=lambda r: r["score"])["clf__C"]
    pipeline = Pipeline([("scale", scaler), ("pca", reducer), ("kmap", kmap), ("clf", models[best])])
    chosen = next((r["score"] for r in search if r["clf__C"] == best), float("nan"))
    return FitResult(pipeline=pipeline, best_params={"clf__C": float(best), "kmap__gamma": float(gamma)},
                     search=pd.DataFrame(search or [{"clf__C": best, "score": np.nan}]), selection=selection,
                     selection_score=float(chosen), fit_seconds=fit_seconds,
                     search_seconds=time.perf_counter() - start, notes=notes)
