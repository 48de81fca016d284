"""Evaluate and predict with any saved model (SVM on cached features, or a CNN checkpoint)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from featlab import CLASS_NAMES
from featlab.backbones import load_backbone
from featlab.data import scan_images
from featlab.errors import FeatlabError
from featlab.extract import Extractor, extract_manifest
from featlab.groups import find_groups, groups_for
from featlab.metrics import binary_metrics, group_metrics
from featlab.modelfile import read_model_meta
from featlab.recipe import FeatureRecipe
from featlab.report import build_report, data_section, report_paths, save_report, write_plots
from featlab.specs import RANDOM_WEIGHTS
from featlab.svm import cache_for_model, check_features, load_svm
from featlab.workspace import Workspace


def _weights_argument(weights_info: dict) -> str:
    """The --weights value that reproduces a recorded weights source."""
    source = weights_info.get("source", "")
    if source == RANDOM_WEIGHTS:
        return "none"
    if source.startswith("file:"):
        return source.removeprefix("file:")
    return "default"


def _svm_parameters(pipeline) -> int:
    total = 0
    for _, step in pipeline.steps:
        for attr in ("mean_", "scale_", "components_", "support_vectors_", "dual_coef_", "coef_", "intercept_",
                     "normalization_"):
            value = getattr(step, attr, None)
            if isinstance(value, np.ndarray):
                total += value.size
    return int(total)


def evaluate_model(
    model: str | os.PathLike, workspace: Workspace, split: str = "test", plots: bool = True,
    data_root: str | None = None, device: str = "auto", groups_csv: str | None = None, trust_pickle: bool = False,
) -> tuple[dict, Path]:
    """Write the common JSON report (and plots) for a model folder on one split.

    Metrics are also broken down by group (:mod:`featlab.groups`; ``groups_csv`` adds ``path,group`` rows).

    Returns
    -------
    (report dict, path of the JSON file under ``workspace.reports``)
    """
    meta = read_model_meta(model)
    if meta.get("kind") == "cnn":
        from featlab.cnn import evaluate_cnn

        return evaluate_cnn(model, workspace, split=split, plots=plots, data_root=data_root, device=device,
                            groups_csv=groups_csv)
    return evaluate_svm(model, workspace, split=split, plots=plots, groups_csv=groups_csv, trust_pickle=trust_pickle)


def evaluate_svm(model: str | os.PathLike, workspace: Workspace, split: str = "test", plots: bool = True,
                 groups_csv: str | None = None, trust_pickle: bool = False):
    meta = read_model_meta(model)
    cache = cache_for_model(meta, workspace.features)
    svm = load_svm(model, cache, trust_pickle=trust_pickle)
    X, y, index = cache.load_split(split)
    if len(X) == 0:
        raise FeatlabError(f"split {split!r} holds no usable images")
    start = time.perf_counter()
    score, threshold, kind = svm.score(X)
    svm_seconds_per_image = (time.perf_counter() - start) / len(X)
    metrics = binary_metrics(y, score, threshold)
    metrics["score_kind"] = kind
    cmeta = cache.meta
    known = find_groups(cmeta.get("data_root", ""), groups_csv) if cmeta.get("data_root") else {}
    groups = group_metrics(y, score, threshold, groups_for(list(index.path), known))

    extract_rate = cmeta.get("extract_images_per_s")
    per_image = (1.0 / extract_rate if extract_rate else float("nan")) + svm_seconds_per_image
    model_bytes = meta["bytes"] + int(cmeta.get("backbone_bytes") or 0)
    json_path, plot_dir = report_paths(workspace.reports, svm.name, split)
    data_root = cmeta.get("data_root", "")
    plot_files = write_plots(plot_dir, y, score, metrics["confusion_matrix"], svm.name, embeddings=X) if plots else {}
    report = build_report(
        model={
            "kind": "svm",
            "name": svm.name,
            "path": str(Path(model).resolve()),
            "sha256": meta["sha256"],
            "backbone": meta["backbone"],
            "weights": meta["weights_info"].get("source", "unknown"),
            "weights_fingerprint": meta["extraction"]["weights"],
            "pretrained": bool(meta["weights_info"].get("pretrained", False)),
            "extraction": meta["extraction"],
            "params": {"best": meta["best_params"], "options": meta["options"], "pca": meta["pca"],
                       "selection": meta["selection"], "selection_score_balanced_accuracy": meta["selection_score_balanced_accuracy"]},
            "seed": int(meta["seed"]),
        },
        data=data_section(data_root, split, list(index.sha256), y, n_train=meta["n_train"], n_valid=meta["n_valid"]),
        metrics=metrics,
        costs={
            "train_seconds": float(meta["train_seconds"]),
            "inference_images_per_s": float(1.0 / per_image) if np.isfinite(per_image) else None,
            "inference_note": "backbone extraction rate (from the cache's last run) + SVM scoring time",
            "model_bytes": int(model_bytes),
            "parameters": int(_svm_parameters(svm.pipeline) + int(cmeta.get("backbone_parameters") or 0)),
        },
        plots=plot_files,
        groups=groups,
    )
    save_report(report, json_path)
    return report, json_path


def predict_paths(
    model: str | os.PathLike, target: str | os.PathLike, workspace: Workspace, batch_size: int = 32,
    device: str = "auto", progress: bool = False, trust_pickle: bool = False,
) -> pd.DataFrame:
    """Classify an image file or a folder (any layout). Unreadable files are listed, not fatal.

    Returns
    -------
    DataFrame with path, score, score_kind, label (real/fake or empty), status, reason.
    """
    meta = read_model_meta(model)
    manifest = scan_images(target)
    if meta.get("kind") == "cnn":
        from featlab.cnn import predict_cnn

        return predict_cnn(model, manifest, batch_size=batch_size, device=device)
    svm = load_svm(model, trust_pickle=trust_pickle)  # verified before any extraction work
    backbone = load_backbone(meta["backbone"], _weights_argument(meta["weights_info"]))
    extraction = meta["extraction"]
    extractor = Extractor(backbone, device=device, precision=extraction["precision"], engine=extraction["engine"],
                          recipe=FeatureRecipe.from_dict(extraction.get("recipe")))
    result = extract_manifest(manifest, extractor, workspace.features, batch_size=batch_size, progress=progress,
                              write_index=False)
    check_features(svm.meta, result.cache)
    rows = result.manifest
    ok = rows.status == "ok"
    out = rows[["path", "status", "reason"]].copy()
    out["score"] = np.nan
    out["score_kind"] = ""
    out["label"] = ""
    if ok.any():
        score, threshold, kind = svm.score(result.cache.get(list(rows.sha256[ok])))
        out.loc[ok, "score"] = score
        out.loc[ok, "score_kind"] = kind
        out.loc[ok, "label"] = [CLASS_NAMES[int(s >= threshold)] for s in score]
    return out[["path", "score", "score_kind", "label", "status", "reason"]]
