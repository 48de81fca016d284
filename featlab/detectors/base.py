"""One loaded model: ``featlab.load(folder_or_name) -> Detector``, for every kind of model folder.

:func:`load` reads ``meta.json`` once, then hands it to the loader its ``kind`` registered in
:data:`KINDS`, which reads and verifies the artifact once (the bytes it hashes are the bytes it
deserialises) and builds what scoring needs once. Every command, the Python API and the service
work on the :class:`Detector` it returns:

* :meth:`Detector.score` - uint8 pixels already cut to the model's view -> scores (the fast path);
* :meth:`Detector.score_paths` - image files of a manifest -> scores, undecodable files quarantined
  with their reason (optionally perturbed, or on Ray Data);
* :meth:`Detector.split_scores` - a split of a dataset (what ``featlab evaluate`` reports on);
* :meth:`Detector.differentiable` - a torch module with gradients (explain, attack), or ``None``
  where the kind has none, so those commands refuse up front;
* :meth:`Detector.describe` / :meth:`Detector.costs` - the report's model and costs sections.

Scores are "higher = more fake"; an image is called fake at ``score >= threshold``. A new kind of
model registers its loader with :func:`register_kind`.
"""

from __future__ import annotations

import copy
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from featlab import CLASS_NAMES
from featlab.core.errors import FeatlabError
from featlab.core.workspace import Workspace
from featlab.data.dataset import evaluation_split, scan_dataset
from featlab.data.faces import FaceStage
from featlab.data.perturb import Perturbation
from featlab.detectors.modelfile import read_model_meta, resolve_model
from featlab.features.cache import dataset_tag
from featlab.features.specs import Preprocessing


@dataclass
class LoadOptions:
    """How a model folder is opened (not part of the model)."""

    workspace: Workspace  # where an SVM caches the embeddings it computes
    device: str = "auto"
    trust_pickle: bool = False  # featlab 0.1 SVM folders only: a pickle runs code when loaded


#: kind -> "module:function" of its loader ``(folder, meta, options) -> Detector`` (imported on first use).
KINDS: dict[str, str] = {
    "svm": "featlab.detectors.features_detector:load_feature_detector",
    "oneclass": "featlab.detectors.features_detector:load_feature_detector",
    "cnn": "featlab.detectors.network_detector:load_network_detector",
    "ae": "featlab.detectors.network_detector:load_network_detector",
    "ensemble": "featlab.detectors.ensemble:load_ensemble",
}
_LOADERS: dict[str, Callable[[Path, dict, LoadOptions], Detector]] = {}
#: file suffix -> "module:function" ``(path, options) -> Detector`` of a detector exported to one file.
FILE_LOADERS: dict[str, str] = {".onnx": "featlab.detectors.export:load_onnx_file"}


def register_kind(kind: str, loader: Callable[[Path, dict, LoadOptions], Detector]) -> None:
    """Make :func:`load` open model folders whose ``meta.json`` says ``kind`` with ``loader``."""
    _LOADERS[kind] = loader


def _loader(kind: str) -> Callable[[Path, dict, LoadOptions], Detector]:
    if kind not in _LOADERS:
        if kind not in KINDS:
            raise FeatlabError(f"no loader for model kind {kind!r} (known: {', '.join(sorted(KINDS))})")
        module, function = KINDS[kind].split(":")
        _LOADERS[kind] = getattr(importlib.import_module(module), function)
    return _LOADERS[kind]


def load(model: str | os.PathLike, workspace: Workspace | str | os.PathLike | None = None, *,
         device: str = "auto", trust_pickle: bool = False) -> Detector:
    """Open a model folder (a path, a name under the work folder's ``models/``, or ``latest``) as a Detector.

    Parameters
    ----------
    model : the folder, its name under ``workspace.models``, ``latest`` (the newest finished model), or a
        ``.onnx`` file written by ``featlab export``.
    workspace : the work folder (a :class:`~featlab.core.workspace.Workspace` or its path; default
        ``$FEATLAB_WORKDIR`` or ``./featlab-work``): where names are looked up and where an SVM caches the
        embeddings of the images it scores. Nothing is written there until an SVM scores new images.
    device : ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    trust_pickle : allow a featlab 0.1 SVM folder (``model.joblib``, a pickle that runs code when loaded).

    Returns
    -------
    Detector
        Verified: the artifact's sha256 and sealed metadata are checked before anything is built from it.
    """
    ws = workspace if isinstance(workspace, Workspace) else Workspace.resolve(workspace)
    loader = FILE_LOADERS.get(Path(str(model)).suffix)
    if loader is not None and Path(model).is_file():  # a detector exported to one file (featlab export)
        module, function = loader.split(":")
        return getattr(importlib.import_module(module), function)(model, LoadOptions(ws, device, trust_pickle))
    try:
        folder = resolve_model(model, ws.models)
    except FeatlabError:
        if os.sep not in str(model):
            raise
        folder = Path(model)  # a path: read_model_meta says what is wrong with it
    meta = read_model_meta(folder)
    return _loader(meta["kind"])(folder, meta, LoadOptions(ws, device, trust_pickle))


