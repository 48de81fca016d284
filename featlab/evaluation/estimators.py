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
from featlab.detectors.configs import TrainConfig

__all__ = ["CNNClassifier", "DeepFeatures", "SavedModel", "load_model"]


def _is_image(item) -> bool:
    if isinstance(item, (str, os.PathLike, Image.Image)):
        return True
    return isinstance(item, np.ndarray) and item.ndim == 3 and item.shape[-1] == 3 and item.dtype == np.uint8


def _as_items(X) -> list:
    """Accept a list/array/Series of paths, PIL images or HxWx3 uint8 arrays (one 3-D array is one image);
    anything else is refused with a ``ValueError`` that says what X must hold (validation at the edge)."""
    from scipy import sparse

    if sparse.issparse(X):
        raise ValueError("sparse input is not supported: X holds images (file paths, PIL images or HxWx3 uint8 "
                         "arrays), not a feature matrix")
    if _is_image(X):
        return [X]
    if isinstance(X, pd.DataFrame):
        if X.shape[1] != 1:
            raise ValueError("X as a DataFrame must have one column of image paths")
        X = X.iloc[:, 0]
    try:
        items = list(X)
    except TypeError:
        raise ValueError(f"X must be a sequence of images, not {type(X).__name__}") from None
    if not items:
        raise ValueError("X holds no images")
    for item in items:
        if not _is_image(item):
            what = (f"an array of shape {item.shape} and dtype {item.dtype}" if isinstance(item, np.ndarray)
                    else type(item).__name__)
            raise ValueError(f"X must hold images (file paths, PIL images or HxWx3 uint8 arrays), not {what}")
    return items


