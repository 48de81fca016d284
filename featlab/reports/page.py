"""The comparison page: "which detector, on what data, at what cost", from stored reports only.

``write_comparison`` (``featlab compare`` and ``featlab benchmark``) writes ``comparison.md`` and a
self-contained ``comparison.html`` (images embedded, no network, printable):

1. a summary: data (root, split, sizes, groups), real or SYNTHETIC, hardware, versions, seeds,
   and the best model for each metric;
2. the table (metrics and costs; parameters in words);
3. every model's ROC and PR curve on one plot each, operating points marked, AUC/AP in the legend;
4. ROC-AUC against cost (training seconds, images/s);
5. confusion matrices as coloured tables whose text colour follows the cell's darkness;
6. per-group ROC-AUC (table and bars) when groups exist;
7. the robustness curves and cross-dataset heatmap found beside the reports, when present;
8. links to the reports' heatmap galleries (``featlab evaluate --explain N``), when present.

No model is re-run: curves come from the points each report stores.
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path

import numpy as np
import pandas as pd

from featlab import __version__
from featlab.core.fileio import atomic_write_text
from featlab.reports.tables import format_cell, table_cells

SHORT = 34  # longest model name printed whole on a plot; longer ones lose their middle (see short_name)
#: Below this many test images a page warns that its differences are noisy.
SMALL_SPLIT = 200
FIGURE_FORMATS = ("svg", "pdf")  # extra vector formats a user may ask for (papers); the page embeds PNG

#: Where a page's figures are also written as vector files: (folder, formats), or None for the page only.
Export = tuple[Path, tuple[str, ...]] | None


def short_name(name: str, others: tuple[str, ...] = ()) -> str:
    """``name`` for a legend or caption: whole when short, else its start and its end (where featlab's
    names differ: the arch, the recipe, the time stamp) around an ellipsis; whole again when that would
    make two of ``others`` look the same."""
    if len(name) <= SHORT:
        return name
    head, tail = SHORT // 2 - 2, SHORT // 2 + 1

    def cut(text: str) -> str:
        return text if len(text) <= SHORT else text[:head] + "…" + text[-tail:]

    if any(other != name and cut(other) == cut(name) for other in others):
        return name
    return cut(name)


def params_in_words(params: dict | None) -> str:
    """``{'clf__C': 1.0, 'clf__gamma': 'scale'}`` -> ``C=1, gamma=scale``."""
    if not params:
        return ""
    words = []
    for key, value in params.items():
        name = key.split("__")[-1]
        words.append(f"{name}={value:g}" if isinstance(value, (int, float)) else f"{name}={value}")
    return ", ".join(words)


def text_color(value: float, vmax: float) -> str:
    """Black on light cells, white on dark ones (the fill goes from white to dark blue with ``value/vmax``)."""
    share = 0.0 if vmax <= 0 else min(1.0, max(0.0, value / vmax))
    return "#ffffff" if share > 0.5 else "#000000"


def _cell_fill(value: float, vmax: float) -> str:
    share = 0.0 if vmax <= 0 else min(1.0, max(0.0, value / vmax))
    light, dark = np.array([247, 251, 255]), np.array([8, 48, 107])  # matplotlib "Blues" ends
    r, g, b = (light + (dark - light) * share).round().astype(int)
    return f"#{r:02x}{g:02x}{b:02x}"


def _png(fig, name: str, export: Export = None) -> str:
    """The figure as base64 PNG for the page (and as vector files when an export was asked for)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    if export is not None:
        folder, formats = export
        folder.mkdir(parents=True, exist_ok=True)
        for fmt in formats:
            fig.savefig(folder / f"{name}.{fmt}", format=fmt)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _style():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.titlesize": 10, "axes.grid": True, "grid.alpha": 0.3,
                         "legend.fontsize": 7.5})
    return plt


