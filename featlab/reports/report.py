"""The common JSON report (SVM and CNN alike), its plots, and the comparison table.

Every report states its data (root, split, counts, a fingerprint of exactly which images
with which labels), its model (kind, backbone, weights, parameters, file hash), seeds and
library versions. ``featlab compare`` refuses reports whose test data differ.
"""

from __future__ import annotations

import base64
import hashlib
import html
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from featlab import __version__
from featlab.core.errors import FeatlabError
from featlab.core.fileio import atomic_write_json, atomic_write_text, read_json
from featlab.core.versions import library_versions, utc_now
from featlab.reports.tables import COLUMNS, format_cell, interval_text, table_cells, to_markdown  # noqa: F401

SCHEMA = "featlab.reports.report/1"
SYNTHETIC_MARK = "SYNTHETIC"

_REQUIRED = {
    "schema": str,
    "created": str,
    "versions": dict,
    "model": dict,
    "data": dict,
    "metrics": dict,
    "costs": dict,
    "plots": dict,
}
_REQUIRED_MODEL = {"kind": str, "name": str, "path": str, "sha256": str, "backbone": str, "weights": str, "seed": int}
_REQUIRED_DATA = {"root": str, "split": str, "n_images": int, "split_fingerprint": str, "synthetic": bool}
_REQUIRED_METRICS = (
    "accuracy", "precision", "recall", "f1", "roc_auc", "average_precision", "eer", "per_class_accuracy",
    "confusion_matrix", "threshold",
)
_REQUIRED_COSTS = ("train_seconds", "inference_images_per_s", "model_bytes", "parameters")


def split_fingerprint(hashes: list[str], labels: list[int]) -> str:
    """Identify an evaluation set by its images' content and labels, independent of paths and order."""
    lines = sorted(f"{h}:{int(y)}" for h, y in zip(hashes, labels))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def is_synthetic(data_root: str | os.PathLike) -> bool:
    """True when the dataset folder says it is generated (README naming it SYNTHETIC)."""
    readme = Path(data_root) / "README.md"
    return readme.is_file() and SYNTHETIC_MARK in readme.read_text(errors="replace")[:500]


def validate_report(report: dict) -> dict:
    """Check a report against the schema; raise FeatlabError naming the first problem."""

    def need(section: dict, spec, where: str) -> None:
        items = spec.items() if isinstance(spec, dict) else ((k, None) for k in spec)
        for key, kind in items:
            if key not in section:
                raise FeatlabError(f"report: missing {where}{key}")
            if kind is not None and not isinstance(section[key], kind):
                raise FeatlabError(f"report: {where}{key} should be {kind.__name__}")

    need(report, _REQUIRED, "")
    if report["schema"] != SCHEMA:
        raise FeatlabError(f"report: schema {report['schema']!r}, expected {SCHEMA!r}")
    need(report["model"], _REQUIRED_MODEL, "model.")
    need(report["data"], _REQUIRED_DATA, "data.")
    need(report["metrics"], _REQUIRED_METRICS, "metrics.")
    need(report["costs"], _REQUIRED_COSTS, "costs.")
    cm = report["metrics"]["confusion_matrix"]
    if np.asarray(cm).shape != (2, 2) or sum(map(sum, cm)) != report["data"]["n_images"]:
        raise FeatlabError("report: confusion_matrix must be 2x2 and sum to data.n_images")
    return report


def data_section(root: str, split: str, hashes: list[str], labels: np.ndarray, **extra) -> dict:
    """The ``data`` block of a report: what was evaluated, identified by content and labels."""
    labels = np.asarray(labels)
    return {
        "root": str(root),
        "split": split,
        "n_images": int(len(labels)),
        "n_real": int((labels == 0).sum()),
        "n_fake": int((labels == 1).sum()),
        "split_fingerprint": split_fingerprint(list(hashes), list(labels)),
        "synthetic": is_synthetic(root) if root else False,
        **extra,
    }


