"""The fitted classical pipeline as a differentiable torch function (:class:`TorchPipeline`).

For an SVM, :meth:`featlab.detectors.base.Detector.differentiable` is a torch copy of the whole detector:
backbone (preprocessing included) -> StandardScaler -> PCA -> SVM decision function, built from the fitted
support vectors, dual coefficients and gamma (Nystroem map and Platt calibration likewise).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.calibration import CalibratedClassifierCV
from sklearn.decomposition import PCA, IncrementalPCA
from sklearn.kernel_approximation import Nystroem
from sklearn.linear_model import SGDClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC
from torch import nn

from featlab.core.errors import FeatlabError
from featlab.detectors.experts import SourceExperts


def _buffer(module: nn.Module, name: str, value) -> None:
    module.register_buffer(name, torch.tensor(np.array(value, dtype=np.float64)))


class TorchPipeline(nn.Module):
    """The fitted ``StandardScaler -> PCA -> [Nystroem] -> SVM`` pipeline as a differentiable torch function.

    Computes in float64, so it agrees with scikit-learn's ``decision_function`` (or, for a calibrated
    model, ``predict_proba[:, 1]``) to rounding error. Supports SVC with ``rbf`` or ``linear`` kernel,
    LinearSVC or SGDClassifier, IncrementalPCA, a Nystroem (RBF) map before a linear SVM, sigmoid calibration
    with ``ensemble=False``, and source experts (calibrated SVCs mixed by a logistic gate).
    """

    def __init__(self, pipeline: Pipeline) -> None:
        super().__init__()
        steps = dict(pipeline.steps)
        scaler, reducer, kmap, clf = steps["scale"], steps["pca"], steps.get("kmap"), steps["clf"]
        if not isinstance(scaler, StandardScaler):
            raise FeatlabError(f"differentiable copy: unexpected scaler {type(scaler).__name__}")
        _buffer(self, "scale_mean", scaler.mean_ if scaler.with_mean else np.zeros(scaler.n_features_in_))
        _buffer(self, "scale_std", scaler.scale_ if scaler.with_std else np.ones(scaler.n_features_in_))
        self.has_pca = isinstance(reducer, (PCA, IncrementalPCA))
        if self.has_pca:
            _buffer(self, "pca_mean", reducer.mean_)
            components = reducer.components_
            if reducer.whiten:
                components = components / np.sqrt(reducer.explained_variance_)[:, None]
            _buffer(self, "pca_components", components)
        elif reducer not in ("passthrough", None):
            raise FeatlabError(f"differentiable copy: unexpected reducer {type(reducer).__name__}")
        self.has_kmap = kmap is not None
        if self.has_kmap:
            if not isinstance(kmap, Nystroem) or kmap.kernel != "rbf":
                raise FeatlabError("differentiable copy: only an RBF Nystroem map is supported")
            _buffer(self, "kmap_components", kmap.components_)
            _buffer(self, "kmap_normalization", kmap.normalization_)
            # pairwise_kernels' rbf default: gamma = 1 / n_features
            self.kmap_gamma = float(kmap.gamma if kmap.gamma is not None else 1.0 / kmap.components_.shape[1])
        self.experts = isinstance(clf, SourceExperts)
        self.head = _TorchExperts(clf) if self.experts else _TorchClassifier(clf)

    @property
    def calibrated(self) -> bool:
        """The score is p(fake) (Platt scaling or source experts), not a decision value."""
        return self.experts or self.head.calibrated

    def reduce(self, features: torch.Tensor) -> torch.Tensor:
        """Embeddings (N, D) -> the classifier's inputs: scaled, PCA-projected, kernel-mapped (float64)."""
        x = (features.double() - self.scale_mean) / self.scale_std
        if self.has_pca:
            x = (x - self.pca_mean) @ self.pca_components.T
        if self.has_kmap:
            x = torch.exp(-self.kmap_gamma * torch.cdist(x, self.kmap_components).square()) @ self.kmap_normalization.T
        return x

    def decision(self, features: torch.Tensor) -> torch.Tensor:
        """Embeddings (N, D) -> SVM decision value (N,) (a single SVM's; source experts have none)."""
        if self.experts:
            raise FeatlabError("a source-experts model has no single decision value: its score is p(fake)")
        return self.head.decision(self.reduce(features))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Embeddings -> the model's score: decision value, or p(fake) for a calibrated or source-experts model."""
        return self.head(self.reduce(features))


