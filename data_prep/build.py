"""Assemble the original write-up's "combined-real-and-fake-faces" dataset.

Inputs (as downloaded from Kaggle):

* "140K Real and Fake Faces":   ``real_vs_fake/real-vs-fake/{train,valid,test}/{real,fake}/*.jpg``
* "Real and Fake Face Detection" (CIPLAB): ``real_and_fake_face/{training_real,training_fake}/*.jpg``

Output::

    OUT/combined-real-vs-fake/{train,valid,test}/{real,fake}/*.jpg
    OUT/manifest.csv      one row per image: path, split, label, sha256, source, source_path
    OUT/summary.json      counts per split x class, duplicates removed, quarantined files, seed, ratios

The 140K set keeps its own splits; the CIPLAB images are spread over the three splits
with a fixed seed, stratified by class. Exact duplicates (same bytes) are kept once, so no
image can sit in two splits. Unreadable files are quarantined and listed, never copied.
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from featlab import LABELS
from featlab.core.errors import BadImageError, FeatlabError
from featlab.core.fileio import atomic_write_json, atomic_write_text, sha256_file
from featlab.data.dataset import IMAGE_EXTENSIONS, SPLITS, load_rgb

COMBINED = "combined-real-vs-fake"
MANIFEST_FIELDS = ["path", "split", "label", "label_name", "sha256", "source", "source_path"]
_CIPLAB_CLASSES = {"training_real": "real", "training_fake": "fake"}


@dataclass(frozen=True)
class BuildResult:
    out: Path
    manifest: pd.DataFrame
    summary: dict
    written: bool  # False when an identical build was already there


def _find(root: Path, inner: tuple[str, ...], must_have: tuple[str, ...]) -> Path:
    """Accept the download folder or any folder on the way down to the one holding ``must_have``."""
    for depth in range(len(inner) + 1):
        candidate = root.joinpath(*inner[depth:]) if depth < len(inner) else root
        if all((candidate / name).is_dir() for name in must_have):
            return candidate
    raise FeatlabError(
        f"{root}: expected {'/'.join(inner)}/ holding {', '.join(must_have)} sub-folders"
    )


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _collect(faces140k: Path, ciplab: Path) -> pd.DataFrame:
    rows = []
    base = _find(faces140k, ("real_vs_fake", "real-vs-fake"), SPLITS)
    for split in SPLITS:
        for class_name in LABELS:
            folder = base / split / class_name
            if not folder.is_dir():
                raise FeatlabError(f"{folder}: missing class folder")
            rows += [("140k", split, class_name, p) for p in _images(folder)]
    cip = _find(ciplab, ("real_and_fake_face",), tuple(_CIPLAB_CLASSES))
    for folder_name, class_name in _CIPLAB_CLASSES.items():
        rows += [("ciplab", "", class_name, p) for p in _images(cip / folder_name)]
    return pd.DataFrame(rows, columns=["source", "split", "label_name", "source_path"])


def _check(path: Path) -> tuple[str, str]:
    """Return (sha256, quarantine reason or "")."""
    try:
        load_rgb(path)
    except BadImageError as error:
        return "", str(error)
    return sha256_file(path), ""


def _stratified_split(n: int, ratios: tuple[float, float, float], rng: np.random.Generator) -> list[str]:
    order = rng.permutation(n)
    n_train = int(round(ratios[0] * n))
    n_valid = int(round(ratios[1] * n))
    assigned = np.empty(n, dtype=object)
    assigned[order[:n_train]] = "train"
    assigned[order[n_train : n_train + n_valid]] = "valid"
    assigned[order[n_train + n_valid :]] = "test"
    return list(assigned)


def plan(
    faces140k: str | os.PathLike,
    ciplab: str | os.PathLike,
    seed: int = 0,
    ratios: tuple[float, float, float] = (0.7, 0.15, 0.15),
    workers: int = 4,
) -> tuple[pd.DataFrame, dict]:
    """Decide where every image goes, without writing anything.

    Returns the manifest (paths relative to OUT) and the summary dictionary.
    """
    if len(ratios) != 3 or any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
        raise FeatlabError(f"--ratios must be three non-negative numbers summing to 1, got {ratios}")
    files = _collect(Path(faces140k), Path(ciplab))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        checked = list(pool.map(_check, files.source_path))
    files["sha256"] = [h for h, _ in checked]
    files["reason"] = [r for _, r in checked]
    quarantined = files[files.reason != ""]
    files = files[files.reason == ""].copy()

    # Exact duplicates: the first copy wins, 140K before CIPLAB, then test/valid/train, then path,
    # so a duplicate never leaks a training image into an evaluation split.
    priority = {"test": 0, "valid": 1, "train": 2, "": 3}
    files["_order"] = [
        (0 if s == "140k" else 1, priority[sp], str(p))
        for s, sp, p in zip(files.source, files.split, files.source_path)
    ]
    files = files.sort_values("_order", kind="stable")
    duplicate_mask = files.duplicated("sha256", keep="first")
    duplicates = files[duplicate_mask]
    files = files[~duplicate_mask].drop(columns="_order")

    # Distribute CIPLAB per class with a fixed seed (stratified), over a sorted list so the
    # result does not depend on filesystem order.
    rng = np.random.default_rng(seed)
    for class_name in LABELS:
        mask = (files.source == "ciplab") & (files.label_name == class_name)
        idx = files.index[mask]
        ordered = files.loc[idx].sort_values("source_path").index
        files.loc[ordered, "split"] = _stratified_split(len(ordered), ratios, rng)

    files["label"] = files.label_name.map(LABELS)
    prefix = files.source.map({"140k": "f140k", "ciplab": "ciplab"})
    files["path"] = [
        f"{COMBINED}/{split}/{cls}/{pre}-{Path(src).name}"
        for split, cls, pre, src in zip(files.split, files.label_name, prefix, files.source_path)
    ]
    if files.path.duplicated().any():
        clash = files.path[files.path.duplicated()].iloc[0]
        raise FeatlabError(f"two different source images map to the same output name: {clash}")
    files["source_path"] = files.source_path.map(str)
    manifest = files[MANIFEST_FIELDS].sort_values("path").reset_index(drop=True)

    counts = manifest.groupby(["split", "label_name"]).size()
    summary = {
        "seed": seed,
        "ratios": list(ratios),
        "label_mapping": LABELS,
        "counts": {s: {c: int(counts.get((s, c), 0)) for c in LABELS} for s in SPLITS},
        "total": int(len(manifest)),
        "duplicates_removed": [
            {"source_path": str(p), "sha256": h} for p, h in zip(duplicates.source_path, duplicates.sha256)
        ],
        "quarantined": [{"source_path": str(p), "reason": r} for p, r in zip(quarantined.source_path, quarantined.reason)],
    }
    return manifest, summary


def _place(source: Path, target: Path, link: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            os.link(source, target)
            return
        except OSError:
            pass  # other filesystem: fall back to a copy
    shutil.copy2(source, target)


def build(
    faces140k: str | os.PathLike,
    ciplab: str | os.PathLike,
    out: str | os.PathLike,
    seed: int = 0,
    ratios: tuple[float, float, float] = (0.7, 0.15, 0.15),
    link: bool = False,
    force: bool = False,
) -> BuildResult:
    """Plan and write the combined dataset (see module docstring).

    Idempotent: an identical existing build is left untouched. A different existing build
    is refused unless ``force`` is set. The image tree is assembled in a temporary folder
    and renamed into place, and ``manifest.csv`` is written last, so an interrupted build
    never looks complete.
    """
    out = Path(out)
    manifest, summary = plan(faces140k, ciplab, seed=seed, ratios=ratios)
    manifest_path = out / "manifest.csv"
    if manifest_path.exists():
        existing = pd.read_csv(manifest_path, dtype=str, keep_default_na=False)
        same = existing[MANIFEST_FIELDS].equals(manifest.astype(str)[MANIFEST_FIELDS])
        if same and (out / COMBINED).is_dir():
            return BuildResult(out, manifest, summary, written=False)
        if not force:
            raise FeatlabError(f"{out} already holds a different dataset build; pass --force to replace it")
    elif (out / COMBINED).exists() and not force:
        raise FeatlabError(f"{out / COMBINED} exists without a manifest.csv; pass --force to replace it")

    out.mkdir(parents=True, exist_ok=True)
    staging = out / f".{COMBINED}.partial"
    if staging.exists():
        shutil.rmtree(staging)
    for rel, src in zip(manifest.path, manifest.source_path):
        _place(Path(src), staging / Path(rel).relative_to(COMBINED), link)
    manifest_path.unlink(missing_ok=True)
    if (out / COMBINED).exists():
        shutil.rmtree(out / COMBINED)
    os.replace(staging, out / COMBINED)
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(manifest_path, manifest.to_csv(index=False))
    return BuildResult(out, manifest, summary, written=True)
