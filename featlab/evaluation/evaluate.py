"""Evaluate and predict with any loaded model (:class:`featlab.detectors.base.Detector`): one path for every kind."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from featlab import CLASS_NAMES
from featlab.core.fileio import atomic_write_text
from featlab.core.metrics import binary_metrics, curve_points, group_metrics
from featlab.core.workspace import Workspace
from featlab.data.dataset import evaluation_split, scan_images  # noqa: F401 - evaluation_split re-exported
from featlab.data.groups import find_groups, groups_for
from featlab.detectors.base import Detector, load
from featlab.reports.report import build_report, data_section, report_paths, save_report, write_plots

ModelLike = Detector | str | os.PathLike


def as_detector(model: ModelLike, workspace: Workspace, device: str = "auto", trust_pickle: bool = False) -> Detector:
    """``model`` itself when it is loaded already, else :func:`featlab.load` of it."""
    return model if isinstance(model, Detector) else load(model, workspace, device=device, trust_pickle=trust_pickle)


def evaluate_model(
    model: ModelLike, workspace: Workspace, split: str = "test", plots: bool = True,
    data_root: str | None = None, device: str = "auto", groups_csv: str | None = None, trust_pickle: bool = False,
    explain: int = 0, explain_method: str = "auto", ray: str | None = None,
) -> tuple[dict, Path]:
    """Write the common JSON report (and plots) for a model on one split.

    ``model`` is a loaded :class:`~featlab.detectors.base.Detector` or what :func:`featlab.load` opens.
    Metrics are also broken down by group (:mod:`featlab.data.groups`; ``groups_csv`` adds ``path,group`` rows).
    Per-image scores go to ``<report>.predictions.csv``. ``explain`` > 0 adds a gallery
    (``<report>-gallery/index.html``, see :mod:`featlab.evaluation.explain`) of that many most confident true
    positives, false positives and false negatives, with their heatmaps (``explain_method``). ``ray``
    runs the images' extraction (SVM) or scoring (CNN) on Ray Data (:mod:`featlab.features.distributed`).

    Returns
    -------
    (report dict, path of the JSON file under ``workspace.reports``)
    """
    detector = as_detector(model, workspace, device, trust_pickle)
    if explain:  # refuse a method the model cannot explain before any scoring
        from featlab.evaluation.explain import resolve_method

        resolve_method(detector, explain_method)
    scored = detector.split_scores(split, data_root, ray)
    y, score, threshold = scored.labels, scored.scores, detector.threshold
    metrics = binary_metrics(y, score, threshold)
    metrics["score_kind"] = detector.score_kind
    known = find_groups(scored.root, groups_csv) if scored.root else {}
    json_path, plot_dir = report_paths(workspace.reports, detector.name + (f"-on-{scored.tag}" if scored.tag else ""),
                                       scored.split)
    plot_files = write_plots(plot_dir, y, score, metrics["confusion_matrix"], detector.name,
                             embeddings=scored.embeddings) if plots else {}
    meta = detector.meta
    report = build_report(
        model=detector.describe(),
        data=data_section(scored.root, scored.split, scored.hashes, y, n_train=meta["n_train"], n_valid=meta["n_valid"],
                          trained_on=detector.trained_on,
                          **({"skipped": scored.skipped} if scored.skipped is not None else {})),
        metrics=metrics,
        costs=detector.costs(scored, ray),
        plots=plot_files,
        groups=group_metrics(y, score, threshold, groups_for(scored.paths, known)),
        curves=curve_points(y, score, threshold),
    )
    report["predictions"] = str(_write_predictions(json_path, scored.paths, y, score, threshold))
    save_report(report, json_path)
    if explain:
        report["gallery"] = str(write_report_gallery(detector, report, json_path, explain, explain_method))
        save_report(report, json_path)
    return report, json_path


def report_splits(detector: Detector, workspace: Workspace, splits: tuple[str, ...] = ("valid", "test"),
                  data_root: str | None = None) -> list[tuple[str, dict, Path]]:
    """(split, report, JSON path) for each of ``splits`` the data has: what the fit commands print after fitting."""
    present = detector.splits(data_root)
    return [(split, *evaluate_model(detector, workspace, split=split, data_root=data_root))
            for split in splits if split in present]


def gallery_picks(predictions: pd.DataFrame, n: int) -> list[tuple[str, pd.DataFrame]]:
    """The ``n`` most confident true positives, false positives and false negatives (fake = positive)."""
    fake, called = predictions.label == 1, predictions.predicted == 1
    return [
        (f"most confident true positives (fakes called fake), top {n}", predictions[fake & called].nlargest(n, "score")),
        (f"most confident false positives (reals called fake), top {n}", predictions[~fake & called].nlargest(n, "score")),
        (f"most confident false negatives (fakes called real), top {n}", predictions[fake & ~called].nsmallest(n, "score")),
    ]


def write_report_gallery(model: ModelLike, report: dict, json_path: Path, n: int, method: str = "auto",
                         device: str = "auto", trust_pickle: bool = False) -> Path:
    """Explain the report's most confident hits and errors (:func:`gallery_picks`) into ``<report>-gallery/``."""
    from featlab.evaluation.explain import explain_paths, method_note, write_gallery

    predictions = pd.read_csv(report["predictions"])
    detector = as_detector(model, Workspace.resolve(None), device, trust_pickle)
    sections = []
    for heading, rows in gallery_picks(predictions, n):
        explanations = explain_paths(detector, list(rows.path), method)
        sections.append((heading, explanations, [f" · true {CLASS_NAMES[int(y)]}" for y in rows.label]))
    title = f"featlab gallery: {report['model']['name']} on {Path(report['data']['root']).name} ({report['data']['split']})"
    note = method_note(detector, method, 48, 24, "mean")
    return write_gallery(sections, json_path.with_name(json_path.stem + "-gallery"), title, note)