def build_report(
    model: dict, data: dict, metrics: dict, costs: dict, plots: dict | None = None, groups: list[dict] | None = None,
    curves: dict | None = None,
) -> dict:
    """Assemble and validate a report; ``groups`` are per-group rows from :func:`featlab.core.metrics.group_metrics`,
    ``curves`` the ROC/PR points from :func:`featlab.core.metrics.curve_points`."""
    from featlab.core.versions import hardware

    report = {
        "schema": SCHEMA,
        "created": utc_now(),
        "featlab": __version__,
        "versions": library_versions(),
        "model": model,
        "data": data,
        "metrics": metrics,
        "costs": costs,
        "plots": plots or {},
        "groups": groups or [],
        "curves": curves,
        "hardware": hardware(),
    }
    return validate_report(report)


def report_paths(reports_dir: str | os.PathLike, model_name: str, split: str) -> tuple[Path, Path]:
    """(JSON path, plots folder) for a model and split."""
    stem = f"{model_name}-{split}"
    return Path(reports_dir) / f"{stem}.json", Path(reports_dir) / stem


# ---------------------------------------------------------------------- plots


def write_plots(
    folder: str | os.PathLike,
    y_true: np.ndarray,
    score: np.ndarray,
    confusion: list[list[int]],
    title: str,
    embeddings: np.ndarray | None = None,
) -> dict[str, str]:
    """ROC, PR, confusion matrix and (given embeddings) a 2-D PCA scatter, as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA
    from sklearn.metrics import precision_recall_curve, roc_curve

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(folder / f"{name}.png", dpi=90)
        plt.close(fig)
        written[name] = str(folder / f"{name}.png")

    if len(np.unique(y_true)) == 2:
        fpr, tpr, _ = roc_curve(y_true, score)
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.plot(fpr, tpr)
        ax.plot([0, 1], [0, 1], "--", color="grey", lw=0.8)
        ax.set(xlabel="false positive rate (real called fake)", ylabel="true positive rate", title=f"ROC - {title}")
        save(fig, "roc")
        precision, recall, _ = precision_recall_curve(y_true, score)
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.plot(recall, precision)
        ax.set(xlabel="recall (fake)", ylabel="precision (fake)", title=f"PR - {title}", ylim=(0, 1.02))
        save(fig, "pr")
    fig, ax = plt.subplots(figsize=(3.6, 3.2))
    ax.imshow(confusion, cmap="Blues")
    for i in range(2):
        for j in range(2):
            ax.text(j, i, str(confusion[i][j]), ha="center", va="center")
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["real", "fake"], yticklabels=["real", "fake"],
           xlabel="predicted", ylabel="true", title="confusion")
    save(fig, "confusion")
    if embeddings is not None and len(embeddings) >= 3:
        xy = PCA(n_components=2, random_state=0).fit_transform(np.asarray(embeddings, dtype=np.float64))
        fig, ax = plt.subplots(figsize=(4, 4))
        for label, name, color in ((0, "real", "tab:blue"), (1, "fake", "tab:red")):
            mask = np.asarray(y_true) == label
            ax.scatter(xy[mask, 0], xy[mask, 1], s=6, alpha=0.6, label=name, color=color)
        ax.legend()
        ax.set(title=f"PCA of embeddings - {title}", xlabel="PC1", ylabel="PC2")
        save(fig, "pca_scatter")
    return written


def print_metrics(report: dict) -> str:
    """A short human-readable table of a report."""
    m = report["metrics"]
    d = report["data"]

    def fmt(v):
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"

    lines = [
        f"model   {report['model']['name']} ({report['model']['kind']}, {report['model']['backbone']}, "
        f"weights {report['model']['weights']})",
        f"data    {d['root']} split={d['split']} n={d['n_images']}" + ("  [SYNTHETIC data]" if d["synthetic"] else ""),
        f"accuracy {fmt(m['accuracy'])}  precision {fmt(m['precision'])}  recall {fmt(m['recall'])}  f1 {fmt(m['f1'])}",
        f"roc_auc  {fmt(m['roc_auc'])}" + (f" (95% CI {interval_text(m['roc_auc_ci'])})" if m.get("roc_auc_ci") else "")
        + f"  AP {fmt(m['average_precision'])}  EER {fmt(m['eer'])}  threshold {m['threshold']:g}",
        f"per-class accuracy: real {fmt(m['per_class_accuracy']['real'])}  fake {fmt(m['per_class_accuracy']['fake'])}"
        + (f"  best-threshold accuracy {fmt(m['best_threshold_accuracy_oracle'])} (oracle: threshold chosen on "
           "these labels)" if m.get("best_threshold_accuracy_oracle") is not None else ""),
        f"confusion [[tn, fp], [fn, tp]] = {m['confusion_matrix']}",
    ]
    lines += [f"note: {note}" for note in m.get("notes", [])]
    groups = report.get("groups") or []
    if groups:
        lines.append("per group (one-class groups: ROC-AUC/AP against all real images, accuracy = recall):")
        for g in groups:
            lines.append(
                f"  {g['group']:<20} n={g['n']:<5} roc_auc {fmt(g['roc_auc'])}"
                + (f" ({interval_text(g['roc_auc_ci'])})" if g.get("roc_auc_ci") else "")
                + f"  AP {fmt(g['average_precision'])}  accuracy {fmt(g['accuracy'])}"
            )
    return "\n".join(lines)


# -------------------------------------------------------------------- compare

def load_reports(paths: list[str | os.PathLike]) -> list[dict]:
    reports = []
    for path in paths:
        try:
            report = read_json(path)
        except (OSError, ValueError) as error:
            raise FeatlabError(f"cannot read report {path}: {error}") from None
        report["_path"] = str(path)
        reports.append(validate_report(report))
    return reports


def compare_reports(reports: list[dict]) -> pd.DataFrame:
    """One row per model; refuses reports made on different evaluation data."""
    if not reports:
        raise FeatlabError("no reports to compare")
    fingerprints = {(r["data"]["split_fingerprint"]) for r in reports}
    if len(fingerprints) > 1:
        described = "; ".join(
            f"{Path(r['_path']).name}: split={r['data']['split']} n={r['data']['n_images']} "
            f"fp={r['data']['split_fingerprint'][:10]}" for r in reports
        )
        raise FeatlabError(f"reports were made on different evaluation data, refusing to compare ({described})")
    rows = []
    for r in reports:
        row = {"model": r["model"]["name"], "kind": r["model"]["kind"], "backbone": r["model"]["backbone"],
               "weights": r["model"]["weights"]}
        for column, get, _ in COLUMNS:
            try:
                value = get(r)
            except (KeyError, TypeError):
                value = None
            row[column] = np.nan if value is None else value
        for group in r.get("groups") or []:
            row[f"AUC {group['group']}"] = np.nan if group["roc_auc"] is None else group["roc_auc"]
        rows.append(row)
    return pd.DataFrame(rows)


def write_comparison(reports: list[dict], out: str | os.PathLike,
                     figure_formats: tuple[str, ...] = ()) -> tuple[Path, Path, str]:
    """Write ``comparison.md`` and the self-contained ``comparison.html`` (see :mod:`featlab.reports.page`) into ``out``.

    Returns (markdown path, HTML path, the markdown table).
    """
    from featlab.reports.page import check_figure_formats, write_page

    check_figure_formats(figure_formats)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = compare_reports(reports)
    markdown = to_markdown(table)
    md, page = write_page(reports, table, markdown, out, extras_dir=out, figure_formats=figure_formats)
    return md, page, markdown


NULLS = ("null marks a figure that is not defined on this data (for example ROC-AUC on a split or group with one "
         "class, or a selection score where only one candidate was fitted)")


def save_report(report: dict, path: str | os.PathLike) -> Path:
    # strict JSON has no NaN: an undefined figure is written as null, and every report says what null means
    report = {**validate_report(report), "nulls": NULLS}
    return atomic_write_json(path, report)


def write_matrix(table: pd.DataFrame, out: str | os.PathLike) -> dict[str, Path]:
    """Cross-dataset matrix as markdown, HTML and a ROC-AUC heatmap (rows: models, columns: test sets)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = table.assign(row=[f"{m} (trained on {t})" for m, t in zip(table.model, table.trained_on)])
    rows, columns = list(dict.fromkeys(table.row)), list(dict.fromkeys(table.data))

    def cell(r: str, c: str) -> str:
        hit = table[(table.row == r) & (table.data == c)].iloc[0]
        return " / ".join(_fmt_metric(hit[k]) for k in ("roc_auc", "average_precision", "accuracy"))

    md = ["| model \\ test set | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    md += [f"| {r} | " + " | ".join(cell(r, c) for c in columns) + " |" for r in rows]
    caption = ("Cells: ROC-AUC / AP / accuracy at the model's threshold; n/a where a test set holds one class "
               "(its accuracy is then the recall of that class).")
    atomic_write_text(out / "matrix.md", "# featlab cross-dataset matrix\n\n" + caption + "\n\n" + "\n".join(md) + "\n")
    auc = np.array([[table[(table.row == r) & (table.data == c)].iloc[0]["roc_auc"] for c in columns] for r in rows],
                   dtype=float)
    fig, ax = plt.subplots(figsize=(2.2 + 1.6 * len(columns), 1.2 + 0.6 * len(rows)))
    ax.imshow(np.nan_to_num(auc, nan=0.5), cmap="viridis", vmin=0.5, vmax=1.0)
    for i in range(len(rows)):
        for j in range(len(columns)):
            value = auc[i, j]
            ax.text(j, i, "n/a" if np.isnan(value) else f"{value:.3f}", ha="center", va="center",
                    color="black" if not np.isnan(value) and value > 0.8 else "white")
    ax.set(xticks=range(len(columns)), yticks=range(len(rows)), title="ROC-AUC (rows: model, columns: test set)")
    ax.set_xticklabels(columns, rotation=20, ha="right")
    ax.set_yticklabels(rows)
    fig.tight_layout()
    fig.savefig(out / "matrix.png", dpi=100)
    plt.close(fig)
    encoded = base64.b64encode((out / "matrix.png").read_bytes()).decode()
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(f"<tr><th>{html.escape(r)}</th>" + "".join(f"<td>{html.escape(cell(r, c))}</td>" for c in columns)
                   + "</tr>" for r in rows)
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>featlab cross-dataset matrix</title><style>"
            "body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:4px 8px}</style></head><body>"
            f"<h1>Cross-dataset matrix</h1><p>{html.escape(caption)}</p><table><tr><th>model \\ test set</th>{head}"
            f"</tr>{body}</table><img alt='ROC-AUC heatmap' src='data:image/png;base64,{encoded}'></body></html>")
    atomic_write_text(out / "matrix.html", page)
    return {"markdown": out / "matrix.md", "html": out / "matrix.html", "png": out / "matrix.png"}