def overlay_curves(reports: list[dict], export: Export = None) -> tuple[str, int]:
    """ROC and PR of every model on two panels (base64 PNG) and the number of curves drawn."""
    plt = _style()
    fig, (roc, pr) = plt.subplots(1, 2, figsize=(10, 4.2))
    drawn = 0
    for k, r in enumerate(reports):
        curves = r.get("curves")
        if not curves:
            continue
        color = plt.cm.tab10(k % 10)
        m, name = r["metrics"], short_name(r["model"]["name"], tuple(x["model"]["name"] for x in reports))
        roc.plot(curves["roc"]["fpr"], curves["roc"]["tpr"], color=color, label=f"{name} (AUC {m['roc_auc']:.3f})")
        op = curves["operating_point"]
        roc.plot([op["fpr"]], [op["tpr"]], "o", color=color, markersize=5)
        pr.plot(curves["pr"]["recall"], curves["pr"]["precision"], color=color,
                label=f"{name} (AP {m['average_precision']:.3f})")
        pr.plot([op["tpr"]], [op["precision"]], "o", color=color, markersize=5)
        drawn += 1
    roc.plot([0, 1], [0, 1], "--", color="grey", lw=0.8)
    roc.set(xlabel="false positive rate (reals called fake)", ylabel="true positive rate (fakes caught)",
            title="ROC curves (dot: the model's threshold)", xlim=(0, 1), ylim=(0, 1.01))
    pr.set(xlabel="recall (fakes caught)", ylabel="precision (called fake that are fake)",
           title="precision-recall curves", xlim=(0, 1), ylim=(0, 1.01))
    roc.legend(loc="lower right", fontsize=7)
    pr.legend(loc="lower left", fontsize=7)
    return _png(fig, "curves", export), drawn


def cost_scatter(table: pd.DataFrame, export: Export = None) -> str:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    plt = _style()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    everyone = tuple(table["model"])
    for ax, column, label in ((axes[0], "train s", "training time (s, log scale)"),
                              (axes[1], "infer img/s", "inference throughput (images/s, log scale)")):
        for k, row in table.iterrows():
            value = row[column]
            if value is None or not np.isfinite(value) or value <= 0:
                continue
            marker = "s" if row["kind"] == "svm" else "o"
            ax.scatter([value], [row["roc_auc"]], color=plt.cm.tab10(k % 10), marker=marker, s=45,
                       label=f"{short_name(row['model'], everyone)} ({row['kind']})")
        ax.set_xscale("log")
        # matplotlib's minor-tick labels on a log axis overlap when the values span little: label 1-2-5 steps
        # within two decades, whole decades beyond, nothing in between
        values = pd.to_numeric(table[column], errors="coerce")
        values = values[values > 0]
        narrow = len(values) == 0 or values.max() / values.min() < 100
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if narrow else (1.0,), numticks=12))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        if len(values):
            ax.set_xlim(values.min() / 1.6, values.max() * 1.6)
        ax.set(xlabel=label, ylabel="test ROC-AUC", title=f"ROC-AUC vs {column.split()[0]} cost")
    axes[1].legend(loc="best", fontsize=7)
    return _png(fig, "cost", export)


def group_bars(reports: list[dict], export: Export = None) -> str | None:
    groups = sorted({g["group"] for r in reports for g in r.get("groups") or [] if g.get("roc_auc") is not None})
    if not groups:
        return None
    plt = _style()
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(groups) * max(1, len(reports)) / 2), 3.6))
    width = 0.8 / max(1, len(reports))
    for k, r in enumerate(reports):
        values = {g["group"]: g["roc_auc"] for g in r.get("groups") or []}
        xs = np.arange(len(groups)) + k * width
        ax.bar(xs, [values.get(g) or 0 for g in groups], width,
               label=short_name(r["model"]["name"], tuple(x["model"]["name"] for x in reports)),
               color=plt.cm.tab10(k % 10))
    ax.set_xticks(np.arange(len(groups)) + width * (len(reports) - 1) / 2)
    ax.set_xticklabels(groups, rotation=15)
    ax.set(ylabel="test ROC-AUC", ylim=(0.4, 1.0), title="ROC-AUC per group (one-class groups: against all reals)")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.legend(fontsize=7)
    return _png(fig, "groups", export)


def confusion_html(report: dict) -> str:
    cm = report["metrics"]["confusion_matrix"]
    vmax = max(max(row) for row in cm) or 1
    names = ("real", "fake")
    rows = []
    for i in range(2):
        cells = "".join(
            f"<td style='background:{_cell_fill(cm[i][j], vmax)};color:{text_color(cm[i][j], vmax)}'>{cm[i][j]}</td>"
            for j in range(2))
        rows.append(f"<tr><th>true {names[i]}</th>{cells}</tr>")
    return (f"<table class='cm'><caption>{html.escape(report['model']['name'])}</caption>"
            f"<tr><th></th><th>called real</th><th>called fake</th></tr>{''.join(rows)}</table>")