class _TorchClassifier(nn.Module):
    """One fitted SVM (SVC rbf / linear, LinearSVC, SGDClassifier), optionally Platt-calibrated, on reduced inputs."""

    def __init__(self, clf) -> None:
        super().__init__()
        self.calibrated = isinstance(clf, CalibratedClassifierCV)
        if self.calibrated:
            if len(clf.calibrated_classifiers_) != 1:
                raise FeatlabError("differentiable copy: a calibrated ensemble is not supported (featlab fits ensemble=False)")
            calibrated = clf.calibrated_classifiers_[0]
            sigmoid = calibrated.calibrators[0]
            self.platt_a, self.platt_b = float(sigmoid.a_), float(sigmoid.b_)
            clf = calibrated.estimator
        if isinstance(clf, SVC) and clf.kernel == "rbf":
            self.kind = "rbf"
            _buffer(self, "support_vectors", clf.support_vectors_)
            _buffer(self, "dual_coef", clf.dual_coef_[0])
            self.gamma = float(clf._gamma)
        elif isinstance(clf, SVC) and clf.kernel == "linear" or isinstance(clf, (LinearSVC, SGDClassifier)):
            self.kind = "linear"
            _buffer(self, "coef", np.asarray(clf.coef_).reshape(-1))
        else:
            raise FeatlabError(f"differentiable copy: unsupported classifier {type(clf).__name__}")
        _buffer(self, "intercept", np.asarray(clf.intercept_).reshape(-1)[:1])

    def decision(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "rbf":
            kernel = torch.exp(-self.gamma * _squared_distances(x, self.support_vectors))
            return kernel @ self.dual_coef + self.intercept
        return x @ self.coef + self.intercept

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        decision = self.decision(x)
        if self.calibrated:
            return torch.sigmoid(-(self.platt_a * decision + self.platt_b))
        return decision


class _TorchExperts(nn.Module):
    """:class:`~featlab.detectors.experts.SourceExperts`: sum_k softmax(gate)_k * expert_k's p(fake), blended with
    the smooth SVM's p(fake) when the model has one."""

    def __init__(self, clf: SourceExperts) -> None:
        super().__init__()
        self.members = nn.ModuleList(_TorchClassifier(expert) for expert in clf.experts_)
        gate = clf.gate_
        if gate is None:  # one expert: weight 1
            coef, intercept = np.zeros((1, clf.n_features_in_)), np.zeros(1)
        else:
            coef, intercept = np.asarray(gate.coef_), np.asarray(gate.intercept_)
            if coef.shape[0] == 1:  # two sources: one logit for the second, the first's is zero
                coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.r_[0.0, intercept]
        _buffer(self, "gate_coef", coef)
        _buffer(self, "gate_intercept", intercept)
        smooth = getattr(clf, "smooth_", None)
        self.smooth = _TorchClassifier(smooth) if smooth is not None else None
        self.smooth_weight = float(clf.smooth_weight) if smooth is not None else 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(x @ self.gate_coef.T + self.gate_intercept, dim=1)
        fake = torch.stack([member(x) for member in self.members], dim=1)
        mixed = (weights * fake).sum(dim=1)
        if self.smooth is None:
            return mixed
        return (1.0 - self.smooth_weight) * mixed + self.smooth_weight * self.smooth(x)


def _squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # the expanded form has a gradient at zero distance (cdist's square root does not)
    return (x.square().sum(1, keepdim=True) - 2 * x @ y.T + y.square().sum(1)).clamp_min(0)