def _write_predictions(json_path: Path, paths: list[str], labels, scores, threshold: float) -> Path:
    """Per-image scores next to the report (``<report>.predictions.csv``): path, label, score, predicted."""
    table = pd.DataFrame({"path": paths, "label": np.asarray(labels, dtype=int), "score": np.asarray(scores, float)})
    table["predicted"] = (table.score >= threshold).astype(int)
    return atomic_write_text(json_path.with_suffix(".predictions.csv"), table.to_csv(index=False))


def predict_paths(
    model: ModelLike, target: str | os.PathLike, workspace: Workspace, batch_size: int = 32,
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
    model: ModelLike, manifest: pd.DataFrame, workspace: Workspace, batch_size: int = 32,
    device: str = "auto", progress: bool = False, trust_pickle: bool = False, ray: str | None = None,
) -> tuple[pd.DataFrame, float]:
    """Scores of the images of a manifest (see :func:`predict_paths`) and the model's threshold."""
    detector = as_detector(model, workspace, device, trust_pickle)
    scored = detector.score_paths(manifest, ray=ray, batch_size=batch_size, progress=progress)
    out = manifest[["path"]].copy()
    out["score"] = scored.scores
    out["score_kind"] = ["" if r else detector.score_kind for r in scored.reasons]
    out["label"] = ["" if r else label for r, label in zip(scored.reasons, detector.labels(scored.scores))]
    out["status"] = ["quarantined" if r else "ok" for r in scored.reasons]
    out["reason"] = scored.reasons
    return out, detector.threshold


def evaluate_matrix(
    models: list[ModelLike], data_roots: list[str | os.PathLike], workspace: Workspace, split: str = "test",
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
        detector = as_detector(model, workspace, device, trust_pickle)  # loaded once for all its datasets
        for root in data_roots:
            report, path = evaluate_model(detector, workspace, split=split, plots=False, data_root=str(root),
                                          device=device, trust_pickle=trust_pickle, ray=ray)
            m = report["metrics"]
            rows.append({"model": report["model"]["name"], "trained_on": Path(report["data"].get("trained_on")
                         or detector.trained_on).name, "data": Path(str(root)).name,
                         "split": report["data"]["split"], "n": report["data"]["n_images"], "roc_auc": m["roc_auc"],
                         "average_precision": m["average_precision"], "accuracy": m["accuracy"],
                         "real_accuracy": m["real_accuracy"], "fake_accuracy": m["fake_accuracy"], "report": str(path)})
    table = pd.DataFrame(rows)
    written = write_matrix(table, Path(out) if out else workspace.reports / "matrix")
    return table, written