def summary_lines(reports: list[dict], table: pd.DataFrame) -> list[str]:
    """Plain-text summary shared by the terminal, the markdown and the page."""
    data = reports[0]["data"]
    hw = reports[0].get("hardware") or {}
    versions = reports[0].get("versions") or {}
    kind = "SYNTHETIC data (generated drawings, not real faces)" if data["synthetic"] else "real images"
    groups = sorted({g["group"] for r in reports for g in r.get("groups") or []})
    best = []
    for column, higher in (("roc_auc", True), ("AP", True), ("accuracy", True), ("EER", False), ("train s", False),
                           ("infer img/s", True)):
        values = pd.to_numeric(table[column], errors="coerce")
        if values.notna().any():
            i = values.idxmax() if higher else values.idxmin()
            best.append(f"{column}: {table.loc[i, 'model']}")
    n = int(data.get("n_images") or 0)
    small = (f" Small sample: n = {n}; one image moves accuracy by {1 / n:.3f}, so small differences between "
             "models are noise." if 0 < n < SMALL_SPLIT else "")
    lines = [
        # the folder's name, not the path of the machine that made the report
        f"Data: {Path(str(data['root'])).name}, split {data['split']}: {n} images ({data.get('n_real', '?')} real, "
        f"{data.get('n_fake', '?')} fake) - {kind}." + (f" Groups: {', '.join(groups)}." if groups else "") + small,
        f"Models: {len(reports)}; seeds {sorted({r['model']['seed'] for r in reports})}; "
        f"hardware: {hw.get('cpu', 'unknown')}, {hw.get('cores', '?')} cores, GPU {hw.get('gpu') or 'none'}; "
        f"torch {versions.get('torch', '?')}, scikit-learn {versions.get('scikit-learn', '?')}, featlab {__version__}.",
        "Best: " + "; ".join(best) + ".",
    ]
    return lines


def _embed_file(path: Path, alt: str) -> str:
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}'>"


