"""One SVM expert per training source, mixed by a learned gate (:class:`SourceExperts`).

A training set pooled from sources that differ in how their images were made and stored (the combined build:
StyleGAN faces at 256 px beside expert-photoshopped portraits at 300 px) asks one RBF boundary to separate real
from fake in both at once. Measured on the combined build (seed 0; open_nsfw layer2+layer3 mean+std native, PCA 256,
C chosen on valid): one SVM, valid ROC-AUC 0.796 (140K 0.876, CIPLAB 0.703), across sources 0.529 / 0.589; one
calibrated SVM per source mixed by a logistic gate (99.8 % right on valid), valid 0.851 (0.931 / 0.720) but across
sources 0.513 / 0.546 (their C, 10, is sharp); the experts blended half and half with a smooth SVM (C 0.1, on every
training image), valid 0.838 (0.907 / 0.723) and across sources 0.591 / 0.587: ``fit-svm``'s default.

The model is a mixture of experts with a supervised gate::

    p(fake | x) = (1 - w) * sum_k p(source k | x) * p(fake | x, expert k) + w * p(fake | x, smooth SVM)

Each expert is an SVC with Platt scaling (fitted on its source's training images only); the gate is a
logistic regression on the same inputs, fitted on every training image with its source as the target.
An image from a source none of the experts saw is scored by the blend the gate gives it. Sources come from the
training data's provenance (``featlab data build``'s ``manifest.csv``, or ``groups.csv`` rows
``source=<name>``), never from the image at test time.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.svm import SVC

from featlab.core.errors import FeatlabError

#: Fewest training images of each class a source needs to get its own expert (``experts="auto"``).
MIN_EXPERT_IMAGES = 20


def expert_sources(sources: np.ndarray | list | None, labels: np.ndarray, minimum: int = MIN_EXPERT_IMAGES,
                   min_sources: int = 2) -> tuple[list[str], str]:
    """(the sources that get an expert, why not when there are none) of a training set.

    Experts need at least ``min_sources`` sources (two for a gate to choose between; one when a smooth SVM is
    blended in), every image with a known source, and ``minimum`` images of each
    class in every source; otherwise the list is empty and the reason says which condition failed.
    """
    unknown = np.ones(0, dtype=bool) if sources is None else np.array([s in ("", None) for s in sources], dtype=bool)
    if sources is None or unknown.all():
        return [], ("the training images have no recorded source (featlab data build's manifest.csv, or groups.csv "
                    "rows source=NAME)")
    sources = np.asarray(sources, dtype=object)
    if unknown.any():
        return [], f"{int(unknown.sum())} training images have no recorded source"
    names = sorted(set(sources))
    if len(names) < min_sources:
        return [], f"the training images come from one source ({names[0] if names else 'none'})"
    labels = np.asarray(labels)
    for name in names:
        counts = [int(np.sum((sources == name) & (labels == value))) for value in (0, 1)]
        if min(counts) < minimum:
            return [], (f"source {name} has {counts[0]} real and {counts[1]} fake training images "
                        f"(an expert needs {minimum} of each)")
    return names, ""


class SourceExperts(ClassifierMixin, BaseEstimator):
    """Calibrated SVM experts, one per training source, mixed by a logistic gate, optionally blended with a smooth SVM.

    Parameters
    ----------
    C, gamma, kernel, class_weight : every expert's SVC settings (searched on valid like a single SVM's).
    gate_C : the gate's inverse regularisation (it only has to tell the sources apart).
    smooth_C : C of the smooth SVM fitted on every training image (same gamma, kernel, Platt scaling); None: none.
        With one, a single source is enough (one expert, no gate).
    smooth_weight : w, the smooth SVM's share of p(fake) (0.5: half and half).
    seed : random_state of the SVCs.

    Attributes
    ----------
    sources_ : list of str, the experts' sources, in gate order.
    experts_ : list of fitted ``CalibratedClassifierCV`` (sigmoid, ``ensemble=False``), one per source.
    gate_ : fitted ``LogisticRegression`` predicting the source index (None with one source).
    smooth_ : fitted ``CalibratedClassifierCV`` of the smooth SVM, or None.
    classes_ : ``[0, 1]`` (real, fake).
    """

    def __init__(self, C: float = 1.0, gamma: float | str = "scale", kernel: str = "rbf",
                 class_weight: str | None = None, gate_C: float = 1.0, smooth_C: float | None = None,
                 smooth_weight: float = 0.5, seed: int = 0) -> None:
        self.C = C
        self.gamma = gamma
        self.kernel = kernel
        self.class_weight = class_weight
        self.gate_C = gate_C
        self.smooth_C = smooth_C
        self.smooth_weight = smooth_weight
        self.seed = seed

    def _calibrated_svm(self, C: float, X: np.ndarray, y: np.ndarray) -> CalibratedClassifierCV:
        svm = SVC(kernel=self.kernel, C=C, gamma=self.gamma, class_weight=self.class_weight, random_state=self.seed)
        return CalibratedClassifierCV(svm, method="sigmoid", cv=3, ensemble=False).fit(X, y)

    def fit(self, X: np.ndarray, y: np.ndarray, sources: np.ndarray | list | None = None) -> SourceExperts:
        """Fit one calibrated SVM per source, the gate (two sources or more) and the smooth SVM (``smooth_C``).
        ``sources``: each row's source name."""
        if sources is None:
            raise FeatlabError("source experts need each training image's source")
        X, y = np.asarray(X), np.asarray(y)
        sources = np.asarray(sources, dtype=object)
        if len(sources) != len(X):
            raise FeatlabError(f"source experts: {len(sources)} sources for {len(X)} training rows")
        if not 0.0 <= float(self.smooth_weight) <= 1.0:
            raise FeatlabError(f"smooth_weight must be within [0, 1], not {self.smooth_weight}")
        # 3: the calibration's 3 folds need both classes; one source is enough when a smooth SVM is blended in
        names, why_not = expert_sources(sources, y, minimum=3, min_sources=1 if self.smooth_C else 2)
        if not names:
            raise FeatlabError(f"source experts cannot be fitted: {why_not}")
        self.sources_ = [str(name) for name in names]
        self.experts_ = [self._calibrated_svm(self.C, X[sources == name], y[sources == name]) for name in names]
        self.gate_ = None
        if len(names) > 1:
            target = np.searchsorted(np.asarray(self.sources_, dtype=object), sources)
            self.gate_ = LogisticRegression(C=self.gate_C, max_iter=5000).fit(X, target)
        self.smooth_ = self._calibrated_svm(self.smooth_C, X, y) if self.smooth_C else None
        self.classes_ = np.array([0, 1])
        self.n_features_in_ = X.shape[1]
        return self

    def gate_proba(self, X: np.ndarray) -> np.ndarray:
        """(N, number of sources): p(source k | x), the weight of each expert (1 for a single expert)."""
        return np.ones((len(X), 1)) if self.gate_ is None else self.gate_.predict_proba(X)

    def expert_proba(self, X: np.ndarray) -> np.ndarray:
        """(N, number of sources): each expert's p(fake | x)."""
        return np.column_stack([expert.predict_proba(X)[:, 1] for expert in self.experts_])

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """(N, 2): p(real), p(fake): the experts' mixture, blended with the smooth SVM's p(fake) when fitted."""
        fake = np.sum(self.gate_proba(X) * self.expert_proba(X), axis=1)
        smooth = getattr(self, "smooth_", None)  # absent from files fitted before the smooth SVM existed
        if smooth is not None:
            fake = (1.0 - self.smooth_weight) * fake + self.smooth_weight * smooth.predict_proba(X)[:, 1]
        return np.column_stack([1.0 - fake, fake])

    def predict(self, X: np.ndarray) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(np.int64)

    def check_structure(self) -> None:
        """Refuse a loaded object whose fitted parts are not what :meth:`fit` makes (a crafted file)."""
        experts, gate, names = (getattr(self, a, None) for a in ("experts_", "gate_", "sources_"))
        smooth = getattr(self, "smooth_", None)  # None also in files fitted before the smooth SVM existed

        def one_svm(part) -> bool:
            return (isinstance(part, CalibratedClassifierCV) and len(getattr(part, "calibrated_classifiers_", [])) == 1
                    and isinstance(part.calibrated_classifiers_[0].estimator, SVC))

        ok = (isinstance(experts, list) and experts and isinstance(names, list) and len(names) == len(experts)
              and all(isinstance(n, str) for n in names) and all(one_svm(e) for e in experts)
              and (smooth is None or one_svm(smooth)) and (len(experts) >= 2 or smooth is not None)
              and (gate is None if len(experts) == 1 else
                   isinstance(gate, LogisticRegression) and len(getattr(gate, "classes_", [])) == len(experts))
              and isinstance(weight := getattr(self, "smooth_weight", 0.5), (int, float)) and 0.0 <= weight <= 1.0)
        if not ok:
            raise FeatlabError("the source-experts model is not one featlab fits (experts, gate and sources "
                               "do not match)")
