"""Evaluate and predict with any saved model (SVM on cached features, or a CNN checkpoint)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from featlab import CLASS_NAMES
from featlab.core.errors import FeatlabError
from featlab.core.fileio import atomic_write_text
from featlab.core.metrics import binary_metrics, curve_points, group_metrics
from featlab.core.workspace import Workspace
from featlab.data.dataset import scan_dataset, scan_images
from featlab.data.groups import find_groups, groups_for
from featlab.detectors.classical import decision_threshold
from featlab.detectors.modelfile import read_model_meta
from featlab.detectors.pixel import PIXEL_KINDS, predict_cnn, score_model_folder
from featlab.detectors.svm import cache_for_model, check_features, load_svm
from featlab.features.cache import dataset_tag
from featlab.features.extract import embed
from featlab.features.runtime import resolve_device
from featlab.reports.report import build_report, data_section, report_paths, save_report, write_plots


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
    explain: int = 0, explain_method: str = "auto", ray: str | None = None,
) -> tuple[dict, Path]:
    """Write the common JSON report (and plots) for a model folder on one split.

    Metrics are also broken down by group (:mod:`featlab.data.groups`; ``groups_csv`` adds ``path,group`` rows).
    Per-image scores go to ``<report>.predictions.csv``. ``explain`` > 0 adds a gallery
    (``<report>-gallery/index.html``, see :mod:`featlab.evaluation.explain`) of that many most confident true
    positives, false positives and false negatives, with their heatmaps (``explain_method``). ``ray``
    runs the images' extraction (SVM) or scoring (CNN) on Ray Data (:mod:`featlab.features.distributed`).

    Returns
    -------
    (report dict, path of the JSON file under ``workspace.reports``)
    """
    meta = read_model_meta(model)
    if meta.get("kind") in PIXEL_KINDS:
        report, path = evaluate_cnn(model, workspace, split=split, plots=plots, data_root=data_root, device=device,
                                    groups_csv=groups_csv, ray=ray)
    else:
        report, path = evaluate_svm(model, workspace, split=split, plots=plots, groups_csv=groups_csv,
                                    trust_pickle=trust_pickle, data_root=data_root, device=device, ray=ray)
    if explain:
        report["gallery"] = str(write_report_gallery(model, report, path, explain, explain_method, device,
                                                     trust_pickle))
        save_report(report, path)
    return report, path


def gallery_picks(predictions: pd.DataFrame, n: int) -> list[tuple[str, pd.DataFrame]]:
    """The ``n`` most confident true positives, false positives and false negatives (fake = positive)."""
    fake, called = predictions.label == 1, predictions.predicted == 1
    return [
        (f"most confident true positives (fakes called fake), top {n}", predictions[fake & called].nlargest(n, "score")),
        (f"most confident false positives (reals called fake), top {n}", predictions[~fake & called].nlargest(n, "score")),
        (f"most confident false negatives (fakes called real), top {n}", predictions[fake & ~called].nsmallest(n, "score")),
    ]


def write_report_gallery(model, report: dict, json_path: Path, n: int, method: str = "auto", device: str = "auto",
                         trust_pickle: bool = False) -> Path:
    """Explain the report's most confident hits and errors (:func:`gallery_picks`) into ``<report>-gallery/``."""
    from featlab.detectors.detector import load_detector
    from featlab.evaluation.explain import explain_paths, method_note, write_gallery

    predictions = pd.read_csv(report["predictions"])
    detector = load_detector(model, device=device, trust_pickle=trust_pickle)
    sections = []
    for heading, rows in gallery_picks(predictions, n):
        explanations = explain_paths(detector, list(rows.path), method)
        sections.append((heading, explanations, [f" · true {CLASS_NAMES[int(y)]}" for y in rows.label]))
    title = f"featlab gallery: {report['model']['name']} on {Path(report['data']['root']).name} ({report['data']['split']})"
    note = method_note(detector, method, 48, 24, "mean")
    return write_gallery(sections, json_path.with_name(json_path.stem + "-gallery"), title, note)


