"""scikit-learn estimators over images: drop featlab into a user's own ``Pipeline`` or ``GridSearchCV``.

* :class:`DeepFeatures` - a transformer from images (file paths, PIL images or uint8 arrays)
  to embeddings, with the embedding cache when ``cache_dir`` is set, so that::

      make_pipeline(DeepFeatures(cache_dir="feats"), StandardScaler(), PCA(256), SVC())

  is the card's detector, and a grid search over its later steps extracts every image once.
* :class:`CNNClassifier` - ``fit(paths, y)``, ``predict``, ``predict_proba``, ``decision_function``
  around the training loop of ``featlab train-cnn``.
* :func:`load_model` - a saved model folder (SVM or CNN) as an object with the same methods.

Labels follow featlab everywhere: 0 = real, 1 = fake.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from featlab.core.errors import FeatlabError

__all__ = ["CNNClassifier", "DeepFeatures", "SavedModel", "load_model"]


def _as_items(X) -> list:
    """Accept a list/array/Series of paths, PIL images or HxWx3 uint8 arrays (one 3-D array is one image)."""
    if isinstance(X, (str, os.PathLike, Image.Image)):
        return [X]
    if isinstance(X, np.ndarray) and X.ndim == 3 and X.shape[-1] == 3 and X.dtype == np.uint8:
        return [X]
    if isinstance(X, pd.DataFrame):
        if X.shape[1] != 1:
            raise ValueError("X as a DataFrame must have one column of image paths")
        X = X.iloc[:, 0]
    items = list(X)
    if not items:
        raise ValueError("X holds no images")
    return items


def _paths_manifest(paths: list) -> pd.DataFrame:
    from featlab.data.dataset import files_manifest

    return files_manifest(paths, split="x")


class DeepFeatures(TransformerMixin, BaseEstimator):
    """Embeddings of a pretrained backbone for a list of images.

    Parameters
    ----------
    backbone : registry name or ``"auto"`` (see ``featlab backbones``).
    layers : stage names (comma-separated), ``"pool"`` or ``"auto"`` (the default recipe's stages).
    pooling, view, flip : the rest of the feature recipe (None: the backbone's default recipe).
    weights : ``"default"``, a state_dict file, or ``"none"`` (random weights: plumbing only).
    precision, device, engine : as for ``featlab extract``.
    batch_size : images per forward pass.
    cache_dir : a features folder; when set, embeddings of image *files* are cached by content
        hash there, so refits and grid searches never recompute an image.

    Attributes
    ----------
    backbone_ : the resolved backbone name.
    recipe_ : the resolved :class:`featlab.features.recipe.FeatureRecipe`.
    n_features_out_ : embedding length.
    """

    def __init__(self, backbone: str = "auto", layers: str = "auto", pooling: str | None = None,
                 view: str | None = None, flip: bool | None = None, weights: str = "default",
                 precision: str = "auto", device: str = "auto", engine: str = "auto", batch_size: int = 32,
                 cache_dir: str | os.PathLike | None = None) -> None:
        self.backbone = backbone
        self.layers = layers
        self.pooling = pooling
        self.view = view
        self.flip = flip
        self.weights = weights
        self.precision = precision
        self.device = device
        self.engine = engine
        self.batch_size = batch_size
        self.cache_dir = cache_dir

    def fit(self, X=None, y=None):
        """Resolve the backbone and recipe (nothing is learned: the backbone is frozen). Returns self."""
        from featlab.features.backbones import get_spec, resolve_auto
        from featlab.features.recipe import parse_recipe

        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        self.backbone_ = resolve_auto(self.backbone)[0]
        spec = get_spec(self.backbone_)
        self.recipe_ = parse_recipe(spec, self.layers, self.pooling, self.view, self.flip)
        self.n_features_out_ = self.recipe_.dim(spec)
        return self

    def _extractor(self):
        from featlab.features.backbones import load_backbone
        from featlab.features.extract import Extractor

        key = (self.backbone_, self.recipe_, self.weights, self.precision, self.device, self.engine)
        cached = getattr(self, "_extractor_cache", None)
        if cached is None or cached[0] != key:
            extractor = Extractor(load_backbone(self.backbone_, self.weights), device=self.device,
                                  precision=self.precision, engine=self.engine, recipe=self.recipe_)
            self._extractor_cache = (key, extractor)
        return self._extractor_cache[1]

    def transform(self, X) -> np.ndarray:
        """(n_images, n_features_out_) float32 embeddings; an unreadable image raises ``ValueError`` naming it."""
        check_is_fitted(self, "recipe_")
        items = _as_items(X)
        extractor = self._extractor()
        out = np.empty((len(items), self.n_features_out_), dtype=np.float32)
        files = [i for i, item in enumerate(items) if isinstance(item, (str, os.PathLike))]
        if files and self.cache_dir is not None:
            from featlab.features.extract import extract_manifest

            manifest = _paths_manifest([items[i] for i in files])
            result = extract_manifest(manifest, extractor, self.cache_dir, batch_size=self.batch_size,
                                      progress=False, write_index=False)
            bad = result.manifest[result.manifest.status != "ok"]
            if len(bad):
                raise ValueError(f"{len(bad)} image(s) could not be read, e.g. {bad.path.iloc[0]}: {bad.reason.iloc[0]}")
            out[files] = result.cache.get(list(result.manifest.sha256))
            rest = [i for i in range(len(items)) if i not in set(files)]
        else:
            rest = list(range(len(items)))
        for start in range(0, len(rest), int(self.batch_size)):
            chunk = rest[start:start + int(self.batch_size)]
            batch = torch.stack([extractor.preprocessing.to_uint8(self._image(items[i])) for i in chunk])
            out[chunk] = extractor(batch)
        return out

    @staticmethod
    def _image(item) -> Image.Image:
        from featlab.core.errors import BadImageError
        from featlab.data.dataset import load_rgb, to_rgb

        if isinstance(item, Image.Image):
            return to_rgb(item)
        if isinstance(item, np.ndarray):
            if item.ndim != 3 or item.shape[-1] != 3 or item.dtype != np.uint8:
                raise ValueError(f"an image array must be HxWx3 uint8, got {item.shape} {item.dtype}")
            return Image.fromarray(item)
        try:
            return load_rgb(item)
        except BadImageError as error:
            raise ValueError(f"{item}: {error}") from None

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        check_is_fitted(self, "recipe_")
        return np.array([f"{self.backbone_}_{i}" for i in range(self.n_features_out_)], dtype=object)


class CNNClassifier(ClassifierMixin, BaseEstimator):
    """A fine-tuned CNN as a scikit-learn classifier over image paths (labels 0 real, 1 fake).

    Parameters are those of ``featlab train-cnn`` (:class:`featlab.detectors.cnn.TrainConfig`), plus
    ``validation_fraction`` (a stratified, seeded share of the training images used to pick the
    best epoch) and ``work_dir`` (where the model folder is written; a temporary folder if None).

    Attributes
    ----------
    classes_ : ``array([0, 1])``.
    model_dir_ : the trained model folder (a normal featlab CNN folder).
    """

    def __init__(self, arch: str = "resnet50-opennsfw", weights: str = "default", epochs: int = 10,
                 batch_size: int = 32, lr: float = 1e-3, freeze_epochs: int = 2, head_layers: str = "auto",
                 image_size: int | None = None, precision: str = "auto", device: str = "auto", seed: int = 0,
                 validation_fraction: float = 0.15, work_dir: str | os.PathLike | None = None) -> None:
        self.arch = arch
        self.weights = weights
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.freeze_epochs = freeze_epochs
        self.head_layers = head_layers
        self.image_size = image_size
        self.precision = precision
        self.device = device
        self.seed = seed
        self.validation_fraction = validation_fraction
        self.work_dir = work_dir

    def fit(self, X, y):
        """Train on image paths ``X`` with labels ``y``; returns self."""
        from sklearn.model_selection import train_test_split

        from featlab.detectors.cnn import TrainConfig, train_cnn

        paths = [str(Path(p).resolve()) for p in _as_items(X)]
        y = np.asarray(y).astype(int)
        if len(paths) != len(y) or not set(np.unique(y)) <= {0, 1} or len(np.unique(y)) < 2:
            raise ValueError("y must hold one 0 (real) or 1 (fake) label per image, with both classes present")
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction}")
        train_idx, valid_idx = train_test_split(np.arange(len(y)), test_size=self.validation_fraction,
                                                stratify=y, random_state=self.seed)
        base = Path(self.work_dir) if self.work_dir else Path(tempfile.mkdtemp(prefix="featlab-cnn-"))
        data = base / "data"
        if data.exists():
            shutil.rmtree(data)
        for split, indices in (("train", train_idx), ("valid", valid_idx)):
            for label in ("real", "fake"):
                (data / split / label).mkdir(parents=True, exist_ok=True)
            for k, i in enumerate(indices):
                label = "fake" if y[i] else "real"
                os.symlink(paths[i], data / split / label / f"{k:06d}{Path(paths[i]).suffix.lower()}")
        config = TrainConfig(arch=self.arch, weights=self.weights, epochs=self.epochs, batch_size=self.batch_size,
                             lr=self.lr, freeze_epochs=self.freeze_epochs, head_layers=self.head_layers,
                             image_size=self.image_size, precision=self.precision, device=self.device, seed=self.seed,
                             patience=self.epochs)
        folder = base / "model"
        if folder.exists():
            shutil.rmtree(folder)
        self.model_dir_ = train_cnn(config, data, folder, progress=False)
        self.classes_ = np.array([0, 1])
        self._saved = SavedModel(self.model_dir_, device=self.device)
        return self

    def decision_function(self, X) -> np.ndarray:
        check_is_fitted(self, "model_dir_")
        return self._saved.decision_function(X)

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self, "model_dir_")
        return self._saved.predict_proba(X)

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self, "model_dir_")
        return self._saved.predict(X)


class SavedModel:
    """A saved, verified model folder (SVM or CNN) with scikit-learn style methods over image paths.

    ``decision_function`` is the SVM decision value or the CNN logit (threshold 0, or 0.5 for a
    calibrated SVM's p(fake)); ``predict`` gives 0 (real) / 1 (fake); ``score`` is accuracy.
    """

    def __init__(self, folder: str | os.PathLike, workdir: str | os.PathLike | None = None, device: str = "auto",
                 trust_pickle: bool = False) -> None:
        from featlab.core.workspace import Workspace
        from featlab.detectors.modelfile import read_model_meta

        self.folder = Path(folder)
        self.meta = read_model_meta(self.folder)
        self.kind = self.meta["kind"]
        self.workspace = Workspace.resolve(workdir or tempfile.mkdtemp(prefix="featlab-work-"))
        self.device = device
        self.trust_pickle = trust_pickle
        self.classes_ = np.array([0, 1])

    def _scores(self, X) -> tuple[np.ndarray, float]:
        paths = [str(p) for p in _as_items(X)]
        if self.kind == "cnn":
            from featlab.detectors.pixel import predict_cnn

            table = predict_cnn(self.folder, _paths_manifest(paths), device=self.device)
            threshold = 0.0
        else:
            from featlab.evaluation.evaluate import predict_manifest

            table, threshold = predict_manifest(self.folder, _paths_manifest(paths), self.workspace, device=self.device,
                                                trust_pickle=self.trust_pickle)
        bad = table[table.status != "ok"]
        if len(bad):
            raise ValueError(f"{len(bad)} image(s) could not be read, e.g. {bad.path.iloc[0]}: {bad.reason.iloc[0]}")
        return table.score.to_numpy(dtype=float), threshold

    def decision_function(self, X) -> np.ndarray:
        return self._scores(X)[0]

    def predict(self, X) -> np.ndarray:
        scores, threshold = self._scores(X)
        return (scores >= threshold).astype(int)

    def predict_proba(self, X) -> np.ndarray:
        """[p(real), p(fake)]: the sigmoid of the CNN logit, or a calibrated SVM's probability.

        An uncalibrated SVM has no probabilities (fit it with ``probability=True``)."""
        scores, threshold = self._scores(X)
        if self.kind == "cnn":
            p = 1.0 / (1.0 + np.exp(-scores))
        elif threshold == 0.5:
            p = scores
        else:
            raise AttributeError("this SVM was fitted without probability calibration (fit-svm --probability)")
        return np.column_stack([1 - p, p])

    def score(self, X, y) -> float:
        return float(np.mean(self.predict(X) == np.asarray(y).astype(int)))


def load_model(folder: str | os.PathLike, workdir: str | os.PathLike | None = None, device: str = "auto",
               trust_pickle: bool = False) -> SavedModel:
    """Open a saved model folder (verified as by the CLI) for ``predict`` / ``decision_function`` / ``score``."""
    if not Path(folder).is_dir():
        raise FeatlabError(f"model folder not found: {folder}")
    return SavedModel(folder, workdir=workdir, device=device, trust_pickle=trust_pickle)
