"""The classical half: ``Pipeline(StandardScaler, PCA, SVM)`` on cached embeddings.

Hyper-parameters are chosen on the valid split (or by stratified 5-fold cross-validation
on train when there is no valid split), scored by balanced accuracy; the chosen pipeline is then
refitted on the train split only, so the valid split stays a clean selection set and the
test split is never looked at.

Solvers:

* ``svc``       exact kernel SVM (``sklearn.svm.SVC``); fit time grows ~quadratically with the
  number of training images: use it up to a few tens of thousands.
* ``linear``    ``LinearSVC`` on the PCA features; scales linearly, for large sets.
* ``nystroem``  Nystroem approximation of the RBF kernel + ``LinearSVC``; near-RBF accuracy at
  linear cost, for large sets.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.calibration import CalibratedClassifierCV
from sklearn.decomposition import PCA
from sklearn.kernel_approximation import Nystroem
from sklearn.model_selection import GridSearchCV, PredefinedSplit, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC

from featlab.core.checks import parse_grid, parse_pca  # noqa: F401 - re-exported (part of this module's API)
from featlab.core.errors import FeatlabError
from featlab.detectors.experts import SourceExperts

SOLVERS = ("svc", "linear", "nystroem")
# Threshold-dependent on purpose: ROC-AUC alone can prefer a tiny C whose ranking is good
# but whose decision boundary labels everything one class.
SELECTION_METRIC = "balanced_accuracy"
KERNELS = ("rbf", "linear")


def fit_pca_size(pca: int | float | None, n_samples: int, n_features: int) -> tuple[int | float | None, str]:
    """The PCA size to use on ``n_samples`` x ``n_features`` training data, and a note when it was capped.

    PCA cannot have more components than min(samples, features); a whole-number request above
    that is capped to the limit (so the default 256 works on small training sets) and the note
    says so, for the model's metadata and the user.
    """
    limit = min(n_samples, n_features)
    if isinstance(pca, int) and pca > limit:
        return limit, (f"PCA {pca} capped to {limit} components: at most min(training images {n_samples}, "
                       f"embedding dim {n_features})")
    return pca, ""


def build_pipeline(
    pca: int | float | None = 256,
    kernel: str = "rbf",
    C: float = 1.0,
    gamma: float | str = "scale",
    class_weight: str | None = None,
    probability: bool = False,
    solver: str = "svc",
    nystroem_components: int = 1000,
    seed: int = 0,
    experts: bool = False,
    smooth_C: float | None = None,
) -> Pipeline:
    """StandardScaler -> PCA (or passthrough) -> SVM, unfitted.

    Parameters
    ----------
    pca : components (int), variance fraction (float in (0, 1)) or None for no PCA.
    kernel : ``rbf`` or ``linear`` (``svc`` solver).
    C, gamma : SVM regularisation and RBF width (``gamma`` also sets Nystroem's kernel).
    class_weight : ``"balanced"`` or None.
    probability : add Platt calibration so ``predict_proba`` gives p(fake).
    solver : ``svc``, ``linear`` or ``nystroem`` (see module docstring).
    seed : random_state for PCA, the SVM and Nystroem.
    experts : the classifier is :class:`~featlab.detectors.experts.SourceExperts` (one calibrated SVC per
        training source and a gate; its ``fit`` takes ``clf__sources``), which outputs p(fake) itself.
    smooth_C : with ``experts``, the C of the smooth SVM blended into the experts' mixture (None: none).
    """
    if solver not in SOLVERS:
        raise FeatlabError(f"solver must be one of {', '.join(SOLVERS)}")
    if kernel not in KERNELS:
        raise FeatlabError(f"kernel must be one of {', '.join(KERNELS)}")
    reducer = "passthrough" if pca is None else PCA(n_components=pca, random_state=seed)
    if experts:
        if solver != "svc":
            raise FeatlabError("source experts are SVC experts: use solver svc")
        clf = SourceExperts(C=C, gamma=gamma, kernel=kernel, class_weight=class_weight, smooth_C=smooth_C, seed=seed)
        return Pipeline([("scale", StandardScaler()), ("pca", reducer), ("clf", clf)])
    if solver == "svc":
        svm = SVC(kernel=kernel, C=C, gamma=gamma, class_weight=class_weight, random_state=seed)
    else:
        svm = LinearSVC(C=C, class_weight=class_weight, random_state=seed, max_iter=5000)
    # Platt scaling on held-out folds of the training data
    clf = CalibratedClassifierCV(svm, method="sigmoid", cv=3, ensemble=False) if probability else svm
    steps = [("clf", clf)]
    if solver == "nystroem":
        kmap = Nystroem(gamma=None if gamma == "scale" else gamma, n_components=nystroem_components, random_state=seed)
        steps.insert(0, ("kmap", kmap))
    return Pipeline([("scale", StandardScaler()), ("pca", reducer), *steps])


def score_rule(pipeline: Pipeline) -> tuple[float, str]:
    """(threshold, score kind) of a fitted pipeline: what its scores mean and where "fake" starts."""
    if is_outlier_detector(pipeline):
        return 0.0, "anomaly"  # minus the estimator's decision value: its own contamination threshold at 0
    if _has_proba(pipeline):
        return 0.5, "p_fake"
    return 0.0, "decision"


def scores(pipeline: Pipeline, X: np.ndarray) -> tuple[np.ndarray, float, str]:
    """(score per image, threshold, kind): p(fake) with 0.5 when calibrated, the anomaly (minus the
    decision value, threshold 0) for a one-class detector, else the SVM decision value with 0."""
    threshold, kind = score_rule(pipeline)
    if kind == "anomaly":
        return -pipeline.decision_function(X), threshold, kind
    if kind == "p_fake":
        return pipeline.predict_proba(X)[:, 1], threshold, kind
    return pipeline.decision_function(X), threshold, kind


def decision_threshold(pipeline: Pipeline) -> float:
    """Score at and above which an image is called fake: 0.5 for a calibrated p(fake), else 0."""
    return score_rule(pipeline)[0]


def is_outlier_detector(pipeline: Pipeline) -> bool:
    """A one-class estimator (fitted on reals only) ends the pipeline: its decision is "how normal"."""
    from sklearn.base import is_outlier_detector as outlier

    return outlier(pipeline.steps[-1][1])


def _has_proba(pipeline: Pipeline) -> bool:
    return isinstance(pipeline.steps[-1][1], (CalibratedClassifierCV, SourceExperts))


@dataclass
class FitResult:
    pipeline: Pipeline
    best_params: dict
    search: pd.DataFrame  # one row per candidate: params and selection score
    selection: str  # "valid split" or "5-fold CV on train"
    selection_score: float  # balanced accuracy of the chosen candidate on the selection data
    fit_seconds: float  # final refit on train
    search_seconds: float
    notes: list[str] = field(default_factory=list)  # adjustments made to the request (e.g. PCA capped)
    meta: dict | None = None  # the saved model folder's meta.json, once it is written


def fit_svm(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_valid: np.ndarray | None = None,
    y_valid: np.ndarray | None = None,
    pca: int | float | None = 256,
    kernel: str = "rbf",
    C: list[float] | None = None,
    gamma: list | None = None,
    class_weight: str | None = None,
    probability: bool = False,
    solver: str = "svc",
    seed: int = 0,
    n_jobs: int = -1,
    sources: np.ndarray | None = None,
    smooth_C: float | None = None,
) -> FitResult:
    """Select hyper-parameters on valid (or CV), then fit the pipeline on train.

    Parameters
    ----------
    X_train, y_train : training embeddings and labels (0 real, 1 fake).
    X_valid, y_valid : selection split; without it, stratified 5-fold CV on train.
    C, gamma : candidate values (a grid when more than one); default C=[1], gamma=["scale"].
    n_jobs : joblib workers for the grid search.
    sources : each training row's source: given, the classifier is one calibrated SVM expert per source mixed
        by a gate (:class:`~featlab.detectors.experts.SourceExperts`), searched and fitted the same way
        (``probability`` is then moot: the mixture outputs p(fake)). Valid images need no source: they are
        scored like any new image, through the gate.
    smooth_C : with ``sources``, the C of the smooth SVM blended into the experts (fixed, not searched).

    Returns
    -------
    FitResult with the refitted pipeline and the search table.
    """
    if len(np.unique(y_train)) < 2:
        raise FeatlabError("the train split needs both real and fake images")
    # The smallest set PCA is fitted on: train (valid selection) or 4/5 of it (5-fold CV).
    has_valid = X_valid is not None and len(X_valid) and len(np.unique(y_valid)) == 2
    fit_rows = len(X_train) if has_valid else len(X_train) * 4 // 5
    pca, pca_note = fit_pca_size(pca, fit_rows, X_train.shape[1])
    C = C or [1.0]
    gamma = gamma or ["scale"]
    n_kernel = min(1000, len(X_train))
    experts = sources is not None
    base = build_pipeline(pca, kernel, C[0], gamma[0], class_weight, False, solver, n_kernel, seed=seed,
                          experts=experts, smooth_C=smooth_C)
    grid = {"clf__C": C}
    if solver == "nystroem":
        grid["kmap__gamma"] = [None if g == "scale" else g for g in gamma]
    elif solver == "svc" and kernel == "rbf":
        grid["clf__gamma"] = gamma
    n_candidates = int(np.prod([len(v) for v in grid.values()]))

    start = time.perf_counter()
    if n_candidates == 1:
        best = {k: v[0] for k, v in grid.items()}
        search = pd.DataFrame([{**best, "score": np.nan}])
        selection, selection_score = "single candidate (no search)", float("nan")
    else:
        if has_valid:
            X_all = np.concatenate([X_train, X_valid])
            y_all = np.concatenate([y_train, y_valid])
            cv = PredefinedSplit(np.r_[np.full(len(X_train), -1), np.zeros(len(X_valid))])
            selection = "valid split"
            # only the train fold's sources reach fit; the valid rows are scored through the gate
            sources_all = np.concatenate([sources, np.full(len(X_valid), "", dtype=object)]) if experts else None
        else:
            X_all, y_all, sources_all = X_train, y_train, sources
            cv = StratifiedKFold(5, shuffle=True, random_state=seed)
            selection = "5-fold CV on train"
        searcher = GridSearchCV(base, grid, scoring=SELECTION_METRIC, cv=cv, n_jobs=n_jobs, refit=False)
        # the sources reach SourceExperts.fit through the pipeline, sliced to each fold's rows by the search
        searcher.fit(X_all, y_all, **({"clf__sources": sources_all} if experts else {}))
        results = pd.DataFrame(searcher.cv_results_)
        search = pd.DataFrame(list(results.params)).assign(score=results.mean_test_score)
        best = searcher.best_params_
        selection_score = float(searcher.best_score_)
    search_seconds = time.perf_counter() - start

    final = build_pipeline(pca, kernel, C[0], gamma[0], class_weight, probability and not experts, solver, n_kernel,
                           seed=seed, experts=experts, smooth_C=smooth_C)
    if probability and not experts:  # the SVM sits inside the calibrator
        final.set_params(**{k.replace("clf__", "clf__estimator__"): v for k, v in best.items()})
    else:
        final.set_params(**best)
    start = time.perf_counter()
    final.fit(X_train, y_train, **({"clf__sources": sources} if experts else {}))
    return FitResult(
        pipeline=final,
        best_params={k: (v if isinstance(v, str) or v is None else float(v)) for k, v in best.items()},
        search=search,
        selection=selection,
        selection_score=selection_score,
        fit_seconds=time.perf_counter() - start,
        search_seconds=search_seconds,
        notes=[pca_note] if pca_note else [],
    )


def fit_like(pipeline: Pipeline, X: np.ndarray, y: np.ndarray, sources: np.ndarray | list | None = None) -> Pipeline:
    """An unfitted copy of ``pipeline`` (the same steps and chosen parameters) fitted on ``(X, y)``: how the same
    model kind does when trained on other data (e.g. one source only). PCA is capped at what ``X`` allows; a
    source-experts classifier gets ``sources`` (one source: one expert, plus its smooth SVM)."""
    from sklearn.base import clone

    copy = clone(pipeline)
    pca = copy.named_steps.get("pca")
    if isinstance(pca, PCA) and isinstance(pca.n_components, int):
        pca.set_params(n_components=min(pca.n_components, len(X) - 1, X.shape[1]))
    if isinstance(copy.steps[-1][1], SourceExperts):
        if sources is None:
            raise FeatlabError("a source-experts model is refitted with each training row's source")
        return copy.fit(X, y, clf__sources=np.asarray(sources, dtype=object))
    return copy.fit(X, y)


def pca_summary(pipeline: Pipeline) -> dict:
    pca = pipeline.named_steps["pca"]
    if pca == "passthrough":
        return {"components": None, "explained_variance": None}
    return {"components": int(pca.n_components_), "explained_variance": float(pca.explained_variance_ratio_.sum())}