def evaluation_split(manifest: pd.DataFrame, split: str, root) -> str:
    """The split to score: ``split`` itself, or ``all`` for an unsplit dataset folder."""
    splits = set(manifest.split)
    if split in splits:
        return split
    if splits == {"all"}:
        return "all"
    raise FeatlabError(f"{root}: no split {split!r} (has {', '.join(sorted(splits))})")


def _svm_data(svm, meta: dict, cache, workspace: Workspace, split: str, data_root, device: str, ray=None):
    """(X, y, index, root, tag) of the images to score: the training dataset's split, or another dataset,
    whose missing embeddings are extracted into the model's own cache under a separate index."""
    trained_on = meta.get("data_root") or (cache.meta.get("data_root", "") if cache is not None else "")
    own = data_root is None or str(Path(data_root).resolve()) == trained_on
    if own and cache is None:  # a fresh work folder: extract the training data's split into the model's cache
        if not trained_on:
            raise FeatlabError("this model records no training data; pass --data to evaluate it")
        data_root = trained_on
    elif own:
        if trained_on and (cache.folder / "indexes" / f"{dataset_tag(trained_on)}.csv").is_file():
            X, y, index = cache.load_split(split, index_name=dataset_tag(trained_on))
            return X, y, index, trained_on, "", cache
        if cache.meta.get("data_root", "") == trained_on or not trained_on:
            X, y, index = cache.load_split(split)
            return X, y, index, trained_on, "", cache
        data_root = trained_on  # the latest extraction was of other data: re-read the training set (cached)
    root = Path(data_root)
    manifest = scan_dataset(root, check_images=False, one_class_ok=True)
    split = evaluation_split(manifest, split, root)
    result = embed(manifest[manifest.split == split], meta["extraction"], meta["weights_info"], workspace.features,
                   device, ray=ray)
    check_features(meta, result.cache)
    tag = dataset_tag(root)
    result.cache.write_index(result.manifest, name=tag)
    X, y, index = result.cache.load_split(split, index_name=tag)
    return X, y, index, str(root.resolve()), "" if own else tag, result.cache


def evaluate_cnn(model_folder, workspace, split: str = "test", plots: bool = True, data_root: str | None = None,
                 device: str = "auto", groups_csv: str | None = None, ray: str | None = None):
    """Report of a CNN (or autoencoder) folder on ``split`` of its training data or of another dataset."""
    meta = read_model_meta(model_folder)
    root = str(Path(data_root or meta["data_root"]).resolve())
    manifest = scan_dataset(root, check_images=False, one_class_ok=True)
    split = evaluation_split(manifest, split, root)
    rows = manifest[(manifest.split == split) & (manifest.status == "ok")]
    if rows.empty:
        raise FeatlabError(f"{root}: split {split!r} holds no images")
    scores, reasons, meta, seconds = score_model_folder(model_folder, list(rows.path), 32, device, ray)
    ok = ~np.isnan(scores)
    y = rows.label.to_numpy()[ok]
    metrics = binary_metrics(y, scores[ok], 0.0)
    metrics["score_kind"] = "logit" if meta["kind"] == "cnn" else "anomaly"
    curves = curve_points(y, scores[ok], 0.0)
    groups = group_metrics(y, scores[ok], 0.0, groups_for(list(rows.path[ok]), find_groups(root, groups_csv)))
    name = Path(model_folder).name
    elsewhere = root != str(Path(meta["data_root"]).resolve())
    json_path, plot_dir = report_paths(workspace.reports, name + (f"-on-{dataset_tag(root)}" if elsewhere else ""), split)
    plot_files = write_plots(plot_dir, y, scores[ok], metrics["confusion_matrix"], name) if plots else {}
    report = build_report(
        model={"kind": meta["kind"], "name": name, "path": str(Path(model_folder).resolve()), "sha256": meta["sha256"],
               "backbone": meta["arch"], "weights": meta["weights_info"].get("source", "unknown"),
               "pretrained": bool(meta["weights_info"].get("pretrained")),
               "params": {"config": meta["config"], "best_epoch": meta["best_epoch"],
                          "best_valid_auc": meta["best_valid_auc"]},
               "seed": int(meta["seed"])},
        data=data_section(root, split, list(rows.sha256[ok]), y, n_train=meta["n_train"], n_valid=meta["n_valid"],
                          trained_on=meta["data_root"],
                          skipped=[{"path": p, "reason": r} for p, r in zip(rows.path, reasons) if r]),
        metrics=metrics,
        costs={"train_seconds": float(meta.get("train_seconds", 0.0)),
               "inference_images_per_s": float(len(rows) / seconds),
               "inference_note": "end to end (decode + forward, batch 32, fp32) on "
                                 + (f"Ray Data ({ray})" if ray else str(resolve_device(device))),
               "model_bytes": int(meta["bytes"]), "parameters": int(meta["parameters"])},
        plots=plot_files,
        groups=groups,
        curves=curves,
    )
    report["predictions"] = str(_write_predictions(json_path, list(rows.path[ok]), y, scores[ok], 0.0))
    save_report(report, json_path)
    return report, json_path