def render_page(reports: list[dict], table: pd.DataFrame, markdown_table: str, extras_dir: Path | None = None,
                export: Export = None, page_dir: Path | None = None) -> str:
    """The HTML page (see module docstring); ``page_dir`` (where it is written) makes gallery links relative."""
    summary = summary_lines(reports, table)
    curves_png, drawn = overlay_curves(reports, export)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>featlab comparison</title><style>"
        "body{font-family:sans-serif;margin:2em;max-width:1300px}table{border-collapse:collapse;margin:0.5em 0;"
        "font-size:0.85em}.wide{overflow-x:auto;max-width:100%}.wide th{white-space:normal;max-width:6.5em}"
        ".wide td:first-child{text-align:left;max-width:18em;overflow-wrap:anywhere}"
        ".cm caption{max-width:22em;overflow-wrap:anywhere}"
        "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}td.best{font-weight:bold;background:#e6f4ea}"
        "th{background:#f4f4f4}img{max-width:100%;margin:4px 0}.cm{display:inline-table;margin-right:1.5em}"
        ".cm caption{font-weight:bold}.summary{background:#f7f9fc;padding:0.6em 1em;border-left:4px solid #4a78c2}"
        "@media print{img{max-width:95%}}</style></head><body>",
        "<h1>featlab comparison</h1>",
        "<div class='summary'>" + "".join(f"<p>{html.escape(line)}</p>" for line in summary) + "</div>",
        "<h2>Metrics and costs (test split)</h2>",
        "<div class='wide'>" + _html_table(table) + "</div>",
        "<p>Best value per column in bold. Parameters: "
        + "; ".join(f"{html.escape(r['model']['name'])}: {html.escape(_params(r))}" for r in reports) + ".</p>",
        f"<h2>ROC and precision-recall, all models</h2><img alt='overlaid ROC and PR curves ({drawn} models)' "
        f"src='data:image/png;base64,{curves_png}'>",
        f"<h2>Accuracy against cost</h2><img alt='ROC-AUC vs cost' src='data:image/png;base64,{cost_scatter(table, export)}'>"
        "<p>Squares: SVM on frozen features (train time = grid search + fit; throughput includes feature "
        "extraction). Circles: fine-tuned CNNs.</p>",
        "<h2>Confusion matrices (at each model's threshold)</h2>" + "".join(confusion_html(r) for r in reports),
    ]
    bars = group_bars(reports, export)
    if bars:
        groups = sorted({g["group"] for r in reports for g in r.get("groups") or []})
        rows = "".join(
            f"<tr><th>{html.escape(r['model']['name'])}</th>"
            + "".join(f"<td>{format_cell({g['group']: g for g in r.get('groups') or []}.get(name, {}).get('roc_auc'))}</td>"
                      for name in groups) + "</tr>" for r in reports)
        parts.append("<h2>Per group</h2><table><tr><th>model</th>"
                     + "".join(f"<th>{html.escape(g)}</th>" for g in groups) + f"</tr>{rows}</table>"
                     f"<img alt='ROC-AUC per group' src='data:image/png;base64,{bars}'>")
    if extras_dir is not None:
        for png in sorted(extras_dir.glob("robustness/robustness-*.png")):
            parts.append(f"<h2>Robustness: {html.escape(png.stem.split('-', 1)[1])}</h2>{_embed_file(png, png.stem)}")
        matrix = extras_dir / "matrix" / "matrix.png"
        if matrix.is_file():
            parts.append(f"<h2>Cross-dataset matrix</h2>{_embed_file(matrix, 'cross-dataset ROC-AUC')}")
    galleries = [r for r in reports if r.get("gallery") and Path(r["gallery"]).is_file()]
    if galleries and page_dir is not None:
        links = "".join(f"<li><a href='{html.escape(os.path.relpath(r['gallery'], page_dir))}'>"
                        f"{html.escape(r['model']['name'])}</a></li>" for r in galleries)
        parts.append("<h2>Why: heatmap galleries</h2><p>Most confident true positives, false positives and false "
                     f"negatives of each model, with the regions that drove its score.</p><ul>{links}</ul>")
    everyone = tuple(r["model"]["name"] for r in reports)
    names = [n for n in everyone if short_name(n, everyone) != n]
    if names:
        parts.append("<p>Full model names: " + "; ".join(f"{html.escape(short_name(n, everyone))} = {html.escape(n)}"
                                                         for n in names) + "</p>")
    parts.append(f"<p>featlab {__version__}</p></body></html>")
    return "".join(parts)


def _params(report: dict) -> str:
    params = report["model"].get("params") or {}
    if report["model"]["kind"] == "svm":
        pca = (params.get("pca") or {}).get("components")
        words = params_in_words(params.get("best"))
        return f"{words}, PCA {pca}" if pca else words
    config = params.get("config") or {}
    return (f"{config.get('epochs')} epochs (best {params.get('best_epoch')}), lr {config.get('lr')}, "
            f"head {config.get('head_layers', 'pool')}")


def _html_table(table: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(f"<td{' class=best' if best else ''}>{html.escape(text)}</td>" for text, best in row)
                   + "</tr>" for row in table_cells(table))
    return f"<table><tr>{head}</tr>{body}</table>"


def check_figure_formats(figure_formats: tuple[str, ...]) -> None:
    from featlab.core.errors import FeatlabError

    unknown = [f for f in figure_formats if f not in FIGURE_FORMATS]
    if unknown:
        raise FeatlabError(f"figure format {', '.join(unknown)} not supported; choose from {', '.join(FIGURE_FORMATS)}")


def write_page(reports: list[dict], table: pd.DataFrame, markdown_table: str, out: str | os.PathLike,
               extras_dir: Path | None = None, figure_formats: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """Write comparison.md and comparison.html; ``figure_formats`` (svg, pdf) also saves the page's
    figures as vector files under ``out/figures/`` for papers."""
    check_figure_formats(figure_formats)
    out = Path(out)
    summary = "\n\n".join(summary_lines(reports, table))
    atomic_write_text(out / "comparison.md", f"# featlab comparison\n\n{summary}\n\nBest value per column in bold.\n\n"
                                             f"{markdown_table}\n")
    export = (out / "figures", tuple(figure_formats)) if figure_formats else None
    atomic_write_text(out / "comparison.html", render_page(reports, table, markdown_table, extras_dir, export, out))
    return out / "comparison.md", out / "comparison.html"
