"""Detectors on frozen backbone features (kinds ``svm`` and ``oneclass``): backbone -> scikit-learn pipeline.

The pipeline is deserialised once at load; the backbone(s) are built once, on first use (a report on
cached embeddings never builds one). Images are embedded through the work folder's embedding cache, so
what was extracted once is never computed again (perturbed copies are cached under their own key).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from featlab.core.errors import FeatlabError
from featlab.data.dataset import evaluation_split, scan_dataset
from featlab.data.perturb import Perturbation
from featlab.detectors.base import Detector, LoadOptions, Scored, SplitScores
from featlab.detectors.classical import score_rule, scores
from featlab.detectors.svm import SVMModel, cache_for_model, check_features, load_svm
from featlab.features.cache import dataset_tag
from featlab.features.extract import Extractor, embed, extractor_from_config
from featlab.features.runtime import PixelDetector, resolve_device
from featlab.features.specs import Preprocessing


def feature_parts(meta: dict) -> list[tuple[dict, dict]]:
    """(extraction config, weights info) per part of a model's features (one, or several concatenated)."""
    if "concat" in meta["extraction"]:
        return [(part["config"], part["weights_info"]) for part in meta["weights_info"]["parts"]]
    return [(meta["extraction"], meta["weights_info"])]


def without_perturbation(config):
    """A feature config with every perturbation entry removed (also inside concatenated parts)."""
    if isinstance(config, dict):
        return {k: without_perturbation(v) for k, v in config.items() if k != "perturbation"}
    if isinstance(config, list):
        return [without_perturbation(v) for v in config]
    return config


def _pipeline_parameters(pipeline) -> int:
    return int(sum(_fitted_values(step) for _, step in pipeline.steps))


def _fitted_values(step) -> int:
    """Numbers a fitted step holds (its arrays; calibrated SVMs and source experts counted through their parts)."""
    parts = list(getattr(step, "experts_", [])) + [getattr(step, a) for a in ("gate_", "smooth_")
                                                     if getattr(step, a, None) is not None]
    parts += [c.estimator for c in getattr(step, "calibrated_classifiers_", [])]
    total = sum(_fitted_values(part) for part in parts)
    for attr in ("mean_", "scale_", "components_", "support_vectors_", "dual_coef_", "coef_", "intercept_",
                 "normalization_"):
        value = getattr(step, attr, None)
        if isinstance(value, np.ndarray):
            total += value.size
    return int(total)


