"""SVM detectors as model folders: fit from the embedding cache, save with metadata, load with checks."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
from sklearn.pipeline import Pipeline

from featlab import LABELS, __version__
from featlab.cache import EmbeddingCache, find_caches
from featlab.classical import FitResult, fit_svm, pca_summary, scores
from featlab.errors import FeatlabError
from featlab.modelfile import save_model_folder, verified_artifact
from featlab.versions import library_versions, utc_now

log = logging.getLogger(__name__)

ARTIFACT = "model.joblib"


@dataclass
class SVMModel:
    """A loaded, verified SVM model folder."""

    folder: Path
    pipeline: Pipeline
    meta: dict

    @property
    def name(self) -> str:
        return self.folder.name

    def score(self, X: np.ndarray) -> tuple[np.ndarray, float, str]:
        return scores(self.pipeline, X)


def fit_from_cache(
    cache: EmbeddingCache,
    models_dir: str | os.PathLike,
    name: str | None = None,
    seed: int = 0,
    n_jobs: int = -1,
    **options,
) -> tuple[Path, FitResult]:
    """Fit on the cache's train split, select on valid, save a model folder.

    ``options`` are passed to :func:`featlab.classical.fit_svm` (pca, kernel, C, gamma,
    class_weight, probability, solver).
    """
    X_train, y_train, train_index = cache.load_split("train")
    splits = set(cache.index().split)
    X_valid, y_valid = (cache.load_split("valid")[:2]) if "valid" in splits else (None, None)
    if len(X_train) == 0:
        raise FeatlabError(f"{cache.folder}: the train split holds no usable images")
    result = fit_svm(X_train, y_train, X_valid, y_valid, seed=seed, n_jobs=n_jobs, **options)
    config = cache.meta["config"]
    name = name or f"svm-{config['backbone']}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder = Path(models_dir) / name
    meta = {
        "kind": "svm",
        "featlab": __version__,
        "created": utc_now(),
        "cache_key": cache.meta["key"],
        "cache_folder": str(cache.folder),
        "extraction": config,
        "backbone": config["backbone"],
        "weights_info": cache.meta.get("weights_info", {}),
        "data_root": cache.meta.get("data_root", ""),
        "class_mapping": LABELS,
        "options": {k: v for k, v in options.items()},
        "best_params": result.best_params,
        "selection": result.selection,
        "selection_score_balanced_accuracy": result.selection_score,
        "search": result.search.to_dict(orient="records"),
        "pca": pca_summary(result.pipeline),
        "notes": result.notes,
        "n_train": int(len(X_train)),
        "n_valid": int(0 if X_valid is None else len(X_valid)),
        "train_seconds": result.fit_seconds + result.search_seconds,
        "fit_seconds": result.fit_seconds,
        "search_seconds": result.search_seconds,
        "seed": seed,
        "versions": library_versions(),
    }
    save_model_folder(folder, ARTIFACT, lambda handle: joblib.dump(result.pipeline, handle), meta)
    return folder, result


def load_svm(folder: str | os.PathLike, cache: EmbeddingCache | None = None) -> SVMModel:
    """Load a model folder after checking its hash, and (given ``cache``) that it fits those features.

    Loading unpickles the file, which can run code: the sha256 in meta.json is checked first.
    """
    artifact, meta = verified_artifact(folder)
    if meta.get("kind") != "svm":
        raise FeatlabError(f"{folder} is a {meta.get('kind')} model, not an SVM")
    if cache is not None:
        check_features(meta, cache)
    pipeline = joblib.load(artifact)
    if not isinstance(pipeline, Pipeline):
        raise FeatlabError(f"{artifact} does not hold a scikit-learn Pipeline")
    return SVMModel(Path(folder), pipeline, meta)


def check_features(meta: dict, cache: EmbeddingCache) -> None:
    """Refuse features made with another backbone, weights, preprocessing or precision than the model's."""
    if cache.meta["key"] != meta["cache_key"]:
        ours, theirs = meta["extraction"], cache.meta["config"]
        different = [k for k in ours if ours.get(k) != theirs.get(k)] or ["extraction key"]
        raise FeatlabError(
            f"model {Path(meta.get('cache_folder', '')).name or meta['backbone']} was fitted on features of "
            f"{ours['backbone']}, but these features ({cache.folder.name}, {theirs['backbone']}) differ in: "
            f"{', '.join(different)}"
        )


def cache_for_model(meta: dict, features_dir: str | os.PathLike) -> EmbeddingCache:
    """The workspace cache whose key the model was fitted on."""
    for cache in find_caches(features_dir):
        if cache.meta["key"] == meta["cache_key"]:
            return cache
    raise FeatlabError(
        f"no features in {features_dir} match this model (backbone {meta['backbone']}, key {meta['cache_key'][:12]}); "
        "run featlab extract with the same backbone, weights and precision"
    )
