"""One-class detection (``featlab fit-oneclass``): ``StandardScaler -> PCA -> OneClassSVM |
IsolationForest | EllipticEnvelope`` (the Mahalanobis distance to the real class, robust
covariance) fitted on the train split's **real** faces only. The score is the anomaly
(``-decision_function``; >= 0 is "fake", the estimators' own 5 % contamination threshold). The
model folder is an SVM-like folder (``kind: oneclass``) that every command reads.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from sklearn.covariance import EllipticEnvelope
from sklearn.decomposition import PCA
from sklearn.ensemble import IsolationForest
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM

from featlab import LABELS, __version__
from featlab.core.errors import FeatlabError
from featlab.core.versions import library_versions, utc_now
from featlab.detectors.classical import fit_pca_size, pca_summary

ONECLASS = ("ocsvm", "iforest", "mahalanobis")
CONTAMINATION = 0.05


def build_oneclass(method: str, pca: int | float | None = 64, seed: int = 0) -> Pipeline:
    """Unfitted ``StandardScaler -> PCA -> one-class estimator`` (see module docstring)."""
    if method == "ocsvm":
        estimator = OneClassSVM(nu=CONTAMINATION, gamma="scale")
    elif method == "iforest":
        estimator = IsolationForest(n_estimators=200, contamination=CONTAMINATION, random_state=seed)
    elif method == "mahalanobis":
        estimator = EllipticEnvelope(contamination=CONTAMINATION, random_state=seed)
    else:
        raise FeatlabError(f"one-class method must be one of {', '.join(ONECLASS)}")
    reducer = "passthrough" if pca is None else PCA(n_components=pca, random_state=seed)
    return Pipeline([("scale", StandardScaler()), ("pca", reducer), ("clf", estimator)])


def fit_oneclass_from_cache(cache, models_dir: str | os.PathLike, method: str = "ocsvm", pca: int | float | None = 64,
                            seed: int = 0, name: str | None = None, data_root: str | os.PathLike | None = None,
                            force: bool = False) -> Path:
    """Fit a one-class detector on the cache's train reals and save it as a model folder (``kind: oneclass``).

    ``data_root`` picks which dataset's index of the cache to read (a cache shared by several
    datasets keeps one index each); by default the dataset the cache was last extracted for.
    """
    return fit_oneclass(cache, models_dir, method, pca, seed, name, data_root, force)[0]


def fit_oneclass(cache, models_dir: str | os.PathLike, method: str = "ocsvm", pca: int | float | None = 64,
                 seed: int = 0, name: str | None = None, data_root: str | os.PathLike | None = None,
                 force: bool = False) -> tuple[Path, Pipeline, dict]:
    """As :func:`fit_oneclass_from_cache`; returns (folder, fitted pipeline, its meta.json)."""
    from featlab.detectors.modelfile import refuse_existing_model, save_new_model_folder
    from featlab.detectors.svm import ARTIFACT, dumps_model

    if name:
        refuse_existing_model(Path(models_dir) / name, force)
    index_name, root = cache.dataset_index(data_root)
    X, y, _ = cache.load_split("train", index_name=index_name)
    X_real = X[y == LABELS["real"]]
    if len(X_real) < 10:
        raise FeatlabError(f"{cache.folder}: a one-class detector needs at least 10 real training images "
                           f"(found {len(X_real)})")
    pca, note = fit_pca_size(pca, len(X_real), X_real.shape[1])
    pipeline = build_oneclass(method, pca, seed)
    started = time.perf_counter()
    pipeline.fit(X_real)
    seconds = time.perf_counter() - started
    splits = set(cache.index(index_name).split)
    n_valid = len(cache.load_split("valid", index_name=index_name)[0]) if "valid" in splits else 0
    config = cache.meta["config"]
    folder = Path(models_dir) / (name or f"oneclass-{method}-{config['backbone']}-{time.strftime('%Y%m%d-%H%M%S')}")
    meta = {
        "kind": "oneclass", "featlab": __version__, "created": utc_now(), "method": method,
        "cache_key": cache.meta["key"], "cache_folder": str(cache.folder), "extraction": config,
        "backbone": config["backbone"], "weights_info": cache.meta.get("weights_info", {}),
        "data_root": root, "class_mapping": LABELS,
        "options": {"method": method, "pca": pca, "contamination": CONTAMINATION},
        "best_params": {"method": method}, "selection": "none: fitted on train reals only, no labels of fakes used",
        "selection_score_balanced_accuracy": None, "pca": pca_summary(pipeline), "notes": [note] if note else [],
        "n_train": int(len(X_real)), "n_valid": int(n_valid), "train_seconds": seconds, "fit_seconds": seconds,
        "seed": seed, "versions": library_versions(),
    }
    save_new_model_folder(folder, ARTIFACT, lambda handle, sealed: handle.write(dumps_model(pipeline, sealed)), meta,
                          force=force)
    return folder, pipeline, meta