def _fmt_metric(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def write_table_report(out: str | os.PathLike, name: str, intro: str, table: pd.DataFrame,
                       images: list[tuple[str, Path]], payload: dict) -> dict[str, Path]:
    """``<name>.md``, a self-contained ``<name>.html`` (intro, table, embedded PNGs under their headings) and
    ``<name>.json`` (``payload``) in ``out``; floats shown with 3 decimals. Returns {kind: path}."""
    out = Path(out)

    def fmt(value) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    rows = [[fmt(v) for v in row] for row in table.itertuples(index=False)]
    md = [f"# featlab {name}", "", intro, "", "| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns),
          *["| " + " | ".join(row) + " |" for row in rows], "", *[f"![{heading}]({path.name})" for heading, path in images]]
    atomic_write_text(out / f"{name}.md", "\n".join(md) + "\n")
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>" for row in rows)
    pictures = "".join(f"<h2>{html.escape(heading)}</h2><img alt='{html.escape(heading)}' src='data:image/png;base64,"
                       f"{base64.b64encode(path.read_bytes()).decode()}'>" for heading, path in images)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>featlab {html.escape(name)}</title><style>"
            "body{font-family:system-ui,sans-serif;margin:24px}table{border-collapse:collapse}td,th{border:1px solid "
            "#ccc;padding:3px 8px;font-size:13px}img{max-width:100%}</style></head><body>"
            f"<h1>featlab {html.escape(name)}</h1><p>{html.escape(intro)}</p><table><tr>{head}</tr>{body}</table>"
            f"{pictures}</body></html>")
    atomic_write_text(out / f"{name}.html", page)
    atomic_write_json(out / f"{name}.json", payload)
    return {"markdown": out / f"{name}.md", "html": out / f"{name}.html", "json": out / f"{name}.json"}
