"""``featlab robustness``: how detectors hold up when images are recompressed, blurred, resized or noisy.

For every model and every perturbation level, the chosen split is decoded, perturbed (the
same way for real and fake images, see :mod:`featlab.data.perturb`) and scored. An SVM's perturbed
embeddings are cached under a key that includes the perturbation, so reruns and other SVMs on
the same features cost nothing. Output: ``robustness.json``, ``robustness.md`` (a table per
perturbation kind) and one curve plot per kind (metric vs strength, one line per model).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from featlab.core.errors import FeatlabError
from featlab.core.fileio import atomic_write_json, atomic_write_text
from featlab.core.metrics import binary_metrics
from featlab.core.versions import library_versions, utc_now
from featlab.core.workspace import Workspace
from featlab.data.dataset import scan_dataset
from featlab.data.perturb import Perturbation, strength
from featlab.detectors.base import Detector, load


def run_robustness(
    models: list[Detector | str | os.PathLike], data_root: str | os.PathLike, sweeps: dict[str, list[Perturbation]],
    workspace: Workspace, split: str = "test", out: str | os.PathLike | None = None, device: str = "auto",
    trust_pickle: bool = False,
) -> pd.DataFrame:
    """Score every model on every perturbation level; write the tables and curves into ``out``.

    Parameters
    ----------
    models : loaded detectors, or what :func:`featlab.load` opens (any kind).
    data_root : dataset root; ``split`` of it is perturbed and scored.
    sweeps : perturbation kind -> levels (from :func:`featlab.data.perturb.parse_levels`).

    Returns
    -------
    One row per (model, kind, level): roc_auc, average_precision, accuracy, real/fake accuracy, n.
    """
    from featlab.evaluation.evaluate import evaluation_split

    if not sweeps:
        raise FeatlabError("name at least one perturbation (jpeg, blur, resize, noise)")
    root = Path(data_root)
    manifest = scan_dataset(root, check_images=False, one_class_ok=True)
    split = evaluation_split(manifest, split, root)
    rows = manifest[(manifest.split == split) & (manifest.status == "ok")].reset_index(drop=True)
    out = Path(out) if out else workspace.reports / "robustness"
    records = []
    labels = rows.label.to_numpy()
    for model in models:
        detector = model if isinstance(model, Detector) else load(model, workspace, device=device,
                                                                     trust_pickle=trust_pickle)
        for kind, levels in sweeps.items():
            for level in levels:
                scored = detector.score_paths(rows, perturbation=level)
                ok = ~np.isnan(scored.scores)
                m = binary_metrics(labels[ok], scored.scores[ok], detector.threshold)
                records.append({"model": detector.name, "family": detector.kind, "kind": kind, "strength": strength(level, kind),
                                "perturbation": level.describe(), "n": m["n"], "roc_auc": m["roc_auc"],
                                "average_precision": m["average_precision"], "accuracy": m["accuracy"],
                                "real_accuracy": m["real_accuracy"], "fake_accuracy": m["fake_accuracy"]})
    table = pd.DataFrame(records)
    write_robustness(table, out, {"data_root": str(root.resolve()), "split": split, "n_images": int(len(rows)),
                                  "created": utc_now(), "versions": library_versions(),
                                  "sweeps": {k: [p.as_dict() for p in v] for k, v in sweeps.items()}})
    return table


def write_robustness(table: pd.DataFrame, out: Path, context: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "robustness.json", {**context, "rows": table.to_dict(orient="records")})
    lines = [f"# featlab robustness\n\nData `{context['data_root']}` split {context['split']} "
             f"({context['n_images']} images); each perturbation applied to real and fake images alike. "
             "Cells: ROC-AUC / accuracy at the model's threshold.\n"]
    units = {"jpeg": "JPEG quality", "blur": "Gaussian blur sigma (px)", "resize": "resize factor (down, then up)",
             "noise": "noise std (0-1 pixels)"}
    for kind, part in table.groupby("kind", sort=False):
        models = list(dict.fromkeys(part.model))
        lines += [f"## {units[kind]}", "", "| " + units[kind] + " | " + " | ".join(models) + " |",
                  "|---|" + "---|" * len(models)]
        for value, level in part.groupby("strength", sort=False):
            cells = []
            for model in models:
                hit = level[level.model == model].iloc[0]
                auc = "n/a" if hit.roc_auc is None or pd.isna(hit.roc_auc) else f"{hit.roc_auc:.3f}"
                cells.append(f"{auc} / {hit.accuracy:.3f}")
            lines.append(f"| {value:g} | " + " | ".join(cells) + " |")
        lines.append("")
        fig, ax = plt.subplots(figsize=(5, 3.4))
        for model in models:
            curve = part[part.model == model]
            ax.plot(curve.strength, curve.roc_auc.astype(float), marker="o", label=model)
        ax.set(xlabel=units[kind], ylabel="ROC-AUC", title=f"robustness: {kind}", ylim=(0.4, 1.01))
        if kind == "jpeg":
            ax.invert_xaxis()  # stronger compression to the right
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"robustness-{kind}.png", dpi=100)
        plt.close(fig)
        lines.append(f"![{kind}](robustness-{kind}.png)\n")
    atomic_write_text(out / "robustness.md", "\n".join(lines) + "\n")