@dataclass
class Scored:
    """Scores of a manifest's rows, in its order."""

    scores: np.ndarray  # NaN where the image was not scored
    reasons: list[str]  # "" where scored, else why not (undecodable, not an image, ...)
    seconds: float  # spent scoring (decoding included), loading excluded


@dataclass
class SplitScores:
    """What :meth:`Detector.split_scores` scored: one split of one dataset, usable images only."""

    root: str  # the dataset folder ("" when an SVM's cache does not record it)
    split: str
    own: bool  # the model's training data (else reports are named "<model>-on-<tag>")
    paths: list[str]
    hashes: list[str]
    labels: np.ndarray
    scores: np.ndarray
    seconds: float  # spent scoring
    attempted: int  # images tried (scored + skipped)
    skipped: list[dict] | None = None  # {"path", "reason"} of the images that could not be decoded
    embeddings: np.ndarray | None = None  # the features scored, for the PCA scatter plot (feature detectors)
    source: dict = field(default_factory=dict)  # where the scores came from (a feature cache's meta.json)

    @property
    def tag(self) -> str:
        return "" if self.own else dataset_tag(self.root)


class Detector:
    """A verified, loaded model folder. Made by :func:`load`; see the module docstring.

    Attributes
    ----------
    kind : the model kind (``svm``, ``oneclass``, ``cnn``, ``ae``, ``ensemble``).
    folder, meta : the model folder and its ``meta.json``.
    threshold : an image is called fake at ``score >= threshold``.
    score_kind : what the score is: ``decision`` (SVM), ``p_fake`` (calibrated SVM), ``logit`` (CNN),
        ``anomaly`` (one-class detectors, autoencoder), ``mean_z`` (ensemble).
    device : the torch device it computes on.
    """

    def __init__(self, folder: Path, meta: dict, threshold: float, score_kind: str, workspace: Workspace,
                 device: torch.device) -> None:
        self.folder = Path(folder)
        self.meta = meta
        self.kind = str(meta["kind"])
        self.threshold = float(threshold)
        self.score_kind = score_kind
        self.workspace = workspace
        self.device = device

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, kind={self.kind!r}, score_kind={self.score_kind!r}, "
                f"threshold={self.threshold:g})")

    @property
    def name(self) -> str:
        return getattr(self, "_renamed", None) or self.folder.name

    @property
    def faces(self) -> FaceStage | None:
        """The face stage of the model's input (None: whole images); also for a model whose parts see the image
        through different geometries (an ensemble), when they agree on it."""
        try:
            return self.prep.faces
        except FeatlabError:
            members = getattr(self, "members", None)
            stages = {repr(m.faces) for m in members or []}
            if len(stages) > 1:
                raise FeatlabError(f"{self.name}: its members find faces differently") from None
            return members[0].faces if members else None

    def with_faces(self, stage: FaceStage | None) -> Detector:
        """This model seeing its input through another face stage (None: whole images), for ``--faces`` on a model
        trained otherwise. The copy is named ``NAME+faces`` / ``NAME+whole`` so that its reports never replace the
        model's own, and its ``meta["faces_override"]`` says what was changed."""
        if stage == self.faces:
            return self
        twin = copy.copy(self)
        twin.meta = copy.deepcopy(self.meta)
        twin.meta["faces_override"] = stage.as_dict() if stage is not None else "none"
        twin._renamed = f"{self.folder.name}+{'faces' if stage is not None else 'whole'}"
        twin._retarget(stage)
        return twin

    def _retarget(self, stage: FaceStage | None) -> None:
        """Make this copy (see :meth:`with_faces`) use ``stage``."""
        raise FeatlabError(f"{self.name}: a {self.kind!r} model cannot change how it finds faces")

    @property
    def prep(self) -> Preprocessing:
        """Geometry (``to_uint8``) and normalisation of the model's input."""
        raise NotImplementedError

    @property
    def preprocessing(self) -> Preprocessing:
        return self.prep

    @property
    def trained_on(self) -> str:
        """The dataset folder the model was trained on, as recorded ("" when unknown)."""
        return str(self.meta.get("data_root") or "")

    def score(self, pixels: torch.Tensor) -> np.ndarray:
        """uint8 (N, 3, H, W) in the model's view (``prep.to_uint8``) -> score per image (float64)."""
        raise NotImplementedError

    def score_paths(self, manifest: pd.DataFrame, perturbation: Perturbation | None = None, ray: str | None = None,
                    batch_size: int = 32, progress: bool = False) -> Scored:
        """Score the image files of ``manifest`` (from :func:`featlab.data.dataset.scan_images` or
        :func:`~featlab.data.dataset.scan_dataset`); rows whose status is not ``ok`` are never opened.

        ``perturbation`` is applied to every image after decoding (robustness); ``ray`` runs the work on
        Ray Data (:mod:`featlab.features.distributed`)."""
        raise NotImplementedError

    #: Whether :meth:`differentiable` returns a module (known without building it).
    has_gradients: bool = False
    #: Whether scoring new images writes to the work folder (an SVM caches their embeddings there).
    writes_to_workspace: bool = False

    def differentiable(self) -> nn.Module | None:
        """A torch module, float pixels 0-255 in the model's view -> score with gradients; ``None`` when this
        kind has no differentiable form (then explain's gradient methods and attack refuse)."""
        return None

    def frozen(self, module: nn.Module) -> nn.Module:
        """``module`` on this detector's device, in eval mode, its weights frozen: gradients flow to the input only
        (what :meth:`differentiable` returns)."""
        module = module.to(self.device).eval()
        for parameter in module.parameters():
            parameter.requires_grad_(False)
        return module

    def require_gradients(self, purpose: str) -> None:
        """Refuse, in one line, a ``purpose`` that needs :meth:`differentiable` on a model that has none."""
        if not self.has_gradients:
            raise FeatlabError(f"{self.name}: a {self.kind!r} model has no differentiable form, so {purpose} "
                               "cannot run on it")

    def labels(self, scores: np.ndarray) -> list[str]:
        """``real`` / ``fake`` per score (``""`` where the score is NaN)."""
        return ["" if s != s else CLASS_NAMES[int(s >= self.threshold)] for s in np.asarray(scores, float)]

    def splits(self, data_root: str | os.PathLike | None = None) -> set[str]:
        """The splits :meth:`split_scores` can score on ``data_root`` (default: the training data)."""
        root = data_root or self.trained_on
        return set(scan_dataset(root, check_images=False, one_class_ok=True).split) if root else set()

    def split_scores(self, split: str = "test", data_root: str | os.PathLike | None = None, ray: str | None = None,
                     batch_size: int = 32) -> SplitScores:
        """Score ``split`` of the model's training data, or of another dataset (``data_root``)."""
        if not (data_root or self.trained_on):
            raise FeatlabError(f"{self.name} records no training data; pass --data to evaluate it")
        root = str(Path(data_root or self.trained_on).resolve())
        manifest = scan_dataset(root, check_images=False, one_class_ok=True)
        split = evaluation_split(manifest, split, root)
        rows = manifest[(manifest.split == split) & (manifest.status == "ok")]
        if rows.empty:
            raise FeatlabError(f"{root}: split {split!r} holds no images")
        scored = self.score_paths(rows, ray=ray, batch_size=batch_size)
        ok = ~np.isnan(scored.scores)
        own = bool(self.trained_on) and root == str(Path(self.trained_on).resolve())
        return SplitScores(root, split, own, list(rows.path[ok]), list(rows.sha256[ok]), rows.label.to_numpy()[ok],
                           scored.scores[ok], scored.seconds, len(rows),
                           skipped=[{"path": p, "reason": r} for p, r in zip(rows.path, scored.reasons) if r])

    def describe(self) -> dict:
        """The report's ``model`` section."""
        try:
            faces = self.faces
        except FeatlabError:  # members that find faces differently: they say it in their own sections
            faces = None
        return {"kind": self.kind, "name": self.name, "path": str(self.folder.resolve()),
                "sha256": self.meta["sha256"], "faces": faces.as_dict() if faces is not None else "none",
                **({"faces_override": self.meta["faces_override"]} if "faces_override" in self.meta else {})}

    def costs(self, scored: SplitScores, ray: str | None = None) -> dict:
        """The report's ``costs`` section for a :meth:`split_scores` result."""
        raise NotImplementedError