def _write_predictions(json_path: Path, paths: list[str], labels, scores, threshold: float) -> Path:
    """Per-image scores next to the report (``<report>.predictions.csv``): path, label, score, predicted."""
    table = pd.DataFrame({"path": paths, "label": np.asarray(labels, dtype=int), "score": np.asarray(scores, float)})
    table["predicted"] = (table.score >= threshold).astype(int)
    return atomic_write_text(json_path.with_suffix(".predictions.csv"), table.to_csv(index=False))


def evaluate_svm(model: str | os.PathLike, workspace: Workspace, split: str = "test", plots: bool = True,
                 groups_csv: str | None = None, trust_pickle: bool = False, data_root: str | None = None,
                 device: str = "auto", ray: str | None = None):
    """Report of an SVM folder on ``split`` of its training data, or of another dataset (``data_root``)."""
    meta = read_model_meta(model)
    try:
        cache = cache_for_model(meta, workspace.features)
    except FeatlabError:
        if not (data_root or Path(str(meta.get("data_root") or "")).is_dir()):
            raise
        cache = None  # a fresh work folder: the images are extracted below, into a new cache of the model's key
    svm = load_svm(model, cache, trust_pickle=trust_pickle)
    X, y, index, root, tag, cache = _svm_data(svm, meta, cache, workspace, split, data_root, device, ray)
    split = str(index.split.iloc[0]) if len(index) else split
    if len(X) == 0:
        raise FeatlabError(f"split {split!r} holds no usable images")
    start = time.perf_counter()
    score, threshold, kind = svm.score(X)
    svm_seconds_per_image = (time.perf_counter() - start) / len(X)
    metrics = binary_metrics(y, score, threshold)
    metrics["score_kind"] = kind
    curves = curve_points(y, score, threshold)
    cmeta = cache.meta
    known = find_groups(root, groups_csv) if root else {}
    groups = group_metrics(y, score, threshold, groups_for(list(index.path), known))

    extract_rate = cmeta.get("extract_images_per_s")
    per_image = (1.0 / extract_rate if extract_rate else float("nan")) + svm_seconds_per_image
    model_bytes = meta["bytes"] + int(cmeta.get("backbone_bytes") or 0)
    json_path, plot_dir = report_paths(workspace.reports, svm.name + (f"-on-{tag}" if tag else ""), split)
    data_root = root
    plot_files = write_plots(plot_dir, y, score, metrics["confusion_matrix"], svm.name, embeddings=X) if plots else {}
    report = build_report(
        model={
            "kind": meta["kind"],
            "name": svm.name,
            "path": str(Path(model).resolve()),
            "sha256": meta["sha256"],
            "backbone": meta["backbone"],
            "weights": meta["weights_info"].get("source", "unknown"),
            "weights_fingerprint": meta["extraction"].get("weights", meta["weights_info"].get("fingerprint")),
            "pretrained": bool(meta["weights_info"].get("pretrained", False)),
            "extraction": meta["extraction"],
            "params": {"best": meta["best_params"], "options": meta["options"], "pca": meta["pca"],
                       "selection": meta["selection"], "selection_score_balanced_accuracy": meta["selection_score_balanced_accuracy"]},
            "seed": int(meta["seed"]),
        },
        data=data_section(data_root, split, list(index.sha256), y, n_train=meta["n_train"], n_valid=meta["n_valid"],
                          trained_on=meta.get("data_root", "")),
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
        curves=curves,
    )
    report["predictions"] = str(_write_predictions(json_path, list(index.path), y, score, threshold))
    save_report(report, json_path)
    return report, json_path


