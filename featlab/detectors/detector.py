"""A saved model as a function of pixels: the common ground of ``explain`` and ``attack``.

:func:`load_detector` turns a model folder (SVM or CNN) into a :class:`Detector`. Its input is
what the model's preprocessing cuts out of an image (the view), as uint8 pixels; its output is
the model's score (higher = fake). Two paths compute it:

* :meth:`Detector.score`, the fast path used for reports (onnxruntime / bf16 extraction for an
  SVM, exactly as ``featlab evaluate``), for occlusion maps;
* :meth:`Detector.differentiable`, a torch module (fp32) that takes float pixels in 0-255 and
  returns the same score with gradients. For an SVM this is a torch copy of the whole detector:
  backbone (preprocessing included) -> StandardScaler -> PCA -> SVM decision function, built
  from the fitted support vectors, dual coefficients and gamma (Nystroem map and Platt
  calibration likewise), see :class:`TorchPipeline`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

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
from featlab.detectors.modelfile import read_model_meta
from featlab.features.runtime import PixelDetector
from featlab.features.specs import Preprocessing

# ------------------------------------------------------------------ the classical part in torch


def _buffer(module: nn.Module, name: str, value) -> None:
    module.register_buffer(name, torch.tensor(np.array(value, dtype=np.float64)))


class TorchPipeline(nn.Module):
    """The fitted ``StandardScaler -> PCA -> [Nystroem] -> SVM`` pipeline as a differentiable torch function.

    Computes in float64, so it agrees with scikit-learn's ``decision_function`` (or, for a calibrated
    model, ``predict_proba[:, 1]``) to rounding error. Supports SVC with ``rbf`` or ``linear`` kernel,
    LinearSVC or SGDClassifier, IncrementalPCA, a Nystroem (RBF) map before a linear SVM, and sigmoid calibration
    with ``ensemble=False``.
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

    def decision(self, features: torch.Tensor) -> torch.Tensor:
        """Embeddings (N, D) -> SVM decision value (N,)."""
        x = (features.double() - self.scale_mean) / self.scale_std
        if self.has_pca:
            x = (x - self.pca_mean) @ self.pca_components.T
        if self.has_kmap:
            x = torch.exp(-self.kmap_gamma * torch.cdist(x, self.kmap_components).square()) @ self.kmap_normalization.T
        if self.kind == "rbf":
            kernel = torch.exp(-self.gamma * _squared_distances(x, self.support_vectors))
            return kernel @ self.dual_coef + self.intercept
        return x @ self.coef + self.intercept

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Embeddings -> the model's score: decision value, or p(fake) for a calibrated model."""
        decision = self.decision(features)
        if self.calibrated:
            return torch.sigmoid(-(self.platt_a * decision + self.platt_b))
        return decision


def _squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # the expanded form has a gradient at zero distance (cdist's square root does not)
    return (x.square().sum(1, keepdim=True) - 2 * x @ y.T + y.square().sum(1)).clamp_min(0)


# ------------------------------------------------------------------------ pixels -> score


@dataclass
class Detector:
    """A loaded model folder as a function of its input pixels (see module docstring)."""

    kind: str  # "svm" or "cnn"
    folder: Path
    meta: dict
    prep: Preprocessing  # geometry (to_uint8) and normalisation of the model's input
    threshold: float
    score_kind: str
    device: torch.device
    _score: Callable[[torch.Tensor], np.ndarray]
    _build_differentiable: Callable[[], PixelDetector]
    _differentiable: PixelDetector | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.folder.name

    def score(self, batch_uint8: torch.Tensor) -> np.ndarray:
        """uint8 (N, 3, H, W) in the model's view -> score per image (the reports' numbers)."""
        return self._score(batch_uint8)

    def differentiable(self) -> PixelDetector:
        """The torch copy with gradients (fp32, on :attr:`device`, eval mode); built once."""
        if self._differentiable is None:
            self._differentiable = self._build_differentiable().to(self.device).eval()
            for p in self._differentiable.parameters():
                p.requires_grad_(False)
        return self._differentiable


def _cnn_detector(folder: Path, meta: dict, device: str) -> Detector:
    from featlab.detectors.cnn import load_cnn

    model, prep, meta, torch_device = load_cnn(folder, device)

    def score(batch: torch.Tensor) -> np.ndarray:
        model.eval()  # the differentiable copy shares this network: never score in train mode
        with torch.inference_mode():
            x = prep.normalize(batch.to(torch_device)).contiguous(memory_format=torch.channels_last)
            return model(x).float().view(-1).cpu().numpy().astype(np.float64)

    return Detector("cnn", folder, meta, prep, 0.0, "logit", torch_device, score,
                    lambda: PixelDetector(prep, [model.float()]))


def _feature_parts(meta: dict) -> list[tuple[dict, dict]]:
    """(extraction config, weights info) per part of the model's features (one, or several concatenated)."""
    if "concat" in meta["extraction"]:
        return [(part["config"], part["weights_info"]) for part in meta["weights_info"]["parts"]]
    return [(meta["extraction"], meta["weights_info"])]


def _svm_detector(folder: Path, meta: dict, device: str, trust_pickle: bool) -> Detector:
    from featlab.detectors.classical import decision_threshold
    from featlab.detectors.svm import load_svm
    from featlab.features.backbones import load_backbone
    from featlab.features.extract import extractor_from_config, weights_argument
    from featlab.features.recipe import FeatureRecipe, LayerTap

    svm = load_svm(folder, trust_pickle=trust_pickle)
    parts = _feature_parts(meta)
    extractors = [extractor_from_config(config, info, device) for config, info in parts]
    preps = {tuple(sorted(e.preprocessing.as_dict().items())) for e in extractors}
    if len(preps) > 1:
        raise FeatlabError(f"{folder.name}: its feature parts see the image through different preprocessing; "
                           "a pixel-level explanation or attack needs one input geometry")
    prep = extractors[0].preprocessing
    threshold = decision_threshold(svm.pipeline)

    def score(batch: torch.Tensor) -> np.ndarray:
        features = np.hstack([extractor(batch) for extractor in extractors])
        return np.asarray(svm.score(features)[0], dtype=np.float64)

    def build() -> PixelDetector:
        networks, flips = [], []
        for config, info in parts:
            backbone = load_backbone(config["backbone"], weights_argument(info))
            recipe = FeatureRecipe.from_dict(config.get("recipe"))
            model = backbone.model.float().eval()
            networks.append(model if recipe.is_classic else LayerTap(model, backbone.spec, recipe))
            flips.append(recipe.flip)
        return PixelDetector(prep, networks, TorchPipeline(svm.pipeline), flips)

    kind = "p_fake" if threshold == 0.5 else "decision"
    return Detector("svm", folder, meta, prep, threshold, kind, extractors[0].torch_device, score, build)


def load_detector(folder: str | os.PathLike, device: str = "auto", trust_pickle: bool = False) -> Detector:
    """Load a verified model folder (SVM or CNN) as a :class:`Detector`."""
    folder = Path(folder)
    meta = read_model_meta(folder)
    if meta.get("kind") == "cnn":
        return _cnn_detector(folder, meta, device)
    if meta.get("kind") == "svm":
        return _svm_detector(folder, meta, device, trust_pickle)
    raise FeatlabError(f"{folder}: a {meta.get('kind')!r} model has no pixel-level detector")
