"""The comparison table's columns and cells, shared by the markdown, HTML and terminal outputs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

COLUMNS = [
    # (column, getter, higher is better)
    ("accuracy", lambda r: r["metrics"]["accuracy"], True),
    ("f1", lambda r: r["metrics"]["f1"], True),
    ("roc_auc", lambda r: r["metrics"]["roc_auc"], True),
    ("95% CI", lambda r: interval_text(r["metrics"].get("roc_auc_ci")), None),  # ROC-AUC's, see core.metrics
    ("AP", lambda r: r["metrics"]["average_precision"], True),
    ("EER", lambda r: r["metrics"]["eer"], False),
    ("train s", lambda r: r["costs"]["train_seconds"], False),
    ("infer img/s", lambda r: r["costs"]["inference_images_per_s"], True),
    ("size MB", lambda r: r["costs"]["model_bytes"] / 1e6, False),
    ("params", lambda r: r["costs"]["parameters"], False),
]


def interval_text(interval) -> str | None:
    """``[low, high]`` -> ``"0.812-0.870"`` (None when there is no interval)."""
    return None if not interval else f"{interval[0]:.3f}-{interval[1]:.3f}"


def best_mask(table: pd.DataFrame) -> pd.DataFrame:
    mask = pd.DataFrame(False, index=table.index, columns=table.columns)
    for column, _, higher in COLUMNS:
        if higher is None:  # not ranked
            continue
        values = pd.to_numeric(table[column], errors="coerce")
        if values.notna().any():
            best = values.max() if higher else values.min()
            mask[column] = values == best
    return mask


def format_cell(value) -> str:
    """A table value as people read it: n/a, thousands separators, 4 significant digits."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    return str(value)


def table_cells(table: pd.DataFrame) -> list[list[tuple[str, bool]]]:
    """Rows of (formatted value, best in its column) for the comparison table, in any output format."""
    mask = best_mask(table)
    return [[(format_cell(v), bool(mask.loc[i, c])) for c, v in row.items()] for i, row in table.iterrows()]


def to_markdown(table: pd.DataFrame) -> str:
    header = "| " + " | ".join(table.columns) + " |"
    lines = [header, "|" + "---|" * len(table.columns)]
    for row in table_cells(table):
        lines.append("| " + " | ".join(f"**{text}**" if best else text for text, best in row) + " |")
    return "\n".join(lines)