def _binary_labels(y) -> np.ndarray:
    """Labels 0 (real) / 1 (fake), one per image, both present; refused as scikit-learn classifiers refuse them."""
    from sklearn.utils.multiclass import type_of_target

    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y must be one label per image (1-D), got shape {y.shape}")
    if y.dtype.kind in "fc" and not np.isfinite(y).all():
        raise ValueError("Input y contains NaN or infinity")
    kind = type_of_target(y)
    if kind not in ("binary", "multiclass") or not set(np.unique(y).tolist()) <= {0, 1}:
        raise ValueError(f"Unknown label type: {kind}; y holds 0 (real) or 1 (fake) per image")
    if len(np.unique(y)) < 2:
        raise ValueError("y holds one class only: a real/fake classifier needs both classes")
    return y.astype(int)


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
    faces : ``"none"`` (whole images), ``"detect"`` (the aligned largest face of each image, MTCNN; an image
        without one raises ``ValueError`` naming it) or ``"auto"`` (detect unless the images ``fit`` sees are
        already face-aligned portraits; see ``featlab extract --faces``).
    face_margin : context around the aligned face, as a share of the crop on each side.

    Attributes
    ----------
    backbone_ : the resolved backbone name.
    recipe_ : the resolved :class:`featlab.features.recipe.FeatureRecipe`.
    n_features_out_ : embedding length.
    faces_ : the :class:`featlab.data.faces.FaceStage` applied (None: whole images).
    """

    def __init__(self, backbone: str = "auto", layers: str = "auto", pooling: str | None = None,
                 view: str | None = None, flip: bool | None = None, weights: str = "default",
                 precision: str = "auto", device: str = "auto", engine: str = "auto", batch_size: int = 32,
                 cache_dir: str | os.PathLike | None = None, faces: str = "none", face_margin: float = 0.2) -> None:
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
        self.faces = faces
        self.face_margin = face_margin

    def fit(self, X=None, y=None):
        """Resolve the backbone and recipe (nothing is learned: the backbone is frozen). Returns self."""
        from featlab.features.backbones import get_spec, resolve_auto
        from featlab.features.recipe import parse_recipe

        if X is not None:
            _as_items(X)  # what transform will refuse, refused here

        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        self.backbone_ = resolve_auto(self.backbone)[0]
        spec = get_spec(self.backbone_)
        self.recipe_ = parse_recipe(spec, self.layers, self.pooling, self.view, self.flip)
        self.n_features_out_ = self.recipe_.dim(spec)
        self.faces_ = self._face_stage(X, spec.preprocessing.resize)
        return self

    def _face_stage(self, X, size: int):
        from featlab.data.faces import FACE_MODES, FaceStage, is_face_aligned

        if self.faces not in FACE_MODES:
            raise ValueError(f"faces must be one of {', '.join(FACE_MODES)}, got {self.faces!r}")
        if self.faces == "none":
            return None
        stage = FaceStage(size=size, margin=float(self.face_margin))
        if self.faces == "auto":
            if X is None:
                raise ValueError("faces='auto' decides on the images fit sees; pass X")
            items = _as_items(X)
            picked = np.random.default_rng(0).permutation(len(items))[:48]
            aligned, _ = is_face_aligned([self._image(items[i]) for i in picked])
            return None if aligned else stage
        return stage

    def _extractor(self):
        from featlab.features.backbones import load_backbone
        from featlab.features.extract import Extractor

        faces = getattr(self, "faces_", None)
        key = (self.backbone_, self.recipe_, self.weights, self.precision, self.device, self.engine, faces)
        cached = getattr(self, "_extractor_cache", None)
        if cached is None or cached[0] != key:
            extractor = Extractor(load_backbone(self.backbone_, self.weights), device=self.device,
                                  precision=self.precision, engine=self.engine, recipe=self.recipe_, faces=faces)
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
            batch = torch.stack([self._prepared(extractor, items[i]) for i in chunk])
            out[chunk] = extractor(batch)
        return out

    def _prepared(self, extractor, item) -> torch.Tensor:
        from featlab.core.errors import BadImageError

        try:
            return extractor.preprocessing.prepare(self._image(item))
        except BadImageError as error:  # no face
            raise ValueError(f"{item if isinstance(item, (str, os.PathLike)) else 'an image'}: {error}") from None

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


_TRAIN = TrainConfig()  # the defaults of train-cnn, in one place (featlab.detectors.configs)


class CNNClassifier(ClassifierMixin, BaseEstimator):
    """A fine-tuned CNN as a scikit-learn classifier over image paths (labels 0 real, 1 fake).

    Parameters are those of ``featlab train-cnn`` (:class:`featlab.detectors.cnn.TrainConfig`), plus
    ``validation_fraction`` (a stratified, seeded share of the training images used to pick the
    best epoch), ``work_dir`` (where the model folder is written; a temporary folder if None) and ``faces``
    (``"none"``, or ``"detect"``: train and predict on the aligned largest face of each image).

    Attributes
    ----------
    classes_ : ``array([0, 1])``.
    model_dir_ : the trained model folder (a normal featlab CNN folder).
    """

    def __init__(self, arch: str = _TRAIN.arch, weights: str = _TRAIN.weights, epochs: int = _TRAIN.epochs,
                 batch_size: int = _TRAIN.batch_size, lr: float = _TRAIN.lr, freeze_epochs: int = _TRAIN.freeze_epochs,
                 head_layers: str = _TRAIN.head_layers, image_size: int | None = _TRAIN.image_size,
                 precision: str = _TRAIN.precision, device: str = _TRAIN.device, seed: int = _TRAIN.seed,
                 validation_fraction: float = 0.15, work_dir: str | os.PathLike | None = None,
                 faces: str = "none") -> None:
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
        self.faces = faces

    def fit(self, X, y):
        """Train on image paths ``X`` with labels ``y``; returns self."""
        from scipy import sparse
        from sklearn.model_selection import train_test_split

        from featlab.detectors.cnn import train_cnn

        if sparse.issparse(X):
            _as_items(X)  # refused: sparse input is not supported
        if y is None:
            raise ValueError("CNNClassifier requires y to be passed, but the target y is None")
        y = _binary_labels(y)
        items = _as_items(X)
        if not all(isinstance(item, (str, os.PathLike)) for item in items):
            raise ValueError("CNNClassifier.fit takes image file paths (training reads them from disk)")
        if len(items) != len(y):
            raise ValueError(f"X holds {len(items)} images but y {len(y)} labels")
        paths = [str(Path(p).resolve()) for p in items]
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
                             patience=self.epochs, faces=self._face_stage())
        folder = base / "model"
        if folder.exists():
            shutil.rmtree(folder)
        self.model_dir_ = train_cnn(config, data, folder, progress=False)
        self.classes_ = np.array([0, 1])
        self._saved = SavedModel(self.model_dir_, device=self.device)
        return self

    def _face_stage(self):
        from featlab.data.faces import FaceStage

        if self.faces not in ("none", "detect"):
            raise ValueError(f"faces must be none or detect, got {self.faces!r}")
        return FaceStage() if self.faces == "detect" else None

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
    """A saved, verified model folder (any kind) with scikit-learn style methods over image paths.

    ``decision_function`` is the detector's score (SVM decision value, CNN logit, anomaly score, or a
    calibrated SVM's p(fake)); ``predict`` gives 0 (real) / 1 (fake) at the detector's threshold; ``score`` is
    accuracy. The folder is verified and loaded once, on first use, and reused by every later call.
    """

    def __init__(self, folder: str | os.PathLike, workdir: str | os.PathLike | None = None, device: str = "auto",
                 trust_pickle: bool = False) -> None:
        self.folder = Path(folder)
        self.workdir = workdir
        self.device = device
        self.trust_pickle = trust_pickle
        self.classes_ = np.array([0, 1])
        self._detector = None

    @property
    def detector(self):
        """The loaded :class:`featlab.detectors.base.Detector` (loaded on first use)."""
        if self._detector is None:
            from featlab.core.workspace import Workspace
            from featlab.detectors.base import load

            workspace = Workspace.resolve(self.workdir or tempfile.mkdtemp(prefix="featlab-work-"))
            self._detector = load(self.folder, workspace, device=self.device, trust_pickle=self.trust_pickle)
        return self._detector

    @property
    def meta(self) -> dict:
        return self.detector.meta

    @property
    def kind(self) -> str:
        return self.detector.kind

    def _scores(self, X) -> np.ndarray:
        detector = self.detector
        scored = detector.score_paths(_paths_manifest([str(p) for p in _as_items(X)]))
        bad = [(p, r) for p, r in zip(_as_items(X), scored.reasons) if r]
        if bad:
            raise ValueError(f"{len(bad)} image(s) could not be read, e.g. {bad[0][0]}: {bad[0][1]}")
        return scored.scores

    def decision_function(self, X) -> np.ndarray:
        return self._scores(X)

    def predict(self, X) -> np.ndarray:
        return (self._scores(X) >= self.detector.threshold).astype(int)

    def predict_proba(self, X) -> np.ndarray:
        """[p(real), p(fake)]: the sigmoid of a CNN's logit, or a calibrated SVM's probability.

        Other scores are not probabilities (an uncalibrated SVM: fit it with ``probability=True``)."""
        score_kind = self.detector.score_kind
        if score_kind not in ("logit", "p_fake"):
            hint = " (fit-svm --probability)" if self.detector.kind == "svm" else ""
            raise AttributeError(f"a {self.detector.kind} model scoring {score_kind!r} has no probabilities{hint}")
        scores = self._scores(X)
        p = 1.0 / (1.0 + np.exp(-scores)) if score_kind == "logit" else scores
        return np.column_stack([1 - p, p])

    def score(self, X, y) -> float:
        return float(np.mean(self.predict(X) == np.asarray(y).astype(int)))


def load_model(folder: str | os.PathLike, workdir: str | os.PathLike | None = None, device: str = "auto",
               trust_pickle: bool = False) -> SavedModel:
    """Open a saved model folder (verified as by the CLI) for ``predict`` / ``decision_function`` / ``score``."""
    if not Path(folder).is_dir():
        raise FeatlabError(f"model folder not found: {folder}")
    model = SavedModel(folder, workdir=workdir, device=device, trust_pickle=trust_pickle)
    _ = model.detector  # verify and load now: a bad folder fails here, not at the first prediction
    return model