class FeatureDetector(Detector):
    """A fitted ``StandardScaler -> PCA -> SVM`` (or one-class) pipeline over a recorded feature extraction."""

    writes_to_workspace = True  # the embeddings of the images it scores are cached in the work folder

    def __init__(self, svm: SVMModel, options: LoadOptions) -> None:
        threshold, score_kind = score_rule(svm.pipeline)
        super().__init__(svm.folder, svm.meta, threshold, score_kind, options.workspace,
                         resolve_device(options.device))
        self.svm = svm
        self.pipeline = svm.pipeline
        self._device_name = options.device
        self._extractors: list[Extractor] | None = None
        self._differentiable: PixelDetector | None = None

    # ------------------------------------------------------------------ building blocks, once

    def extractors(self) -> list[Extractor]:
        """The backbone(s) the model's features come from, built on first use."""
        if self._extractors is None:
            self._extractors = [extractor_from_config(config, info, self._device_name)
                                for config, info in feature_parts(self.meta)]
        return self._extractors

    @property
    def prep(self) -> Preprocessing:
        views = {_view_key(config["preprocessing"]) for config, _ in feature_parts(self.meta)}
        if len(views) > 1:
            raise FeatlabError(f"{self.name}: its feature parts see the image through different preprocessing; "
                               "a pixel-level explanation or attack needs one input geometry")
        return Preprocessing.from_dict(feature_parts(self.meta)[0][0]["preprocessing"])

    # ------------------------------------------------------------------ scoring

    def score_features(self, X: np.ndarray) -> np.ndarray:
        """Embeddings (N, D) -> scores (float64)."""
        return np.asarray(scores(self.pipeline, X)[0], dtype=np.float64)

    def score(self, pixels: torch.Tensor) -> np.ndarray:
        return self.score_features(np.hstack([extractor(pixels) for extractor in self.extractors()]))

    def score_paths(self, manifest: pd.DataFrame, perturbation: Perturbation | None = None, ray: str | None = None,
                    batch_size: int = 32, progress: bool = False) -> Scored:
        started = time.perf_counter()
        identity = perturbation is None or perturbation.is_identity
        result = embed(manifest, self.meta["extraction"], self.meta["weights_info"], self.workspace.features,
                       self._device_name, None if identity else perturbation, batch_size=batch_size,
                       progress=progress, ray=ray, extractors=self.extractors())
        if identity:
            check_features(self.meta, result.cache)
        elif without_perturbation(result.cache.meta["config"]) != self.meta["extraction"]:
            raise FeatlabError(f"{self.name}: its features cannot be reproduced for the robustness test "
                               "(settings differ)")
        rows = result.manifest
        ok = (rows.status == "ok").to_numpy()
        values = np.full(len(rows), np.nan)
        if ok.any():
            values[ok] = self.score_features(result.cache.get(list(rows.sha256[ok])))
        reasons = ["" if good else str(reason) for good, reason in zip(ok, rows.reason.fillna("").astype(str))]
        return Scored(values, reasons, time.perf_counter() - started)

    def splits(self, data_root=None) -> set[str]:
        """The training data's splits as its embedding cache indexes them (no image is opened)."""
        if data_root is None:
            try:
                cache = cache_for_model(self.meta, self.workspace.features)
            except FeatlabError:
                cache = None
            if cache is not None:
                index_name = dataset_tag(self.trained_on) if self.trained_on else None
                if index_name and (cache.folder / "indexes" / f"{index_name}.csv").is_file():
                    return set(cache.index(index_name).split)
                return set(cache.index().split)
        return super().splits(data_root)

    def split_scores(self, split: str = "test", data_root=None, ray: str | None = None,
                     batch_size: int = 32) -> SplitScores:
        """The training data's split straight from the embedding cache (no image is opened), or another
        dataset's, whose missing embeddings are extracted into the model's own cache under a separate index."""
        try:
            cache = cache_for_model(self.meta, self.workspace.features)
        except FeatlabError:
            if not (data_root or Path(self.trained_on).is_dir()):
                raise
            cache = None  # a fresh work folder: the images are extracted below, into a new cache of the model's key
        X, y, index, root, own, cache = self._split_features(cache, split, data_root, ray)
        split = str(index.split.iloc[0]) if len(index) else split
        if len(X) == 0:
            raise FeatlabError(f"split {split!r} holds no usable images")
        started = time.perf_counter()
        values = self.score_features(X)
        return SplitScores(root, split, own, list(index.path), list(index.sha256), y, values,
                           time.perf_counter() - started, len(X), embeddings=X, source=cache.meta)

    def _split_features(self, cache, split: str, data_root, ray):
        trained_on = self.trained_on or (cache.meta.get("data_root", "") if cache is not None else "")
        own = data_root is None or str(Path(data_root).resolve()) == trained_on
        if own and cache is None:  # a fresh work folder: extract the training data's split into the model's cache
            if not trained_on:
                raise FeatlabError("this model records no training data; pass --data to evaluate it")
            data_root = trained_on
        known = None  # the training data's index rows already in the cache, other splits kept when one is added
        if own and cache is not None:
            tagged = bool(trained_on) and (cache.folder / "indexes" / f"{dataset_tag(trained_on)}.csv").is_file()
            if tagged or cache.meta.get("data_root", "") == trained_on or not trained_on:
                index_name = dataset_tag(trained_on) if tagged else None
                known = cache.index(index_name)
                if split in set(known.split) or not trained_on:
                    X, y, index = cache.load_split(split, index_name=index_name)
                    return X, y, index, trained_on, True, cache
                # extracted for model selection only (featlab benchmark's candidates): the split is extracted now
            data_root = trained_on  # or the latest extraction was of other data: re-read the training set (cached)
        root = Path(data_root)
        manifest = scan_dataset(root, check_images=False, one_class_ok=True)
        split = evaluation_split(manifest, split, root)
        result = embed(manifest[manifest.split == split], self.meta["extraction"], self.meta["weights_info"],
                       self.workspace.features, self._device_name, ray=ray, extractors=self.extractors())
        check_features(self.meta, result.cache)
        tag = dataset_tag(root)
        rows = result.manifest
        if known is not None and result.cache.folder == cache.folder:
            rows = pd.concat([known[known.split != split], rows], ignore_index=True)
        result.cache.write_index(rows, name=tag)
        X, y, index = result.cache.load_split(split, index_name=tag)
        return X, y, index, str(root.resolve()), own, result.cache

    def _retarget(self, stage) -> None:
        from featlab.features.cache import cache_key

        if "concat" in self.meta["extraction"]:
            raise FeatlabError(f"{self.name}: a model on concatenated features keeps the face stage it was fitted with")
        faces = stage.as_dict() if stage is not None else None
        preprocessing = {k: v for k, v in self.meta["extraction"]["preprocessing"].items() if k != "faces"}
        self.meta["extraction"]["preprocessing"] = {**preprocessing, **({"faces": faces} if faces else {})}
        self.meta["cache_key"] = cache_key(self.meta["extraction"])
        if self._extractors is not None:  # the same backbones, nothing rebuilt
            import copy

            self._extractors = [copy.copy(e) for e in self._extractors]
            for extractor in self._extractors:
                extractor.faces, extractor.preprocessing = stage, extractor.preprocessing.with_faces(stage)
        self._differentiable = None

    # ------------------------------------------------------------------ gradients

    @property
    def has_gradients(self) -> bool:
        return self.kind == "svm"

    def differentiable(self) -> PixelDetector | None:
        """Backbone(s) -> :class:`~featlab.detectors.torchcopy.TorchPipeline` in fp32 (built once); ``None`` for a
        one-class detector, whose estimators have no torch copy."""
        if not self.has_gradients:
            return None
        if self._differentiable is None:
            from featlab.detectors.torchcopy import TorchPipeline
            from featlab.features.backbones import load_backbone
            from featlab.features.extract import weights_argument
            from featlab.features.recipe import FeatureRecipe, LayerTap

            prep = self.prep
            networks, flips = [], []
            for config, info in feature_parts(self.meta):
                backbone = load_backbone(config["backbone"], weights_argument(info))
                recipe = FeatureRecipe.from_dict(config.get("recipe"))
                model = backbone.model.float().eval()
                networks.append(model if recipe.is_classic else LayerTap(model, backbone.spec, recipe))
                flips.append(recipe.flip)
            self._differentiable = self.frozen(PixelDetector(prep, networks, TorchPipeline(self.pipeline), flips))
        return self._differentiable

    # ------------------------------------------------------------------ report sections

    def describe(self) -> dict:
        meta = self.meta
        return {
            **super().describe(),
            "backbone": meta["backbone"],
            "weights": meta["weights_info"].get("source", "unknown"),
            "weights_fingerprint": meta["extraction"].get("weights", meta["weights_info"].get("fingerprint")),
            "pretrained": bool(meta["weights_info"].get("pretrained", False)),
            "extraction": meta["extraction"],
            "params": {"best": meta["best_params"], "options": meta["options"], "pca": meta["pca"],
                       "selection": meta["selection"],
                       "selection_score_balanced_accuracy": meta.get("selection_score_balanced_accuracy")},
            "seed": int(meta["seed"]),
        }

    def costs(self, scored: SplitScores, ray: str | None = None) -> dict:
        cache_meta = scored.source
        extract_rate = cache_meta.get("extract_images_per_s")
        per_image = (1.0 / extract_rate if extract_rate else float("nan")) + scored.seconds / max(len(scored.scores), 1)
        return {
            "train_seconds": float(self.meta["train_seconds"]),
            "inference_images_per_s": float(1.0 / per_image) if np.isfinite(per_image) else None,
            "inference_note": "backbone extraction rate (from the cache's last run) + SVM scoring time",
            "model_bytes": int(self.meta["bytes"] + int(cache_meta.get("backbone_bytes") or 0)),
            "parameters": int(_pipeline_parameters(self.pipeline) + int(cache_meta.get("backbone_parameters") or 0)),
        }