def predict_paths(
    model: str | os.PathLike, target: str | os.PathLike, workspace: Workspace, batch_size: int = 32,
    device: str = "auto", progress: bool = False, trust_pickle: bool = False, ray: str | None = None,
) -> pd.DataFrame:
    """Classify an image file or a folder (any layout). Unreadable files are listed, not fatal.
    ``ray`` runs the work on Ray Data (:mod:`featlab.features.distributed`).

    Returns
    -------
    DataFrame with path, score, score_kind, label (real/fake or empty), status, reason.
    """
    return predict_manifest(model, scan_images(target), workspace, batch_size=batch_size, device=device,
                            progress=progress, trust_pickle=trust_pickle, ray=ray)[0]


def predict_manifest(
    model: str | os.PathLike, manifest: pd.DataFrame, workspace: Workspace, batch_size: int = 32,
    device: str = "auto", progress: bool = False, trust_pickle: bool = False, ray: str | None = None,
) -> tuple[pd.DataFrame, float]:
    """Scores of the images of a manifest (see :func:`predict_paths`) and the model's threshold."""
    meta = read_model_meta(model)
    if meta.get("kind") in PIXEL_KINDS:
        return predict_cnn(model, manifest, batch_size=batch_size, device=device, ray=ray), 0.0
    svm = load_svm(model, trust_pickle=trust_pickle)  # verified before any extraction work
    result = embed(manifest, meta["extraction"], meta["weights_info"], workspace.features, device,
                   batch_size=batch_size, progress=progress, ray=ray)
    check_features(svm.meta, result.cache)
    rows = result.manifest
    ok = rows.status == "ok"
    out = rows[["path", "status", "reason"]].copy()
    out["score"] = np.nan
    out["score_kind"] = ""
    out["label"] = ""
    threshold = decision_threshold(svm.pipeline)
    if ok.any():
        score, threshold, kind = svm.score(result.cache.get(list(rows.sha256[ok])))
        out.loc[ok, "score"] = score
        out.loc[ok, "score_kind"] = kind
        out.loc[ok, "label"] = [CLASS_NAMES[int(s >= threshold)] for s in score]
    return out[["path", "score", "score_kind", "label", "status", "reason"]], float(threshold)


def evaluate_matrix(
    models: list[str | os.PathLike], data_roots: list[str | os.PathLike], workspace: Workspace, split: str = "test",
    out: str | os.PathLike | None = None, device: str = "auto", trust_pickle: bool = False, ray: str | None = None,
) -> tuple[pd.DataFrame, dict[str, Path]]:
    """Cross-dataset matrix: every model (rows, "trained on X") on every dataset (columns).

    Each cell is exactly the report :func:`evaluate_model` writes for that pair. Writes
    ``matrix.md``, ``matrix.html`` and ``matrix.png`` (ROC-AUC heatmap) into ``out``.

    Returns
    -------
    (long table with one row per cell: model, trained_on, data, split, n, roc_auc, average_precision,
    accuracy, real_accuracy, fake_accuracy, report), {kind: written path}
    """
    from featlab.reports.report import write_matrix

    rows = []
    for model in models:
        for root in data_roots:
            report, path = evaluate_model(model, workspace, split=split, plots=False, data_root=str(root),
                                          device=device, trust_pickle=trust_pickle, ray=ray)
            m = report["metrics"]
            rows.append({"model": report["model"]["name"], "trained_on": Path(report["data"].get("trained_on") or
                         read_model_meta(model).get("data_root", "")).name, "data": Path(str(root)).name,
                         "split": report["data"]["split"], "n": report["data"]["n_images"], "roc_auc": m["roc_auc"],
                         "average_precision": m["average_precision"], "accuracy": m["accuracy"],
                         "real_accuracy": m["real_accuracy"], "fake_accuracy": m["fake_accuracy"], "report": str(path)})
    table = pd.DataFrame(rows)
    written = write_matrix(table, Path(out) if out else workspace.reports / "matrix")
    return table, written