def _view_key(preprocessing: dict) -> str:
    return repr(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in preprocessing.items()))


def load_feature_detector(folder: Path, meta: dict, options: LoadOptions) -> FeatureDetector:
    """The ``svm`` / ``oneclass`` loader of :data:`featlab.detectors.base.KINDS`."""
    return FeatureDetector(load_svm(folder, trust_pickle=options.trust_pickle, meta=meta), options)


def fit_svm_detector(cache, workspace, device: str = "auto", **options):
    """Fit and save an SVM folder (:func:`featlab.detectors.svm.fit_from_cache`, same ``options``) and return
    (its Detector, built from the fitted pipeline in memory: nothing is read back, the FitResult)."""
    from featlab.detectors.svm import fit_from_cache

    folder, result = fit_from_cache(cache, workspace.models, device=device, **options)
    return FeatureDetector(SVMModel(folder, result.pipeline, result.meta), LoadOptions(workspace, device)), result


def fit_oneclass_detector(cache, workspace, method: str = "ocsvm", pca=64, seed: int = 0, name: str | None = None,
                          data_root=None, force: bool = False, device: str = "auto") -> FeatureDetector:
    """Fit and save a one-class folder (:func:`featlab.detectors.oneclass.fit_oneclass_from_cache`); its Detector."""
    from featlab.detectors.oneclass import fit_oneclass

    folder, pipeline, meta = fit_oneclass(cache, workspace.models, method, pca, seed, name, data_root, force)
    return FeatureDetector(SVMModel(folder, pipeline, meta), LoadOptions(workspace, device))
